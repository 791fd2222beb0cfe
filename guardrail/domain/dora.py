"""DORA key metrics computed from guardrail's own deploy records (pure: no I/O, no clock reads).

**Wall time, not data time.** Everything here is measured on the wall-clock times guardrail
recorded (``TimelineEvent.wall_time``, ``Deploy.created_at``) and the commit time CI sent: DORA
is about how long *people* wait for a change and for a recovery, whereas data time exists to make
an analysis replayable. (A replayed deploy is therefore measured by when it was replayed.)

Which deploys count
    A deploy belongs to the window ``[since, until)`` by ``created_at`` (the wall time its marker
    was recorded), and is grouped by ``(service, environment)``. Only *terminal* deploys count
    (promoted, rolled_back, rollback_failed); one still in flight is left out until it finishes.

Results (disjoint; they add up to ``finished``)
    * ``rolled_back`` / ``rollback_failed``: the deploy's final state.
    * ``failed_after_promotion``: final state promoted, but a page-severity alert (an in-service
      rule or an Alertmanager alert with ``severity=page``) started firing after the promotion and
      within ``watch_s`` seconds of it.
    * ``promoted``: every other promoted deploy.

Figures, per group
    * **deployment frequency**: ``deployments`` = deploys that reached production (a TRANSITION to
      promoted is on their timeline, whatever happened afterwards, so a promoted-then-paged or a
      promoted-then-manually-rolled-back deploy counts), divided by the window's length in days.
    * **change lead time**: for each of those deploys, the marker's ``commit_time`` to the wall time
      of the (first) TRANSITION event into promoted; the median and the 90th percentile (linear
      interpolation between closest ranks, as numpy's default). Deploys without ``commit_time`` are
      left out and counted in ``lead_time_excluded_no_commit_time``; a commit time *after* the
      promotion (clock skew) is left out and counted in ``lead_time_excluded_negative``.
    * **change failure rate**: ``failed / finished``, failed = rolled_back + rollback_failed +
      failed_after_promotion (None when nothing finished).
    * **failed deployment recovery time**: for each failed deploy, from *detection* to *recovery*.
      Detection is the earliest of: a VERDICT event deciding ``fail``, a firing page alert, the
      TRANSITION into rolling_back (a manual rollback is detected when a human starts it); for a
      deploy that had reached promoted, only signals after the promotion count. Recovery is the
      ACTION_DONE of the rollback (``details.kind == "rollback"``), else the TRANSITION into
      rolled_back; for ``failed_after_promotion`` it is the moment every page alert that fired
      after promotion has resolved (an in-service rule closed at the end of the watch resolves
      then). A ``rollback_failed`` deploy, or alerts still firing, leave it ``unrecovered``
      (counted, not in the median).
    * **rollback rate**: ``(rolled_back + rollback_failed) / finished``.
    * **failed deployment count**: ``failed``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from guardrail.domain.errors import ValidationError
from guardrail.domain.model import DeployState
from guardrail.domain.records import Deploy, EventKind, TimelineEvent

DAY_S = 86400.0


class Result(StrEnum):
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    FAILED_AFTER_PROMOTION = "failed_after_promotion"

    @property
    def failed(self) -> bool:
        return self is not Result.PROMOTED


@dataclass(frozen=True, slots=True)
class DeployOutcome:
    """What one terminal deploy contributes to the figures (all times wall time, unix seconds)."""

    deploy_id: str
    service: str
    environment: str
    version: str
    result: Result
    created_at: float
    finished_at: float  # the TRANSITION into the final state (or updated_at without one)
    promoted_at: float | None  # first TRANSITION into promoted: the deploy reached production
    commit_time: float | None
    detected_at: float | None = None  # failed deploys only
    recovered_at: float | None = None  # failed deploys that recovered
    reason: str = ""  # why it counts as failed, one line

    @property
    def deployed(self) -> bool:
        return self.promoted_at is not None

    @property
    def lead_time_s(self) -> float | None:
        if self.promoted_at is None or self.commit_time is None:
            return None
        return self.promoted_at - self.commit_time

    @property
    def recovery_s(self) -> float | None:
        if self.detected_at is None or self.recovered_at is None:
            return None
        return max(0.0, self.recovered_at - self.detected_at)


@dataclass(frozen=True, slots=True)
class DoraFigures:
    """The DORA figures of one (service, environment) over ``[since, until)``."""

    service: str
    environment: str
    since: float
    until: float
    finished: int
    deployments: int  # reached production (promoted at some point)
    results: Mapping[Result, int]
    deployment_frequency_per_day: float
    lead_time_median_s: float | None
    lead_time_p90_s: float | None
    lead_time_measured: int
    lead_time_excluded_no_commit_time: int
    lead_time_excluded_negative: int
    failed: int
    change_failure_rate: float | None
    rollback_rate: float | None
    recovery_median_s: float | None
    recovered: int
    unrecovered: int
    failures: tuple[DeployOutcome, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "environment": self.environment,
            "since": self.since,
            "until": self.until,
            "finished": self.finished,
            "deployments": self.deployments,
            "results": {r.value: self.results.get(r, 0) for r in Result},
            "deployment_frequency_per_day": self.deployment_frequency_per_day,
            "lead_time_median_s": self.lead_time_median_s,
            "lead_time_p90_s": self.lead_time_p90_s,
            "lead_time_measured": self.lead_time_measured,
            "lead_time_excluded_no_commit_time": self.lead_time_excluded_no_commit_time,
            "lead_time_excluded_negative": self.lead_time_excluded_negative,
            "failed": self.failed,
            "change_failure_rate": self.change_failure_rate,
            "rollback_rate": self.rollback_rate,
            "recovery_median_s": self.recovery_median_s,
            "recovered": self.recovered,
            "unrecovered": self.unrecovered,
            "failures": [
                {
                    "deploy_id": o.deploy_id,
                    "version": o.version,
                    "result": o.result.value,
                    "reason": o.reason,
                    "detected_at": o.detected_at,
                    "recovered_at": o.recovered_at,
                    "recovery_s": o.recovery_s,
                }
                for o in self.failures
            ],
        }


# --- statistics ------------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks (position
    ``q * (n - 1)`` in the sorted values); None for no values. ``percentile(v, 0.5)`` is the median."""
    if not 0.0 <= q <= 1.0:
        raise ValidationError(f"quantile must be between 0 and 1, got {q}", field="q")
    xs = sorted(values)
    if not xs:
        return None
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# --- alerts on the timeline ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _AlertSignal:
    key: str  # one alert: an in-service rule on a track, or an Alertmanager fingerprint
    firing: bool
    page: bool


def _alert(event: TimelineEvent) -> _AlertSignal | None:
    """The alert an ALERT event carries: in-service rules store ``RuleTransition.to_dict()``
    (``rule``, ``track``, ``severity``, ``state``), Alertmanager alerts ``ExternalAlert.to_dict()``
    (``fingerprint``, ``status``, ``labels.severity``)."""
    a = event.details.get("alert")
    if event.kind is not EventKind.ALERT or not isinstance(a, Mapping):
        return None
    if "rule" in a:
        key = f"rule:{a.get('rule')}:{a.get('track', '')}"
        severity, state = a.get("severity"), a.get("state")
    else:
        labels = a.get("labels") if isinstance(a.get("labels"), Mapping) else {}
        key = f"am:{a.get('fingerprint') or labels.get('alertname', '')}"
        severity, state = labels.get("severity"), a.get("status")
    if state not in ("firing", "resolved"):
        return None
    return _AlertSignal(key, state == "firing", severity == "page")


def _is_transition_to(event: TimelineEvent, state: DeployState) -> bool:
    return event.kind is EventKind.TRANSITION and event.details.get("after") == state.value


def _is_fail_verdict(event: TimelineEvent) -> bool:
    v = event.details.get("verdict")
    return event.kind is EventKind.VERDICT and isinstance(v, Mapping) and v.get("decision") == "fail"


def _is_rollback_done(event: TimelineEvent) -> bool:
    return event.kind is EventKind.ACTION_DONE and event.details.get("kind") == "rollback"


# --- one deploy ------------------------------------------------------------------------------------


def classify(deploy: Deploy, events: Sequence[TimelineEvent], *, watch_s: float) -> DeployOutcome | None:
    """The outcome of one deploy from its timeline (None while it is not terminal)."""
    state = deploy.state
    if not state.terminal:
        return None
    timeline = sorted(events, key=lambda e: e.seq)
    m = deploy.marker
    promotion = next((e for e in timeline if _is_transition_to(e, DeployState.PROMOTED)), None)
    finish = next((e for e in reversed(timeline) if _is_transition_to(e, state)), None)
    base = DeployOutcome(
        deploy_id=deploy.id,
        service=m.service,
        environment=m.environment,
        version=m.version,
        result=Result.PROMOTED,
        created_at=deploy.created_at,
        finished_at=finish.wall_time if finish is not None else deploy.updated_at,
        promoted_at=promotion.wall_time if promotion is not None else None,
        commit_time=m.commit_time,
    )
    # signals before the promotion belong to the canary, not to what reached production
    after_promotion = [e for e in timeline if promotion is None or e.seq > promotion.seq]

    if state is DeployState.PROMOTED:
        if promotion is None:  # no TRANSITION recorded (an imported record): not judged as paged
            return base
        paged = [
            (e, s)
            for e in after_promotion
            if (s := _alert(e)) is not None
            and s.firing
            and s.page
            and e.wall_time - promotion.wall_time <= watch_s
        ]
        if not paged:
            return base
        first, signal = paged[0]
        return replace(
            base,
            result=Result.FAILED_AFTER_PROMOTION,
            detected_at=first.wall_time,
            recovered_at=_alerts_clear(after_promotion, first),
            reason=f"page alert {signal.key.split(':', 1)[1]} fired {first.wall_time - promotion.wall_time:.0f} s "
            "after promotion",
        )

    result = Result.ROLLED_BACK if state is DeployState.ROLLED_BACK else Result.ROLLBACK_FAILED
    rollback_start = next(
        (e for e in after_promotion if _is_transition_to(e, DeployState.ROLLING_BACK)), None
    )
    bound = rollback_start.seq if rollback_start is not None else math.inf
    signals = [
        e
        for e in after_promotion
        if e.seq <= bound
        and (
            _is_fail_verdict(e)
            or ((s := _alert(e)) is not None and s.firing and s.page)
            or e is rollback_start
        )
    ]
    detected = min((e.wall_time for e in signals), default=None)
    recovered = None
    if result is Result.ROLLED_BACK:
        done = [e for e in after_promotion if _is_rollback_done(e)]
        recovered = done[-1].wall_time if done else base.finished_at
    reason = str(rollback_start.message) if rollback_start is not None else f"ended {state.value}"
    return replace(base, result=result, detected_at=detected, recovered_at=recovered, reason=reason)


def _alerts_clear(timeline: Sequence[TimelineEvent], first: TimelineEvent) -> float | None:
    """Wall time at which no page alert that fired from ``first`` on is still firing."""
    firing: set[str] = set()
    for e in timeline:
        if e.seq < first.seq:
            continue
        s = _alert(e)
        if s is None:
            continue
        if s.firing and s.page:
            firing.add(s.key)
        elif not s.firing and s.key in firing:
            firing.discard(s.key)
            if not firing:
                return e.wall_time
    return None


# --- a group ---------------------------------------------------------------------------------------


def _check_window(since: float, until: float) -> None:
    if not (math.isfinite(since) and math.isfinite(until)) or until <= since:
        raise ValidationError(f"until ({until}) must be after since ({since})", field="until")


def summarize(
    outcomes: Iterable[DeployOutcome], *, service: str, environment: str, since: float, until: float
) -> DoraFigures:
    """The figures of one group's outcomes over ``[since, until)`` (the caller picks the outcomes)."""
    _check_window(since, until)
    items = list(outcomes)
    results = {r: sum(1 for o in items if o.result is r) for r in Result}
    finished = len(items)
    deployed = [o for o in items if o.deployed]
    lead = [o.lead_time_s for o in deployed if o.lead_time_s is not None and o.lead_time_s >= 0]
    negative = sum(1 for o in deployed if o.lead_time_s is not None and o.lead_time_s < 0)
    failures = tuple(sorted((o for o in items if o.result.failed), key=lambda o: o.created_at))
    recoveries = [o.recovery_s for o in failures if o.recovery_s is not None]
    rollbacks = results[Result.ROLLED_BACK] + results[Result.ROLLBACK_FAILED]
    return DoraFigures(
        service=service,
        environment=environment,
        since=since,
        until=until,
        finished=finished,
        deployments=len(deployed),
        results=results,
        deployment_frequency_per_day=len(deployed) / ((until - since) / DAY_S),
        lead_time_median_s=percentile(lead, 0.5),
        lead_time_p90_s=percentile(lead, 0.9),
        lead_time_measured=len(lead),
        lead_time_excluded_no_commit_time=sum(1 for o in deployed if o.commit_time is None),
        lead_time_excluded_negative=negative,
        failed=len(failures),
        change_failure_rate=len(failures) / finished if finished else None,
        rollback_rate=rollbacks / finished if finished else None,
        recovery_median_s=percentile(recoveries, 0.5),
        recovered=len(recoveries),
        unrecovered=len(failures) - len(recoveries),
        failures=failures,
    )


def dora_report(
    records: Iterable[tuple[Deploy, Sequence[TimelineEvent]]],
    *,
    since: float,
    until: float,
    watch_s: float,
) -> list[DoraFigures]:
    """Figures per (service, environment), sorted by it, for the terminal deploys created in
    ``[since, until)``. A group appears once it has a deploy in the window, even an unfinished one
    (then with zero counts), so that a dashboard shows it rather than nothing."""
    _check_window(since, until)
    groups: dict[tuple[str, str], list[DeployOutcome]] = {}
    for deploy, events in records:
        if not since <= deploy.created_at < until:
            continue
        key = (deploy.marker.service, deploy.marker.environment)
        bucket = groups.setdefault(key, [])
        outcome = classify(deploy, events, watch_s=watch_s)
        if outcome is not None:
            bucket.append(outcome)
    return [
        summarize(groups[key], service=key[0], environment=key[1], since=since, until=until)
        for key in sorted(groups)
    ]
