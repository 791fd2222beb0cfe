"""Drafts over the API: a rolled-back deploy gets its post-mortem drafted automatically and linked
from the timeline; any kind can be drafted on request, is stored as a new version and read back as
JSON or Markdown; bad kinds, unknown deploys, missing scopes and an unconfigured LLM are named."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from guardrail.adapters.db import SqlStore
from guardrail.adapters.drafts.offline import OfflineDrafter
from guardrail.adapters.http import create_app
from guardrail.config import Settings
from guardrail.domain.drafts import DOCS, DraftKind
from guardrail.plugins import load_deploy_adapter
from guardrail.service.drafts import DraftService
from guardrail.service.engine import Engine
from guardrail.telemetry import Telemetry
from tests.api.conftest import PUBLIC_URL, Api, auth
from tests.api.helpers import marker
from tests.api.pagedom import parse
from tests.api.test_rollout import STEPS, drive


@pytest.fixture
async def dapi(
    aiohttp_client: Any, store: SqlStore, settings: Settings
) -> AsyncIterator[tuple[Api, DraftService]]:
    telemetry = Telemetry()
    engine = Engine(store=store, settings=settings, adapter_factory=load_deploy_adapter, telemetry=telemetry)
    drafts = DraftService(store=store, offline=OfflineDrafter(), public_url=PUBLIC_URL)
    engine.on_finished.append(drafts.on_finished)
    app = create_app(engine=engine, settings=settings, telemetry=telemetry, drafts=drafts)
    client = await aiohttp_client(app)
    yield Api(client, engine, store, settings), drafts
    await drafts.close()
    await engine.close()


def _sections(markdown: str) -> list[str]:
    return [line[3:].strip() for line in markdown.splitlines() if line.startswith("## ")]


async def test_a_rollback_drafts_the_post_mortem_and_links_it_from_the_timeline(dapi) -> None:  # type: ignore[no-untyped-def]
    api, drafts = dapi
    d = await api.mark(marker(steps=STEPS))
    assert (await drive(api, d, canary_error_rate=0.05))[-1]["state"] == "rolled_back"
    await drafts.drain()
    status, listed = await api.call("GET", f"/api/v1/deploys/{d['id']}/drafts")
    assert status == 200
    assert [(x["kind"], x["version"], x["trigger"]) for x in listed["drafts"]] == [
        ("postmortem", 1, "rollback")
    ]
    _, events = await api.call("GET", f"/api/v1/deploys/{d['id']}/events")
    notes = [e for e in events["events"] if e["kind"] == "note" and "post-mortem drafted" in e["message"]]
    assert len(notes) == 1 and notes[0]["details"]["draft"]["url"] == listed["drafts"][0]["url"]
    status, pm = await api.call("GET", f"/api/v1/deploys/{d['id']}/drafts/postmortem")
    assert status == 200 and pm["source"] == "offline"
    assert _sections(pm["markdown"])[: len(DOCS[DraftKind.POSTMORTEM].sections)] == list(
        DOCS[DraftKind.POSTMORTEM].sections
    )
    assert "v2.4.1" in pm["markdown"] and "error" in pm["markdown"].lower()


async def test_a_promoted_deploy_gets_no_automatic_post_mortem(dapi) -> None:  # type: ignore[no-untyped-def]
    api, drafts = dapi
    d = await api.mark(marker(steps=STEPS))
    assert (await drive(api, d))[-1]["state"] == "promoted"
    await drafts.drain()
    _, listed = await api.call("GET", f"/api/v1/deploys/{d['id']}/drafts")
    assert listed["drafts"] == []


@pytest.mark.parametrize("kind", [k.value for k in DraftKind])
async def test_every_kind_is_drafted_on_request_with_its_sections(dapi, kind: str) -> None:  # type: ignore[no-untyped-def]
    api, _ = dapi
    d = await api.mark(
        marker(steps=STEPS, db_migrations={"applied": True, "description": "add users.created_at"})
    )
    status, out = await api.call("POST", f"/api/v1/deploys/{d['id']}/drafts/{kind}", as_="operator")
    assert status == 201, out
    assert out["kind"] == kind and out["version"] == 1 and out["trigger"] == "request"
    sections = _sections(out["markdown"])
    expected = list(DOCS[DraftKind(kind)].sections)
    assert [s for s in sections if s in expected] == expected


async def test_each_request_stores_a_new_version_and_old_ones_stay_readable(dapi) -> None:  # type: ignore[no-untyped-def]
    api, _ = dapi
    d = await api.mark(marker(steps=STEPS))
    path = f"/api/v1/deploys/{d['id']}/drafts/rollback-plan"
    _, first = await api.call("POST", path, as_="operator", json={"llm": False})
    _, second = await api.call("POST", path, as_="operator")
    assert (first["version"], second["version"]) == (1, 2)
    _, latest = await api.call("GET", path)
    _, old = await api.call("GET", path, params={"version": "1"})
    assert latest["version"] == 2 and old["version"] == 1 and old["markdown"] == first["markdown"]
    resp = await api.client.get(path, headers={**auth("read"), "Accept": "text/markdown"})
    assert resp.status == 200 and resp.content_type == "text/markdown"
    assert (await resp.text()).startswith("# ")
    status, text = await api.call("GET", path, params={"format": "markdown"})
    assert status == 200 and text == second["markdown"]


async def test_bad_requests_name_what_is_wrong(dapi) -> None:  # type: ignore[no-untyped-def]
    api, _ = dapi
    d = await api.mark(marker(steps=STEPS))
    status, out = await api.call("POST", f"/api/v1/deploys/{d['id']}/drafts/essay", as_="operator")
    assert status == 400 and out["field"] == "kind" and "postmortem" in out["detail"]
    status, out = await api.call("POST", "/api/v1/deploys/nope/drafts/postmortem", as_="operator")
    assert status == 404
    status, out = await api.call("GET", f"/api/v1/deploys/{d['id']}/drafts/triage")
    assert status == 404 and "POST" in out["detail"]
    status, out = await api.call("POST", f"/api/v1/deploys/{d['id']}/drafts/triage", as_="read")
    assert status == 403
    status, out = await api.call(
        "POST", f"/api/v1/deploys/{d['id']}/drafts/triage", as_="operator", json={"llm": True}
    )
    assert status == 400 and out["field"] == "llm"
    status, out = await api.call(
        "POST", f"/api/v1/deploys/{d['id']}/drafts/triage", as_="operator", json={"llm": "yes"}
    )
    assert status == 400 and out["field"] == "llm"
    _, listed = await api.call("GET", f"/api/v1/deploys/{d['id']}/drafts")
    assert listed["drafts"] == []  # nothing stored by the refused requests


async def test_without_a_drafting_service_the_routes_say_so(api: Api) -> None:
    d = await api.mark(marker(steps=STEPS))
    status, out = await api.call("GET", f"/api/v1/deploys/{d['id']}/drafts")
    assert status == 503 and "drafting" in out["detail"]


async def test_the_deploy_pages_timeline_links_the_automatic_post_mortem_to_its_rendered_page(dapi) -> None:  # type: ignore[no-untyped-def]
    api, drafts = dapi
    d = await api.mark(marker(steps=STEPS))
    assert (await drive(api, d, canary_error_rate=0.05))[-1]["state"] == "rolled_back"
    await drafts.drain()
    page = parse(await (await api.client.get(f"/deploys/{d['id']}")).text())
    notes = [li for li in page.one("ol", id="timeline").children if "post-mortem drafted" in li.text]
    assert len(notes) == 1
    href = notes[0].one("a", cls="draft").attrs["href"]
    assert href == f"/deploys/{d['id']}/drafts/postmortem?version=1"
    resp = await api.client.get(href)
    assert resp.status == 200 and resp.content_type == "text/html"
