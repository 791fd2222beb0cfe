"""The deploy policy at marker time, over the API: a blocked marker is refused with every check and
nothing is stored; the checklist answers and the fast-track override are honoured and recorded; a
retried marker is answered with the deploy recorded the first time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from guardrail.adapters.db import SqlStore
from guardrail.adapters.http import create_app
from guardrail.plugins import load_deploy_adapter
from guardrail.service.engine import Engine
from guardrail.telemetry import Telemetry
from tests.api.conftest import Api, make_settings
from tests.api.helpers import marker

BERLIN = ZoneInfo("Europe/Berlin")
FRIDAY_1300 = datetime(2026, 3, 6, 13, 0, tzinfo=BERLIN).timestamp()  # a Friday afternoon in Berlin
FRIDAY_1100 = datetime(2026, 3, 6, 11, 0, tzinfo=BERLIN).timestamp()
POLICY = {
    "zone": "Europe/Berlin",
    "actions": {"friday_afternoon": "block"},
    "checklist": {"tests_passed": "block", "review_approved": "warn"},
}
ANSWERED = {"tests_passed": True, "review_approved": True, "rollback_plan_documented": True,
            "oncall_available": True}


@pytest.fixture
async def papi(aiohttp_client: Any, store: SqlStore) -> AsyncIterator[Api]:
    settings = make_settings(policy=POLICY)
    telemetry = Telemetry()
    engine = Engine(store=store, settings=settings, adapter_factory=load_deploy_adapter, telemetry=telemetry)
    client = await aiohttp_client(create_app(engine=engine, settings=settings, telemetry=telemetry))
    yield Api(client, engine, store, settings)
    await engine.close()


def _checks(body: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in body["policy"]["checks"]}


async def test_a_blocked_marker_gets_409_with_every_check_and_nothing_is_stored(papi: Api) -> None:
    status, out = await papi.call(
        "POST", "/api/v1/deploys", as_="ci", json=marker(started_at=FRIDAY_1300, checklist={"review_approved": True})
    )
    assert status == 409 and out["error"] == "policy_blocked" and out["field"] == "policy"
    checks = _checks(out)
    assert checks["friday_afternoon"] == "block" and checks["tests_passed"] == "block"
    assert checks["review_approved"] == "pass"
    assert "Friday" in out["detail"] and "tests" in out["detail"]
    _, listed = await papi.call("GET", "/api/v1/deploys")
    assert listed["deploys"] == []


async def test_an_answered_checklist_before_friday_noon_passes_and_the_checks_are_in_the_response(papi: Api) -> None:
    d = await papi.mark(marker(started_at=FRIDAY_1100, checklist=ANSWERED))
    assert d["policy"]["blocked"] is False
    assert _checks(d)["friday_afternoon"] == "pass" and _checks(d)["tests_passed"] == "pass"
    assert d["checklist"] == ANSWERED
    _, again = await papi.call("GET", f"/api/v1/deploys/{d['id']}")
    assert again["policy"] == d["policy"]  # stored with the deploy


async def test_a_fast_tracked_security_fix_goes_through_and_the_override_is_recorded(papi: Api) -> None:
    d = await papi.mark(marker(started_at=FRIDAY_1300, change_type="security", author="erin",
                               fast_track="CVE-2026-1234 actively exploited"))
    assert d["policy"]["fast_tracked"] is True
    assert _checks(d)["friday_afternoon"] == "overridden" and _checks(d)["tests_passed"] == "overridden"
    _, events = await papi.call("GET", f"/api/v1/deploys/{d['id']}/events")
    overrides = [e for e in events["events"] if e["kind"] == "override"]
    assert len(overrides) == 1 and "CVE-2026-1234" in overrides[0]["message"]
    assert overrides[0]["details"]["who"] == "erin" and "friday_afternoon" in overrides[0]["details"]["overridden"]


async def test_a_fast_track_for_a_feature_is_itself_refused(papi: Api) -> None:
    status, out = await papi.call(
        "POST", "/api/v1/deploys", as_="ci",
        json=marker(started_at=FRIDAY_1100, checklist=ANSWERED, fast_track="we are in a hurry"),
    )
    assert status == 409 and out["policy"]["blocked"] is True
    assert "security" in out["detail"] and "bugfix" in out["detail"]


async def test_a_retried_marker_is_answered_with_the_first_deploy_even_if_the_policy_now_blocks(papi: Api) -> None:
    body = marker(checklist=ANSWERED)  # started_at T0: a Tuesday
    first = await papi.mark(body, headers={"Idempotency-Key": "ci-run-77"})
    status, again = await papi.call(
        "POST", "/api/v1/deploys", as_="ci", json={**body, "checklist": {}}, headers={"Idempotency-Key": "ci-run-77"}
    )
    assert status == 200 and again["id"] == first["id"]


async def test_checklist_values_must_be_booleans(papi: Api) -> None:
    status, out = await papi.call(
        "POST", "/api/v1/deploys", as_="ci", json=marker(checklist={"tests_passed": "yes"})
    )
    assert status == 400 and out["field"].startswith("checklist")
