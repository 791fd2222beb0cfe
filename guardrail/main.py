"""Composition root: the only place that wires concrete adapters to the service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from guardrail.adapters.annotate import build_annotators
from guardrail.adapters.db.migrate import database_exists, upgrade
from guardrail.adapters.db.store import SqlStore
from guardrail.adapters.http.app import create_app
from guardrail.adapters.http.dora_api import DORA
from guardrail.adapters.notify import build_notification_service
from guardrail.adapters.sources.prometheus import PrometheusMetricSource
from guardrail.config import Settings, describe_database_url
from guardrail.domain.errors import ConfigError
from guardrail.plugins import load_deploy_adapter
from guardrail.ports import DeployAdapter, Drafter, Store
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
    adapter action a previous process left unfinished; the timers run while the app runs."""
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


def serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def factory() -> web.Application:
        return await build_app(settings)

    web.run_app(factory(), host=settings.server.host, port=settings.server.port, print=None)
