"""The LLM drafter as the composition root wires it: with ``llm.enabled`` the automatic post-mortem
after a rollback is written by the (local, OpenAI-compatible) model from the deploy's redacted
facts; a request can still ask for the offline templates; a broken model falls back with a note."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from guardrail.adapters.db import SqlStore
from guardrail.adapters.http import create_app
from guardrail.domain.drafts import DOCS, DraftKind
from guardrail.domain.errors import ConfigError
from guardrail.main import build_drafts
from guardrail.plugins import load_deploy_adapter
from guardrail.service.engine import Engine
from guardrail.telemetry import Telemetry
from tests.api.conftest import TOKENS, Api, make_settings
from tests.api.helpers import marker
from tests.api.test_rollout import STEPS, drive
from tests.drafts_llm.fake_openai import FakeOpenAI, Reply

GOOD = "# Post-mortem: checkout v2.4.1\n\n" + "\n\n".join(
    f"## {s}\n\nWritten by the model from the facts." for s in DOCS[DraftKind.POSTMORTEM].sections
)


async def _api(aiohttp_client: Any, store: SqlStore, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    server = TestServer(fake.app())
    await server.start_server()
    monkeypatch.setenv("GUARDRAIL_TEST_LLM_KEY", "sk-local-test-key")
    settings = make_settings(llm={
        "enabled": True, "base_url": str(server.make_url("/v1")), "model": "local-model",
        "api_key_env": "GUARDRAIL_TEST_LLM_KEY", "timeout_s": 5, "max_retries": 0,
    })
    telemetry = Telemetry()
    engine = Engine(store=store, settings=settings, adapter_factory=load_deploy_adapter, telemetry=telemetry)
    drafts = build_drafts(settings, store)
    engine.on_finished.append(drafts.on_finished)
    client = await aiohttp_client(create_app(engine=engine, settings=settings, telemetry=telemetry, drafts=drafts))
    return Api(client, engine, store, settings), drafts, server


async def test_the_automatic_post_mortem_comes_from_the_model_with_redacted_facts(
    aiohttp_client: Any, store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeOpenAI(Reply(GOOD))
    api, drafts, server = await _api(aiohttp_client, store, fake, monkeypatch)
    try:
        d = await api.mark(marker(steps=STEPS, description="retry payments; token=hunter2-secret-value"))
        assert (await drive(api, d, canary_error_rate=0.05))[-1]["state"] == "rolled_back"
        await drafts.drain()
        _, pm = await api.call("GET", f"/api/v1/deploys/{d['id']}/drafts/postmortem")
        assert pm["source"] == "llm:local-model" and pm["note"] == "" and pm["markdown"].startswith("# Post-mortem")
        (sent,) = fake.received
        assert sent.body["model"] == "local-model"
        assert d["id"] in sent.raw and "v2.4.1" in sent.raw and "error_rate" in sent.raw
        assert "hunter2-secret-value" not in sent.raw
        assert all(token not in sent.raw for _, token in TOKENS.values())
        assert sent.headers["Authorization"] == "Bearer sk-local-test-key"
        # offline on request, whatever is configured
        status, off = await api.call(
            "POST", f"/api/v1/deploys/{d['id']}/drafts/postmortem", as_="operator", json={"llm": False}
        )
        assert status == 201 and off["source"] == "offline" and off["version"] == 2
        assert len(fake.received) == 1
    finally:
        await drafts.close()
        await api.engine.close()
        await server.close()


async def test_a_model_answer_that_fails_the_check_is_replaced_by_the_offline_draft(
    aiohttp_client: Any, store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeOpenAI(Reply("# Post-mortem\n\n## Summary\n\n97.3% of users were affected."))
    api, drafts, server = await _api(aiohttp_client, store, fake, monkeypatch)
    try:
        d = await api.mark(marker(steps=STEPS))
        status, out = await api.call("POST", f"/api/v1/deploys/{d['id']}/drafts/triage", as_="operator")
        assert status == 201 and out["source"] == "offline"
        assert "LLM answer not used" in out["note"]
        assert [line[3:] for line in out["markdown"].splitlines() if line.startswith("## ")] == list(
            DOCS[DraftKind.TRIAGE].sections
        )
    finally:
        await drafts.close()
        await api.engine.close()
        await server.close()


def test_an_enabled_llm_without_its_key_fails_at_start_up_naming_the_variable(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GUARDRAIL_TEST_LLM_MISSING", raising=False)
    settings = make_settings(llm={"enabled": True, "api_key_env": "GUARDRAIL_TEST_LLM_MISSING"})
    with pytest.raises(ConfigError, match="GUARDRAIL_TEST_LLM_MISSING"):
        build_drafts(settings, store)
