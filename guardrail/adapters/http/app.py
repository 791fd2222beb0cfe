"""The aiohttp application: routes from the table, auth by scope, every error as JSON.

``create_app`` only wires; the composition root (``guardrail.main``) adds start-up and cleanup
hooks (migrations, ``engine.resume``, timers) and runs it.
"""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

from guardrail.adapters.http.alertmanager_hook import AlertSink, install_alert_hook
from guardrail.adapters.http.auth import Authenticator
from guardrail.adapters.http.dora_api import DORA_ROUTES
from guardrail.adapters.http.drafts_api import DRAFT_ROUTES, DRAFTS
from guardrail.adapters.http.drafts_api import document as document_drafts
from guardrail.adapters.http.errors import (
    from_guardrail_error,
    from_http_exception,
    internal_error,
)
from guardrail.adapters.http.integrations import INTEGRATION_ROUTES, PRE_AUTH
from guardrail.adapters.http.openapi import build_openapi
from guardrail.adapters.http.otlp import OTLP, otlp_status_for
from guardrail.adapters.http.otlp import document as document_otlp
from guardrail.adapters.http.pages import PAGE_ROUTES
from guardrail.adapters.http.routes import (
    ENGINE,
    OPENAPI,
    PRINCIPAL,
    ROUTES,
    SETTINGS,
    TELEMETRY,
    Handler,
    Route,
)
from guardrail.config import Settings
from guardrail.domain.errors import GuardrailError
from guardrail.service.drafts import DraftService
from guardrail.service.engine import Engine
from guardrail.service.otlp_ingest import OtlpIngest
from guardrail.telemetry import Telemetry

log = logging.getLogger("guardrail.http")

AUTH = web.AppKey("guardrail.auth", Authenticator)
ROUTE_OF = web.AppKey("guardrail.route_of", dict)

# every route the app serves: the core table plus the drafts, the pages and the integrations
ALL_ROUTES: tuple[Route, ...] = (*ROUTES, *DRAFT_ROUTES, *PAGE_ROUTES, *INTEGRATION_ROUTES, *DORA_ROUTES)


def _version() -> str:
    try:
        return package_version("guardrail")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as ``{"error", "detail", "field"}`` (on the OTLP receiver: a
    ``google.rpc.Status`` in the request's encoding); unexpected ones are logged, not shown."""
    try:
        return await handler(request)
    except GuardrailError as e:
        return otlp_status_for(request, from_guardrail_error(e))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        max_body = request.app[SETTINGS].server.max_body_bytes
        return otlp_status_for(request, from_http_exception(request, e, max_body_bytes=max_body))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return otlp_status_for(request, internal_error())


def check_credentials(request: web.Request) -> None:
    """The caller's credentials for the matched route, from the request head only: the route's scope
    through the bearer token, or the route's own check (Flagger's token in the URL)."""
    match = request.match_info
    route: Route | None = request.app[ROUTE_OF].get(match.handler)
    scope = route.scope if route is not None else "read"  # a route missing from the table is not open
    if scope is not None:
        auth = request.app[AUTH]
        principal = auth.authenticate(request.headers.get("Authorization"))
        auth.authorize(principal, scope)
        request[PRINCIPAL] = principal
    else:
        own = PRE_AUTH.get(match.handler)
        if own is not None:
            own(request)
        request[PRINCIPAL] = None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate and check the route's scope before the handler reads anything."""
    if request.match_info.http_exception is None:  # unknown routes fall through to their 404 / 405
        check_credentials(request)
    return await handler(request)


async def expect_authenticated(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue`` is answered only once the caller is known: without valid credentials
    the final 401/403 comes instead of "100 Continue", and the client never sends its body."""
    try:
        check_credentials(request)
    except GuardrailError as e:
        return otlp_status_for(request, from_guardrail_error(e))
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version == HttpVersion11:  # what aiohttp's default expect handler does
        if expect.lower() != "100-continue":
            raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # type: ignore[attr-defined]
    return None


def create_app(
    *,
    engine: Engine,
    settings: Settings,
    telemetry: Telemetry,
    otlp: OtlpIngest | None = None,
    alert_sink: AlertSink | None = None,
    drafts: DraftService | None = None,
) -> web.Application:
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[error_middleware, auth_middleware],
        # bodies are inflated by parsing.read_body: bounded, and a truncated gzip body is an error
        handler_args={"auto_decompress": False},
    )
    app[ENGINE] = engine
    app[SETTINGS] = settings
    app[TELEMETRY] = telemetry
    if drafts is not None:  # without it the drafts routes answer 503 (the composition root passes it)
        app[DRAFTS] = drafts
    app[AUTH] = Authenticator(settings.tokens)
    app[ROUTE_OF] = {r.handler: r for r in ALL_ROUTES}
    install_alert_hook(app, alert_sink)  # POST /hooks/alertmanager hands alerts to alert_sink
    app[OPENAPI] = build_openapi(ALL_ROUTES, version=_version(), server_url=settings.server.public_url)
    document_otlp(app[OPENAPI])
    document_drafts(app[OPENAPI])
    app[OTLP] = otlp or OtlpIngest(engine, telemetry=telemetry)
    for r in ALL_ROUTES:
        app.router.add_route(
            r.method, r.path, r.handler, name=r.operation_id, expect_handler=expect_authenticated
        )
    return app  # with no tokens configured auth is off: the composition root warns about it
