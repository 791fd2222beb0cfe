"""How long the analysis needs, at a given traffic, to rule out the critical change on every metric.

A canary can only be promoted once every metric's non-inferiority test passes, and that needs events:
canary errors, canary requests slower than the latency threshold. At low traffic that takes longer
than a step's analysis window, and the deploy ends INCONCLUSIVE (then held for a human, or rolled
back, as the marker's ``on_inconclusive`` says). CI should know that when it posts the marker, not
find out an hour later: :func:`plan` gives the estimate, from the last deploy's traffic at marker
time and from the deploy's own traffic while it runs.

The estimate is the normal approximation of the power statement of an inconclusive verdict
(``explain.power_sentence``): for a canary no worse than the baseline, the log rate ratio's standard
error must reach log(critical) / sqrt(2 log(1/pass_alpha)); with canary share w of the events that
takes phi (1 + w / (1 - w)) / se^2 canary events. It is an estimate of the typical case, not a
promise: against the judge on simulated healthy canaries (tests/domain/test_planning.py) the median
time to an early PASS is 0.75-1.0 of it, and one deploy in ten takes up to twice as long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from guardrail.domain.judge.spec import AnalysisSpec, MetricKind, MetricSpec
from guardrail.domain.model import Direction


def canary_events_to_pass(
    spec: MetricSpec, pass_alpha: float, canary_share: float | None, dispersion: float = 1.0
) -> float:
    """Canary events the PASS test of ``spec`` needs when the canary is no worse than the baseline
    (``canary_share`` None: against a pre-deploy window, whose own events are many)."""
    ratio = 1 - spec.critical_change if spec.direction is Direction.DECREASE else 1 + spec.critical_change
    gap = abs(math.log(ratio))
    z = math.sqrt(2 * math.log(1 / pass_alpha))
    se = gap / z
    if canary_share is None:
        return dispersion / se**2
    w = min(max(canary_share, 1e-6), 1 - 1e-6)
    return dispersion * (1 + w / (1 - w)) / se**2


def _event_share(spec: MetricSpec, error_rate: float | None) -> float | None:
    """Events per canary request for a metric: its error rate, 1 - q for a latency quantile (the
    threshold is the baseline's q-quantile), every request for throughput; None when unknown."""
    if spec.kind is MetricKind.ERRORS:
        return error_rate
    if spec.kind in (MetricKind.LATENCY, MetricKind.HISTOGRAM_THRESHOLD) and spec.quantile is not None:
        return 1 - spec.quantile
    if spec.kind is MetricKind.THROUGHPUT:
        return 1.0
    return None  # gauges and custom counters: no rate to plan with


@dataclass(frozen=True, slots=True)
class Outlook:
    """Whether a step's analysis window is long enough at this traffic."""

    basis: str  # where the traffic figures come from
    total_rps: float
    canary_share: float
    error_rate: float | None
    metric: str | None  # the metric that needs the longest
    needs_s: float | None  # data seconds of analysis needed from the canary's first window (None: unknown)
    window_s: float  # each step's analysis window (max_duration_s)
    elapsed_s: float = 0.0  # analysis time already behind (a running deploy)
    on_inconclusive: str = "hold"
    remaining_s: float | None = None  # a running deploy: time left in the current step's window

    @property
    def likely_inconclusive(self) -> bool:
        if self.needs_s is None:
            return False
        if self.remaining_s is not None:
            return self.needs_s - self.elapsed_s > self.remaining_s
        return self.needs_s > self.window_s

    @property
    def sentence(self) -> str:
        rate = f"{self.total_rps * self.canary_share:,.1f} canary req/s ({self.canary_share:.0%} of {self.total_rps:,.1f})"
        errors = f", {self.error_rate:.2%} errors" if self.error_rate is not None else ""
        head = f"At {rate}{errors} ({self.basis})"
        if self.needs_s is None or self.metric is None:
            return f"{head}, guardrail cannot estimate how long the analysis needs (no error seen yet, or no rate to plan with)."
        needs = _minutes(self.needs_s)
        text = f"{head}, ruling out the critical change on {self.metric} needs about {needs} of analysis"
        window = _minutes(self.window_s)
        if self.remaining_s is not None:
            left = max(self.needs_s - self.elapsed_s, 0.0)
            text += (
                f" ({_minutes(left)} more; this step's window ends in {_minutes(max(self.remaining_s, 0.0))})"
            )
            window = "remaining"
        if not self.likely_inconclusive:
            return (
                f"{text}, within the {window} window of a step." if self.remaining_s is None else f"{text}."
            )
        then = {
            "hold": "then held for a human (on_inconclusive: hold)",
            "rollback": "then rolled back (on_inconclusive: rollback)",
        }.get(self.on_inconclusive, f"then on_inconclusive: {self.on_inconclusive}")
        return (
            f"{text}, {'longer than the ' + window + ' window of a step' if self.remaining_s is None else 'too long'}: "
            f"expect INCONCLUSIVE, {then}. To get a "
            "verdict: more traffic to the canary (a higher first step), a longer analysis.max_duration_s, "
            "or a marker with on_inconclusive: rollback if CI must not wait for a human."
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "basis": self.basis,
            "total_rps": self.total_rps,
            "canary_share": self.canary_share,
            "error_rate": self.error_rate,
            "metric": self.metric,
            "needs_s": self.needs_s,
            "window_s": self.window_s,
            "elapsed_s": self.elapsed_s,
            "on_inconclusive": self.on_inconclusive,
            "remaining_s": self.remaining_s,
            "likely_inconclusive": self.likely_inconclusive,
            "sentence": self.sentence,
        }


def plan(
    spec: AnalysisSpec,
    *,
    total_rps: float,
    error_rate: float | None,
    canary_share: float,
    on_inconclusive: str,
    basis: str,
    dispersion: float = 1.0,
    elapsed_s: float = 0.0,
    remaining_s: float | None = None,
    pre_post: bool = False,
) -> Outlook:
    """The outlook of a deploy judged with ``spec`` at ``total_rps`` requests per second over both
    tracks, ``canary_share`` of them on the canary, the baseline erring at ``error_rate``
    (``pre_post``: the new version takes the traffic it was given and is compared with the
    pre-deploy window)."""
    canary_rps = total_rps * canary_share
    worst: tuple[float, str] | None = None
    unknown = False
    for m in spec.metrics:
        if m.kind is MetricKind.THROUGHPUT and (pre_post or not 0 < canary_share < 1):
            continue
        share = _event_share(m, error_rate)
        if share is None:
            continue
        if share <= 0 or canary_rps <= 0:
            unknown = True
            continue
        events = canary_events_to_pass(
            m, spec.metric_pass_alpha(m), None if pre_post else canary_share, dispersion
        )
        seconds = events / (canary_rps * share)
        if worst is None or seconds > worst[0]:
            worst = (seconds, m.name)
    needs, metric = (None, None) if worst is None or unknown else worst
    return Outlook(
        basis,
        total_rps,
        canary_share,
        error_rate,
        metric,
        needs,
        spec.max_duration_s,
        elapsed_s,
        on_inconclusive,
        remaining_s,
    )


def _minutes(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def previous_traffic(deploy: Any) -> tuple[float, float | None] | None:
    """(requests per second over both tracks, baseline error rate) a judged deploy saw, from its
    stored verdict; None when it has none to tell."""
    r, v = deploy.rollout, deploy.verdict or {}
    o = v.get("outlook") or {}
    if o.get("total_rps"):
        return float(o["total_rps"]), o.get("error_rate")
    start, at = r.traffic_started_at, v.get("evaluated_at")
    if start is None or at is None or at <= start:
        return None
    ev = {e.get("metric"): e for e in v.get("evidence", [])}
    errors = ev.get("error_rate") or next((e for e in ev.values() if e.get("kind") == "errors"), None)
    if not errors or not (errors.get("canary_n") or 0) + (errors.get("baseline_n") or 0):
        return None
    total = float(errors.get("canary_n") or 0) + float(errors.get("baseline_n") or 0)
    return total / (at - start), errors.get("baseline_value")
