"""NotificationService on SQLite and PostgreSQL: one page per incident, routing by severity, and an
outbox that survives notifier outages and restarts. The notifiers are the real ones, talking to a
fake PagerDuty / Slack / webhook server on loopback that records what it was sent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from guardrail.adapters.db.store import SqlStore
from guardrail.adapters.notify import build_notification_service, load_notifier
from guardrail.config import NotificationsConfig, load_settings
from guardrail.domain.errors import ConfigError, ValidationError
from guardrail.domain.notifications import Link, Notice, NoticeAction, Severity, incident_key
from guardrail.domain.outbox import DeliveryStatus, IncidentState
from guardrail.ports import NotifyResult
from guardrail.secrets import secret_field
from guardrail.service.notify import DispatchSettings, NotificationService, Route
from guardrail.telemetry import Telemetry
from guardrail.testing import ManualClock

pytestmark = pytest.mark.integration

ROUTING_KEY = "R0ut1ngKey0123456789abcdefABCDEF"
SLACK_TOKEN = "xoxSLACKt0kenZZ9q8w7e6r5t4y"
BEARER = "s3cr3t-Bearer-9f2c"
PAGER, CHAT = "/v2/enqueue", f"/slack/{SLACK_TOKEN}"


@dataclass
class Received:
    path: str
    json: Any
    status: int


class FakeReceivers:
    """PagerDuty Events v2 (``/v2/enqueue``, 202), a Slack incoming webhook (``/slack/<token>``, 200
    ``ok``) and a webhook (``/hook``, 200). While ``outage`` is set every request gets 503; ``status``
    forces an answer (e.g. 400). Error answers echo the request, secrets included (a careless proxy)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.outage = False
        self.status: int | None = None
        self.retry_after: str | None = None  # sent with a 429 (Slack: seconds)
        self.changed = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{path:.*}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        status = 503 if self.outage else self.status or (202 if request.path == PAGER else 200)
        self.received.append(Received(request.path, body, status))
        self.changed.set()
        if status >= 300:
            headers = {"Retry-After": self.retry_after} if status == 429 and self.retry_after else {}
            text = f"{request.path} {dict(request.headers)} {body}"
            return web.Response(status=status, text=text, headers=headers)
        return web.Response(status=status, text="ok" if request.path.startswith("/slack/") else "{}")

    def delivered(self, path: str) -> list[Any]:
        return [r.json for r in self.received if r.path == path and r.status < 300]

    async def wait_for(self, ok: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            assert time.monotonic() < deadline, f"timed out; received {self.received}"
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), deadline - time.monotonic())


@pytest.fixture
async def fake() -> AsyncIterator[FakeReceivers]:
    f = FakeReceivers()
    await f.server.start_server()
    yield f
    await f.server.close()


ROUTES = [
    Route(Severity.PAGE, ("pager", "chat")),
    Route(Severity.TICKET, ("chat",)),
    Route(Severity.INFO, ("chat",)),
]
FAST = DispatchSettings(poll_s=0.2, backoff_s=0.05, backoff_max_s=0.1, lease_s=30)


def make_service(
    store: SqlStore,
    fake: FakeReceivers,
    *,
    clock: Callable[[], float] = time.time,
    settings: DispatchSettings = FAST,
    telemetry: Telemetry | None = None,
    rand: Callable[[], float] = lambda: 1.0,  # the top of the jitter range: waits are the ceilings
) -> NotificationService:
    notifiers = {
        "pager": load_notifier(
            "pagerduty", {"routing_key": ROUTING_KEY, "url": fake.url(PAGER), "timeout_s": 2}
        ),
        "chat": load_notifier("slack", {"url": fake.url(CHAT), "timeout_s": 2}),
    }
    return NotificationService(
        store, notifiers, ROUTES, clock=clock, telemetry=telemetry, settings=settings, rand=rand
    )


def page(deploy: str = "dep-1", rule: str = "CanaryRegression", **changes: Any) -> Notice:
    values: dict[str, Any] = {
        "key": incident_key("checkout", "production", deploy, rule),
        "action": NoticeAction.TRIGGER,
        "severity": Severity.PAGE,
        "summary": f"{rule}: canary 5xx 4.7% vs 0.1%",
        "service": "checkout",
        "environment": "production",
        "deploy_id": deploy,
        "rule": rule,
        "details": {"error_ratio": 0.047},
        "links": (Link("https://grafana.example/d/canary", "Dashboard"),),
    }
    values.update(changes)
    return Notice(**values)


def guardrail_logs(caplog: pytest.LogCaptureFixture) -> str:
    """What guardrail logged (not the fake server's access log, which shows the paths it was sent)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("guardrail"))


def count(telemetry: Telemetry, name: str, **labels: str) -> float:
    return telemetry.registry.get_sample_value(name, labels) or 0.0


# --- dedup -----------------------------------------------------------------------------------------


async def test_two_triggers_for_one_key_page_once_and_one_resolve_follows(
    store: SqlStore, fake: FakeReceivers
) -> None:
    service = make_service(store, fake)
    try:
        assert await service.trigger(page()) is True
        assert await service.trigger(page(summary="still failing")) is False
        assert await service.dispatch_once() == 2  # pager + chat
        assert await service.resolve(page().key, "error rate back to baseline") is True
        assert await service.resolve(page().key) is False
        assert await service.dispatch_once() == 2
    finally:
        await service.close()
    pager = fake.delivered(PAGER)
    assert [e["event_action"] for e in pager] == ["trigger", "resolve"]
    assert pager[0]["dedup_key"] == pager[1]["dedup_key"] == page().key
    chat = fake.delivered(CHAT)
    assert [m["text"] for m in chat] == [
        "[page] CanaryRegression: canary 5xx 4.7% vs 0.1%",
        "Resolved: error rate back to baseline",
    ]
    incident = await store.get_incident(page().key)
    assert incident is not None and incident.state is IncidentState.RESOLVED
    assert incident.rule == "CanaryRegression" and incident.deploy_id == "dep-1"


async def test_a_second_deploy_is_a_new_incident(store: SqlStore, fake: FakeReceivers) -> None:
    service = make_service(store, fake)
    try:
        assert await service.trigger(page("dep-1"))
        assert await service.trigger(page("dep-2"))
        await service.dispatch_once()
        assert [i.deploy_id for i in await service.open_incidents()] == ["dep-1", "dep-2"]
        assert [i.deploy_id for i in await service.open_incidents("dep-2")] == ["dep-2"]
    finally:
        await service.close()
    assert [e["dedup_key"] for e in fake.delivered(PAGER)] == [page("dep-1").key, page("dep-2").key]


async def test_an_incident_that_fires_again_after_its_resolve_pages_again(
    store: SqlStore, fake: FakeReceivers
) -> None:
    service = make_service(store, fake)
    try:
        assert await service.trigger(page())
        assert await service.resolve(page().key)
        assert await service.trigger(page())
        await service.dispatch_once()
    finally:
        await service.close()
    assert [e["event_action"] for e in fake.delivered(PAGER)] == ["trigger", "resolve", "trigger"]


async def test_concurrent_triggers_of_one_key_open_one_incident(store: SqlStore, fake: FakeReceivers) -> None:
    service = make_service(store, fake)
    try:
        opened = await asyncio.gather(*(service.trigger(page()) for _ in range(8)))
        assert sorted(opened) == [False] * 7 + [True]
        assert len(await store.deliveries()) == 2
    finally:
        await service.close()


# --- routing ---------------------------------------------------------------------------------------


async def test_notices_are_routed_by_severity(store: SqlStore, fake: FakeReceivers) -> None:
    service = make_service(store, fake)
    try:
        await service.trigger(page())
        await service.trigger(page(rule="DiskAlmostFull", severity=Severity.TICKET, summary="disk 8% free"))
        await service.announce(
            page(
                rule="DeployAnnouncement",
                action=NoticeAction.ANNOUNCE,
                severity=Severity.INFO,
                summary="Deploying",
            )
        )
        assert await service.dispatch_once() == 4
    finally:
        await service.close()
    assert [e["payload"]["class"] for e in fake.delivered(PAGER)] == ["CanaryRegression"]
    assert [m["text"] for m in fake.delivered(CHAT)] == [
        "[page] CanaryRegression: canary 5xx 4.7% vs 0.1%",
        "[ticket] disk 8% free",
        "Deploying",
    ]


async def test_announcements_are_always_sent(store: SqlStore, fake: FakeReceivers) -> None:
    service = make_service(store, fake)
    note = page(
        rule="DeployAnnouncement", action=NoticeAction.ANNOUNCE, severity=Severity.INFO, summary="All nominal"
    )
    try:
        await service.announce(note)
        await service.announce(note)
        assert await service.dispatch_once() == 2
        assert await store.get_incident(note.key) is None
    finally:
        await service.close()
    assert [m["text"] for m in fake.delivered(CHAT)] == ["All nominal", "All nominal"]


async def test_notify_takes_any_notice_by_its_action(store: SqlStore, fake: FakeReceivers) -> None:
    service = make_service(store, fake)
    try:
        assert await service.notify(page()) is True
        assert await service.notify(page()) is False
        assert await service.notify(page(action=NoticeAction.RESOLVE, summary="cleared", links=())) is True
        assert await service.notify(page(action=NoticeAction.RESOLVE)) is False
        note = page(
            rule="DeployAnnouncement", action=NoticeAction.ANNOUNCE, severity=Severity.INFO, summary="Hi"
        )
        assert await service.notify(note) is True
        assert await service.dispatch_once() == 5
    finally:
        await service.close()
    assert [e["event_action"] for e in fake.delivered(PAGER)] == ["trigger", "resolve"]
    resolved = [m for m in fake.delivered(CHAT) if m["text"].startswith("Resolved")]
    assert [m["text"] for m in resolved] == ["Resolved: cleared"]
    assert "Dashboard" in resolved[0]["blocks"][-1]["elements"][0]["text"]  # the trigger's links kept
    assert [m["text"] for m in fake.delivered(CHAT)].count("Hi") == 1


async def test_each_method_takes_only_its_own_kind_of_notice(store: SqlStore, fake: FakeReceivers) -> None:
    service = make_service(store, fake)
    try:
        with pytest.raises(ValidationError, match="action 'trigger'"):
            await service.trigger(page(action=NoticeAction.ANNOUNCE))
        with pytest.raises(ValidationError, match="action 'announce'"):
            await service.announce(page())
        assert await store.deliveries() == []
    finally:
        await service.close()


# --- durability --------------------------------------------------------------------------------------


async def test_a_notifier_outage_then_recovery_delivers_the_page_exactly_once(
    store: SqlStore, fake: FakeReceivers
) -> None:
    telemetry = Telemetry()
    service = make_service(store, fake, telemetry=telemetry)
    fake.outage = True
    service.start()
    try:
        assert await service.trigger(page())
        await fake.wait_for(lambda: sum(r.path == PAGER for r in fake.received) >= 3)  # retried with backoff
        fake.outage = False
        await fake.wait_for(lambda: len(fake.delivered(PAGER)) == 1 and len(fake.delivered(CHAT)) == 1)
        await asyncio.sleep(3 * FAST.backoff_max_s)  # time for a duplicate to show up, were there one
    finally:
        await service.close()
    assert len(fake.delivered(PAGER)) == 1 and len(fake.delivered(CHAT)) == 1
    assert fake.received[-1].status < 300  # nothing was sent after the delivery
    [row] = await store.deliveries(notifier="pager")
    failures = sum(r.path == PAGER and r.status == 503 for r in fake.received)
    assert row.status is DeliveryStatus.SENT and row.attempts == failures + 1
    assert count(telemetry, "guardrail_notifications_retries_total", notifier="pager") == failures
    assert count(telemetry, "guardrail_notifications_sent_total", notifier="pager") == 1


async def test_retries_back_off_doubling_up_to_the_cap(store: SqlStore, fake: FakeReceivers) -> None:
    clock = ManualClock(1_700_000_000.0)
    settings = DispatchSettings(backoff_s=1, backoff_max_s=5)
    service = make_service(store, fake, clock=clock, settings=settings)
    fake.outage = True
    waits = []
    try:
        await service.trigger(page(severity=Severity.TICKET))  # to chat only
        for _ in range(5):
            assert await service.dispatch_once() == 0
            [row] = await store.deliveries()
            waits.append(row.next_attempt_at - clock())
            assert await service.dispatch_once() == 0  # not due again yet
            clock.advance(waits[-1])
    finally:
        await service.close()
    assert waits == [1, 2, 4, 5, 5]
    assert len(fake.received) == 5


async def test_retries_are_jittered_within_half_and_all_of_the_backoff(
    store: SqlStore, fake: FakeReceivers
) -> None:
    clock = ManualClock(1_700_000_000.0)
    settings = DispatchSettings(backoff_s=2, backoff_max_s=8)
    service = make_service(store, fake, clock=clock, settings=settings, rand=lambda: 0.0)
    fake.outage = True
    try:
        await service.trigger(page(severity=Severity.TICKET))
        waits = []
        for _ in range(4):
            await service.dispatch_once()
            [row] = await store.deliveries()
            waits.append(row.next_attempt_at - clock())
            clock.advance(waits[-1])
    finally:
        await service.close()
    assert waits == [1, 2, 4, 4]  # the bottom of each range: half the capped doubling


async def test_a_429_with_retry_after_is_not_sent_again_before_that(
    store: SqlStore, fake: FakeReceivers
) -> None:
    """Issue 13, case 9: Slack answers a rate-limited incoming webhook with 429 and ``Retry-After``
    in seconds (https://api.slack.com/docs/rate-limits, "Rate limits" / incoming webhooks); the outbox
    waits that long instead of its own 1 s backoff."""
    clock = ManualClock(1_700_000_000.0)
    service = make_service(store, fake, clock=clock, settings=DispatchSettings(backoff_s=1, backoff_max_s=5))
    fake.status, fake.retry_after = 429, "120"
    try:
        await service.trigger(page(severity=Severity.TICKET))  # to chat (Slack) only
        assert await service.dispatch_once() == 0
        [row] = await store.deliveries()
        assert row.next_attempt_at - clock() == 120
        assert "the server asks to wait 120 s" in (row.last_error or "")
        clock.advance(119)
        assert await service.dispatch_once() == 0 and len(fake.received) == 1  # not due yet
        fake.status = None
        clock.advance(1)
        assert await service.dispatch_once() == 1
    finally:
        await service.close()
    assert len(fake.delivered(CHAT)) == 1


async def test_a_resolve_never_overtakes_its_trigger(store: SqlStore, fake: FakeReceivers) -> None:
    clock = ManualClock(1_700_000_000.0)
    service = make_service(store, fake, clock=clock)
    try:
        await service.trigger(page())
        fake.outage = True
        assert await service.dispatch_once() == 0
        await service.resolve(page().key)
        clock.advance(0.01)  # the resolve is due, its trigger is not
        assert await service.dispatch_once() == 0
        assert {r.json.get("event_action") for r in fake.received if r.path == PAGER} == {"trigger"}
        fake.outage = False
        clock.advance(FAST.backoff_max_s)
        assert await service.dispatch_once() == 4
    finally:
        await service.close()
    assert [e["event_action"] for e in fake.delivered(PAGER)] == ["trigger", "resolve"]
    assert [m["text"].split(":")[0] for m in fake.delivered(CHAT)] == ["[page] CanaryRegression", "Resolved"]


async def test_a_page_queued_before_a_restart_is_delivered_once_by_the_next_process(
    store_url: str, fake: FakeReceivers
) -> None:
    first_store = await SqlStore.open(store_url)
    first = make_service(first_store, fake)
    assert await first.trigger(page())  # queued, then the process goes away before sending
    await first.close()
    await first_store.close()
    assert fake.received == []

    async with await SqlStore.open(store_url) as second_store:
        second = make_service(second_store, fake)
        second.start()
        try:
            await fake.wait_for(lambda: len(fake.delivered(PAGER)) == 1 and len(fake.delivered(CHAT)) == 1)
        finally:
            await second.close()
        third = make_service(second_store, fake)
        try:
            assert await third.dispatch_once() == 0
            assert await third.trigger(page()) is False  # still the same open incident
        finally:
            await third.close()
        assert {d.status for d in await second_store.deliveries()} == {DeliveryStatus.SENT}
    assert len(fake.received) == 2


async def test_a_send_cut_short_by_a_crash_is_retried_after_the_lease(
    store: SqlStore, fake: FakeReceivers
) -> None:
    clock = ManualClock(1_700_000_000.0)
    service = make_service(store, fake, clock=clock)
    try:
        await service.trigger(page(severity=Severity.TICKET))
        [claimed] = await store.claim_deliveries(now=clock(), lease_s=FAST.lease_s)  # the process dies here
        assert await service.dispatch_once() == 0  # another dispatcher leaves a claimed row alone
        clock.advance(FAST.lease_s)
        assert await service.dispatch_once() == 1
    finally:
        await service.close()
    [row] = await store.deliveries()
    assert row.id == claimed.id and row.status is DeliveryStatus.SENT and row.attempts == 2
    assert len(fake.delivered(CHAT)) == 1


# --- failures ----------------------------------------------------------------------------------------


async def test_a_400_is_not_retried_and_is_marked_failed(
    store: SqlStore, fake: FakeReceivers, caplog: pytest.LogCaptureFixture
) -> None:
    telemetry = Telemetry()
    clock = ManualClock(1_700_000_000.0)
    service = make_service(store, fake, clock=clock, telemetry=telemetry)
    fake.status = 400
    try:
        await service.trigger(page(severity=Severity.TICKET))
        with caplog.at_level(logging.ERROR, logger="guardrail.notify"):
            assert await service.dispatch_once() == 0
        clock.advance(3600)
        assert await service.dispatch_once() == 0
    finally:
        await service.close()
    assert len(fake.received) == 1
    [row] = await store.deliveries()
    assert row.status is DeliveryStatus.FAILED and row.attempts == 1
    assert row.last_error and "400" in row.last_error and "not retried" in row.last_error
    assert "will not be retried" in caplog.text
    assert count(telemetry, "guardrail_notifications_failed_total", notifier="chat") == 1
    assert (await store.outbox_summary()).pending == 0


async def test_notifier_secrets_stay_out_of_the_outbox_and_the_logs(
    store: SqlStore, fake: FakeReceivers, caplog: pytest.LogCaptureFixture
) -> None:
    """The fake echoes every request (routing key in the body, Slack token in the path) in its 503s
    and 400s."""
    clock = ManualClock(1_700_000_000.0)
    service = make_service(store, fake, clock=clock)
    caplog.set_level(logging.DEBUG, logger="guardrail")
    try:
        fake.outage = True
        await service.trigger(page())
        await service.dispatch_once()
        fake.outage, fake.status = False, 400
        clock.advance(60)
        await service.dispatch_once()
    finally:
        await service.close()
    rows = await store.deliveries()
    assert {r.status for r in rows} == {DeliveryStatus.FAILED}
    errors = " ".join(r.last_error or "" for r in rows)
    assert "***" in errors
    logged = guardrail_logs(caplog)
    assert "***" in logged
    for secret in (ROUTING_KEY, SLACK_TOKEN):
        assert secret not in errors
        assert secret not in logged


@dataclass(frozen=True)
class LeakyConfig:
    token: str = secret_field(default=BEARER)


@dataclass
class LeakyNotifier:
    """A third-party notifier that puts its secret in its result (or raises with it)."""

    name: str = "leaky"
    config: LeakyConfig = field(default_factory=LeakyConfig)
    raise_: bool = False

    async def send(self, notice: Notice) -> NotifyResult:
        if self.raise_:
            raise RuntimeError(f"boom with {self.config.token}")
        return NotifyResult(False, True, f"503 from server, token={self.config.token}")

    async def close(self) -> None:
        return None


async def test_the_service_redacts_what_a_careless_notifier_reports(
    store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(1_700_000_000.0)
    notifiers = {"a": LeakyNotifier(), "b": LeakyNotifier(raise_=True)}
    service = NotificationService(store, notifiers, {"page": ["a", "b"]}, clock=clock, settings=FAST)
    caplog.set_level(logging.DEBUG, logger="guardrail")
    try:
        await service.trigger(page())
        assert await service.dispatch_once() == 0
    finally:
        await service.close()
    rows = await store.deliveries()
    assert [r.status for r in rows] == [DeliveryStatus.PENDING] * 2  # kept, retried later
    assert "RuntimeError" in (rows[1].last_error or "")
    assert all(BEARER not in (r.last_error or "") for r in rows)
    logged = guardrail_logs(caplog)
    assert BEARER not in logged and "boom with ***" in logged


async def test_a_delivery_for_a_notifier_no_longer_configured_fails_visibly(
    store: SqlStore, fake: FakeReceivers
) -> None:
    service = make_service(store, fake)
    await service.trigger(page())
    await service.close()
    only_chat = NotificationService(
        store, {"chat": load_notifier("slack", {"url": fake.url(CHAT)})}, {"page": ["chat"]}, settings=FAST
    )
    try:
        assert await only_chat.dispatch_once() == 1
    finally:
        await only_chat.close()
    pager = (await store.deliveries(notifier="pager"))[0]
    assert pager.status is DeliveryStatus.FAILED and "no notifier named 'pager'" in (pager.last_error or "")


# --- settings ----------------------------------------------------------------------------------------


async def test_settings_build_the_service_and_errors_name_the_key(tmp_path: Any) -> None:
    path = tmp_path / "guardrail.yaml"
    path.write_text(
        f"""
notifications:
  notifiers:
    pager: {{type: pagerduty, config: {{routing_key: {ROUTING_KEY}}}}}
    chat: {{type: slack, config: {{url: "https://hooks.slack.com/services/T0/B0/{SLACK_TOKEN}"}}}}
  routes:
    - {{severity: page, notifiers: [pager, chat]}}
    - {{severity: info, notifiers: [chat]}}
  backoff_s: 2
"""
    )
    settings = load_settings(path, env={})
    store = SqlStore("sqlite+aiosqlite://")  # not opened: building does no I/O
    try:
        service = build_notification_service(settings.notifications, store=store)
        assert service.route(Severity.PAGE) == ("pager", "chat") and service.route(Severity.TICKET) == ()
        assert service.settings.backoff_s == 2
        await service.close()

        with pytest.raises(ConfigError) as e:
            load_settings(env={"GUARDRAIL_NOTIFICATIONS__ROUTES": "[{severity: page, notifiers: [pagr]}]"})
        assert "'pagr'" in str(e.value) and e.value.field == "notifications"

        bad = NotificationsConfig.model_validate(
            {
                "notifiers": {
                    "pager": {"type": "pagerduty", "config": {"routing_key": ROUTING_KEY, "retries": 3}}
                }
            }
        )
        with pytest.raises(ConfigError) as e:
            build_notification_service(bad, store=store)
        assert e.value.field == "notifications.notifiers.pager.config.retries"

        unknown = NotificationsConfig.model_validate({"notifiers": {"pager": {"type": "pagerdooty"}}})
        with pytest.raises(ConfigError) as e:
            build_notification_service(unknown, store=store)
        assert e.value.field == "notifications.notifiers.pager.type" and "pagerduty" in str(e.value)
    finally:
        await store.close()
