"""GET /api/v1/dora and the guardrail_dora_* gauges, over deploys driven through the real engine and
store on a controlled wall clock (the figures below are worked out by hand)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from guardrail.adapters.db import SqlStore
from guardrail.adapters.http import create_app
from guardrail.adapters.http.dora_api import DORA
from guardrail.config import Settings
from guardrail.domain.rules import AlertState, ExternalAlert
from guardrail.plugins import load_deploy_adapter
from guardrail.service.dora import DoraService
from guardrail.service.engine import Engine
from guardrail.telemetry import Telemetry
from tests.api.conftest import Api
from tests.api.helpers import marker

C = 1_700_100_000.0  # wall time the scenario starts at
COMMIT = 1_699_999_200.0  # helpers.marker()'s commit_time, 2023-11-14T22:00:00Z
DAY = 86400.0
STEPS = [{"weight": 10, "min_duration_s": 0}, {"weight": 50, "min_duration_s": 0}, {"weight": 100}]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def dora(
    aiohttp_client: Any, tmp_path: Path, migrated_db: Path, settings: Settings
) -> AsyncIterator[Any]:
    path = tmp_path / "guardrail.db"
    shutil.copyfile(migrated_db, path)
    clock = Clock(C)
    store = SqlStore(f"sqlite+aiosqlite:///{path}", clock=clock)
    telemetry = Telemetry()
    engine = Engine(
        store=store, settings=settings, adapter_factory=load_deploy_adapter, telemetry=telemetry, clock=clock
    )
    app = create_app(engine=engine, settings=settings, telemetry=telemetry)
    app[DORA] = DoraService(store=store, settings=settings, telemetry=telemetry, clock=clock)
    client = await aiohttp_client(app)
    api = Api(client, engine, store, settings)
    yield api, clock, telemetry, app[DORA]
    await engine.close()
    await store.close()


async def promote(api: Api, deploy_id: str) -> None:
    status, out = await api.call(
        "POST",
        f"/api/v1/deploys/{deploy_id}/promote",
        as_="operator",
        json={"reason": "ship it", "full": True},
    )
    assert status == 200, out
    assert (await api.settled(deploy_id))["state"] == "promoted"


def page(status: AlertState, at_: float) -> ExternalAlert:
    labels = {
        "alertname": "CheckoutErrors",
        "service": "checkout",
        "environment": "production",
        "severity": "page",
    }
    return ExternalAlert("c0ffee", status, labels, {"summary": "5xx up"}, starts_at=at_)


async def scenario(api: Api, clock: Clock) -> None:
    """a: promoted (lead C+600 - COMMIT); b: rolled back by hand; c: promoted then paged within the
    watch, resolved 600 s later; d: promoted, no commit time; e: still analysing; s: another service
    (no commit time)."""
    clock.now = C
    a = await api.mark(marker(steps=STEPS))
    clock.now = C + 600
    await promote(api, a["id"])

    clock.now = C + 1000
    b = await api.mark(marker(steps=STEPS, version="v2.4.2"))
    clock.now = C + 1300
    status, out = await api.call(
        "POST", f"/api/v1/deploys/{b['id']}/rollback", as_="operator", json={"reason": "checkout looks off"}
    )
    assert status == 200, out
    assert (await api.settled(b["id"]))["state"] == "rolled_back"

    clock.now = C + 10_000
    c = await api.mark(marker(steps=STEPS, version="v2.4.3"))
    clock.now = C + 10_100
    await promote(api, c["id"])
    clock.now = C + 10_400
    assert await api.engine.external_alerts([page(AlertState.FIRING, C + 10_390)]) == 1
    clock.now = C + 11_000
    assert await api.engine.external_alerts([page(AlertState.RESOLVED, C + 10_390)]) == 1

    clock.now = C + 20_000
    body = marker(steps=STEPS, version="v2.4.4")
    del body["commit_time"]
    d = await api.mark(body)
    clock.now = C + 20_100
    await promote(api, d["id"])

    clock.now = C + 30_000
    await api.mark(marker(steps=STEPS, version="v2.4.5"))  # e: analysing
    body = marker(steps=STEPS, service="search")
    del body["commit_time"]
    s = await api.mark(body)
    await promote(api, s["id"])


def group(out: dict[str, Any], service: str) -> dict[str, Any]:
    (g,) = [g for g in out["groups"] if g["service"] == service]
    return g


async def test_dora_report_gives_the_hand_computed_figures(dora: Any) -> None:
    api, clock, _, _ = dora
    await scenario(api, clock)
    status, out = await api.call("GET", f"/api/v1/dora?since={C:.0f}&until={C + DAY:.0f}")
    assert status == 200, out
    assert (out["since"], out["until"], out["watch_s"], out["time"]) == (C, C + DAY, 1800.0, "wall")
    g = group(out, "checkout")
    assert g["environment"] == "production"
    assert g["finished"] == 4  # e is still analysing
    assert g["results"] == {
        "promoted": 2,
        "rolled_back": 1,
        "rollback_failed": 0,
        "failed_after_promotion": 1,
    }
    assert g["deployments"] == 3 and g["deployment_frequency_per_day"] == pytest.approx(3.0)
    # lead times: a 101_400 s, c 110_900 s (d has no commit time)
    assert g["lead_time_median_s"] == pytest.approx(106_150)
    assert g["lead_time_p90_s"] == pytest.approx(101_400 + 0.9 * 9_500)
    assert (g["lead_time_measured"], g["lead_time_excluded_no_commit_time"]) == (2, 1)
    assert g["failed"] == 2
    assert g["change_failure_rate"] == pytest.approx(0.5)
    assert g["rollback_rate"] == pytest.approx(0.25)
    # recovery: b 0 s (the rollback finished as it started), c 600 s (firing at +10_400, resolved at +11_000)
    assert g["recovery_median_s"] == pytest.approx(300)
    assert [(f["version"], f["result"], f["recovery_s"]) for f in g["failures"]] == [
        ("v2.4.2", "rolled_back", 0.0),
        ("v2.4.3", "failed_after_promotion", 600.0),
    ]


async def test_dora_report_filters_by_service_and_environment(dora: Any) -> None:
    api, clock, _, _ = dora
    await scenario(api, clock)
    _, everything = await api.call("GET", f"/api/v1/dora?since={C:.0f}&until={C + DAY:.0f}")
    assert [(g["service"], g["environment"]) for g in everything["groups"]] == [
        ("checkout", "production"),
        ("search", "production"),
    ]
    _, out = await api.call("GET", f"/api/v1/dora?service=search&since={C:.0f}&until={C + DAY:.0f}")
    assert [g["service"] for g in out["groups"]] == ["search"]
    _, none = await api.call("GET", f"/api/v1/dora?environment=staging&since={C:.0f}&until={C + DAY:.0f}")
    assert none["groups"] == []


async def test_the_default_window_is_the_trailing_window_days_up_to_now(dora: Any) -> None:
    api, clock, _, _ = dora
    await scenario(api, clock)
    clock.now = C + 31 * DAY  # everything was recorded more than 30 days ago
    _, out = await api.call("GET", "/api/v1/dora")
    assert (out["since"], out["until"]) == (C + DAY, C + 31 * DAY)
    assert out["groups"] == []
    clock.now = C + 29 * DAY
    _, out = await api.call("GET", "/api/v1/dora")
    assert group(out, "checkout")["finished"] == 4


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=yesterday", "since"),
        ("until=2024-05-01T12:00:00", "until"),  # no UTC offset
        (f"since={C + 10:.0f}&until={C:.0f}", "until"),
        ("limit=5", "limit"),
        ("service=", "service"),
    ],
)
async def test_a_bad_query_is_400_naming_the_field(dora: Any, query: str, field: str) -> None:
    api = dora[0]
    status, out = await api.call("GET", f"/api/v1/dora?{query}")
    assert status == 400, out
    assert out["field"] == field


async def test_dora_needs_a_read_token(dora: Any) -> None:
    status, _ = await dora[0].call("GET", "/api/v1/dora", as_=None)
    assert status == 401


async def test_without_a_dora_service_the_route_is_503(api: Api) -> None:
    status, out = await api.call("GET", "/api/v1/dora")
    assert status == 503 and out["error"] == "not_ready"


def metric(telemetry: Telemetry, name: str, **labels: str) -> float | None:
    return telemetry.registry.get_sample_value(name, labels)


async def test_refresh_sets_the_gauges_and_drops_groups_gone_from_the_window(dora: Any) -> None:
    api, clock, telemetry, service = dora
    await scenario(api, clock)
    clock.now = C + DAY
    await service.refresh()
    ck = {"service": "checkout", "environment": "production"}
    assert metric(telemetry, "guardrail_dora_change_failure_rate", **ck) == pytest.approx(0.5)
    assert metric(telemetry, "guardrail_dora_rollback_rate", **ck) == pytest.approx(0.25)
    assert metric(telemetry, "guardrail_dora_lead_time_seconds", **ck) == pytest.approx(106_150)
    assert metric(telemetry, "guardrail_dora_recovery_time_seconds", **ck) == pytest.approx(300)
    assert metric(telemetry, "guardrail_dora_deployment_frequency_per_day", **ck) == pytest.approx(3 / 30)
    assert metric(telemetry, "guardrail_dora_deployments", **ck, result="failed_after_promotion") == 1
    assert metric(telemetry, "guardrail_dora_deployments", **ck, result="rollback_failed") == 0
    sr = {"service": "search", "environment": "production"}
    assert (
        metric(telemetry, "guardrail_dora_lead_time_seconds", **sr) is None
    )  # no commit time: no data, not 0
    status, text = await api.call("GET", "/metrics", as_=None)
    assert (
        status == 200
        and 'guardrail_dora_change_failure_rate{environment="production",service="checkout"} 0.5' in text
    )

    clock.now = C + 40 * DAY  # the window no longer holds any of them
    await service.refresh()
    assert metric(telemetry, "guardrail_dora_change_failure_rate", **ck) is None
    assert metric(telemetry, "guardrail_dora_deployments", **ck, result="promoted") is None
    assert b"guardrail_dora_deployments{" not in generate_latest(telemetry.registry)
