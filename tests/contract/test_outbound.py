"""The outbound seam (guardrail.adapters.outbound, guardrail.retry): one retry policy and one
classification for every adapter, notifier, annotator and the Prometheus client, against an aiohttp
server on loopback. Time is simulated (the seam's sleep advances the clock it reads)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from email.utils import formatdate

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from guardrail.adapters.outbound import Outbound, RetryPolicy
from guardrail.retry import Backoff, retry_after_seconds

T0 = 1_714_557_600.0


class Clock:
    def __init__(self) -> None:
        self.now = T0
        self.sleeps: list[float] = []

    def wall(self) -> float:
        return self.now

    def mono(self) -> float:
        return self.now - T0

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


class Server:
    """Answers the scripted (status, headers) in order, then 200; counts requests."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str]]] = []
        self.hits = 0
        app = web.Application()
        app.router.add_route("*", "/", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        status, headers = self.script.pop(0) if self.script else (200, {})
        return web.Response(status=status, text=f"answer {self.hits}", headers=headers)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/"))


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    await s.server.start_server()
    yield s
    await s.server.close()


def client(clock: Clock, rand: float = 0.5, **policy: object) -> Outbound:
    return Outbound(
        session=None,
        timeout_s=2,
        policy=RetryPolicy(**policy),  # type: ignore[arg-type]
        sleep=clock.sleep,
        clock=clock.wall,
        monotonic=clock.mono,
        rand=lambda: rand,
    )


def test_backoff_is_capped_exponential_with_jitter_between_half_and_all() -> None:
    b = Backoff(0.5, 4.0)
    assert [b.ceiling(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [b.delay(3, r) for r in (0.0, 0.5, 1.0)] == [1.0, 1.5, 2.0]
    assert b.ceiling(10_000) == 4.0


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("120", T0) == 120
    assert retry_after_seconds(formatdate(T0 + 30, usegmt=True), T0) == pytest.approx(30)
    assert retry_after_seconds(formatdate(T0 - 30, usegmt=True), T0) == 0  # in the past: now
    for junk in (None, "", "soon", "-5", "1.5"):
        assert retry_after_seconds(junk, T0) is None


async def test_5xx_is_retried_with_backoff_and_4xx_is_not(server: Server) -> None:
    clock = Clock()
    http = client(clock, retries=3, backoff=Backoff(1, 30))
    server.script = [(503, {}), (502, {})]
    got = await http.exchange("GET", server.url)
    assert got.ok and got.attempts == 3 and clock.sleeps == [0.75, 1.5]
    assert [h.split(" ")[0] for h in got.history] == ["503", "502", "200"]
    server.script = [(404, {})]
    got = await http.exchange("GET", server.url)
    assert (got.status, got.retryable, got.attempts) == (404, False, 1)
    await http.close()


async def test_retry_after_wins_over_a_shorter_backoff_in_both_forms(server: Server) -> None:
    clock = Clock()
    http = client(clock, retries=2, backoff=Backoff(1, 30))
    server.script = [(429, {"Retry-After": "20"}), (503, {"Retry-After": formatdate(T0 + 50, usegmt=True)})]
    got = await http.exchange("POST", server.url, data=b"{}")
    assert got.ok and clock.sleeps[0] == 20 and clock.sleeps[1] == pytest.approx(30)  # 20 s later, +30 s
    await http.close()


async def test_the_deadline_ends_retrying_and_hands_back_the_wait(server: Server) -> None:
    clock = Clock()
    http = client(clock, retries=5, backoff=Backoff(1, 30), deadline_s=60, max_wait_s=60)
    server.script = [(429, {"Retry-After": "3600"})]
    got = await http.exchange("GET", server.url)
    assert (got.ok, got.retryable, got.attempts, server.hits) == (False, True, 1, 1)
    assert got.retry_after_s == 3600 and clock.sleeps == []  # the caller schedules it instead
    await http.close()


async def test_a_non_idempotent_call_is_resent_only_when_it_surely_did_not_land(server: Server) -> None:
    clock = Clock()
    http = client(clock, retries=3, backoff=Backoff(0.1, 1))
    server.script = [(502, {})]
    got = await http.exchange("POST", server.url, idempotent=False)
    assert got.status == 502 and server.hits == 1 and "not resent" in got.outcome
    server.script = [(429, {})]
    got = await http.exchange("POST", server.url, idempotent=False)
    assert got.ok and server.hits == 3
    await http.close()


async def test_a_refused_connection_is_retried_and_safe_to_resend() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clock = Clock()
    http = client(clock, retries=2, backoff=Backoff(0.1, 1))
    got = await http.exchange("POST", f"http://127.0.0.1:{port}/", idempotent=False)
    assert got.status is None and got.retryable and got.safe_to_resend and got.attempts == 3
    await http.close()


async def test_secrets_are_redacted_from_bodies_and_errors(server: Server) -> None:
    clock = Clock()
    http = Outbound(session=None, timeout_s=2, secrets=lambda: ["answer"], sleep=clock.sleep)
    got = await http.exchange("GET", server.url)
    assert "answer" not in got.body and "***" in got.body
    await http.close()
