"""DORA key metrics from the store: the report behind ``GET /api/v1/dora`` and the Prometheus
gauges over a trailing window (``dora.window_days``), recomputed every ``dora.refresh_s``.

The figures are computed by :mod:`guardrail.domain.dora` (which says how each one is defined) from
the deploy records and their timelines, on wall time. Because they come from the database, every
replica of guardrail sets the same gauge values: a query may take any one of them (``max by`` or
``avg by`` over the ``instance`` label), never ``sum``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from guardrail.config import Settings
from guardrail.domain.dora import DAY_S, DoraFigures, dora_report
from guardrail.domain.errors import ValidationError
from guardrail.domain.records import Deploy, TimelineEvent
from guardrail.ports import Store
from guardrail.telemetry import Telemetry

log = logging.getLogger("guardrail.dora")

PAGE = 500  # deploys read per query


@dataclass(frozen=True, slots=True)
class DoraReport:
    since: float
    until: float
    watch_s: float
    groups: list[DoraFigures]


class DoraService:
    def __init__(
        self,
        *,
        store: Store,
        settings: Settings,
        telemetry: Telemetry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.telemetry = telemetry or Telemetry()
        self.clock = clock

    @property
    def window_s(self) -> float:
        return self.settings.dora.window_days * DAY_S

    async def report(
        self,
        service: str | None = None,
        environment: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> DoraReport:
        """Figures per (service, environment) for deploys recorded in ``[since, until)`` (wall time;
        defaults: the trailing ``dora.window_days`` up to now), optionally for one service and/or
        environment."""
        until = self.clock() if until is None else until
        since = until - self.window_s if since is None else since
        if until <= since:
            raise ValidationError(
                f"until ({until:.0f}) must be after since ({since:.0f}); both are RFC3339 or unix seconds",
                field="until",
            )
        deploys = await self._deploys(service, environment, since, until)
        records: list[tuple[Deploy, list[TimelineEvent]]] = []
        for d in deploys:
            # only terminal deploys are measured: the others need no timeline read
            records.append((d, await self.store.events(d.id) if d.state.terminal else []))
        watch_s = self.settings.rules.watch_s
        groups = dora_report(records, since=since, until=until, watch_s=watch_s)
        return DoraReport(since=since, until=until, watch_s=watch_s, groups=groups)

    async def _deploys(
        self, service: str | None, environment: str | None, since: float, until: float
    ) -> list[Deploy]:
        """Every deploy created in ``[since, until)``, read newest first a page at a time (the
        store's ``until`` is inclusive: the boundary deploys of a page are read again and skipped)."""
        seen: dict[str, Deploy] = {}
        upper = until
        while True:
            page = await self.store.list_deploys(
                service=service, environment=environment, since=since, until=upper, limit=PAGE
            )
            fresh = [d for d in page if d.id not in seen]
            for d in fresh:
                seen[d.id] = d
            if len(page) < PAGE:
                break
            if not fresh:  # more than a page recorded at the very same instant: cannot page past it
                log.warning(
                    "DORA: more than %d deploys share created_at %.6f; some are left out", PAGE, upper
                )
                break
            upper = min(d.created_at for d in page)
        return [d for d in seen.values() if since <= d.created_at < until]

    async def refresh(self) -> DoraReport:
        """Recompute the trailing window and set the ``guardrail_dora_*`` gauges."""
        report = await self.report()
        self.telemetry.set_dora(report.groups)
        return report

    async def run(self) -> None:
        """Refresh every ``dora.refresh_s`` seconds until cancelled (a failure is logged, the loop
        goes on)."""
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("DORA refresh failed")
            await asyncio.sleep(self.settings.dora.refresh_s)
