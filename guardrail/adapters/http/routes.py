"""The route table and its handlers. A handler parses (schemas), calls the engine, serializes.

The table (:data:`ROUTES`) is the single source of truth for the router, the auth scopes and the
OpenAPI document.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel

from guardrail.adapters.http import otlp
from guardrail.adapters.http.alertmanager_hook import AlertHookOut, AlertmanagerWebhookIn, alertmanager_hook
from guardrail.adapters.http.auth import Principal, Scope
from guardrail.adapters.http.errors import NotReady
from guardrail.adapters.http.parsing import read_json, read_query
from guardrail.adapters.http.schemas import (
    DeployList,
    DeployOut,
    EventList,
    EventOut,
    EventsQuery,
    Health,
    IngestOut,
    ListQuery,
    MarkerIn,
    OverrideIn,
    PromoteIn,
    RollbackIn,
    SamplesIn,
    WaitOut,
    WaitQuery,
)
from guardrail.config import Settings
from guardrail.domain.errors import ConflictError, ValidationError
from guardrail.domain.limits import check_not_ahead, check_window
from guardrail.domain.model import Sample
from guardrail.domain.records import Deploy
from guardrail.service.engine import Engine
from guardrail.telemetry import Telemetry

log = logging.getLogger("guardrail.http")

ENGINE = web.AppKey("guardrail.engine", Engine)
SETTINGS = web.AppKey("guardrail.settings", Settings)
TELEMETRY = web.AppKey("guardrail.telemetry", Telemetry)
OPENAPI = web.AppKey("guardrail.openapi", dict)
PRINCIPAL = web.RequestKey("guardrail.principal", Principal | None)  # the authenticated caller

API = "/api/v1"
READY_TIMEOUT_S = 5.0
IDEMPOTENCY_KEY_MAX = 255

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    scope: Scope | None  # None: open (no token needed)
    tag: str = "deploys"
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    status: int = 200
    response: type[BaseModel] | Literal["text", "openapi"] | None = None
    errors: tuple[int, ...] = ()
    headers: tuple[tuple[str, str], ...] = field(default=())  # documented request headers (name, help)


# --- helpers ---------------------------------------------------------------------------------------


def _json(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=model.model_dump_json().encode(), status=status, content_type="application/json", headers=headers
    )


def _engine(request: web.Request) -> Engine:
    return request.app[ENGINE]


def _public_url(request: web.Request) -> str:
    return request.app[SETTINGS].server.public_url


def _deploy_out(request: web.Request, deploy: Deploy) -> DeployOut:
    return DeployOut.of(deploy, _public_url(request))


def _who(request: web.Request) -> str:
    principal = request[PRINCIPAL]
    return principal.name if principal is not None else "anonymous"


async def _existing(request: web.Request) -> Deploy:
    return await _engine(request).get_deploy(request.match_info["id"])


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > IDEMPOTENCY_KEY_MAX or not key.isprintable() or not key.isascii():
        raise ValidationError(
            f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX} printable ASCII characters "
            "(e.g. the CI run id and attempt)",
            field="Idempotency-Key",
        )
    return key


_IDENTITY = ("service", "environment", "version", "previous_version", "commit")


# --- deploys ---------------------------------------------------------------------------------------


async def create_deploy(request: web.Request) -> web.Response:
    key = _idempotency_key(request)
    body = await read_json(request, MarkerIn)
    marker = body.to_domain(request.app[SETTINGS].analysis)
    engine = _engine(request)
    now = engine.clock()
    check_not_ahead(marker.started_at, now=now, field="started_at")
    check_not_ahead(marker.commit_time, now=now, field="commit_time")
    deploy, created = await engine.record_deploy(marker, idempotency_key=key)
    if created:
        # as stored, so that a replay (read from the store) answers with the very same body
        deploy = await engine.get_deploy(deploy.id)
    else:
        differs = [f for f in _IDENTITY if getattr(deploy.marker, f) != getattr(marker, f)]
        if differs:
            raise ConflictError(
                f"Idempotency-Key {key!r} was already used for deploy {deploy.id} with a different "
                f"{', '.join(differs)}; use a new key for a new deploy",
                field="Idempotency-Key",
            )
    out = _deploy_out(request, deploy)
    return _json(out, 201 if created else 200, {"Location": out.links.self})


async def list_deploys(request: web.Request) -> web.Response:
    q = read_query(request, ListQuery)
    deploys = await _engine(request).list_deploys(
        service=q.service,
        environment=q.environment,
        state=q.state,
        since=q.since,
        until=q.until,
        limit=q.limit,
    )
    return _json(DeployList(deploys=[_deploy_out(request, d) for d in deploys]))


async def get_deploy(request: web.Request) -> web.Response:
    return _json(_deploy_out(request, await _existing(request)))


async def list_events(request: web.Request) -> web.Response:
    q = read_query(request, EventsQuery)
    events = await _engine(request).events(request.match_info["id"], after_seq=q.after)
    return _json(EventList(events=[EventOut.of(e) for e in events]))


async def wait_deploy(request: web.Request) -> web.Response:
    q = read_query(request, WaitQuery)
    timeout = min(q.timeout, request.app[SETTINGS].server.wait_max_s)
    # checked first: Engine.wait keeps a wake-up event per id asked for, even an unknown one
    engine = _engine(request)
    deploy_id = (await _existing(request)).id
    if q.until == "settled":
        deploy = await engine.settle(deploy_id, timeout)
    else:
        deploy = await engine.wait(deploy_id, timeout)
    pending = await engine.pending_actions(deploy_id)
    out = WaitOut.of(deploy, _public_url(request), terminal=deploy.state.terminal)
    return _json(out.model_copy(update={"actions_pending": pending}))


def _override(action: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        if action == "promote":
            body: OverrideIn = await read_json(request, PromoteIn)
            what = "promote_full" if isinstance(body, PromoteIn) and body.full else "promote"
        elif action == "rollback":
            body = await read_json(request, RollbackIn)
            what = action
        else:
            body = await read_json(request, OverrideIn)
            what = action
        deploy = await _engine(request).override(
            request.match_info["id"],
            what,
            who=_who(request),
            why=body.reason,
            force=isinstance(body, RollbackIn) and body.force
        )
        return _json(_deploy_out(request, deploy))

    handler.__name__ = f"{action}_deploy"
    return handler


async def push_samples(request: web.Request) -> web.Response:
    body = await read_json(request, SamplesIn)
    samples: list[Sample] = []
    for i, s in enumerate(body.samples):  # every sample is checked before anything is stored
        try:
            samples.append(s.to_domain())
        except ValidationError as e:
            where = f"samples[{i}].{e.field}" if e.field else f"samples[{i}]"
            raise ValidationError(f"{where}: {e.detail}", field=where) from None
    deploy = await _existing(request)
    started = deploy.marker.started_at if deploy.marker.started_at is not None else deploy.data_time
    for i, sample in enumerate(samples):  # windows near the deploy's data time only (docs/hardening.md)
        try:
            check_window(sample.start, sample.end, deploy_start=started)
        except ValidationError as e:
            raise ValidationError(f"samples[{i}].{e.detail}", field=f"samples[{i}].{e.field}") from None
    result = await _engine(request).ingest(deploy.id, samples)
    out = IngestOut(
        accepted=result.accepted, duplicates=result.duplicates, deploy=_deploy_out(request, result.deploy)
    )
    return _json(out, 202)


# --- operations ------------------------------------------------------------------------------------


async def metrics(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(request.app[TELEMETRY].registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


async def healthz(request: web.Request) -> web.Response:
    return _json(Health())


async def readyz(request: web.Request) -> web.Response:
    try:
        await asyncio.wait_for(_engine(request).ready(), timeout=READY_TIMEOUT_S)
    except Exception as e:
        # the exception text may hold a database URL: log the type only, and only here
        log.warning("readiness check failed: database unreachable (%s)", type(e).__name__)
        raise NotReady(f"database unreachable ({type(e).__name__})") from None
    return _json(Health())


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


# --- the table -------------------------------------------------------------------------------------

_BODY = (400, 413, 415)
_AUTH_READ = (401,)
_AUTH_SCOPED = (401, 403)
_OVERRIDE_HELP = {
    "promote": "Advance to the next step now (full: jump to the last step), without waiting for the judge.",
    "rollback": "Roll back to the previous version now.",
    "pause": "Hold the rollout where it is; a failing verdict still rolls back.",
    "resume": "Continue a paused rollout.",
}

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        f"{API}/deploys",
        create_deploy,
        "createDeploy",
        "Record a deploy marker and start the rollout",
        "ci",
        body=MarkerIn,
        status=201,
        response=DeployOut,
        errors=(*_BODY, *_AUTH_SCOPED, 409, 502),
        headers=(
            (
                "Idempotency-Key",
                "a retried request with the same key returns the deploy recorded the first time (200)",
            ),
        ),
    ),
    Route(
        "GET",
        f"{API}/deploys",
        list_deploys,
        "listDeploys",
        "List deploys, newest first",
        "read",
        query=ListQuery,
        response=DeployList,
        errors=(400, *_AUTH_READ),
    ),
    Route(
        "GET",
        f"{API}/deploys/{{id}}",
        get_deploy,
        "getDeploy",
        "A deploy: state, current step, latest verdict with evidence",
        "read",
        response=DeployOut,
        errors=(*_AUTH_READ, 404),
    ),
    Route(
        "GET",
        f"{API}/deploys/{{id}}/events",
        list_events,
        "listDeployEvents",
        "The timeline: transitions, verdicts, adapter actions, overrides",
        "read",
        query=EventsQuery,
        response=EventList,
        errors=(400, *_AUTH_READ, 404),
    ),
    Route(
        "GET",
        f"{API}/deploys/{{id}}/wait",
        wait_deploy,
        "waitDeploy",
        "Long-poll until the deploy reaches a terminal state (or, with until=settled, until its adapter "
        "actions are done) or the timeout passes",
        "read",
        query=WaitQuery,
        response=WaitOut,
        errors=(400, *_AUTH_READ, 404),
    ),
    *(
        Route(
            "POST",
            f"{API}/deploys/{{id}}/{action}",
            _override(action),
            f"{action}Deploy",
            _OVERRIDE_HELP[action],
            "operator",
            body={"promote": PromoteIn, "rollback": RollbackIn}.get(action, OverrideIn),
            response=DeployOut,
            errors=(*_BODY, *_AUTH_SCOPED, 404, 409, 502),
        )
        for action in ("promote", "rollback", "pause", "resume")
    ),
    Route(
        "POST",
        f"{API}/deploys/{{id}}/samples",
        push_samples,
        "pushSamples",
        "Push canary and baseline sample windows; analysed on their data time",
        "ci",
        body=SamplesIn,
        status=202,
        response=IngestOut,
        errors=(*_BODY, *_AUTH_SCOPED, 404, 502),
    ),
    Route(
        "POST",
        otlp.PATH,
        otlp.export_metrics,
        "exportMetrics",
        "OTLP/HTTP metrics receiver: OpenTelemetry data points become canary and baseline windows",
        "ci",
        tag="otlp",
        errors=(*_BODY, *_AUTH_SCOPED, 503),
    ),
    Route(
        "POST",
        "/hooks/alertmanager",
        alertmanager_hook,
        "alertmanagerHook",
        "Alertmanager webhook (payload version 4): alerts for a service during a deploy's watch window "
        "count against that deploy",
        "ci",
        tag="alerts",
        body=AlertmanagerWebhookIn,
        response=AlertHookOut,
        errors=(*_BODY, *_AUTH_SCOPED, 503),
    ),
    Route(
        "GET",
        f"{API}/openapi.json",
        openapi,
        "openapi",
        "This document",
        None,
        tag="meta",
        response="openapi",
    ),
    Route("GET", "/metrics", metrics, "metrics", "Prometheus metrics", None, tag="meta", response="text"),
    Route("GET", "/healthz", healthz, "healthz", "The process is alive", None, tag="meta", response=Health),
    Route(
        "GET",
        "/readyz",
        readyz,
        "readyz",
        "The database is reachable",
        None,
        tag="meta",
        response=Health,
        errors=(503,),
    ),
)
