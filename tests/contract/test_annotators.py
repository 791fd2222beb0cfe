"""Contract of the Annotator port (Grafana annotations, Honeycomb markers) against fake servers on
loopback that speak the documented formats and record what they received; then the background
fan-out with retries (``DeployAnnotations``)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from guardrail.adapters.annotate import build_annotators, policy_of
from guardrail.adapters.annotate.grafana import GrafanaAnnotator
from guardrail.adapters.annotate.honeycomb import HoneycombAnnotator
from guardrail.config import AnnotationsConfig
from guardrail.domain.errors import ConfigError
from guardrail.domain.model import ChangeType, DeployState, Step, Strategy
from guardrail.domain.records import Deploy, Marker
from guardrail.domain.rollout import Rollout
from guardrail.ports import AnnotationRef, Annotator, DeployAnnotation
from guardrail.service.annotations import DeployAnnotations, annotation_of

GRAFANA_TOKEN = "glsa_S3cretServiceAccount_77f1"
HONEYCOMB_KEY = "hcKEY-0123456789abcdef"
T_START = 1_714_557_600.25  # data time the deploy started (2024-05-01T10:00:00.25Z)
T_END = 1_714_558_500.75


# --- the fake servers --------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Fake:
    """A recording server. ``fail`` holds statuses to answer (in order) before behaving; ``hang_s``
    delays every answer."""

    seen: list[Seen] = field(default_factory=list)
    fail: list[int] = field(default_factory=list)
    hang_s: float = 0.0
    retry_after: str | None = None  # sent with the failures in ``fail``
    annotations: dict[int, dict[str, Any]] = field(default_factory=dict)
    next_id: int = 1
    url: str = ""

    async def _prelude(self, request: web.Request) -> tuple[Any, web.Response | None]:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.seen.append(Seen(request.method, request.path, dict(request.headers), body))
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        if self.fail:
            status = self.fail.pop(0)
            # a careless server echoing the credential it got: it must not reach a log
            echoed = request.headers.get("Authorization") or request.headers.get("X-Honeycomb-Team")
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return body, web.json_response(
                {"message": f"failed for {echoed}"}, status=status, headers=headers
            )
        return body, None

    # Grafana: POST /api/annotations, PATCH /api/annotations/{id}
    async def grafana_post(self, request: web.Request) -> web.Response:
        body, failed = await self._prelude(request)
        if failed is not None:
            return failed
        if request.headers.get("Authorization") != f"Bearer {GRAFANA_TOKEN}":
            return web.json_response({"message": "Unauthorized"}, status=401)
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return web.json_response({"message": "bad request data"}, status=400)
        if not isinstance(body.get("time"), int) or not isinstance(body.get("timeEnd", 0), int):
            return web.json_response({"message": "time and timeEnd are epoch milliseconds"}, status=400)
        ident, self.next_id = self.next_id, self.next_id + 1
        self.annotations[ident] = dict(body)
        return web.json_response({"message": "Annotation added", "id": ident})

    async def grafana_patch(self, request: web.Request) -> web.Response:
        body, failed = await self._prelude(request)
        if failed is not None:
            return failed
        if request.headers.get("Authorization") != f"Bearer {GRAFANA_TOKEN}":
            return web.json_response({"message": "Unauthorized"}, status=401)
        ident = int(request.match_info["id"])
        if ident not in self.annotations:
            return web.json_response({"message": "Could not find annotation to update"}, status=404)
        self.annotations[ident].update(body)
        return web.json_response({"message": "Annotation patched"})

    # Honeycomb: POST /1/markers/{dataset}
    async def honeycomb_post(self, request: web.Request) -> web.Response:
        body, failed = await self._prelude(request)
        if failed is not None:
            return failed
        if request.headers.get("X-Honeycomb-Team") != HONEYCOMB_KEY:
            return web.json_response({"error": "unknown API key - check your credentials"}, status=401)
        times_ok = all(isinstance(body.get(k), int) for k in ("start_time", "end_time"))
        if not isinstance(body, dict) or not times_ok or not isinstance(body.get("message"), str):
            return web.json_response(
                {"error": "start_time and end_time are integer unix seconds"}, status=400
            )
        ident = f"m{self.next_id}"
        self.next_id += 1
        marker = {**body, "id": ident, "dataset": request.match_info["dataset"]}
        self.annotations[len(self.annotations) + 1] = marker
        return web.json_response(marker, status=201)


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    f = Fake()
    app = web.Application()
    app.router.add_post("/api/annotations", f.grafana_post)
    app.router.add_patch("/api/annotations/{id}", f.grafana_patch)
    app.router.add_post("/1/markers/{dataset}", f.honeycomb_post)
    server = TestServer(app)
    await server.start_server()
    f.url = str(server.make_url("/"))
    yield f
    await server.close()


def grafana(url: str, **kw: Any) -> GrafanaAnnotator:
    return GrafanaAnnotator(url=url, token=GRAFANA_TOKEN, **{"timeout_s": 2.0, **kw})


def honeycomb(url: str, **kw: Any) -> HoneycombAnnotator:
    return HoneycombAnnotator(
        api_url=url, dataset="checkout", api_key=HONEYCOMB_KEY, **{"timeout_s": 2.0, **kw}
    )


MAKERS: dict[str, Callable[..., Any]] = {"grafana": grafana, "honeycomb": honeycomb}


@pytest.fixture(params=sorted(MAKERS))
async def annotator(request: pytest.FixtureRequest, fake: Fake) -> AsyncIterator[Any]:
    a = MAKERS[request.param](fake.url)
    yield a
    await a.close()


def info(**changes: Any) -> DeployAnnotation:
    base = DeployAnnotation(
        deploy_id="dep-42",
        service="checkout",
        environment="production",
        version="v2.4.1",
        previous_version="v2.4.0",
        commit="9f1c2ab",
        url="https://guardrail.example.test/api/v1/deploys/dep-42",
        started_at=T_START,
    )
    return replace(base, **changes)


def finished_info(**changes: Any) -> DeployAnnotation:
    return info(finished_at=T_END, result="rolled_back", summary="canary 5xx 4.7% vs 0.1%", **changes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the contract: every annotator -------------------------------------------------------------------


async def test_an_annotator_implements_the_port(annotator: Any) -> None:
    assert isinstance(annotator, Annotator)
    assert annotator.name in MAKERS


async def test_a_deploy_start_and_end_leave_exactly_one_mark_covering_it(annotator: Any, fake: Fake) -> None:
    started = await annotator.deploy_started(info())
    assert started.ok, started.detail
    ended = await annotator.deploy_finished(finished_info(), started.ref)
    assert ended.ok, ended.detail
    assert len(fake.annotations) == 1


async def test_a_refused_connection_is_a_retryable_failure_not_an_exception(annotator: Any) -> None:
    dead = MAKERS[annotator.name](f"http://127.0.0.1:{free_port()}")
    try:
        result = await dead.deploy_finished(finished_info(), None)
    finally:
        await dead.close()
    assert not result.ok and result.retryable


async def test_a_hung_server_is_bounded_by_the_timeout(fake: Fake, annotator: Any) -> None:
    fake.hang_s = 5.0
    slow = MAKERS[annotator.name](fake.url, timeout_s=0.3)
    t0 = time.monotonic()
    try:
        result = await slow.deploy_finished(finished_info(), None)
    finally:
        await slow.close()
    assert time.monotonic() - t0 < 2.0
    assert not result.ok and result.retryable and "timed out" in result.detail


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (429, True), (400, False), (403, False)]
)
async def test_5xx_and_429_are_retryable_other_4xx_are_not(
    annotator: Any, fake: Fake, status: int, retryable: bool
) -> None:
    fake.fail = [status]
    result = await annotator.deploy_finished(finished_info(), None)
    assert not result.ok and result.retryable is retryable
    assert str(status) in result.detail


async def test_the_credential_never_shows_in_details_or_repr(annotator: Any, fake: Fake) -> None:
    fake.fail = [500]  # the fake echoes the credential it received in its error body
    result = await annotator.deploy_finished(finished_info(), None)
    assert not result.ok and "failed for" in result.detail
    for secret in (GRAFANA_TOKEN, HONEYCOMB_KEY):
        assert secret not in result.detail
        assert secret not in repr(annotator)


# --- Grafana -----------------------------------------------------------------------------------------


async def test_grafana_start_posts_a_point_annotation_with_tags_and_a_link(fake: Fake) -> None:
    g = grafana(fake.url, dashboard_uid="guardrail-canary", tags=("team-cart",))
    try:
        result = await g.deploy_started(info())
    finally:
        await g.close()
    assert result.ok and result.ref == AnnotationRef("grafana", "1")
    (seen,) = fake.seen
    assert (seen.method, seen.path) == ("POST", "/api/annotations")
    assert seen.headers["Authorization"] == f"Bearer {GRAFANA_TOKEN}"
    assert seen.body["time"] == 1_714_557_600_250  # epoch ms of the data time the deploy started
    assert "timeEnd" not in seen.body
    assert seen.body["tags"] == ["deploy", "checkout", "v2.4.1", "production", "team-cart"]
    assert seen.body["dashboardUID"] == "guardrail-canary"
    assert 'href="https://guardrail.example.test/api/v1/deploys/dep-42"' in seen.body["text"]


async def test_grafana_end_patches_the_start_into_a_region_with_the_result(fake: Fake) -> None:
    g = grafana(fake.url)
    try:
        ref = (await g.deploy_started(info())).ref
        result = await g.deploy_finished(finished_info(), ref)
    finally:
        await g.close()
    assert result.ok
    assert [(s.method, s.path) for s in fake.seen] == [
        ("POST", "/api/annotations"),
        ("PATCH", "/api/annotations/1"),
    ]
    stored = fake.annotations[1]
    assert (stored["time"], stored["timeEnd"]) == (1_714_557_600_250, 1_714_558_500_750)
    assert stored["tags"] == ["deploy", "checkout", "v2.4.1", "production", "rolled_back"]
    assert "rolled_back" in stored["text"] and "canary 5xx 4.7% vs 0.1%" in stored["text"]
    assert "dashboardUID" not in stored  # org-wide: shown through the deploy tag


async def test_grafana_end_without_a_known_id_posts_a_region_instead(fake: Fake) -> None:
    g = grafana(fake.url)
    try:
        gone = await g.deploy_finished(finished_info(), AnnotationRef("grafana", "999"))  # e.g. deleted
        forgotten = await g.deploy_finished(finished_info(deploy_id="dep-43"), None)  # e.g. after a restart
    finally:
        await g.close()
    assert gone.ok and forgotten.ok
    assert [(s.method, s.path) for s in fake.seen] == [
        ("PATCH", "/api/annotations/999"),
        ("POST", "/api/annotations"),
        ("POST", "/api/annotations"),
    ]
    assert all(a["timeEnd"] == 1_714_558_500_750 for a in fake.annotations.values())
    assert gone.ref == AnnotationRef("grafana", "1")


# --- Honeycomb ---------------------------------------------------------------------------------------


async def test_honeycomb_makes_one_deploy_marker_when_the_deploy_ends(fake: Fake) -> None:
    h = honeycomb(fake.url)
    try:
        start = await h.deploy_started(info())
        end = await h.deploy_finished(finished_info(), start.ref)
    finally:
        await h.close()
    assert start.ok and start.ref is None and end.ok
    (seen,) = fake.seen
    assert (seen.method, seen.path) == ("POST", "/1/markers/checkout")
    assert seen.headers["X-Honeycomb-Team"] == HONEYCOMB_KEY
    assert seen.body == {
        "start_time": 1_714_557_600,
        "end_time": 1_714_558_501,
        "message": "checkout v2.4.1 to production: rolled_back (canary 5xx 4.7% vs 0.1%)",
        "type": "deploy",
        "url": "https://guardrail.example.test/api/v1/deploys/dep-42",
    }


# --- building from settings --------------------------------------------------------------------------


def test_annotators_are_built_from_settings_with_the_token_from_the_environment(fake: Fake) -> None:
    cfg = AnnotationsConfig.model_validate(
        {
            "grafana": {"url": "https://grafana.example.test", "token_env": "GRAFANA_SA_TOKEN"},
            "honeycomb": {"dataset": "__all__", "api_key": HONEYCOMB_KEY},
        }
    )
    built = build_annotators(cfg, env={"GRAFANA_SA_TOKEN": GRAFANA_TOKEN})
    assert [a.name for a in built] == ["grafana", "honeycomb"]
    with pytest.raises(ConfigError) as e:
        build_annotators(cfg, env={})
    assert e.value.field == "annotations.grafana.token_env"
    assert GRAFANA_TOKEN not in str(e.value)


def test_a_grafana_config_needs_exactly_one_of_token_and_token_env() -> None:
    with pytest.raises(ValueError, match="exactly one of token and token_env"):
        AnnotationsConfig.model_validate({"grafana": {"url": "https://g.example.test"}})


# --- the background fan-out --------------------------------------------------------------------------


def deploy(state: DeployState = DeployState.ANALYZING, **changes: Any) -> Deploy:
    marker = Marker(
        service="checkout",
        environment="production",
        version="v2.4.1",
        previous_version="v2.4.0",
        commit="9f1c2ab",
        strategy=Strategy.CANARY,
        change_type=ChangeType.FEATURE,
        started_at=T_START,
    )
    rollout = Rollout(
        steps=(Step(weight=10), Step(weight=100)),
        concurrent=True,
        state=state,
        reason="canary analysis failed: 5xx up" if state is DeployState.ROLLED_BACK else "",
    )
    base = Deploy(
        "dep-42", marker, rollout, created_at=time.time(), updated_at=time.time(), data_time=T_START
    )
    return replace(base, **changes)


def url_of(d: Deploy) -> str:
    return f"https://guardrail.example.test/api/v1/deploys/{d.id}"


class NoSleep:
    """Records the backoff delays instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, s: float) -> None:
        self.delays.append(s)


def retrying(sleep: NoSleep, retries: int = 3, **extra: Any) -> dict[str, Any]:
    """Annotator arguments for the seam's policy as ``annotations:`` builds it."""
    config = AnnotationsConfig(retries=retries, backoff_s=1.0, backoff_max_s=30.0)
    return {"policy": policy_of(config), "sleep": sleep, **extra}


@pytest.fixture
async def fanout(fake: Fake) -> AsyncIterator[tuple[DeployAnnotations, NoSleep]]:
    sleep = NoSleep()
    svc = DeployAnnotations(
        [grafana(fake.url, **retrying(sleep)), honeycomb(fake.url, **retrying(sleep))], deploy_url=url_of
    )
    yield svc, sleep
    await svc.close()


async def test_the_fanout_marks_a_deploy_in_grafana_and_honeycomb(
    fanout: tuple[DeployAnnotations, NoSleep], fake: Fake
) -> None:
    svc, _ = fanout
    svc.started(deploy())
    svc.finished(deploy(DeployState.ROLLED_BACK, data_time=T_END))
    assert await svc.drain(timeout=5)
    assert sorted((s.method, s.path) for s in fake.seen) == [
        ("PATCH", "/api/annotations/1"),
        ("POST", "/1/markers/checkout"),
        ("POST", "/api/annotations"),
    ]
    region = fake.annotations[1]
    assert (region["time"], region["timeEnd"]) == (1_714_557_600_250, 1_714_558_500_750)
    assert "canary analysis failed: 5xx up" in region["text"]


async def test_a_500_then_success_is_retried_with_backoff(
    fanout: tuple[DeployAnnotations, NoSleep], fake: Fake
) -> None:
    svc, sleep = fanout
    fake.fail = [500, 502]
    svc.started(deploy())
    assert await svc.drain(timeout=5)
    posts = [s for s in fake.seen if s.path == "/api/annotations"]
    assert len(posts) == 3 and len(fake.annotations) == 1
    assert len(sleep.delays) == 2  # capped doubling with jitter: within [c/2, c]
    assert 0.5 <= sleep.delays[0] <= 1.0 and 1.0 <= sleep.delays[1] <= 2.0


async def test_a_429_waits_as_long_as_its_retry_after_asks(
    fanout: tuple[DeployAnnotations, NoSleep], fake: Fake
) -> None:
    """Issue 13, case 9: Grafana and Honeycomb answer 429 when rate limited; ``Retry-After`` wins
    over the shorter backoff."""
    svc, sleep = fanout
    fake.fail, fake.retry_after = [429], "7"
    svc.started(deploy())
    assert await svc.drain(timeout=5)
    assert sleep.delays == [7.0] and len(fake.annotations) == 1


async def test_retries_are_bounded_and_a_4xx_is_not_retried(fake: Fake) -> None:
    sleep = NoSleep()
    svc = DeployAnnotations([grafana(fake.url, **retrying(sleep, retries=2))], deploy_url=url_of)
    try:
        fake.fail = [500] * 10
        svc.started(deploy())
        assert await svc.drain(timeout=5)
        assert len(fake.seen) == 3 and len(sleep.delays) == 2  # 1 attempt + 2 retries
        fake.fail, fake.seen = [400], []
        svc.finished(deploy(DeployState.PROMOTED, id="dep-9"))
        assert await svc.drain(timeout=5)
        assert len(fake.seen) == 1
    finally:
        await svc.close()


async def test_the_caller_never_waits_on_a_hung_annotator(fake: Fake) -> None:
    fake.hang_s = 3.0
    svc = DeployAnnotations([grafana(fake.url, timeout_s=0.5)], deploy_url=url_of)
    try:
        t0 = time.monotonic()
        svc.started(deploy())
        svc.finished(deploy(DeployState.ROLLED_BACK))
        assert time.monotonic() - t0 < 0.05  # both calls only scheduled the work
        assert await svc.drain(timeout=5)  # and the timeouts bound the work itself
        assert time.monotonic() - t0 < 2.5
    finally:
        await svc.close()


async def test_the_end_waits_for_the_start_and_updates_its_annotation(fake: Fake) -> None:
    fake.hang_s = 0.2
    svc = DeployAnnotations([grafana(fake.url)], deploy_url=url_of)
    try:
        svc.started(deploy())
        svc.finished(deploy(DeployState.PROMOTED))  # while the start is still in flight
        assert await svc.drain(timeout=5)
    finally:
        await svc.close()
    assert [(s.method, s.path) for s in fake.seen] == [
        ("POST", "/api/annotations"),
        ("PATCH", "/api/annotations/1"),
    ]


async def test_after_a_restart_the_end_marks_the_whole_deploy_as_a_region(fake: Fake) -> None:
    first = DeployAnnotations([grafana(fake.url)], deploy_url=url_of)
    first.started(deploy())
    assert await first.drain(timeout=5)
    await first.close()
    second = DeployAnnotations([grafana(fake.url)], deploy_url=url_of)  # a new process: ids forgotten
    try:
        second.finished(deploy(DeployState.PROMOTED, data_time=T_END))
        assert await second.drain(timeout=5)
    finally:
        await second.close()
    assert [s.method for s in fake.seen] == ["POST", "POST"]
    assert fake.annotations[2]["timeEnd"] == 1_714_558_500_750


async def test_tokens_never_reach_the_log(
    fanout: tuple[DeployAnnotations, NoSleep], fake: Fake, caplog: pytest.LogCaptureFixture
) -> None:
    svc, _ = fanout
    caplog.set_level(logging.DEBUG)
    fake.fail = [401] * 4  # answers echo the credential they got
    svc.started(deploy())
    svc.finished(deploy(DeployState.ROLLED_BACK))
    assert await svc.drain(timeout=5)
    assert "not made" in caplog.text  # the failures were logged...
    assert GRAFANA_TOKEN not in caplog.text and HONEYCOMB_KEY not in caplog.text  # ...without the tokens


def test_the_annotation_of_a_rolled_back_deploy_carries_the_reason_and_data_times() -> None:
    a = annotation_of(deploy(DeployState.ROLLED_BACK, data_time=T_END), "u")
    assert (a.started_at, a.finished_at, a.result) == (T_START, T_END, "rolled_back")
    assert a.summary == "canary analysis failed: 5xx up"
    assert annotation_of(deploy(), "u").finished_at is None
