"""The rollout engine: applies events to deploys, persists every transition before its side effect,
carries out adapter actions, and re-derives verdicts from stored samples.

Concurrency: one asyncio lock per deploy serialises everything that touches its record (pushes,
overrides, adapter results, timers). Pushed samples are analysed as they arrive, on data time.

Actions run in the background: commands become rows of the intent log (``actions``) in the same
transaction as the new state, the request is answered, and the deploy's action runner (one task per
deploy and process) carries them out in order. An action is marked running before the adapter is
called and done/failed after; the deploy's lock is not held during the call, so pushes and
overrides are answered while a deploy command or webhook runs. ``settle`` (and ``GET .../wait
?until=settled``) waits for the runner. A crash in the middle of a call repeats that call with the
same ``action_key``, so a target can recognise it.

Several replicas (leases on): work on a deploy needs its row lease (``service.leases``), fenced by
its token. Whoever takes a deploy over from another replica (a push, an override, the timer sweep,
start-up) also takes over its unfinished actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from guardrail.config import Settings
from guardrail.domain.errors import (
    ConflictError,
    NotFoundError,
    PolicyBlockedError,
    ValidationError,
)
from guardrail.domain.judge import Judge
from guardrail.domain.judge.planning import Outlook, plan, previous_traffic
from guardrail.domain.model import Decision, DeployState, RuleCheck, Sample, Strategy, Verdict, default_steps
from guardrail.domain.policy import derive_facts, evaluate_policy
from guardrail.domain.records import Action, ActionStatus, Deploy, EventKind, Lease, Marker, TimelineEvent
from guardrail.domain.rollout import (
    ActionDone,
    Command,
    CommandKind,
    Override,
    Rollout,
    Start,
    VerdictReached,
    transition,
)
from guardrail.domain.rules import ExternalAlert, external_blame, with_rules
from guardrail.ports import ActionResult, DeployAdapter, DeployTarget, Store
from guardrail.retry import Backoff
from guardrail.service.alerting import DeployAlerts
from guardrail.service.analysis import analysis_spec, apply_weight, build_judge
from guardrail.service.leases import DeployLeases
from guardrail.service.notify import NotificationService
from guardrail.telemetry import Telemetry

log = logging.getLogger("guardrail.engine")


def _rollback_backoff(cfg: Any) -> Backoff:
    """The wait before rollback retry n: the shared rule's ceiling, no jitter (the due check
    computes it again and must agree)."""
    return Backoff(cfg.rollback_backoff_s, max(cfg.rollback_backoff_s, cfg.rollback_backoff_max_s))


ADAPTER_GUARD_S = 900.0  # a last-resort timeout around any adapter call (adapters have their own)


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int
    deploy: Deploy


class Engine:
    def __init__(
        self,
        *,
        store: Store,
        settings: Settings,
        adapter_factory: Callable[[str, dict[str, Any]], DeployAdapter],
        telemetry: Telemetry | None = None,
        clock: Callable[[], float] = time.time,
        notifications: NotificationService | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.telemetry = telemetry or Telemetry()
        self.clock = clock
        self._adapter_factory = adapter_factory
        self.alerts = DeployAlerts(notifications, settings)
        self._locks: dict[str, asyncio.Lock] = {}
        self._judges: dict[str, Judge] = {}
        self._adapters: dict[str, DeployAdapter] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._last_verdict: dict[str, tuple[str, float]] = {}
        self._rule_blame: dict[str, dict[str, bool]] = {}  # deploy -> rule -> attributable (last noted)
        # Alertmanager alerts firing on the baseline track now, by (service, environment): in memory,
        # Alertmanager resends what still fires
        self._baseline_alerts: dict[tuple[str, str], set[str]] = {}
        self._last_data_wall: dict[str, float] = {}
        self._stalled: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # observers (wired by the composition root): each is called once, on the process that made
        # the change, must return at once (schedule its own work) and never raise into the engine
        self.on_created: list[Callable[[Deploy], None]] = []
        self.on_finished: list[Callable[[Deploy], None]] = []
        self._policy = settings.policy.to_policy()
        cfg = settings.engine
        self.replica = cfg.replica_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.leases = cfg.leases == "on" or (
            cfg.leases == "auto" and settings.database_url.startswith("postgresql")
        )
        self._leases = DeployLeases(
            store, self.replica, lease_s=cfg.lease_s, wait_s=cfg.lease_wait_s, on_lost=self._forget
        )
        self._runners: dict[str, asyncio.Task[None]] = {}  # deploy -> its action runner
        self._backed_off: set[int] = set()  # rollback retries whose backoff this process waited
        self._backing_off: set[str] = set()  # deploys whose runner waits out a rollback retry's backoff

    def _observe(self, hooks: Sequence[Callable[[Deploy], None]], deploy: Deploy) -> None:
        for hook in hooks:
            try:
                hook(deploy)
            except Exception:  # an observer's bug must not stop a rollout or a rollback
                log.exception("deploy observer %r failed", hook)

    # --- helpers -------------------------------------------------------------------------------------
    def _lock(self, deploy_id: str) -> asyncio.Lock:
        return self._locks.setdefault(deploy_id, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def _hold(self, deploy_id: str, *, wait: bool = True) -> AsyncIterator[bool]:
        """Exclusive work on a deploy: this process's lock and, with several replicas, the deploy's
        row lease. Yields False when ``wait`` is False and it is busy (locked here, or leased by another
        replica); raises ``BusyError`` when waiting took longer than lease_wait_s."""
        lock = self._lock(deploy_id)
        if not wait and lock.locked():
            yield False
            return
        async with lock, self._lease(deploy_id, wait=wait) as held:
            yield held

    @contextlib.asynccontextmanager
    async def _lease(self, deploy_id: str, *, wait: bool = True) -> AsyncIterator[bool]:
        """The deploy's lease (always True without leases). Taking a deploy over from another replica
        (or a dead process) drops what this process cached about it and takes over its actions."""
        if not self.leases:
            yield True
            return
        async with self._leases.hold(deploy_id, wait=wait) as lease:
            if lease is None:
                yield False
                return
            if lease.last_owner != self.replica:
                if lease.last_owner is not None:
                    self._forget(deploy_id)  # another replica worked on it since: rebuild from the store
                await self._take_over_actions(deploy_id)
            yield True

    def _fence(self, deploy_id: str) -> Lease | None:
        """The lease writes about the deploy are fenced with (None without leases)."""
        return self._leases.current(deploy_id) if self.leases else None

    def _forget(self, deploy_id: str) -> None:
        """Drop what this process cached about a deploy; the next use rebuilds it from the store."""
        self._judges.pop(deploy_id, None)
        self._last_verdict.pop(deploy_id, None)
        self._rule_blame.pop(deploy_id, None)
        self.alerts.forget(deploy_id)

    async def _get(self, deploy_id: str) -> Deploy:
        d = await self.store.get_deploy(deploy_id)
        if d is None:
            raise NotFoundError(f"no deploy with id {deploy_id!r}", field="id")
        return d

    def _event(
        self, event_kind: EventKind, message: str, data_time: float | None, **details: Any
    ) -> TimelineEvent:
        return TimelineEvent(event_kind, message, data_time, self.clock(), details)

    def _notify(self, deploy_id: str) -> None:
        ev = self._changed.pop(deploy_id, None)
        if ev is not None:
            ev.set()

    def adapter_config(self, deploy: Deploy) -> tuple[str, dict[str, Any]]:
        """(entry-point name, config) of a deploy's adapter. A marker names an operator preset and may
        set only the keys the preset allows; only ``noop`` needs no preset, unless the server runs
        with ``allow_marker_adapters`` (local use)."""
        ref = deploy.marker.adapter
        preset = self.settings.adapters.get(ref.name)
        if preset is not None:
            extra = set(ref.config) - set(preset.marker_keys)
            if extra:
                allowed = preset.marker_keys or "none"
                raise ValidationError(
                    f"adapter preset {ref.name!r} does not let a marker set {sorted(extra)}; allowed: {allowed}",
                    field=f"adapter.config.{sorted(extra)[0]}",
                )
            return preset.type, {**preset.config, **ref.config}
        if ref.name == "noop" or self.settings.allow_marker_adapters:
            return ref.name, dict(ref.config)
        known = [*sorted(self.settings.adapters), "noop"]
        raise ValidationError(
            f"unknown deploy adapter preset {ref.name!r}; configured presets: {known} (markers cannot configure "
            "adapters themselves unless the server sets allow_marker_adapters)",
            field="adapter.name",
        )

    def adapter_for(self, deploy: Deploy) -> DeployAdapter:
        a = self._adapters.get(deploy.id)
        if a is None:
            a = self._adapter_factory(*self.adapter_config(deploy))
            self._adapters[deploy.id] = a
        return a

    # --- use cases -----------------------------------------------------------------------------------
    async def record_deploy(
        self, marker: Marker, *, idempotency_key: str | None = None
    ) -> tuple[Deploy, bool]:
        """Record the marker and start the rollout. A retried request with the same idempotency key
        returns the deploy recorded the first time."""
        now = self.clock()
        steps = marker.steps or default_steps(marker.strategy, self.settings.analysis.watch_s)
        marker = replace(
            marker, steps=steps, started_at=marker.started_at if marker.started_at is not None else now
        )
        rollout = Rollout(
            steps=steps,
            concurrent=marker.strategy is Strategy.CANARY,
            on_inconclusive=marker.analysis.on_inconclusive,
        )
        deploy = Deploy(
            id=uuid.uuid4().hex[:16],
            marker=marker,
            rollout=rollout,
            created_at=now,
            updated_at=now,
            data_time=marker.started_at or now,
        )
        analysis_spec(deploy, self.settings.analysis)  # reject bad metric overrides before storing anything
        self.adapter_for(deploy)  # likewise an unknown adapter or a bad adapter config
        if idempotency_key is not None:  # a retry is answered with the first deploy, not checked again
            first = await self.store.deploy_by_key(idempotency_key)
            if first is not None:
                self._adapters.pop(deploy.id, None)
                return self._replayed(first, marker, idempotency_key), False
        adapter_type, _ = self.adapter_config(deploy)
        policy = evaluate_policy(
            marker,
            self._policy,
            at=deploy.data_time,
            facts=derive_facts(
                marker,
                prometheus_configured=self.settings.prometheus.url is not None,
                adapter_type=adapter_type,
            ),
        )
        if policy.blocked:  # nothing is stored: CI gets the checks and the reason, and can fast-track
            self._adapters.pop(deploy.id, None)
            raise PolicyBlockedError(policy.summary(), policy=policy.to_dict())
        outlook = await self._outlook(deploy)
        marker = replace(marker, policy=policy.to_dict(), outlook=outlook.to_dict() if outlook else {})
        deploy = replace(deploy, marker=marker)
        created_event = self._event(
            EventKind.CREATED,
            f"deploy of {marker.service} {marker.version} to {marker.environment} recorded ({marker.strategy.value}, "
            f"{len(steps)} step(s): {', '.join(s.describe() for s in steps)})",
            deploy.data_time,
            version=marker.version,
            previous_version=marker.previous_version,
            commit=marker.commit,
            author=marker.author,
            change_type=marker.change_type.value,
            policy=policy.to_dict(),
        )
        first_events = []
        if outlook is not None:
            first_events.append(
                self._event(
                    EventKind.NOTE,
                    f"Outlook: {outlook.sentence}",
                    deploy.data_time,
                    outlook=outlook.to_dict(),
                )
            )
        if policy.fast_tracked:
            first_events.append(
                self._event(
                    EventKind.OVERRIDE,
                    f"policy fast-tracked by {marker.author or 'the marker'}: {marker.fast_track}",
                    deploy.data_time,
                    action="fast_track",
                    who=marker.author,
                    why=marker.fast_track,
                    overridden=[c.name for c in policy.checks if c.status == "overridden"],
                )
            )
        stored, created = await self.store.create_deploy(deploy, created_event, idempotency_key)
        if not created:
            self._adapters.pop(deploy.id, None)
            return self._replayed(stored, marker, idempotency_key), False
        if first_events:
            await self.store.save(stored.id, events=first_events)  # nobody else knows the deploy yet
        self.telemetry.deploys_created.labels(marker.service, marker.environment, marker.strategy.value).inc()
        self._last_data_wall[stored.id] = now
        await self.alerts.created(stored, now)
        self._observe(self.on_created, stored)
        async with self._hold(stored.id):
            stored = await self._apply(stored, Start(stored.data_time))
        await self._refresh_state_gauges()
        return stored, True

    async def _outlook(self, deploy: Deploy) -> Outlook | None:
        """How long this deploy's analysis will need, from the traffic of the service's last judged
        deploy in the same environment (None when there is none)."""
        m = deploy.marker
        try:
            recent = await self.store.list_deploys(service=m.service, environment=m.environment, limit=10)
        except Exception:  # an estimate must never stop a marker
            log.warning("could not read earlier deploys for the outlook", exc_info=True)
            return None
        for prev in recent:
            traffic = previous_traffic(prev)
            if traffic is None:
                continue
            total_rps, error_rate = traffic
            spec = analysis_spec(deploy, self.settings.analysis)
            first = next((s for s in deploy.rollout.steps if s.weight is None or s.weight > 0), None)
            share = (first.weight or 100) / 100 if first is not None else 1.0
            return plan(
                spec,
                total_rps=total_rps,
                error_rate=error_rate,
                canary_share=share,
                on_inconclusive=deploy.rollout.on_inconclusive,
                basis=f"traffic of the last deploy, {prev.marker.version}",
                pre_post=not deploy.rollout.concurrent,
            )
        return None

    @staticmethod
    def _replayed(stored: Deploy, marker: Marker, idempotency_key: str | None) -> Deploy:
        """A retried marker: the deploy recorded the first time, if the key was used for the same one."""
        old = stored.marker
        if (old.service, old.environment, old.version, old.commit) != (
            marker.service,
            marker.environment,
            marker.version,
            marker.commit,
        ):
            raise ConflictError(
                f"idempotency key {idempotency_key!r} was used for {old.service} {old.version} "
                f"({old.environment}, commit {old.commit}), not for this marker; use a new key",
                field="Idempotency-Key",
            )
        return stored

    async def ingest(self, deploy_id: str, samples: Sequence[Sample]) -> IngestResult:
        """Store pushed samples (duplicates ignored) and analyse on their data time."""
        async with self._hold(deploy_id):
            deploy = await self._get(deploy_id)
            t0 = time.perf_counter()
            new = await self.store.add_samples(deploy_id, samples)
            for s in new:
                self.telemetry.samples.labels(s.track.value).inc()
            if not new:
                return IngestResult(0, len(samples), deploy)
            self._last_data_wall[deploy_id] = self.clock()
            if deploy_id in self._stalled:
                self._stalled.discard(deploy_id)
                self.telemetry.stalled.labels(deploy_id, deploy.marker.service).set(0)
            data_time = max(deploy.data_time, max(s.end for s in new))
            deploy = replace(deploy, data_time=data_time)
            alert_events = await self._rules(deploy, new)
            if deploy.state.terminal or deploy.state is DeployState.ROLLING_BACK:
                await self.store.save(
                    deploy_id, data_time=data_time, events=alert_events, lease=self._fence(deploy_id)
                )
                return IngestResult(len(new), len(samples) - len(new), deploy)
            judge = self._judges.get(deploy_id)
            if judge is not None:
                judge.add_many(new)
            deploy = await self._analyse(deploy, extra_events=alert_events)
            self.telemetry.analysis_seconds.observe(time.perf_counter() - t0)
            return IngestResult(len(new), len(samples) - len(new), deploy)

    async def _rules(self, deploy: Deploy, new: Sequence[Sample]) -> list[TimelineEvent]:
        """The in-service alert rules on the new samples: notices and timeline events. Whether a rule
        firing on the canary fails the deploy is decided with the verdict (``_analyse``)."""
        alerts = self.alerts
        if not alerts.watching(deploy):
            if deploy.state is DeployState.PROMOTED:  # the post-promotion watch is over
                closed = await alerts.stop_watching(deploy, self.clock())
                return [self._alert_event(deploy, t) for t in closed]
            return []
        stored = await self.store.samples(deploy.id) if alerts.needs_history(deploy) else []
        transitions = alerts.evaluate(deploy, stored, new)
        for t in transitions:
            await alerts.transition(deploy, t, self.clock())
        return [self._alert_event(deploy, t) for t in transitions]

    def _rule_checks(self, deploy: Deploy, judge: Judge | None, verdict: Verdict | None) -> list[RuleCheck]:
        """Deploy-failing rules firing on the canary during its steps, with their attribution."""
        if not self.settings.rules.fails_deploy or deploy.state not in (
            DeployState.ANALYZING,
            DeployState.PAUSED,
        ):
            return []
        metrics = judge.spec.metrics if judge is not None else ()
        return self.alerts.attribute(deploy, metrics, verdict.evidence if verdict is not None else ())

    def _alert_event(self, deploy: Deploy, t: Any) -> TimelineEvent:
        word = "firing" if t.state.value == "firing" else "resolved"
        return self._event(
            EventKind.ALERT,
            f"{t.rule.name} ({t.rule.severity.value}) {word}: {t.sentence}",
            t.at,
            alert=t.to_dict(),
        )

    async def external_alerts(self, alerts: Sequence[ExternalAlert]) -> int:
        """Alertmanager alerts (``/hooks/alertmanager``): those for a service with an active deploy, or
        one promoted within the watch window (wall time), go on that deploy's timeline; a firing
        page-severity alert during the canary steps is a failure signal and rolls the deploy back,
        unless it is not the new version's (``domain.rules.external_blame``: a baseline-track alert, or
        one firing on both tracks)."""
        matched = 0
        now = self.clock()
        candidates = await self.store.list_deploys(limit=500, since=now - 7 * 86400)
        for alert in alerts:  # first what fires on the baseline now (Alertmanager resends what fires)
            if alert.labels.get("track") == "baseline":
                firing = self._baseline_alerts.setdefault(
                    (alert.service or "", alert.environment or ""), set()
                )
                (firing.add if alert.status.value == "firing" else firing.discard)(alert.name)
        for alert in alerts:
            for deploy in candidates:
                m = deploy.marker
                if alert.service != m.service or (alert.environment and alert.environment != m.environment):
                    continue
                active = not deploy.state.terminal and deploy.state is not DeployState.ROLLING_BACK
                watched = (
                    deploy.state is DeployState.PROMOTED
                    and now - deploy.updated_at <= self.settings.rules.watch_s
                )
                if not (active or watched):
                    continue
                matched += 1
                async with self._hold(deploy.id):
                    fresh = await self._get(deploy.id)
                    ev = self._event(
                        EventKind.ALERT,
                        f"Alertmanager: {alert.name} ({alert.severity}) "
                        f"{alert.status.value}: {alert.summary}",
                        fresh.data_time,
                        alert=alert.to_dict(),
                    )
                    fails = (
                        alert.status.value == "firing"
                        and alert.severity == "page"
                        and self.settings.rules.fails_deploy
                        and fresh.state in (DeployState.ANALYZING, DeployState.PAUSED)
                    )
                    shared = self._baseline_alerts.get((alert.service or "", alert.environment or ""), set())
                    if shared == set() and alert.environment is None:
                        shared = self._baseline_alerts.get((alert.service or "", m.environment), set())
                    why_not = external_blame(alert, shared) if fails else None
                    if why_not is not None:
                        fails = False
                        ev = replace(
                            ev, message=f"{ev.message} (pages, but does not fail the deploy: {why_not})"
                        )
                    if fails:
                        await self._apply(
                            fresh,
                            VerdictReached(
                                Decision.FAIL, fresh.data_time, f"alert {alert.name} firing: {alert.summary}"
                            ),
                            extra_events=[ev],
                        )
                    else:
                        await self.store.save(deploy.id, events=[ev], lease=self._fence(deploy.id))
        return matched

    async def override(
        self, deploy_id: str, action: str, *, who: str, why: str, force: bool = False
    ) -> Deploy:
        """Manual promote / promote_full / rollback / pause / resume, audited with who and why. Rolling
        back a promoted deploy when a newer deploy of the service (same environment) exists is refused
        unless ``force``: it would put the previous version back over the newer one."""
        if not why.strip():
            raise ValidationError("say why: the reason is recorded in the timeline", field="reason")
        async with self._hold(deploy_id):
            deploy = await self._get(deploy_id)
            if action == "rollback" and deploy.state is DeployState.PROMOTED and not force:
                await self._refuse_if_superseded(deploy)
            ev = self._event(
                EventKind.OVERRIDE,
                f"{action} by {who}: {why}",
                deploy.data_time,
                action=action,
                who=who,
                why=why,
            )
            deploy = await self._apply(
                deploy, Override(action, who, why, deploy.data_time), extra_events=[ev]
            )
        await self._refresh_state_gauges()
        return deploy

    async def _refuse_if_superseded(self, deploy: Deploy) -> None:
        m = deploy.marker
        later = [
            d
            for d in await self.store.list_deploys(
                service=m.service, environment=m.environment, since=deploy.created_at, limit=10
            )
            if d.id != deploy.id
        ]
        if later:
            newest = later[0]  # newest first
            raise ConflictError(
                f"deploy {newest.id} ({m.service} {newest.marker.version}, {newest.state.value}) is newer than "
                f"this one ({m.version}) in {m.environment}: rolling this one back would put "
                f"{m.previous_version} back over it. Roll back {newest.id} instead, or force it "
                '("force": true, or guardrail rollback --force)',
                field="force",
            )

    async def get_deploy(self, deploy_id: str) -> Deploy:
        return await self._get(deploy_id)

    async def list_deploys(self, **filters: Any) -> list[Deploy]:
        """Newest first; filters: service, environment, state, since, until (created_at), limit."""
        return await self.store.list_deploys(**filters)

    async def events(self, deploy_id: str, *, after_seq: int = 0) -> list[TimelineEvent]:
        await self._get(deploy_id)
        return await self.store.events(deploy_id, after_seq=after_seq)

    async def active_deploys(self) -> list[Deploy]:
        """Deploys not in a terminal state (what a metric source poller pulls for)."""
        return await self.store.active_deploys()

    async def note(self, deploy_id: str, message: str, **details: Any) -> None:
        """Append a note to a deploy's timeline (e.g. a metric source outage), at its data time."""
        async with self._lock(deploy_id):
            deploy = await self._get(deploy_id)
            await self.store.save(
                deploy_id, events=[self._event(EventKind.NOTE, message, deploy.data_time, **details)]
            )

    async def ready(self) -> None:
        """Raises when the database cannot be read."""
        await self.store.list_deploys(limit=1)

    async def wait(self, deploy_id: str, timeout: float) -> Deploy:
        """Until the deploy reaches a terminal state or ``timeout`` seconds pass (wall time)."""
        deadline = self.clock() + timeout
        while True:
            ev = self._changed.setdefault(deploy_id, asyncio.Event())
            deploy = await self._get(deploy_id)
            left = deadline - self.clock()
            if deploy.state.terminal or left <= 0:
                return deploy
            with contextlib.suppress(TimeoutError):  # another replica's change is only seen by reading
                await asyncio.wait_for(ev.wait(), timeout=min(left, 1.0) if self.leases else left)

    # --- analysis ------------------------------------------------------------------------------------
    async def _judge(self, deploy: Deploy) -> Judge | None:
        judge = self._judges.get(deploy.id)
        if judge is None and deploy.rollout.traffic_started_at is not None:
            judge = build_judge(deploy, self.settings.analysis, await self.store.samples(deploy.id))
            if judge is not None:
                self._judges[deploy.id] = judge
        return judge

    async def _analyse(self, deploy: Deploy, *, extra_events: Sequence[TimelineEvent] = ()) -> Deploy:
        """The judge's verdict on the data so far, with the alert rules firing on the canary: a rule
        fails the deploy only when its breach is attributable to the new version."""
        judge = await self._judge(deploy)
        verdict = judge.evaluate(now=deploy.data_time) if judge is not None else None
        checks = self._rule_checks(deploy, judge, verdict)
        events = list(extra_events)
        events += self._rule_notes(deploy, checks)
        if verdict is None:
            blamed = [c for c in checks if c.attributable]
            if not blamed:
                await self.store.save(
                    deploy.id, data_time=deploy.data_time, events=events, lease=self._fence(deploy.id)
                )
                return deploy
            verdict = Verdict(Decision.CONTINUE, None, deploy.data_time, (), "CONTINUE: no judge yet")
        verdict = with_rules(verdict, checks, deploy.data_time)
        self.telemetry.verdicts.labels(verdict.decision.value).inc()
        vd = verdict.to_dict()
        self.telemetry.set_evidence(deploy.id, deploy.marker.service, vd["evidence"])  # type: ignore[arg-type]
        last = self._last_verdict.get(deploy.id)
        interval = deploy.marker.analysis.interval_s
        if last is None or last[0] != verdict.decision.value or deploy.data_time - last[1] >= interval:
            self._last_verdict[deploy.id] = (verdict.decision.value, deploy.data_time)
            events.append(self._event(EventKind.VERDICT, verdict.summary, deploy.data_time, verdict=vd))
        return await self._apply(
            deploy,
            VerdictReached(verdict.decision, deploy.data_time, verdict.summary),
            extra_events=events,
            verdict=vd,
        )

    def _rule_notes(self, deploy: Deploy, checks: Sequence[RuleCheck]) -> list[TimelineEvent]:
        """A timeline note each time a canary rule's attribution changes (first seen, or flipped)."""
        out = []
        seen = self._rule_blame.setdefault(deploy.id, {})
        for c in checks:
            if seen.get(c.rule) is c.attributable:
                continue
            seen[c.rule] = c.attributable
            if not c.attributable:
                out.append(self._event(EventKind.NOTE, c.sentence, deploy.data_time, rule_check=c.to_dict()))
        return out

    # --- the state machine and the intent log --------------------------------------------------------
    async def _apply(
        self,
        deploy: Deploy,
        event: Start | ActionDone | VerdictReached | Override,
        *,
        extra_events: Sequence[TimelineEvent] = (),
        verdict: dict[str, Any] | None = None,
    ) -> Deploy:
        """Transition, persist state + events + commands in one transaction, then carry them out."""
        before = deploy.rollout
        after, commands = transition(before, event)
        events = list(extra_events)
        if after.state is not before.state:
            why = f": {after.reason}" if after.reason and after.reason != before.reason else ""
            events.append(
                self._event(
                    EventKind.TRANSITION,
                    f"{before.state.value} -> {after.state.value}{why}",
                    deploy.data_time,
                    before=before.state.value,
                    after=after.state.value,
                )
            )
        actions = [Action(deploy.id, c) for c in commands]
        saved = await self.store.save(
            deploy.id,
            rollout=after,
            data_time=deploy.data_time,
            verdict=verdict,
            events=events,
            new_actions=actions,
            lease=self._fence(deploy.id),
        )
        deploy = replace(
            deploy,
            rollout=after,
            verdict=verdict if verdict is not None else deploy.verdict,
            updated_at=self.clock(),
        )
        if after.state is not before.state:
            self._on_state_change(deploy, before.state)
            await self.alerts.state_changed(deploy, before.state, self.clock())
        if saved:
            self._kick(deploy.id)  # carried out in the background, in order
        return deploy

    def _on_state_change(self, deploy: Deploy, before: DeployState) -> None:
        m = deploy.marker
        if deploy.state.terminal:
            self.telemetry.deploys_finished.labels(m.service, m.environment, deploy.state.value).inc()
            self.telemetry.clear_deploy(
                deploy.id, m.service, [e["metric"] for e in (deploy.verdict or {}).get("evidence", [])]
            )
            self._judges.pop(deploy.id, None)
            self._close_adapter(deploy.id)
            self._last_verdict.pop(deploy.id, None)
            self._rule_blame.pop(deploy.id, None)
            self._last_data_wall.pop(deploy.id, None)
            self._observe(self.on_finished, deploy)
        if deploy.state is DeployState.ROLLBACK_FAILED:
            self.telemetry.rollback_failed.labels(deploy.id, m.service).set(1)
        elif before is DeployState.ROLLBACK_FAILED:
            self.telemetry.rollback_failed.labels(deploy.id, m.service).set(0)
        self._notify(deploy.id)

    def _close_adapter(self, deploy_id: str) -> None:
        """A finished deploy's adapter is closed (a later manual action builds a new one)."""
        adapter = self._adapters.pop(deploy_id, None)
        closer = getattr(adapter, "close", None)
        if closer is not None:
            task = asyncio.get_running_loop().create_task(closer())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _target(self, deploy: Deploy, action: Action) -> DeployTarget:
        m = deploy.marker
        return DeployTarget(
            deploy.id,
            m.service,
            m.environment,
            m.version,
            m.previous_version,
            m.commit,
            action_key=f"{deploy.id}:{action.id}:{action.command.key}",
        )

    async def _call_adapter(self, deploy: Deploy, action: Action) -> ActionResult:
        cmd = action.command
        try:
            adapter = self.adapter_for(deploy)
            target = self._target(deploy, action)
            if cmd.kind is CommandKind.APPLY_STEP:
                assert cmd.step is not None
                call = adapter.apply_step(
                    target, deploy.rollout.steps[cmd.step], cmd.step, len(deploy.rollout.steps)
                )
            elif cmd.kind is CommandKind.FINALIZE:
                call = adapter.finalize(target)
            else:
                call = adapter.rollback(target, cmd.reason)
            return await asyncio.wait_for(call, timeout=ADAPTER_GUARD_S)
        except TimeoutError:
            return ActionResult(False, f"no answer from the adapter within {ADAPTER_GUARD_S:.0f} s")
        except Exception as e:  # an adapter bug must not stop a rollback: it becomes a failed attempt
            log.exception("adapter %s failed on %s", deploy.marker.adapter.name, cmd.kind.value)
            return ActionResult(False, f"adapter error: {type(e).__name__}: {e}")

    # --- the action runner: carries out a deploy's actions in the background, in order -------------
    def _kick(self, deploy_id: str) -> None:
        """Make sure the deploy's action runner is going (it picks up every pending action)."""
        if deploy_id in self._runners:
            return
        task = asyncio.get_running_loop().create_task(self._run_actions(deploy_id))
        self._runners[deploy_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._runners.get(deploy_id) is t:
                del self._runners[deploy_id]
            if not t.cancelled() and t.exception() is not None:  # the timer sweep starts it again
                log.error("action runner of deploy %s failed", deploy_id, exc_info=t.exception())
            self._notify(deploy_id)

        task.add_done_callback(done)

    async def _run_actions(self, deploy_id: str) -> None:
        """Carry out the deploy's pending (and stranded running) actions one by one, oldest first,
        until none is left. The deploy's lock is held while reading and recording, not during the
        adapter call; the lease (with several replicas) is held throughout, and losing it cancels
        this task."""
        async with self._lease(deploy_id, wait=False) as held:
            if not held:  # another replica holds it: its runner (or its sweep, later) carries them out
                return
            task = asyncio.current_task()
            if self.leases and task is not None:
                self._leases.guard(deploy_id, task)
            while True:
                wait = 0.0
                async with self._lock(deploy_id):
                    todo = await self.store.actions(
                        deploy_id, statuses=(ActionStatus.PENDING, ActionStatus.RUNNING)
                    )
                    if not todo:
                        if self._runners.get(deploy_id) is task:
                            del self._runners[deploy_id]  # under the lock: a new action starts a new runner
                        break
                    action, deploy = todo[0], await self._get(deploy_id)
                    if self._moot(deploy, action):
                        await self._skip(deploy, action)
                        continue
                    wait = self._backoff_left(deploy, action)
                    if wait <= 0:
                        action = await self._begin(deploy, action)
                if wait > 0:
                    self._backing_off.add(deploy_id)
                    self._notify(deploy_id)
                    try:
                        await asyncio.sleep(wait)
                    finally:
                        self._backing_off.discard(deploy_id)
                    continue
                t0 = time.perf_counter()
                result = await self._call_adapter(deploy, action)
                seconds = time.perf_counter() - t0
                async with self._lock(deploy_id):
                    await self._finish(await self._get(deploy_id), action, result, seconds)
        await self._refresh_state_gauges()

    @staticmethod
    def _moot(deploy: Deploy, action: Action) -> bool:
        """A forward action not started yet when the deploy began rolling back is not carried out."""
        return (
            action.status is ActionStatus.PENDING
            and action.command.kind is not CommandKind.ROLLBACK
            and deploy.state
            in (DeployState.ROLLING_BACK, DeployState.ROLLED_BACK, DeployState.ROLLBACK_FAILED)
        )

    async def _skip(self, deploy: Deploy, action: Action) -> None:
        what = self._describe(deploy, action.command)
        await self.store.update_action(
            action.id,
            status=ActionStatus.FAILED,
            attempts=action.attempts,
            result={"ok": False, "detail": "not carried out: the deploy is rolling back"},
            event=self._event(
                EventKind.NOTE,
                f"{what}: not carried out, the deploy is rolling back",
                deploy.data_time,
                action_id=action.id,
                kind=action.command.kind.value,
                step=action.command.step,
            ),
            lease=self._fence(deploy.id),
        )

    def _backoff_left(self, deploy: Deploy, action: Action) -> float:
        """Seconds still to wait before a rollback retry (waited once per retry by this process)."""
        attempts = deploy.rollout.rollback_attempts
        if action.command.kind is not CommandKind.ROLLBACK or attempts == 0 or action.id in self._backed_off:
            return 0.0
        self._backed_off.add(action.id)
        return _rollback_backoff(self.settings.engine).ceiling(attempts)

    async def _begin(self, deploy: Deploy, action: Action) -> Action:
        """Mark the action running (a running one left by a stopped process is noted and repeated)."""
        cmd = action.command
        lease = self._fence(deploy.id)
        if action.status is ActionStatus.RUNNING:  # nobody runs it: this runner is the deploy's only one
            await self.store.update_action(
                action.id,
                status=ActionStatus.PENDING,
                attempts=action.attempts,
                result={},
                event=self._event(
                    EventKind.NOTE,
                    "the guardrail process carrying out this action stopped (restart, or a replica died): "
                    "carrying it out again with the same action key",
                    deploy.data_time,
                    action_id=action.id,
                    replica=self.replica,
                ),
                lease=lease,
            )
        attempts = action.attempts + 1
        # each rollback retry is a new action: count the deploy's rollback attempts for the timeline
        shown = deploy.rollout.rollback_attempts + attempts if cmd.kind is CommandKind.ROLLBACK else attempts
        await self.store.update_action(
            action.id,
            status=ActionStatus.RUNNING,
            attempts=attempts,
            result={},
            event=self._event(
                EventKind.ACTION_STARTED,
                f"{self._describe(deploy, cmd)}: started (attempt {shown})",
                deploy.data_time,
                action_id=action.id,
                kind=cmd.kind.value,
                step=cmd.step,
            ),
            lease=lease,
        )
        return replace(action, status=ActionStatus.RUNNING, attempts=attempts)

    async def _finish(self, deploy: Deploy, action: Action, result: ActionResult, seconds: float) -> Deploy:
        """Record the adapter's answer and feed it to the state machine (at the deploy's data time now)."""
        cmd = action.command
        status = ActionStatus.DONE if result.ok else ActionStatus.FAILED
        self.telemetry.adapter_actions.labels(
            deploy.marker.adapter.name, cmd.kind.value, "ok" if result.ok else "failed"
        ).inc()
        await self.store.update_action(
            action.id,
            status=status,
            attempts=action.attempts,
            result={
                "ok": result.ok,
                "detail": result.detail,
                "output": result.output,
                "seconds": round(seconds, 3),
            },
            event=self._event(
                EventKind.ACTION_DONE if result.ok else EventKind.ACTION_FAILED,
                f"{self._describe(deploy, cmd)}: {'done' if result.ok else 'FAILED'}: {result.detail}",
                deploy.data_time,
                action_id=action.id,
                kind=cmd.kind.value,
                step=cmd.step,
                output=result.output,
                seconds=round(seconds, 3),
            ),
            lease=self._fence(deploy.id),
        )
        at = deploy.data_time
        if result.ok and cmd.kind is CommandKind.APPLY_STEP and cmd.step is not None:
            self.telemetry.step_started.labels(deploy.id, deploy.marker.service).set(self.clock())
            judge = self._judges.get(deploy.id)
            if judge is not None:
                apply_weight(judge, deploy, cmd.step, at)
        deploy = await self._apply(deploy, ActionDone(cmd, result.ok, at, result.detail))
        if result.ok and cmd.kind is CommandKind.APPLY_STEP and deploy.state is DeployState.ANALYZING:
            deploy = await self._analyse_if_ready(deploy)
        return deploy

    async def _take_over_actions(self, deploy_id: str) -> None:
        """After taking a deploy's lease over: its unfinished actions are this process's to carry out."""
        if deploy_id in self._runners:
            return
        if await self.store.actions(deploy_id, statuses=(ActionStatus.PENDING, ActionStatus.RUNNING)):
            self._kick(deploy_id)

    async def settle(self, deploy_id: str, timeout: float = 600.0, *, through_backoff: bool = True) -> Deploy:
        """Until none of the deploy's actions is pending or running (or ``timeout`` seconds of wall
        time pass): what a client that needs an action's outcome waits for. With ``through_backoff``
        False, a rollback retry waiting out its backoff counts as settled for now."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            runner = self._runners.get(deploy_id)
            if runner is not None and left > 0:
                if not through_backoff and deploy_id in self._backing_off:
                    return await self._get(deploy_id)
                ev = self._changed.setdefault(deploy_id, asyncio.Event())
                waiter = asyncio.ensure_future(ev.wait())
                await asyncio.wait({runner, waiter}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                continue
            todo = await self.store.actions(deploy_id, statuses=(ActionStatus.PENDING, ActionStatus.RUNNING))
            if not todo or left <= 0:
                return await self._get(deploy_id)
            if deploy_id not in self._runners and not self.leases:
                self._kick(deploy_id)  # e.g. a runner that failed on a database error
                continue
            ev = self._changed.setdefault(deploy_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):  # another replica's progress is only seen by reading
                await asyncio.wait_for(ev.wait(), timeout=min(left, 0.5))

    async def pending_actions(self, deploy_id: str) -> int:
        """How many of the deploy's actions are pending or running."""
        return len(await self.store.actions(deploy_id, statuses=(ActionStatus.PENDING, ActionStatus.RUNNING)))

    async def _analyse_if_ready(self, deploy: Deploy) -> Deploy:
        """After a step change, the data already stored may decide at once (e.g. replays)."""
        judge = await self._judge(deploy)
        return deploy if judge is None or judge.windows == 0 else await self._analyse(deploy)

    @staticmethod
    def _describe(deploy: Deploy, cmd: Command) -> str:
        m = deploy.marker
        if cmd.kind is CommandKind.APPLY_STEP and cmd.step is not None:
            return (
                f"step {cmd.step + 1}/{len(deploy.rollout.steps)}: {m.version} on "
                f"{deploy.rollout.steps[cmd.step].describe()}"
            )
        if cmd.kind is CommandKind.FINALIZE:
            return f"promote {m.version} fully"
        return f"roll back to {m.previous_version}"

    # --- start-up, timers, shutdown ------------------------------------------------------------------
    async def resume(self) -> int:
        """Start the action runners of deploys with actions left pending or running by a previous
        process (with several replicas: those no live replica holds; the rest are taken over by
        whoever next gets their lease, a push or the timer sweep). Returns how many actions."""
        leftover = await self.store.actions(statuses=(ActionStatus.PENDING, ActionStatus.RUNNING))
        for deploy_id in dict.fromkeys(a.deploy_id for a in leftover):
            self._kick(deploy_id)
        await self._refresh_state_gauges()
        return len(leftover)

    async def tick(self) -> None:
        """Wall-clock timers: a deploy that receives no data at all cannot advance on data time, and
        actions nobody carries out (a dead replica's, a runner stopped by a database error) are taken
        over. With several replicas, each sweep leases just the deploys that need it with ``FOR UPDATE
        SKIP LOCKED``, so replicas sweeping at once split them; stalls are judged on the database's
        record of when data last arrived, whichever replica received it."""
        now = self.clock()
        stranded = {
            a.deploy_id
            for a in await self.store.actions(statuses=(ActionStatus.PENDING, ActionStatus.RUNNING))
            if a.deploy_id not in self._runners
        }
        if self.leases:
            cfg = self.settings.engine
            arrivals = await self.store.data_arrivals()  # any replica's data counts
            quiet = {d: last for d, last in arrivals.items() if self._quiet_due(now - last)}
            claimed = await self.store.claim_deploys(
                self.replica, ttl_s=cfg.lease_s, ids=sorted(stranded | set(quiet))
            )
            for lease in claimed:
                deploy_id = lease.deploy_id
                if lease.last_owner not in (None, self.replica):
                    self._forget(deploy_id)  # another replica worked on it since: rebuild from the store
                if deploy_id in stranded:  # whatever else holds the deploy's lock here (a push, say)
                    self._kick(deploy_id)
                if deploy_id not in quiet:
                    continue
                async with self._hold(deploy_id, wait=False) as held:  # released at the end of its turn
                    if held:
                        deploy = await self._get(deploy_id)
                        if deploy.state is DeployState.ANALYZING:
                            await self._check_quiet(deploy, now, quiet[deploy_id])
        else:
            for deploy_id in stranded:
                self._kick(deploy_id)
            for deploy in await self.store.active_deploys():
                last = self._last_data_wall.setdefault(deploy.id, now)
                if deploy.state is not DeployState.ANALYZING or not self._quiet_due(now - last):
                    continue
                async with self._hold(deploy.id, wait=False) as held:
                    if held:
                        fresh = await self._get(deploy.id)
                        if fresh.state is DeployState.ANALYZING:
                            await self._check_quiet(fresh, now, last)
        await self._refresh_state_gauges()

    def _quiet_due(self, quiet: float) -> bool:
        """Whether a deploy quiet for ``quiet`` seconds may need a stall note or the no-data verdict
        (``_check_quiet`` decides with the deploy's own limits)."""
        a = self.settings.analysis
        return quiet >= min(a.stall_after_s, a.max_duration_s)

    async def _check_quiet(self, deploy: Deploy, now: float, last: float) -> None:
        """Note a stall, or end the analysis, of a deploy whose data last arrived at ``last``."""
        quiet = now - last
        if quiet >= self.settings.analysis.stall_after_s and deploy.id not in self._stalled:
            self._stalled.add(deploy.id)
            self.telemetry.stalled.labels(deploy.id, deploy.marker.service).set(1)
            await self.store.save(
                deploy.id,
                lease=self._fence(deploy.id),
                events=[
                    self._event(
                        EventKind.NOTE,
                        f"analysis stalled: no new data for {quiet:.0f} s (metric source down, or "
                        "nothing pushed?); holding, no promotion without data",
                        deploy.data_time,
                    )
                ],
            )
        if quiet >= deploy.marker.analysis.max_duration_s:  # read under the hold: still analysing
            await self._apply(
                deploy,
                VerdictReached(
                    Decision.INCONCLUSIVE,
                    deploy.data_time,
                    f"no data for {quiet:.0f} s of wall time: nothing to judge",
                ),
            )

    async def run_timers(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # keep the timers alive; the error is logged
                log.exception("timer tick failed")
            await asyncio.sleep(self.settings.engine.tick_s)

    async def _refresh_state_gauges(self) -> None:
        self.telemetry.set_states(await self.store.state_counts())

    async def close(self) -> None:
        running = [*self._tasks, *self._runners.values()]
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)  # their leases are released on the way out
        await self._leases.close()
        for a in self._adapters.values():
            closer = getattr(a, "close", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
