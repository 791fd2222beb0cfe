"""Pull analysis data for the deploys whose marker says ``metrics.source: prometheus``.

Every ``poll_s`` the poller looks at each active pulled deploy and, once ``now - scrape_delay_s`` is
past the end of at least one more whole window (``analysis.interval_s``), fetches the windows from
where it stopped and hands them to ``Engine.ingest``, exactly like a push: the analysis runs on the
windows' data time. The first fetch of a deploy starts ``history_s`` before ``marker.started_at``
(the baseline's pre-deploy history). Windows are on a grid anchored at ``marker.started_at``.

Progress is kept in memory and re-derived after a restart: the deploy's ``data_time`` is the end of
the last stored window (windows already stored are ignored if fetched again).

A source that is down (or rejects the query) writes ONE timeline note per outage and one when it
comes back, sets ``guardrail_source_up`` to 0 and counts ``guardrail_source_errors_total``; the
deploy gets no data meanwhile, so the engine holds (it never promotes without data), and the
poller retries once per window until the source answers, then catches up from where it stopped.

Traffic shifts: when a rollout step changes the canary's weight (the first step included), the
engine dates the change at the data time of the verdict (or marker) that triggered it, but the
traffic really moves when the adapter has done it, ``scrape_delay_s`` or more later in wall
(= Prometheus) time for a later step. Windows after the step's data time that started before its
adapter action finished were served at the old weight, and so may be those that started less than
one scrape interval later (a boundary's value comes from the scrape before it; the poller takes
``scrape_delay_s`` as that bound). The poller does not hand those windows to the engine: they would
look like a canary getting less traffic than it was given. The pre-deploy history is not affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from guardrail.domain.errors import SourceUnavailableError, ValidationError
from guardrail.domain.model import Sample
from guardrail.domain.records import Deploy, EventKind
from guardrail.ports import MetricSource, SourceQuery
from guardrail.service.engine import Engine

log = logging.getLogger("guardrail.poller")

PULLED = "prometheus"  # marker.metrics_source of the deploys this poller serves


@dataclass(frozen=True, slots=True)
class PollSettings:
    scrape_delay_s: float = 15.0  # a window is fetched once now - scrape_delay_s is past its end
    history_s: float = 600.0  # baseline history before marker.started_at
    poll_s: float = 1.0  # how often deploys are looked at (each is fetched once per window)
    max_windows: int = 1000  # per fetch: catching up after an outage goes in chunks
    concurrency: int = 16  # deploys fetched at the same time

    @classmethod
    def of(cls, cfg: object) -> PollSettings:
        """From ``guardrail.config.PrometheusConfig`` (or anything with the same attributes)."""
        return cls(**{k: getattr(cfg, k) for k in ("scrape_delay_s", "history_s", "poll_s") if hasattr(cfg, k)})


@dataclass(slots=True)
class _Progress:
    next_start: float  # start of the first window not fetched yet
    steps_seen: int  # len(rollout.history) last time we looked
    skip_from: float = math.inf  # data time of the latest traffic shift (a step taking effect)
    skip_until: float = -math.inf  # wall time: that shift's action done + scrape_delay_s
    retry_at: float = -math.inf
    problem_kind: str | None = None  # "unavailable" | "rejected" while in trouble
    problem_since: float | None = None


def _shifted(p: _Progress, history: tuple[tuple[int, float], ...], until: float) -> None:
    """Note a step that took effect since we last looked: the windows from its data time until
    ``until`` (wall time) were served, at least in part, at the previous weight."""
    if len(history) > p.steps_seen:
        p.skip_from, p.skip_until = history[-1][1], max(p.skip_until, until)
    p.steps_seen = max(p.steps_seen, len(history))


def _mixed(p: _Progress, s: Sample) -> bool:
    return s.end > p.skip_from and s.start < p.skip_until


def window_origin(deploy: Deploy, interval_s: float, history_s: float) -> float:
    """Start of the first window pulled for a deploy: whole windows before marker.started_at."""
    started = deploy.marker.started_at if deploy.marker.started_at is not None else deploy.created_at
    return round(started - math.ceil(history_s / interval_s - 1e-9) * interval_s, 3)


class Poller:
    def __init__(
        self,
        engine: Engine,
        source: MetricSource,
        *,
        clock: Callable[[], float] = time.time,
        settings: PollSettings | None = None,
    ) -> None:
        self.engine = engine
        self.source = source
        self.clock = clock
        self.settings = settings or PollSettings()
        self.telemetry = engine.telemetry
        self._progress: dict[str, _Progress] = {}
        self._sem = asyncio.Semaphore(self.settings.concurrency)

    async def poll_once(self) -> int:
        """One look at every active pulled deploy; returns the number of samples handed to the engine."""
        deploys = [d for d in await self.engine.active_deploys() if d.marker.metrics_source == PULLED]
        for gone in set(self._progress) - {d.id for d in deploys}:
            del self._progress[gone]
        counts = await asyncio.gather(*(self._guarded(d) for d in deploys))
        return sum(counts)

    async def run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:  # keep polling; the store may be back next time
                log.exception("metric source poll failed")
            await asyncio.sleep(self.settings.poll_s)

    # --- one deploy -------------------------------------------------------------------------------
    async def _guarded(self, deploy: Deploy) -> int:
        async with self._sem:
            try:
                return await self._poll(deploy)
            except Exception:
                log.exception("pulling metrics for deploy %s failed", deploy.id)
                return 0

    async def _derive(self, deploy: Deploy, interval: float) -> _Progress:
        """Where to start for a deploy this process has not pulled for yet (new, or after a restart)."""
        origin = window_origin(deploy, interval, self.settings.history_s)
        started = deploy.marker.started_at if deploy.marker.started_at is not None else deploy.created_at
        next_start = deploy.data_time if deploy.data_time > started + 1e-6 else origin
        p = _Progress(next_start=next_start, steps_seen=len(deploy.rollout.history))
        if deploy.rollout.history:  # the latest step moved traffic: when did its action finish?
            done = [e for e in await self.engine.events(deploy.id) if e.kind is EventKind.ACTION_DONE
                    and e.details.get("kind") == "apply_step"]
            if done:
                p.skip_from = deploy.rollout.history[-1][1]
                p.skip_until = done[-1].wall_time + self.settings.scrape_delay_s
        return p

    async def _poll(self, deploy: Deploy) -> int:
        m = deploy.marker
        interval = m.analysis.interval_s
        p = self._progress.get(deploy.id)
        if p is None:
            p = self._progress[deploy.id] = await self._derive(deploy, interval)
        now = self.clock()
        _shifted(p, deploy.rollout.history, now + self.settings.scrape_delay_s)  # e.g. the first step, an override
        if now < p.retry_at:
            return 0
        n = math.floor((now - self.settings.scrape_delay_s - p.next_start) / interval + 1e-9)
        if n <= 0:
            return 0
        n = min(n, self.settings.max_windows)
        end = round(p.next_start + n * interval, 3)
        query = SourceQuery(
            service=m.service,
            environment=m.environment,
            canary_version=m.version,
            baseline_version=m.previous_version,
            start=p.next_start,
            end=end,
            interval_s=interval,
            overrides=dict(m.metrics_overrides),
        )
        name = getattr(self.source, "name", "source")
        t0 = time.perf_counter()
        try:
            samples = await self.source.fetch(query)
        except SourceUnavailableError as e:
            self.telemetry.source_up.labels(name).set(0)
            await self._trouble(deploy, p, "unavailable", f"metric source unavailable: {e.detail}; holding, "
                                "no promotion without data")
            p.retry_at = now + interval
            return 0
        except ValidationError as e:
            await self._trouble(deploy, p, "rejected", f"metric source rejected the query: {e.detail}; holding, "
                                "no promotion without data")
            p.retry_at = now + interval
            return 0
        finally:
            self.telemetry.source_fetch_seconds.labels(name).observe(time.perf_counter() - t0)
        self.telemetry.source_up.labels(name).set(1)
        if p.problem_kind is not None:
            down = now - (p.problem_since or now)
            p.problem_kind = p.problem_since = None
            await self.engine.note(
                deploy.id,
                f"metric source back after {down:.0f} s: pulling again from data time {p.next_start:.3f}",
                source=name,
            )
        kept = [s for s in samples if not _mixed(p, s)]
        if kept:
            result = await self.engine.ingest(deploy.id, kept)
            _shifted(p, result.deploy.rollout.history, self.clock() + self.settings.scrape_delay_s)
        p.next_start = end
        return len(kept)

    async def _trouble(self, deploy: Deploy, p: _Progress, kind: str, message: str) -> None:
        name = getattr(self.source, "name", "source")
        self.telemetry.source_errors.labels(name, kind).inc()
        if p.problem_kind == kind:
            return  # one note per outage
        log.warning("deploy %s: %s", deploy.id, message)
        p.problem_kind = kind
        if p.problem_since is None:
            p.problem_since = self.clock()
        with contextlib.suppress(Exception):  # the note must not stop the poll (the store may be down too)
            await self.engine.note(deploy.id, message, source=name, problem=kind)
