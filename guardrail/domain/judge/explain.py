"""Plain-English wording of evidence and of what more data an inconclusive verdict needs."""

from __future__ import annotations

import math

from guardrail.domain.model import MetricStatus


def pct(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    v = 100 * x
    if v == 0:
        return "0%"
    if v < 0.1:
        return f"{v:.3f}%"
    if v < 10:
        return f"{v:.2f}".rstrip("0").rstrip(".") + "%"
    return f"{v:.1f}%"


def ratio(x: float | None) -> str:
    if x is None:
        return "n/a"
    if math.isinf(x):
        return "inf"
    if x >= 10:
        return f"{x:.0f}"
    return f"{x:.3g}"


def seconds(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "+Inf"
    if x < 1:
        return f"{x * 1000:.0f} ms"
    return f"{x:.2f} s"


def interval(lo: float | None, hi: float | None, confidence: float) -> str:
    level = f"{confidence * 100:.2f}".rstrip("0").rstrip(".")
    if lo is None or hi is None:
        return f"{level}% CS empty"
    return f"{level}% CS {ratio(lo)}-{ratio(hi)}"


def status_word(status: MetricStatus, critical_change: float, harmful_up: bool) -> str:
    if status is MetricStatus.PASS:
        sign = "+" if harmful_up else "-"
        return f"pass (a change of {sign}{critical_change:.0%} or worse is ruled out)"
    if status is MetricStatus.NO_DATA:
        return "no data: holding"
    return status.value


def power_sentence(
    metric: str,
    *,
    estimate: float | None,
    critical_ratio: float,
    canary_events: float,
    baseline_events: float,
    canary_exposure: float,
    canary_rate_per_s: float | None,
    log_threshold: float,
    dispersion: float,
    ci_high: float | None,
) -> str:
    """How much more canary traffic the PASS test needs to rule out the critical change.

    Normal approximation of the log rate ratio: se^2 ~ phi (1/x_c + 1/x_b); certifying
    log(critical) needs (log(critical) - log(estimate)) / se >= sqrt(2 * (log(1/alpha) + 1.5)),
    the extra 1.5 nats being the usual cost of the mixture over effect sizes.
    """
    where = f"{metric}: "
    ruled = f"with the data so far only a change above {ratio(ci_high)}x is ruled out; " if ci_high else ""
    if canary_events <= 0 or baseline_events <= 0 or estimate is None or estimate <= 0:
        return (
            where
            + ruled
            + "no events on one track yet, so nothing can be certified; send more traffic to the canary"
        )
    gap = math.log(critical_ratio) - math.log(estimate)
    if gap <= 0:
        return (
            where
            + f"the estimate ({ratio(estimate)}x) is at or beyond the critical change ({ratio(critical_ratio)}x); more data would more likely fail it than pass it"
        )
    z = math.sqrt(2 * (log_threshold + 1.5))
    se_needed = gap / z
    rho = baseline_events / canary_events
    events_needed = dispersion * (1 + 1 / rho) / se_needed**2
    requests_needed = events_needed * canary_exposure / canary_events
    more = max(requests_needed - canary_exposure, 0.0)
    text = (
        where + ruled + f"about {more:,.0f} more canary requests needed to rule out {ratio(critical_ratio)}x"
    )
    if canary_rate_per_s and canary_rate_per_s > 0:
        minutes = more / canary_rate_per_s / 60
        text += (
            f" (~{minutes:,.0f} more minutes at the current canary traffic, or more traffic to the canary)"
        )
    return text
