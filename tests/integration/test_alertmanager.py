"""guardrail -> the real Alertmanager -> webhook receivers in the test, routed by severity.

The ``alertmanager`` notifier posts through the NotificationService (outbox on SQLite and
PostgreSQL); Alertmanager routes severity="page" to ``paging`` and the rest to ``engineering`` and
delivers webhook payloads (version 4) to the receiver below, which records them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from guardrail.adapters.db.store import SqlStore
from guardrail.adapters.notify import load_notifier
from guardrail.domain.notifications import Link, Notice, NoticeAction, Severity, incident_key
from guardrail.domain.outbox import DeliveryStatus
from guardrail.service.notify import NotificationService, Route
from guardrail.testing import ManualClock
from tests.integration.conftest import AlertmanagerServer, free_port

pytestmark = pytest.mark.integration


class Receiver:
    """Alertmanager's webhook receivers ``/paging`` and ``/engineering``: records each payload."""

    def __init__(self) -> None:
        self.payloads: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{receiver}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    def url(self, receiver: str) -> str:
        return str(self.server.make_url(f"/{receiver}"))

    async def handle(self, request: web.Request) -> web.Response:
        self.payloads.append((request.match_info["receiver"], await request.json()))
        self.changed.set()
        return web.Response(status=200)

    def alerts(self, receiver: str, status: str) -> list[dict[str, Any]]:
        return [
            a for name, p in self.payloads if name == receiver for a in p["alerts"] if a["status"] == status
        ]

    async def wait_for(
        self, what: Callable[[], list[dict[str, Any]]], timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while not (found := what()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"nothing arrived within {timeout} s; received: {json.dumps(self.payloads)}"
                )
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return found


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.server.start_server()
    yield r
    await r.server.close()


def notice(severity: Severity, rule: str, deploy: str = "dep-7") -> Notice:
    return Notice(
        key=incident_key("checkout", "production", deploy, rule),
        action=NoticeAction.TRIGGER,
        severity=severity,
        summary=f"{rule} on checkout",
        service="checkout",
        environment="production",
        deploy_id=deploy,
        rule=rule,
        details={"runbook_url": "https://runbooks.example/canary"},
        links=(Link("http://guardrail.example/deploys/dep-7", "Deploy"),),
        text="canary 5xx 4.7% vs baseline 0.1%",
    )


async def test_pages_and_tickets_reach_their_receivers_and_the_resolve_follows(
    store: SqlStore, receiver: Receiver, start_alertmanager: Callable[..., AlertmanagerServer]
) -> None:
    am = start_alertmanager(receiver.url("paging"), receiver.url("engineering"))
    notifier = load_notifier("alertmanager", {"url": am.url, "timeout_s": 5})
    service = NotificationService(
        store,
        {"am": notifier},
        [Route(Severity.PAGE, ("am",)), Route(Severity.TICKET, ("am",))],
    )
    try:
        page, ticket = notice(Severity.PAGE, "CanaryRegression"), notice(Severity.TICKET, "MemoryLeak")
        assert await service.trigger(page)
        assert await service.trigger(ticket)
        assert await service.dispatch_once() == 2

        [paged] = await receiver.wait_for(lambda: receiver.alerts("paging", "firing"))
        [ticketed] = await receiver.wait_for(lambda: receiver.alerts("engineering", "firing"))
        assert paged["labels"] == {
            "alertname": "CanaryRegression",
            "service": "checkout",
            "environment": "production",
            "severity": "page",
            "deploy": "dep-7",
            "origin": "guardrail",  # always: /hooks/alertmanager recognises guardrail's own alerts by it
        }
        assert paged["annotations"] == {
            "summary": "CanaryRegression on checkout",
            "description": "canary 5xx 4.7% vs baseline 0.1%",
            "runbook_url": "https://runbooks.example/canary",
        }
        assert paged["generatorURL"] == "http://guardrail.example/deploys/dep-7"
        assert ticketed["labels"]["alertname"] == "MemoryLeak" and ticketed["labels"]["severity"] == "ticket"
        first = next(p for name, p in receiver.payloads if name == "paging")
        assert first["version"] == "4" and first["receiver"] == "paging" and first["status"] == "firing"

        assert await service.resolve(page.key, "error rate back to baseline")
        assert await service.dispatch_once() == 1
        [resolved] = await receiver.wait_for(lambda: receiver.alerts("paging", "resolved"))
        assert resolved["labels"] == paged["labels"]  # the same alert, now resolved
        assert resolved["fingerprint"] == paged["fingerprint"]
        assert receiver.alerts("engineering", "resolved") == []  # the ticket is still open
        assert len(receiver.alerts("paging", "firing")) == 1  # paged once

        async with aiohttp.ClientSession() as http, http.get(f"{am.url}/api/v2/alerts?active=true") as resp:
            active = await resp.json()
        assert [a["labels"]["alertname"] for a in active] == ["MemoryLeak"]
        assert [r["name"] for r in active[0]["receivers"]] == ["engineering"]
        assert {d.status for d in await store.deliveries()} == {DeliveryStatus.SENT}
    finally:
        await service.close()


async def test_an_alertmanager_outage_delays_the_page_but_does_not_lose_it(
    store: SqlStore, receiver: Receiver, start_alertmanager: Callable[..., AlertmanagerServer]
) -> None:
    """Alertmanager is down when the page is queued; the page goes out once it is up."""
    port = free_port()
    clock = ManualClock(time.time())
    notifier = load_notifier("alertmanager", {"url": f"http://127.0.0.1:{port}", "timeout_s": 2})
    service = NotificationService(store, {"am": notifier}, [Route(Severity.PAGE, ("am",))], clock=clock)
    try:
        page = notice(Severity.PAGE, "RollbackFailed")
        assert await service.trigger(page)
        assert await service.dispatch_once() == 0  # connection refused: stays queued, retried later
        [queued] = await store.deliveries()
        assert queued.status is DeliveryStatus.PENDING and "127.0.0.1" in (queued.last_error or "")

        start_alertmanager(receiver.url("paging"), receiver.url("engineering"), port=port)
        assert await service.dispatch_once() == 0  # not due yet: backoff
        clock.advance(service.settings.backoff_s)
        assert await service.dispatch_once() == 1
        [paged] = await receiver.wait_for(lambda: receiver.alerts("paging", "firing"))
        assert paged["labels"]["alertname"] == "RollbackFailed"
        [sent] = await store.deliveries()
        assert sent.status is DeliveryStatus.SENT and sent.attempts == 2
    finally:
        await service.close()
