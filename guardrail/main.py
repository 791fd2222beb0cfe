"""Composition root: the only place that wires concrete adapters to the service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from guardrail.adapters.annotate import build_annotators
from guardrail.adapters.db.migrate import database_exists, upgrade
from guardrail.adapters.db.store import SqlStore
from guardrail.adapters.http.app import create_app
from guardrail.adapters.http.dora_api import DORA
from guardrail.adapters.notify import build_notification_service, load_notifier
from guardrail.adapters.sources.prometheus import PrometheusAuth, PrometheusMetricSource
from guardrail.config import ConfigProblems, Settings, describe_database_url
from guardrail.domain.errors import ConfigError, GuardrailError
from guardrail.plugins import load_deploy_adapter
from guardrail.ports import DeployAdapter, Drafter, Store
from guardrail.redaction import Redactor, install_log_redaction, redacting_factory, settings_secrets
from guardrail.service.annotations import DeployAnnotations
from guardrail.service.dora import DoraService
from guardrail.service.drafts import DraftService
from guardrail.service.engine import Engine
from guardrail.service.notify import NotificationService
from guardrail.service.poller import Poller, PollSettings
from guardrail.telemetry import Telemetry

log = logging.getLogger("guardrail")

NOTIFICATIONS = web.AppKey("guardrail.notifications", NotificationService)


def build_drafts(settings: Settings, store: Store, *, clock: Callable[[], float] = time.time) -> DraftService:
    """The drafting service: offline templates always, the LLM drafter when ``llm.enabled``."""
    from guardrail.adapters.drafts.offline import OfflineDrafter

    offline = OfflineDrafter()
    llm: Drafter | None = None
    if settings.llm.enabled:
        from guardrail.adapters.llm import OpenAIDrafter

        llm = OpenAIDrafter.from_settings(settings, fallback=offline)
    return DraftService(
        store=store,
        offline=offline,
        llm=llm,
        public_url=settings.server.public_url,
        grafana_url=settings.server.grafana_url,
        clock=clock,
    )


async def open_drafts(
    settings: Settings, *, where: str | None = None
) -> tuple[DraftService, Callable[[], Any]]:
    """For the CLI: the drafting service on the configured database (migrated first), and a closer.
    Refuses a database that does not exist (a draft needs a deploy's record): never creates one.
    ``where`` names the database in that error (default: the URL, password hidden)."""
    if not await database_exists(settings.database_url):
        where = where or describe_database_url(settings.database_url)
        raise ConfigError(
            f"no guardrail database at {where}: a draft needs the record of a deploy; pass --config with the "
            "server's guardrail.yaml or --database-url with its database_url",
            field="database_url",
        )
    await upgrade(settings.database_url)
    store = SqlStore(settings.database_url)
    drafts = build_drafts(settings, store)

    async def close() -> None:
        await drafts.close()
        await store.close()

    return drafts, close


async def build_app(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    adapter_factory: Callable[[str, dict[str, Any]], DeployAdapter] = load_deploy_adapter,
    telemetry: Telemetry | None = None,
) -> web.Application:
    """Migrate the database, open the store, build the engine and the HTTP app. Start-up resumes any
    adapter action a previous process left unfinished; the timers run while the app runs. Adapter
    results and errors are redacted of every configured secret before the engine sees them."""
    adapter_factory = redacting_factory(adapter_factory, Redactor(settings_secrets(settings)))
    await upgrade(settings.database_url)
    store = SqlStore(settings.database_url, clock=clock)
    telemetry = telemetry or Telemetry()
    notifications = build_notification_service(settings.notifications, store=store, clock=clock, telemetry=telemetry)
    engine = Engine(store=store, settings=settings, adapter_factory=adapter_factory, telemetry=telemetry, clock=clock,
                    notifications=notifications)
    public = settings.server.public_url.rstrip("/")
    annotations = DeployAnnotations.from_config(
        build_annotators(settings.annotations, env=os.environ),
        settings.annotations,
        deploy_url=lambda d: f"{public}/deploys/{d.id}",
    )
    engine.on_created.append(annotations.started)  # deploy markers in Grafana / Honeycomb
    engine.on_finished.append(annotations.finished)
    dora = DoraService(store=store, settings=settings, telemetry=telemetry, clock=clock)
    drafts = build_drafts(settings, store, clock=clock)
    engine.on_finished.append(drafts.on_finished)  # a post-mortem is drafted after every rollback
    app = create_app(
        engine=engine, settings=settings, telemetry=telemetry, alert_sink=engine.external_alerts, drafts=drafts
    )
    if not settings.tokens:
        log.warning("no API tokens configured: authentication is OFF (fine on a laptop, not in production)")

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        resumed = await engine.resume()
        if resumed:
            log.info("resumed %d unfinished adapter action(s)", resumed)
        notifications.start()  # delivers first what a previous process left in the outbox
        timers = asyncio.get_running_loop().create_task(engine.run_timers())
        dora_task = asyncio.get_running_loop().create_task(dora.run())
        source = poller = None
        if settings.prometheus.url:  # deploys with metrics.source: prometheus are pulled
            source = PrometheusMetricSource.from_settings(settings.prometheus)
            poller = asyncio.get_running_loop().create_task(
                Poller(engine, source, clock=clock, settings=PollSettings.of(settings.prometheus)).run()
            )
        yield
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        if source is not None:
            await source.close()
        for task in (timers, dora_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await engine.close()
        await annotations.drain(timeout=5)
        await annotations.close()
        await drafts.close()
        await notifications.close()  # what is still pending stays in the outbox for the next start
        await store.close()

    app[DORA] = dora
    app.cleanup_ctx.append(lifecycle)
    app[NOTIFICATIONS] = notifications  # the engine is app[ENGINE] (set by create_app)
    return app


# --- start-up checks ------------------------------------------------------------------------------


def _moved(e: GuardrailError, inner: str, outer: str) -> tuple[str, str]:
    """A plugin's error (fields ``<inner>.name`` / ``<inner>.config.<key>``) at its config path."""
    field = e.field or f"{inner}.name"
    if field.startswith(f"{inner}.config"):
        path = f"{outer}.config{field[len(inner) + len('.config') :]}"
        return path, e.detail.replace(f"{inner}.config", f"{outer}.config", 1)
    return f"{outer}.type", e.detail.replace(f"{inner}.name", f"{outer}.type", 1)


def check_settings(settings: Settings, *, env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Every problem that would otherwise show only when a marker, an alert or a draft needs the
    part: each deploy adapter preset, notifier, annotator, the Prometheus source and the LLM built as
    they will be (no network; local files such as a CA bundle are read). Returns ``(config path,
    message)`` pairs, all of them, in config order."""
    env = os.environ if env is None else env
    problems: list[tuple[str, str]] = []

    def add(path: str, detail: str) -> None:
        problems.append((path, detail if detail.startswith(path) else f"{path}: {detail}"))

    for name, preset in settings.adapters.items():
        try:
            load_deploy_adapter(preset.type, preset.config)
        except ConfigError as e:
            path, detail = _moved(e, "adapter", f"adapters.{name}")
            key = path.removeprefix(f"adapters.{name}.config.").split(".")[0]
            if "required" in detail and key in preset.marker_keys:
                continue  # the marker supplies it
            add(path, detail)
    for name, notifier in settings.notifications.notifiers.items():
        try:
            load_notifier(notifier.type, notifier.config)
        except ConfigError as e:
            add(*_moved(e, "notifier", f"notifications.notifiers.{name}"))
    try:
        build_annotators(settings.annotations, env=env)
    except GuardrailError as e:
        add(e.field or "annotations", e.detail)
    prom = settings.prometheus
    if prom.url:
        files = {"bearer_token_file": prom.bearer_token_file}
        if prom.basic_auth is not None:
            files["basic_auth.password_file"] = prom.basic_auth.password_file
        for key, file in files.items():
            if file and not Path(file).is_file():
                add(f"prometheus.{key}", f"no such file: {file}")
        try:
            PrometheusAuth.of(prom).ssl_context()
        except GuardrailError as e:
            add(e.field or "prometheus", e.detail)
    if settings.llm.enabled:
        try:
            settings.llm.api_key(dict(env))
        except ConfigError as e:
            add(e.field or "llm", e.detail)
    return problems


def startup_line(settings: Settings, *, insecure_no_auth: bool = False) -> str:
    """What ``serve`` runs with, in one line: address, database (password hidden), auth, deploy
    presets, metric sources, notifiers and annotators. No secret is in it."""
    s = settings.server
    auth = (
        f"auth: {len(settings.tokens)} tokens ({', '.join(t.name for t in settings.tokens)})"
        if settings.tokens
        else "auth: OFF" + (" (--insecure-no-auth)" if insecure_no_auth else "")
    )
    presets = ", ".join(f"{n} ({p.type})" for n, p in settings.adapters.items()) or "none"
    sources = "push" + (f", prometheus {settings.prometheus.url}" if settings.prometheus.url else "")
    notifiers = ", ".join(f"{n} ({p.type})" for n, p in settings.notifications.notifiers.items()) or "none"
    annotations = ", ".join(k for k in ("grafana", "honeycomb") if getattr(settings.annotations, k)) or "none"
    return (
        f"guardrail on http://{s.host}:{s.port} (public URL {s.public_url}); "
        f"database {describe_database_url(settings.database_url)}; {auth}; deploy presets: {presets}; "
        f"sources: {sources}; notifiers: {notifiers}; annotations: {annotations}"
    )


def serve(settings: Settings, *, insecure_no_auth: bool = False) -> None:
    """Check the whole configuration, refuse to run without tokens unless told, log one line saying
    what runs, then serve until stopped. Every log line (the access log too) is redacted of every
    configured secret and of token-like query parameters."""
    from guardrail.adapters.http.access_log import access_logger

    problems = check_settings(settings)
    if problems:
        raise ConfigProblems(problems)
    if not settings.tokens and not insecure_no_auth:
        raise ConfigError(
            "no API tokens configured (tokens: in the config, or GUARDRAIL_TOKENS): anyone who can reach the "
            "server could post markers and roll deploys back. Add tokens, or pass --insecure-no-auth for a "
            "server only you can reach",
            field="tokens",
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redactor = Redactor(settings_secrets(settings))
    install_log_redaction(redactor)
    log.info("%s", startup_line(settings, insecure_no_auth=insecure_no_auth))

    async def factory() -> web.Application:
        return await build_app(settings)

    web.run_app(
        factory(),
        host=settings.server.host,
        port=settings.server.port,
        print=None,
        access_log_class=access_logger(redactor),
    )
