"""Contract of the Notifier port: all four notifiers pass the same suite against fake servers on
loopback that speak the documented formats (Alertmanager API v2, PagerDuty Events v2, Slack
incoming webhooks, a generic webhook), check what they receive like the real ones would, and record
it. Then what is specific to each notifier."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from guardrail.adapters.notify import NOTIFIERS, load_notifier, parse_notifier_config
from guardrail.adapters.notify.alertmanager import AlertmanagerNotifier
from guardrail.adapters.notify.pagerduty import PagerDutyNotifier, dedup_key
from guardrail.adapters.notify.slack import SlackNotifier
from guardrail.adapters.notify.webhook import SIGNATURE_HEADER, WebhookNotifier, verify
from guardrail.domain.errors import ConfigError
from guardrail.domain.notifications import Link, Notice, NoticeAction, Severity, incident_key
from guardrail.plugins import known_plugins
from guardrail.ports import Notifier, NotifyResult
from guardrail.secrets import redact_config
from guardrail.service.notify import DELIVERY_ID

ROUTING_KEY = "R0ut1ngKey0123456789abcdefABCDEF"  # PagerDuty integration key (32 characters)
SLACK_TOKEN = "xoxSLACKt0kenZZ9q8w7e6r5t4y"  # the secret part of a Slack webhook URL
HMAC_KEY = "hmac-key-77aa1b"
BEARER = "s3cr3t-Bearer-9f2c"
T_OPEN = 1_714_557_600.0  # 2024-05-01T10:00:00Z


def notice(action: NoticeAction = NoticeAction.TRIGGER, **changes: Any) -> Notice:
    values: dict[str, Any] = {
        "key": incident_key("checkout", "production", "dep-42", "CanaryRegression"),
        "action": action,
        "severity": Severity.PAGE,
        "summary": "Canary 5xx 4.7% (baseline 0.1%) - rolled back",
        "service": "checkout",
        "environment": "production",
        "deploy_id": "dep-42",
        "rule": "CanaryRegression",
        "details": {"error_ratio": 0.047, "ci_high": float("inf"), "runbook_url": "https://runbooks/canary"},
        "links": (
            Link("https://grafana/d/guardrail-canary", "Dashboard"),
            Link("http://guardrail/deploys/dep-42", "Deploy"),
        ),
        "text": "canary 5xx 4.7% vs baseline 0.1% over 3 windows <b>",
        "occurred_at": T_OPEN,
    }
    values.update(changes)
    return Notice(**values)


def parse_time(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


# --- the fake servers --------------------------------------------------------------------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Invalid(Exception):
    """The request breaks the documented format: the fake answers 400 like the real server."""


def _check_alerts(doc: Any) -> None:
    if not isinstance(doc, list) or not doc:
        raise Invalid("body must be a non-empty array of alerts")
    for a in doc:
        labels = a.get("labels")
        if not isinstance(labels, dict) or not labels or not all(isinstance(v, str) for v in labels.values()):
            raise Invalid("labels required, string values")
        if not all(isinstance(v, str) for v in a.get("annotations", {}).values()):
            raise Invalid("annotations must be strings")
        starts = parse_time(a["startsAt"]) if "startsAt" in a else None
        ends = parse_time(a["endsAt"]) if "endsAt" in a else None
        if starts is not None and ends is not None and ends < starts:
            raise Invalid("start time must be before end time")
        if "generatorURL" in a and not a["generatorURL"].startswith(("http://", "https://")):
            raise Invalid("generatorURL must be a URI")


def _check_pagerduty_event(doc: Any) -> None:
    if not isinstance(doc.get("routing_key"), str) or not doc["routing_key"]:
        raise Invalid("routing_key required")
    if doc.get("event_action") not in ("trigger", "acknowledge", "resolve"):
        raise Invalid("event_action must be trigger, acknowledge or resolve")
    if doc["event_action"] != "trigger":
        if not doc.get("dedup_key"):
            raise Invalid("dedup_key required to acknowledge or resolve")
        return
    if len(doc.get("dedup_key", "")) > 255:
        raise Invalid("dedup_key longer than 255")
    p = doc.get("payload")
    if not isinstance(p, dict) or not p.get("summary") or not p.get("source"):
        raise Invalid("payload.summary and payload.source required")
    if len(p["summary"]) > 1024:
        raise Invalid("summary longer than 1024")
    if p.get("severity") not in ("critical", "error", "warning", "info"):
        raise Invalid("payload.severity must be critical, error, warning or info")
    parse_time(p["timestamp"])
    for link in doc.get("links", []):
        if set(link) != {"href", "text"}:
            raise Invalid("links are {href, text}")


def _check_change_event(doc: Any) -> None:
    if not doc.get("routing_key") or not doc.get("payload", {}).get("summary"):
        raise Invalid("routing_key and payload.summary required")
    parse_time(doc["payload"]["timestamp"])


def _check_slack(doc: Any) -> None:
    if not isinstance(doc, dict) or not (doc.get("text") or doc.get("blocks")):
        raise Invalid("no_text")
    for b in doc.get("blocks", []):
        if b["type"] == "section":
            if "text" in b and (b["text"]["type"] != "mrkdwn" or not 0 < len(b["text"]["text"]) <= 3000):
                raise Invalid("invalid_blocks")
            if "fields" in b and not 0 < len(b["fields"]) <= 10:
                raise Invalid("invalid_blocks")
        elif b["type"] == "context":
            if not b["elements"] or not all(e["type"] == "mrkdwn" for e in b["elements"]):
                raise Invalid("invalid_blocks")
        else:
            raise Invalid("invalid_blocks")


class FakeServers:
    """Alertmanager (``/api/v2/alerts``), PagerDuty (``/v2/enqueue``, ``/v2/change/enqueue``), Slack
    (``/services/T0/B0/<token>``) and a webhook receiver (``/hook``) on one loopback port.

    ``mode`` is "ok", "slow" (answers when released) or a status code to answer with; an error answer
    echoes the request path, headers and body (as a careless proxy might), which lets the tests check
    that secrets are redacted. Each request is recorded before it is checked."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.mode: str | int = "ok"
        self.retry_after: str | None = None  # sent with an error answer (Slack and others on a 429)
        self.slack_reply = "ok"
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/api/v2/alerts", self.alertmanager)
        app.router.add_post("/v2/enqueue", self.pagerduty)
        app.router.add_post("/v2/change/enqueue", self.pagerduty_change)
        app.router.add_post("/services/T0/B0/{token}", self.slack)
        app.router.add_post("/hook", self.webhook)
        self.server = TestServer(app, host="127.0.0.1")

    def url(self, path: str = "") -> str:
        return str(self.server.make_url(path))

    async def _common(self, request: web.Request) -> tuple[Seen, web.Response | None]:
        seen = Seen(request.path, dict(request.headers), await request.read())
        self.requests.append(seen)
        if self.mode == "slow":
            await asyncio.wait_for(self.release.wait(), 10)
        if isinstance(self.mode, int):
            echo = f"error at {request.path}: {dict(request.headers)} {seen.body.decode()}"
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return seen, web.Response(status=self.mode, text=echo, headers=headers)
        return seen, None

    async def alertmanager(self, request: web.Request) -> web.Response:
        seen, answer = await self._common(request)
        if answer:
            return answer
        try:
            _check_alerts(seen.json)
        except (Invalid, KeyError, ValueError) as e:
            return web.json_response({"code": 400, "message": str(e)}, status=400)
        return web.Response(status=200)

    async def pagerduty(self, request: web.Request) -> web.Response:
        seen, answer = await self._common(request)
        if answer:
            return answer
        try:
            _check_pagerduty_event(seen.json)
        except (Invalid, KeyError, ValueError) as e:
            return web.json_response({"status": "invalid event", "errors": [str(e)]}, status=400)
        return web.json_response({"status": "success", "dedup_key": seen.json["dedup_key"]}, status=202)

    async def pagerduty_change(self, request: web.Request) -> web.Response:
        seen, answer = await self._common(request)
        if answer:
            return answer
        try:
            _check_change_event(seen.json)
        except (Invalid, KeyError, ValueError) as e:
            return web.json_response({"status": "invalid event", "errors": [str(e)]}, status=400)
        return web.json_response({"status": "success"}, status=202)

    async def slack(self, request: web.Request) -> web.Response:
        seen, answer = await self._common(request)
        if answer:
            return answer
        if request.match_info["token"] != SLACK_TOKEN:
            return web.Response(status=403, text="invalid_token")
        try:
            _check_slack(seen.json)
        except (Invalid, KeyError, ValueError) as e:
            return web.Response(status=400, text=str(e) or "invalid_payload")
        return web.Response(status=200, text=self.slack_reply)

    async def webhook(self, request: web.Request) -> web.Response:
        _seen, answer = await self._common(request)
        return answer or web.json_response({"received": True})


@pytest.fixture
async def fakes() -> AsyncIterator[FakeServers]:
    f = FakeServers()
    await f.server.start_server()
    yield f
    f.release.set()
    await f.server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- harnesses: one per notifier, same interface -----------------------------------------------------


@dataclass
class Harness:
    """``config(base)`` is a valid config whose server is at ``base``; ``secrets`` are in it.
    ``check_trigger(seen, notice)`` and ``check_resolve(trigger_seen, resolve_seen, notice)`` assert
    the documented shapes."""

    name: str
    config: Callable[[str], dict[str, Any]]
    wrong_type: tuple[str, Any]
    secrets: tuple[str, ...]
    check_trigger: Callable[[Seen, Notice], None]
    check_resolve: Callable[[Seen, Seen, Notice], None]

    def make(self, base: str, **extra: Any) -> Notifier:
        return load_notifier(self.name, {**self.config(base), **extra})


def am_config(base: str) -> dict[str, Any]:
    return {
        "url": base,
        "secret_headers": {"Authorization": f"Bearer {BEARER}"},
        "labels": {"team": "payments"},
    }


def am_trigger(seen: Seen, n: Notice) -> None:
    assert seen.path == "/api/v2/alerts"
    assert seen.headers["Authorization"] == f"Bearer {BEARER}"
    [alert] = seen.json
    assert alert["labels"] == {
        "origin": "guardrail",  # always: the hook recognises guardrail's own alerts by it
        "alertname": "CanaryRegression",
        "service": "checkout",
        "environment": "production",
        "severity": "page",
        "deploy": "dep-42",
        "team": "payments",
    }
    assert alert["annotations"] == {
        "summary": n.summary,
        "description": n.text,
        "runbook_url": "https://runbooks/canary",
    }
    assert parse_time(alert["startsAt"]) == T_OPEN
    assert parse_time(alert["endsAt"]) == T_OPEN + 86400  # explicit: Alertmanager must not time it out
    assert alert["generatorURL"] == "https://grafana/d/guardrail-canary"


def am_resolve(trigger: Seen, resolve: Seen, n: Notice) -> None:
    [t], [r] = trigger.json, resolve.json
    assert r["labels"] == t["labels"]  # the same alert
    assert "startsAt" not in r  # Alertmanager keeps the original start
    assert parse_time(r["endsAt"]) == n.occurred_at <= time.time()


def pd_config(base: str) -> dict[str, Any]:
    return {
        "routing_key": ROUTING_KEY,
        "url": f"{base}/v2/enqueue",
        "change_url": f"{base}/v2/change/enqueue",
    }


def pd_trigger(seen: Seen, n: Notice) -> None:
    assert seen.path == "/v2/enqueue"
    doc = seen.json
    assert doc["routing_key"] == ROUTING_KEY
    assert doc["event_action"] == "trigger"
    assert doc["dedup_key"] == n.key
    assert doc["client"] == "guardrail"
    p = doc["payload"]
    assert p["summary"] == n.summary
    assert p["source"] == "checkout.production"
    assert p["severity"] == "critical"
    assert parse_time(p["timestamp"]) == T_OPEN
    assert p["component"] == "checkout"
    assert p["class"] == "CanaryRegression"
    assert p["custom_details"]["error_ratio"] == 0.047
    assert p["custom_details"]["ci_high"] == "inf"  # strict JSON
    assert p["custom_details"]["description"] == n.text
    assert doc["links"] == [{"href": link.href, "text": link.text} for link in n.links]


def pd_resolve(trigger: Seen, resolve: Seen, n: Notice) -> None:
    assert resolve.json == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": trigger.json["dedup_key"],
    }


def slack_config(base: str) -> dict[str, Any]:
    return {"url": f"{base}/services/T0/B0/{SLACK_TOKEN}"}


def slack_trigger(seen: Seen, n: Notice) -> None:
    doc = seen.json
    assert "Canary 5xx 4.7%" in doc["text"] and "page" in doc["text"]
    head, fields, context = doc["blocks"]
    assert head["type"] == "section" and head["text"]["type"] == "mrkdwn"
    assert head["text"]["text"].startswith(
        ":rotating_light: *Canary 5xx 4.7% (baseline 0.1%) - rolled back*\n"
    )
    assert "over 3 windows &lt;b&gt;" in head["text"]["text"]  # the evidence, escaped for mrkdwn
    assert {"type": "mrkdwn", "text": "*error_ratio*\n0.047"} in fields["fields"]
    ctx = context["elements"][0]["text"]
    assert context["type"] == "context"
    assert "<https://grafana/d/guardrail-canary|Dashboard>" in ctx and "deploy dep-42" in ctx


def slack_resolve(trigger: Seen, resolve: Seen, n: Notice) -> None:
    doc = resolve.json
    assert doc["text"] == f"Resolved: {n.summary}"
    assert doc["blocks"][0]["text"]["text"].startswith(":white_check_mark: *Resolved:* ")


def webhook_config(base: str) -> dict[str, Any]:
    return {
        "url": f"{base}/hook",
        "secret": HMAC_KEY,
        "secret_headers": {"Authorization": f"Bearer {BEARER}"},
    }


def webhook_trigger(seen: Seen, n: Notice) -> None:
    assert verify(HMAC_KEY, seen.body, seen.headers[SIGNATURE_HEADER])  # over the raw body bytes
    assert seen.headers["Idempotency-Key"]
    doc = seen.json
    assert {k: doc[k] for k in ("key", "action", "severity", "summary", "service", "environment")} == {
        "key": n.key,
        "action": "trigger",
        "severity": "page",
        "summary": n.summary,
        "service": "checkout",
        "environment": "production",
    }
    assert doc["deploy_id"] == "dep-42" and doc["rule"] == "CanaryRegression" and doc["text"] == n.text
    assert doc["details"]["ci_high"] == "inf"
    assert doc["links"][0] == {"href": "https://grafana/d/guardrail-canary", "text": "Dashboard"}
    assert parse_time(doc["occurred_at"]) == T_OPEN


def webhook_resolve(trigger: Seen, resolve: Seen, n: Notice) -> None:
    assert verify(HMAC_KEY, resolve.body, resolve.headers[SIGNATURE_HEADER])
    assert resolve.json["action"] == "resolve" and resolve.json["key"] == trigger.json["key"]
    assert resolve.headers["Idempotency-Key"] != trigger.headers["Idempotency-Key"]


HARNESSES = {
    "alertmanager": Harness(
        "alertmanager", am_config, ("firing_for_s", "a day"), (BEARER,), am_trigger, am_resolve
    ),
    "pagerduty": Harness(
        "pagerduty", pd_config, ("timeout_s", "10s"), (ROUTING_KEY,), pd_trigger, pd_resolve
    ),
    "slack": Harness("slack", slack_config, ("timeout_s", [1]), (SLACK_TOKEN,), slack_trigger, slack_resolve),
    "webhook": Harness(
        "webhook", webhook_config, ("headers", ["X-A"]), (HMAC_KEY, BEARER), webhook_trigger, webhook_resolve
    ),
}


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest) -> Harness:
    return HARNESSES[request.param]


@pytest.fixture
async def make(harness: Harness, fakes: FakeServers) -> AsyncIterator[Callable[..., Notifier]]:
    """Builds the harness's notifier against the fakes (or ``base``), through the entry point."""
    made: list[Notifier] = []

    def build(base: str | None = None, **extra: Any) -> Notifier:
        n = harness.make(base or fakes.url().rstrip("/"), **extra)
        made.append(n)
        return n

    yield build
    for n in made:
        await n.close()


def assert_clean(result: NotifyResult, *secrets: str) -> None:
    assert isinstance(result, NotifyResult)
    assert result.detail and "\n" not in result.detail
    for s in secrets:
        assert s not in result.detail


# --- the contract ----------------------------------------------------------------------------------


async def test_is_a_notifier_registered_under_its_name(
    harness: Harness, make: Callable[..., Notifier]
) -> None:
    n = make()
    assert isinstance(n, Notifier)
    assert n.name == harness.name
    assert harness.name in known_plugins(NOTIFIERS)


async def test_trigger_arrives_in_the_documented_format(
    harness: Harness, make: Callable[..., Notifier], fakes: FakeServers
) -> None:
    n = notice()
    result = await make().send(n)
    assert result.ok and not result.retryable, result
    assert_clean(result, *harness.secrets)
    [seen] = fakes.requests
    harness.check_trigger(seen, n)


async def test_resolve_arrives_in_the_documented_format_for_the_same_incident(
    harness: Harness, make: Callable[..., Notifier], fakes: FakeServers
) -> None:
    notifier = make()
    resolved = notice(NoticeAction.RESOLVE, occurred_at=T_OPEN + 900, text="", details={})
    assert (await notifier.send(notice())).ok
    result = await notifier.send(resolved)
    assert result.ok, result
    trigger_seen, resolve_seen = fakes.requests
    harness.check_resolve(trigger_seen, resolve_seen, resolved)


@pytest.mark.parametrize("status", [503, 500, 429])
async def test_server_errors_and_rate_limits_are_retryable(
    harness: Harness, make: Callable[..., Notifier], fakes: FakeServers, status: int
) -> None:
    fakes.mode = status
    result = await make().send(notice())
    assert result.ok is False and result.retryable is True
    assert str(status) in result.detail
    assert_clean(result, *harness.secrets)


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_retry_after_is_read_in_both_forms_and_passed_on(
    harness: Harness, make: Callable[..., Notifier], fakes: FakeServers, form: str
) -> None:
    """Issue 13, case 9. Slack answers a rate-limited webhook with 429 and ``Retry-After`` in
    seconds (https://api.slack.com/docs/rate-limits); RFC 9110 10.2.3 also allows an HTTP-date."""
    fakes.mode = 429
    fakes.retry_after = "30" if form == "seconds" else formatdate(time.time() + 30, usegmt=True)
    result = await make().send(notice())
    assert result.ok is False and result.retryable is True
    assert result.retry_after_s is not None and 28 <= result.retry_after_s <= 30
    assert "asks to wait" in result.detail
    assert_clean(result, *harness.secrets)


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_a_rejected_request_is_not_retryable(
    harness: Harness, make: Callable[..., Notifier], fakes: FakeServers, status: int
) -> None:
    fakes.mode = status
    result = await make().send(notice())
    assert result.ok is False and result.retryable is False
    assert str(status) in result.detail and "not retried" in result.detail
    assert_clean(result, *harness.secrets)


async def test_a_slow_server_is_cut_off_at_the_timeout(
    harness: Harness, make: Callable[..., Notifier], fakes: FakeServers
) -> None:
    fakes.mode = "slow"
    started = time.monotonic()
    result = await make(timeout_s=0.3).send(notice())
    elapsed = time.monotonic() - started
    assert result.ok is False and result.retryable is True
    assert "timed out after 0.3 s" in result.detail
    assert elapsed < 1.0, f"took {elapsed:.2f} s"


async def test_a_refused_connection_is_retryable(harness: Harness, make: Callable[..., Notifier]) -> None:
    result = await make(f"http://127.0.0.1:{closed_port()}").send(notice())
    assert result.ok is False and result.retryable is True
    assert_clean(result, *harness.secrets)


async def test_secrets_never_show_in_results_repr_or_redacted_config(
    harness: Harness, make: Callable[..., Notifier], fakes: FakeServers
) -> None:
    """The fake echoes the request (headers, path and body) in its error answers."""
    notifier = make()
    results = [await notifier.send(notice())]
    for status in (400, 503):
        fakes.mode = status
        results.append(await notifier.send(notice()))
    shown = [repr(notifier), repr(getattr(notifier, "config", None))]
    shown.append(json.dumps(redact_config(type(notifier), harness.config("https://example.com"))))
    for s in harness.secrets:
        assert all(s not in text for text in shown)
    for r in results:
        assert_clean(r, *harness.secrets)
    assert "***" in results[-1].detail  # the echoed secret was there, and redacted


async def test_from_config_rejects_an_unknown_key_naming_it(harness: Harness) -> None:
    with pytest.raises(ConfigError) as e:
        load_notifier(harness.name, {**harness.config("https://example.com"), "retires": 3})
    assert e.value.field == "notifier.config.retires"
    assert "retires" in str(e.value) and "accepted" in str(e.value)


async def test_from_config_rejects_a_wrong_type_naming_the_key(harness: Harness) -> None:
    key, bad = harness.wrong_type
    with pytest.raises(ConfigError) as e:
        load_notifier(harness.name, {**harness.config("https://example.com"), key: bad})
    assert e.value.field == f"notifier.config.{key}"
    assert "expected" in str(e.value)
    for s in harness.secrets:
        assert s not in str(e.value)


async def test_an_injected_session_is_used_and_left_open(harness: Harness, fakes: FakeServers) -> None:
    cls: Any = type(load_notifier(harness.name, harness.config("https://example.com")))
    parsed = parse_notifier_config(
        cls.config_type, harness.config(fakes.url().rstrip("/")), name=harness.name
    )
    async with aiohttp.ClientSession() as session:
        notifier = cls(parsed, session=session)
        assert (await notifier.send(notice())).ok
        await notifier.close()
        assert not session.closed
    assert len(fakes.requests) == 1


# --- Alertmanager ----------------------------------------------------------------------------------


async def test_alertmanager_labels_are_the_same_for_every_notice_of_an_incident(fakes: FakeServers) -> None:
    notifier = HARNESSES["alertmanager"].make(fakes.url().rstrip("/"))
    try:
        for n in (
            notice(),
            notice(summary="other words", text="", occurred_at=T_OPEN + 60),
            notice(NoticeAction.RESOLVE),
        ):
            assert (await notifier.send(n)).ok
    finally:
        await notifier.close()
    labels = [seen.json[0]["labels"] for seen in fakes.requests]
    assert labels[0] == labels[1] == labels[2]


async def test_alertmanager_refuses_announcements_without_retry(fakes: FakeServers) -> None:
    notifier = HARNESSES["alertmanager"].make(fakes.url().rstrip("/"))
    result = await notifier.send(notice(NoticeAction.ANNOUNCE, severity=Severity.INFO))
    assert result.ok is False and result.retryable is False and "announcement" in result.detail
    assert fakes.requests == []


async def test_alertmanager_skips_a_generator_url_that_is_not_absolute(fakes: FakeServers) -> None:
    notifier = HARNESSES["alertmanager"].make(fakes.url().rstrip("/"))
    try:
        result = await notifier.send(notice(links=(Link("/deploys/dep-42", "Deploy"),)))
    finally:
        await notifier.close()
    assert result.ok, result  # Alertmanager would answer 400 to a relative generatorURL
    assert "generatorURL" not in fakes.requests[0].json[0]


# --- PagerDuty -------------------------------------------------------------------------------------


def test_pagerduty_dedup_key_is_stable_and_fits_255_characters() -> None:
    short = incident_key("checkout", "production", "dep-42", "CanaryRegression")
    assert dedup_key(short) == short
    long = "guardrail:" + "x" * 400
    assert dedup_key(long) == dedup_key(long) and len(dedup_key(long)) == 255
    assert dedup_key(long) != dedup_key(long + "y")


async def test_pagerduty_maps_severity_and_cuts_the_summary(fakes: FakeServers) -> None:
    notifier = HARNESSES["pagerduty"].make(fakes.url().rstrip("/"))
    try:
        assert (await notifier.send(notice(severity=Severity.TICKET, summary="s" * 2000))).ok
        assert (await notifier.send(notice(severity=Severity.INFO, key="k" * 300))).ok
    finally:
        await notifier.close()
    ticket, info = (seen.json for seen in fakes.requests)
    assert ticket["payload"]["severity"] == "warning" and len(ticket["payload"]["summary"]) == 1024
    assert info["payload"]["severity"] == "info" and len(info["dedup_key"]) == 255


async def test_pagerduty_sends_announcements_as_change_events(fakes: FakeServers) -> None:
    notifier = HARNESSES["pagerduty"].make(fakes.url().rstrip("/"))
    try:
        result = await notifier.send(
            notice(NoticeAction.ANNOUNCE, severity=Severity.INFO, summary="Deploying 2.4.0")
        )
    finally:
        await notifier.close()
    assert result.ok, result
    [seen] = fakes.requests
    assert seen.path == "/v2/change/enqueue"
    assert seen.json["payload"]["summary"] == "Deploying 2.4.0" and "event_action" not in seen.json


# --- Slack -----------------------------------------------------------------------------------------


async def test_slack_needs_the_body_ok(fakes: FakeServers) -> None:
    fakes.slack_reply = "something else"
    notifier = HARNESSES["slack"].make(fakes.url().rstrip("/"))
    try:
        result = await notifier.send(notice())
    finally:
        await notifier.close()
    assert result.ok is False and result.retryable is False and "not 'ok'" in result.detail


async def test_slack_shows_the_webhook_by_its_host_only(fakes: FakeServers) -> None:
    notifier = HARNESSES["slack"].make(fakes.url().rstrip("/"))
    try:
        result = await notifier.send(notice())
    finally:
        await notifier.close()
    assert result.detail.startswith("POST Slack webhook at 127.0.0.1 -> 200")
    assert "/services/" not in result.detail


async def test_slack_rejects_a_bad_url_without_quoting_it() -> None:
    with pytest.raises(ConfigError) as e:
        load_notifier("slack", {"url": f"hooks.slack.com/services/{SLACK_TOKEN}"})
    assert e.value.field == "notifier.config.url" and SLACK_TOKEN not in str(e.value)


# --- webhook ---------------------------------------------------------------------------------------


async def test_webhook_idempotency_key_is_the_outbox_id_on_every_attempt(fakes: FakeServers) -> None:
    notifier = HARNESSES["webhook"].make(fakes.url().rstrip("/"))
    token = DELIVERY_ID.set(42)
    try:
        fakes.mode = 503
        assert (await notifier.send(notice())).retryable
        fakes.mode = "ok"
        assert (await notifier.send(notice())).ok
    finally:
        DELIVERY_ID.reset(token)
        await notifier.close()
    assert [seen.headers["Idempotency-Key"] for seen in fakes.requests] == ["42", "42"]
    assert fakes.requests[1].json["delivery_id"] == 42


async def test_webhook_without_a_secret_is_unsigned(fakes: FakeServers) -> None:
    notifier = WebhookNotifier.from_config({"url": fakes.url("/hook")})
    try:
        assert (await notifier.send(notice())).ok
    finally:
        await notifier.close()
    assert SIGNATURE_HEADER not in fakes.requests[0].headers


def test_classes_are_the_registered_ones() -> None:
    assert isinstance(load_notifier("alertmanager", am_config("http://am:9093")), AlertmanagerNotifier)
    assert isinstance(load_notifier("pagerduty", {"routing_key": ROUTING_KEY}), PagerDutyNotifier)
    assert isinstance(load_notifier("slack", slack_config("https://hooks.slack.com")), SlackNotifier)
    assert isinstance(load_notifier("webhook", webhook_config("https://x")), WebhookNotifier)


def test_an_unknown_notifier_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as e:
        load_notifier("pager-duty", {})
    assert all(n in str(e.value) for n in ("alertmanager", "pagerduty", "slack", "webhook"))
