"""The LLM drafter against a local OpenAI-compatible server that records what it receives: a good
answer is used, anything else falls back to the offline rendering with a note saying why, and what
is sent holds the facts and the instructions but no secret."""

from __future__ import annotations

import copy
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from guardrail.adapters.drafts.offline import OfflineDrafter
from guardrail.adapters.llm import OpenAIDrafter, configured_secrets, fit_facts, strip_fence
from guardrail.config import LLMConfig, Settings
from guardrail.domain.drafts import DraftKind
from guardrail.domain.drafts.check import check_answer
from guardrail.domain.drafts.facts import build_facts
from guardrail.domain.drafts.kinds import instructions
from guardrail.domain.errors import ConfigError
from tests.drafts.record import load
from tests.drafts_llm.fake_openai import FakeOpenAI, Reply

API_KEY = "sk-test-9f8e7d6c5b4a"
API_TOKEN = "gr-ci-token-4c1d9a0e77b2"  # a guardrail API token configured for CI
BEARER = "Bearer abc123def456ghi789jkl"
AUTHOR = "Quentin Oddname"
MODEL = "test-model-7b"

GOOD = """# Deploy completion update: checkout 1.4.3

## Result
checkout 1.4.3 was rolled back to 1.4.2 automatically, 30 s after it first received traffic.

## Measured
- Error rate: 1.09% on 1.4.3 against 0.229% on 1.4.2 (ratio 4.74), over 1,289 requests.
- p99 latency: 290 ms against 318 ms.

## Next
A post-mortem follows; [owner] to decide when to retry 1.4.3.
"""
MISSING_SECTION = GOOD.replace("## Measured\n", "")
INVENTED = GOOD.replace("ratio 4.74", "ratio 4.74, 7.3% of users affected")


@pytest.fixture(scope="module")
def facts() -> dict[str, Any]:
    """The recorded rolled-back deploy's facts, with secrets planted where a marker could put them."""
    deploy, events, actions, samples = load("rolled_back")
    f = build_facts(deploy, events, actions, samples, public_url="http://127.0.0.1:8080")
    f["deploy"]["description"] = f"Retry card authorisation; smoke test used Authorization: {BEARER}"
    f["deploy"]["changes"] = [*f["deploy"]["changes"], f"CI called the API with {API_TOKEN}"]
    f["deploy"]["author"] = AUTHOR
    return f


def _config(**kw: Any) -> LLMConfig:
    base = {"enabled": True, "model": MODEL, "timeout_s": 5, "max_retries": 0, "redact_fields": ["author"]}
    return LLMConfig(**{**base, **kw})


Start = Callable[..., Any]


@pytest.fixture
async def start(aiohttp_server: Any) -> AsyncIterator[Start]:
    """start(*replies, **config) -> (drafter, fake server): the drafter talks to a fresh fake."""
    drafters: list[OpenAIDrafter] = []

    async def go(*replies: Reply, deadline_s: float | None = None, **config: Any) -> tuple[OpenAIDrafter, FakeOpenAI]:
        fake = FakeOpenAI(*replies)
        server = await aiohttp_server(fake.app())
        drafter = OpenAIDrafter(
            _config(base_url=str(server.make_url("/v1")), **config),
            api_key=API_KEY,
            fallback=OfflineDrafter(),
            secret_values=[API_TOKEN],
            deadline_s=deadline_s,
        )
        drafters.append(drafter)
        return drafter, fake

    yield go
    for d in drafters:
        await d.close()


def _offline(facts: dict[str, Any], kind: DraftKind = DraftKind.COMPLETION) -> str:
    return OfflineDrafter().render(kind, facts)


# --- answers ---------------------------------------------------------------------------------------


def test_the_scripted_answers_are_what_the_cases_claim(facts: dict[str, Any]):
    """Guards the cases below: the good answer passes the check, the two bad ones fail it."""
    assert check_answer(DraftKind.COMPLETION, GOOD, facts) == []
    assert check_answer(DraftKind.COMPLETION, MISSING_SECTION, facts) == ["missing section 'Measured'"]
    assert check_answer(DraftKind.COMPLETION, INVENTED, facts) == ["figure '7.3%' does not appear in the facts"]


async def test_a_good_answer_is_used_with_the_model_as_source(start: Start, facts: dict[str, Any]):
    drafter, fake = await start(Reply(f"```markdown\n{GOOD}```\n"))
    text = await drafter.draft(DraftKind.COMPLETION, facts)
    assert (text.source, text.note) == (f"llm:{MODEL}", "")
    assert text.markdown == GOOD  # the ```markdown fence is stripped
    assert len(fake.received) == 1


async def test_an_answer_missing_a_section_falls_back_with_a_note(start: Start, facts: dict[str, Any]):
    drafter, _ = await start(Reply(MISSING_SECTION))
    text = await drafter.draft(DraftKind.COMPLETION, facts)
    assert text.source == "offline"
    assert text.markdown == _offline(facts)
    assert text.note == "LLM answer not used: missing section 'Measured'; offline rendering"


async def test_an_answer_with_an_invented_figure_falls_back(start: Start, facts: dict[str, Any]):
    drafter, _ = await start(Reply(INVENTED))
    text = await drafter.draft(DraftKind.COMPLETION, facts)
    assert text.source == "offline"
    assert "figure '7.3%' does not appear in the facts" in text.note


@pytest.mark.parametrize("content", [None, "", "   \n"])
async def test_an_empty_answer_falls_back(start: Start, facts: dict[str, Any], content: str | None):
    drafter, _ = await start(Reply(content))
    text = await drafter.draft(DraftKind.COMPLETION, facts)
    assert (text.source, text.note) == ("offline", "LLM answer not used: it was empty; offline rendering")


async def test_an_answer_cut_off_at_the_length_limit_falls_back(start: Start, facts: dict[str, Any]):
    drafter, _ = await start(Reply(GOOD, finish_reason="length"))
    text = await drafter.draft(DraftKind.COMPLETION, facts)
    assert text.source == "offline"
    assert "cut off" in text.note


# --- provider trouble ------------------------------------------------------------------------------


async def test_a_slow_answer_falls_back_after_about_timeout_s(start: Start, facts: dict[str, Any]):
    drafter, _ = await start(Reply(GOOD, delay_s=5), timeout_s=0.5)
    began = time.monotonic()
    text = await drafter.draft(DraftKind.COMPLETION, facts)
    took = time.monotonic() - began
    assert text.source == "offline"
    assert text.note == "LLM did not answer within 0.5 s; offline rendering"
    assert 0.4 <= took < 2.0


@pytest.mark.parametrize("status", [500, 429])
async def test_an_http_error_falls_back_naming_the_status(start: Start, facts: dict[str, Any], status: int):
    drafter, fake = await start(Reply(status=status))
    text = await drafter.draft(DraftKind.COMPLETION, facts)
    assert (text.source, text.note) == ("offline", f"LLM answered HTTP {status}; offline rendering")
    assert len(fake.received) == 1  # max_retries=0


async def test_with_one_retry_a_500_is_retried_and_the_second_answer_used(start: Start, facts: dict[str, Any]):
    drafter, fake = await start(Reply(status=500), Reply(GOOD), max_retries=1)
    text = await drafter.draft(DraftKind.COMPLETION, facts)
    assert len(fake.received) == 2
    assert text.source == f"llm:{MODEL}"


async def test_the_overall_deadline_cuts_a_long_retry_after(start: Start, facts: dict[str, Any]):
    """A 429 asking to retry after 30 s: the client would wait, the deadline does not."""
    drafter, fake = await start(Reply(status=429, headers={"Retry-After": "30"}), max_retries=1, deadline_s=1.0)
    began = time.monotonic()
    text = await drafter.draft(DraftKind.COMPLETION, facts)
    assert time.monotonic() - began < 3.0
    assert text.note == "LLM gave no answer within the deadline of 1 s; offline rendering"
    assert len(fake.received) == 1


async def test_a_refused_connection_falls_back(facts: dict[str, Any]):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    drafter = OpenAIDrafter(
        _config(base_url=f"http://127.0.0.1:{port}/v1"), api_key=API_KEY, fallback=OfflineDrafter()
    )
    try:
        text = await drafter.draft(DraftKind.COMPLETION, facts)
    finally:
        await drafter.close()
    assert (text.source, text.note) == ("offline", "LLM could not be reached; offline rendering")


# --- what is sent ----------------------------------------------------------------------------------


async def test_the_request_holds_instructions_and_facts_but_no_secret(start: Start, facts: dict[str, Any]):
    drafter, fake = await start(Reply(GOOD))
    await drafter.draft(DraftKind.COMPLETION, facts)
    [req] = fake.received
    assert req.body["model"] == MODEL
    assert req.body["temperature"] == 0
    assert [m["role"] for m in req.body["messages"]] == ["system", "user"]
    user = req.user_message
    assert instructions(DraftKind.COMPLETION) in user
    sent = json.loads(user.split("```json\n", 1)[1].rsplit("\n```", 1)[0])
    assert sent["deploy"]["service"] == "checkout"
    assert sent["deploy"]["version"] == "1.4.3"
    assert sent["verdict"]["metrics"][0]["canary_value"] == 1.09
    assert sent["deploy"]["author"] == "[redacted]"
    assert "Authorization: Bearer [redacted]" in sent["deploy"]["description"]
    for secret in ("abc123def456ghi789jkl", API_TOKEN, API_KEY, AUTHOR):
        assert secret not in req.raw
    assert req.headers["Authorization"] == f"Bearer {API_KEY}"  # the key goes in the header only


async def test_logs_name_the_kind_and_model_but_no_fact_or_key(
    start: Start, facts: dict[str, Any], caplog: pytest.LogCaptureFixture
):
    drafter, _ = await start(Reply(GOOD), Reply(MISSING_SECTION))
    with caplog.at_level(logging.DEBUG, logger="guardrail.llm"):
        await drafter.draft(DraftKind.COMPLETION, facts)
        await drafter.draft(DraftKind.COMPLETION, facts)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name == "guardrail.llm")
    assert f"drafted completion with {MODEL}" in ours
    assert "fell back to offline" in ours
    for leaked in (API_KEY, API_TOKEN, "abc123def456ghi789jkl", AUTHOR, "Retry card authorisation"):
        assert leaked not in caplog.text


async def test_large_facts_are_thinned_to_max_facts_chars(start: Start, facts: dict[str, Any]):
    big = copy.deepcopy(facts)
    big["timeline"] = [*big["timeline"], *({"offset_s": i, "what": f"filler event {i}"} for i in range(400))]
    drafter, fake = await start(Reply(GOOD), max_facts_chars=14_000)
    text = await drafter.draft(DraftKind.COMPLETION, big)
    [req] = fake.received
    sent_json = req.user_message.split("```json\n", 1)[1].rsplit("\n```", 1)[0]
    sent = json.loads(sent_json)
    assert len(json.dumps(sent, separators=(",", ":"))) <= 14_000
    assert any(isinstance(e, str) and e.endswith("entries left out]") for e in sent["timeline"])
    assert text.source == f"llm:{MODEL}"


async def test_facts_that_cannot_fit_are_not_sent(start: Start, facts: dict[str, Any]):
    drafter, fake = await start(Reply(GOOD), max_facts_chars=1000)
    text = await drafter.draft(DraftKind.COMPLETION, facts)
    assert fake.received == []
    assert text.source == "offline"
    assert text.note.startswith("LLM not asked: the facts do not fit llm.max_facts_chars (1000 characters)")


async def test_close_closes_the_client(start: Start):
    drafter, _ = await start()
    await drafter.close()
    assert drafter._client.is_closed()


# --- construction ----------------------------------------------------------------------------------


def test_from_settings_reads_the_key_from_the_named_variable_and_keeps_tokens_secret():
    settings = Settings.model_validate({
        "tokens": [{"name": "ci", "token": API_TOKEN, "scopes": ["ci"]}],
        "llm": {"enabled": True, "base_url": "http://127.0.0.1:9/v1", "api_key_env": "MY_LLM_KEY"},
    })
    drafter = OpenAIDrafter.from_settings(settings, fallback=OfflineDrafter(), env={"MY_LLM_KEY": API_KEY})
    assert drafter.config.model == "gpt-4o-mini"
    assert API_TOKEN in configured_secrets(settings)
    with pytest.raises(ConfigError, match="MY_LLM_KEY") as e:
        OpenAIDrafter.from_settings(settings, fallback=OfflineDrafter(), env={})
    assert e.value.field == "llm.api_key_env"


def test_configured_secrets_take_notifier_secrets_but_not_their_plain_settings():
    settings = Settings.model_validate({
        "notifications": {"notifiers": {"pd": {"type": "pagerduty", "config": {"routing_key": "R0UT1NGKEY123"}}}},
    })
    assert "R0UT1NGKEY123" in configured_secrets(settings)


def test_strip_fence_takes_off_a_markdown_fence_only_around_the_whole_answer():
    assert strip_fence("```markdown\n# T\n```") == "# T"
    assert strip_fence("```md\n# T\n\n## A\n```\n") == "# T\n\n## A"
    assert strip_fence("```\n# T\n```") == "# T"
    inner = "# T\n\n```sql\nSELECT 1;\n```\n"
    assert strip_fence(inner) == inner


def test_fit_facts_leaves_small_facts_alone():
    small = {"a": [1, 2, 3, 4, 5], "b": "x"}
    assert fit_facts(small, 1000) == (small, True)
