"""Value objects of the domain: sample windows, tracks, evidence and verdicts.

All times are *data time*: float unix seconds taken from the samples themselves, never the wall
clock, so an analysis can be replayed or backtested at any speed with the same result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from guardrail.domain.errors import ValidationError
from guardrail.domain.limits import INT64_MAX


class Track(StrEnum):
    CANARY = "canary"
    BASELINE = "baseline"


class Decision(StrEnum):
    FAIL = "fail"
    PASS = "pass"
    CONTINUE = "continue"
    INCONCLUSIVE = "inconclusive"


class Direction(StrEnum):
    """Which way a change is harmful."""

    INCREASE = "increase"
    DECREASE = "decrease"
    EITHER = "either"


class MetricStatus(StrEnum):
    FAIL = "fail"  # confidently worse than the allowed change
    PASS = "pass"  # confidently better than the critical change (non-inferior)
    CONTINUE = "continue"  # not enough evidence either way yet
    NO_DATA = "no_data"  # nothing to judge: never read as zero


_VALID_BOUNDS: set[tuple[float, ...]] = set()


@dataclass(frozen=True, slots=True)
class Histogram:
    """Latency histogram of one window: finite upper bounds (seconds, increasing) and per-bucket
    counts (not cumulative), ``len(counts) == len(bounds) + 1`` with the +Inf bucket last."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValidationError(
                f"histogram has {len(self.bounds)} bounds and {len(self.counts)} counts; "
                "counts must have len(bounds) + 1 entries (the +Inf bucket last)",
                field="latency_histogram.counts",
            )
        if self.bounds not in _VALID_BOUNDS:  # a service sends the same few bound lists every window
            if any(not math.isfinite(b) or b <= 0 for b in self.bounds):
                raise ValidationError(
                    "histogram bounds must be finite positive seconds (the +Inf bucket is implicit)",
                    field="latency_histogram.bounds",
                )
            if any(b2 <= b1 for b1, b2 in zip(self.bounds, self.bounds[1:], strict=False)):
                raise ValidationError(
                    "histogram bounds must be strictly increasing", field="latency_histogram.bounds"
                )
            if len(_VALID_BOUNDS) < 256:
                _VALID_BOUNDS.add(self.bounds)
        if self.counts and min(self.counts) < 0:
            raise ValidationError("histogram counts must be >= 0", field="latency_histogram.counts")

    @property
    def total(self) -> int:
        return sum(self.counts)

    def count_above(self, threshold: float) -> int:
        """Requests slower than ``threshold``; ``threshold`` must be one of the bounds."""
        try:
            i = self.bounds.index(threshold)
        except ValueError:
            raise ValidationError(
                f"threshold {threshold}s is not a bucket bound of this histogram {self.bounds}",
                field="latency_histogram.bounds",
            ) from None
        return sum(self.counts[i + 1 :])


@dataclass(frozen=True, slots=True)
class Sample:
    """Aggregates of one track over one data-time window ``[start, end)``."""

    track: Track
    start: float
    end: float
    requests: int
    errors: int
    latency: Histogram | None = None
    latencies: tuple[float, ...] = ()
    gauges: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.end)) or self.end <= self.start:
            raise ValidationError(f"window end ({self.end}) must be after start ({self.start})", field="end")
        if not 0 <= self.requests <= INT64_MAX:
            raise ValidationError(
                f"requests must be between 0 and {INT64_MAX}, got {self.requests}", field="requests"
            )
        if self.errors < 0 or self.errors > self.requests:
            raise ValidationError(
                f"errors must be between 0 and requests ({self.requests}), got {self.errors}", field="errors"
            )
        if self.latency is not None and self.latency.total > self.requests:
            raise ValidationError(
                f"histogram holds {self.latency.total} requests, more than requests ({self.requests})",
                field="latency_histogram.counts",
            )
        for name, v in self.gauges.items():
            if not math.isfinite(v):
                raise ValidationError(
                    f"gauge {name!r} must be a finite number, got {v}", field=f"gauges.{name}"
                )

    @property
    def key(self) -> tuple[str, float, float]:
        return (self.track.value, self.start, self.end)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the judge knows about one metric at one point in data time."""

    metric: str
    kind: str  # "errors", "latency", "throughput", "gauge", "counter_ratio", ...
    status: MetricStatus
    critical: bool
    estimate: float | None  # ratio canary/baseline (or difference for gauges with ``scale="difference"``)
    ci_low: float | None  # anytime-valid confidence sequence at level 1 - alpha (this metric's share)
    ci_high: float | None
    confidence: float  # 1 - alpha of this metric
    e_value_fail: float  # e-value against "no harmful change beyond the allowed one"
    e_value_pass: float  # e-value against "a harmful change at least the critical one"
    canary_n: float  # requests / events / windows behind the estimate on each track
    baseline_n: float
    allowed: float  # the FAIL test's null: change tolerated without failing (ratio)
    critical_change: float  # the PASS test's margin (ratio)
    detail: str  # one plain-English sentence
    canary_value: float | None = None  # e.g. canary error rate, canary p99 seconds
    baseline_value: float | None = None
    dispersion: float = 1.0

    def to_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "kind": self.kind,
            "status": self.status.value,
            "critical": self.critical,
            "estimate": self.estimate,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "confidence": self.confidence,
            "e_value_fail": self.e_value_fail,
            "e_value_pass": self.e_value_pass,
            "canary_n": self.canary_n,
            "baseline_n": self.baseline_n,
            "allowed": self.allowed,
            "critical_change": self.critical_change,
            "canary_value": self.canary_value,
            "baseline_value": self.baseline_value,
            "dispersion": self.dispersion,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class RuleCheck:
    """A deploy-failing alert rule firing on the canary, and whether the breach is the new version's
    (see ``domain.rules.attribute``): only an attributable breach fails the deploy."""

    rule: str
    since: float  # data time the canary's condition started to hold
    at: float  # data time of the check
    attributable: bool
    reading: str  # the canary's latest reading, e.g. "p99 1.3 s > 1 s"
    reason: str  # why it is, or is not, blamed on the new version

    @property
    def sentence(self) -> str:
        verb = "fails the deploy" if self.attributable else "pages, but is not blamed on the new version"
        return f"{self.rule} on the canary ({self.reading}) {verb}: {self.reason}"

    def to_dict(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "since": self.since,
            "at": self.at,
            "attributable": self.attributable,
            "reading": self.reading,
            "reason": self.reason,
            "sentence": self.sentence,
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    decided_at: float | None  # data time of the sample that decided it (None while continuing)
    evaluated_at: float  # data time up to which data was considered
    evidence: tuple[Evidence, ...]
    summary: str
    mode: str = "concurrent"  # or "pre_post" (weaker: no concurrent baseline)
    power: str | None = None  # for inconclusive: what more would be needed
    rules: tuple[RuleCheck, ...] = ()  # deploy-failing rules firing on the canary, with their attribution
    outlook: Any = None  # judge.planning.Outlook: how long the analysis needs at this traffic

    def to_dict(self) -> dict[str, object]:
        return {
            "decision": self.decision.value,
            "decided_at": self.decided_at,
            "evaluated_at": self.evaluated_at,
            "mode": self.mode,
            "summary": self.summary,
            "power": self.power,
            "evidence": [e.to_dict() for e in self.evidence],
            "rules": [r.to_dict() for r in self.rules],
            "outlook": self.outlook.to_dict() if self.outlook is not None else None,
        }


# --- deploys ---------------------------------------------------------------------------------------


class Strategy(StrEnum):
    CANARY = "canary"
    BLUE_GREEN = "blue_green"
    ROLLING = "rolling"
    ALL_AT_ONCE = "all_at_once"


class ChangeType(StrEnum):
    FEATURE = "feature"
    BUGFIX = "bugfix"
    INFRASTRUCTURE = "infrastructure"
    SECURITY = "security"


class DeployState(StrEnum):
    PENDING = "pending"  # recorded, first step not applied yet
    ANALYZING = "analyzing"  # a step is live and the judge is watching
    PAUSED = "paused"  # held for a human (manual pause, or an inconclusive analysis)
    ROLLING_BACK = "rolling_back"
    PROMOTED = "promoted"  # terminal: fully rolled out
    ROLLED_BACK = "rolled_back"  # terminal
    ROLLBACK_FAILED = "rollback_failed"  # terminal until a human acts: pages on-call

    @property
    def terminal(self) -> bool:
        return self in (DeployState.PROMOTED, DeployState.ROLLED_BACK, DeployState.ROLLBACK_FAILED)


@dataclass(frozen=True, slots=True)
class Step:
    """One rollout step. ``weight``: canary share of traffic in percent (canary, blue-green);
    ``servers``: cumulative servers on the new version (rolling; None = all)."""

    weight: float | None = None
    servers: int | None = None
    min_duration_s: float = 0.0

    def describe(self) -> str:
        if self.weight is not None:
            return f"{self.weight:g}% of traffic"
        return "all servers" if self.servers is None else f"{self.servers} server(s)"


def default_steps(strategy: Strategy, watch_s: float = 1800.0) -> tuple[Step, ...]:
    """The lesson's defaults: canary 10% -> 50% -> 100%; rolling 1 server, 2 more, the rest;
    blue-green deploys green, then switches and watches; all-at-once deploys and watches."""
    if strategy is Strategy.CANARY:
        return (Step(weight=10, min_duration_s=300), Step(weight=50, min_duration_s=300), Step(weight=100))
    if strategy is Strategy.ROLLING:
        return (
            Step(servers=1, min_duration_s=300),
            Step(servers=3, min_duration_s=300),
            Step(servers=None, min_duration_s=watch_s),
        )
    if strategy is Strategy.BLUE_GREEN:
        return (Step(weight=0), Step(weight=100, min_duration_s=watch_s))
    return (Step(weight=100, min_duration_s=watch_s),)
