"""The judge: anytime-valid canary-vs-baseline statistics -> Verdict.

Usage (all times are data time, unix seconds)::

    judge = Judge(AnalysisSpec(), start=t0, mode=BaselineMode.CONCURRENT)
    judge.set_weight(t0, 0.10)          # canary share of traffic from t0 on (a step function)
    judge.add(sample)                   # Sample windows, any order; end <= t0 is pre-deploy history
    verdict = judge.evaluate(now=t)     # fail / pass / continue / inconclusive (after max_duration_s)
"""

from guardrail.domain.judge.engine import Judge
from guardrail.domain.judge.spec import AnalysisSpec, BaselineMode, MetricKind, MetricSpec, default_metrics

__all__ = ["AnalysisSpec", "BaselineMode", "Judge", "MetricKind", "MetricSpec", "default_metrics"]
