"""What to judge: the deploy-level analysis settings and one spec per metric.

Changes are relative: ``allowed_change=0.0`` means "any increase counts" for the FAIL test,
``critical_change=0.5`` means "an increase of 50% or more is harmful" for the PASS test. The FAIL
test asks "is the canary confidently worse than allowed?", the PASS (non-inferiority) test asks
"is the canary confidently better than the critical change?". Between the two the judge continues.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from guardrail.domain.errors import ValidationError
from guardrail.domain.model import Direction


class MetricKind(StrEnum):
    ERRORS = "errors"  # error count over request count, per track
    LATENCY = "latency"  # a latency quantile: histogram exceedance test, or quantile CS on raw values
    THROUGHPUT = "throughput"  # canary share of requests vs the share it was given
    GAUGE = "gauge"  # per-interval values (CPU, memory, pool use): paired sign test
    COUNTER_RATIO = "counter_ratio"  # custom counts: gauges[numerator] / gauges[denominator] per window
    HISTOGRAM_THRESHOLD = "histogram_threshold"  # share of requests slower than a fixed threshold


class BaselineMode(StrEnum):
    CONCURRENT = "concurrent"  # canary and baseline side by side (canary, blue-green with a split)
    PRE_POST = "pre_post"  # the pre-deploy window is the baseline (all-at-once, rolling): weaker


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: MetricKind
    direction: Direction = Direction.INCREASE
    allowed_change: float = 0.0
    critical_change: float = 0.5
    critical: bool = True  # a critical metric fails the deploy alone
    must_have_data: bool = True  # no data holds the verdict (never read as zero)
    min_samples: int = 0  # canary events/requests (windows for gauges) before this metric may decide
    alpha_share: float = 1.0  # relative weight of this metric in the deploy-level alpha
    quantile: float | None = None  # latency: 0.95, 0.99
    threshold_s: float | None = None  # latency / histogram_threshold: fixed threshold (a bucket bound)
    gauge: str | None = None  # gauge: name in Sample.gauges
    numerator: str | None = None  # counter_ratio: per-window count in Sample.gauges
    denominator: str | None = None  # counter_ratio: per-window exposure in Sample.gauges (or "requests")

    def __post_init__(self) -> None:
        where = f"metrics.{self.name}"
        if not self.name:
            raise ValidationError("metric name must not be empty", field="metrics[].name")
        if self.allowed_change < 0 or self.critical_change <= self.allowed_change:
            raise ValidationError(
                f"need 0 <= allowed_change < critical_change, got {self.allowed_change} and {self.critical_change}",
                field=f"{where}.critical_change",
            )
        if (
            self.direction is Direction.DECREASE
            and self.critical_change >= 1
            and self.kind is not MetricKind.GAUGE
        ):
            raise ValidationError(
                "for direction 'decrease' the critical change is a relative drop and must be < 1",
                field=f"{where}.critical_change",
            )
        if self.alpha_share <= 0:
            raise ValidationError("alpha_share must be > 0", field=f"{where}.alpha_share")
        if self.kind is MetricKind.LATENCY and self.quantile is None and self.threshold_s is None:
            raise ValidationError(
                "a latency metric needs quantile (e.g. 0.99) or threshold_s", field=f"{where}.quantile"
            )
        if self.quantile is not None and not 0.5 <= self.quantile < 1:
            raise ValidationError(
                f"quantile must be in [0.5, 1), got {self.quantile}", field=f"{where}.quantile"
            )
        if self.kind is MetricKind.HISTOGRAM_THRESHOLD and self.threshold_s is None:
            raise ValidationError(
                "histogram_threshold needs threshold_s (a bucket bound)", field=f"{where}.threshold_s"
            )
        if self.kind is MetricKind.GAUGE and not self.gauge:
            raise ValidationError("a gauge metric needs the gauge name", field=f"{where}.gauge")
        if self.kind is MetricKind.COUNTER_RATIO and not (self.numerator and self.denominator):
            raise ValidationError("counter_ratio needs numerator and denominator", field=f"{where}.numerator")


def default_metrics() -> tuple[MetricSpec, ...]:
    """The lesson's key application metrics: error rate, p95/p99 latency and throughput."""
    return (
        MetricSpec("error_rate", MetricKind.ERRORS, allowed_change=0.0, critical_change=0.5, alpha_share=0.5),
        MetricSpec(
            "latency_p99",
            MetricKind.LATENCY,
            quantile=0.99,
            allowed_change=0.0,
            critical_change=0.5,
            alpha_share=0.4,
        ),
        MetricSpec(
            "latency_p95",
            MetricKind.LATENCY,
            quantile=0.95,
            allowed_change=0.0,
            critical_change=0.5,
            alpha_share=0.1,
            critical=False,
        ),
        MetricSpec(
            "throughput",
            MetricKind.THROUGHPUT,
            direction=Direction.DECREASE,
            allowed_change=0.1,
            critical_change=0.25,
            alpha_share=0.05,
        ),
    )


@dataclass(frozen=True, slots=True)
class AnalysisSpec:
    alpha: float = 0.01  # false-rollback budget of the whole deploy, split across metrics by alpha_share
    pass_alpha: float = 0.02  # error budget of an early PASS (promoting a deploy that is critically worse)
    warmup_s: float = 0.0  # ignore canary data (and the matching baseline) in the first N seconds of each step
    max_duration_s: float = 1800.0  # analysis window of each step: at its end, no decision means inconclusive
    min_canary_requests: int = 50  # no decision of any kind before this many canary requests
    metrics: tuple[MetricSpec, ...] = field(default_factory=default_metrics)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 0.5:
            raise ValidationError(f"alpha must be in (0, 0.5), got {self.alpha}", field="analysis.alpha")
        if not 0 < self.pass_alpha < 0.5:
            raise ValidationError(
                f"pass_alpha must be in (0, 0.5), got {self.pass_alpha}", field="analysis.pass_alpha"
            )
        if self.warmup_s < 0:
            raise ValidationError("warmup_s must be >= 0", field="analysis.warmup_s")
        if self.max_duration_s <= 0:
            raise ValidationError("max_duration_s must be > 0", field="analysis.max_duration_s")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValidationError(f"metric names must be unique, got {names}", field="analysis.metrics")
        if not self.metrics:
            raise ValidationError("at least one metric is needed", field="analysis.metrics")

    def metric_alpha(self, spec: MetricSpec) -> float:
        """The metric's share of the false-rollback budget. Only critical metrics can roll a deploy
        back, so the shares are normalised over them; a non-critical metric's FAIL only holds a
        deploy, and it gets the same rate per unit of share."""
        total = sum(m.alpha_share for m in self.metrics if m.critical) or sum(m.alpha_share for m in self.metrics)
        return self.alpha * spec.alpha_share / total

    def metric_pass_alpha(self, spec: MetricSpec) -> float:
        total = sum(m.alpha_share for m in self.metrics)
        return self.pass_alpha * spec.alpha_share / total
