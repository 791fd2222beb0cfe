"""Backtest: what guardrail would have decided about a past deploy, and when, from the metrics the
source still holds. The same code path as live analysis: the deploy's analysis spec comes from
``analysis_spec`` (server defaults, then the marker-style metric overrides), the judge from
``build_judge``, and it is fed the source's per-window samples in data time, evaluated at every
window end, exactly as ``Engine.ingest`` does for a push or a pull.

A backtest has one canary step: the canary gets ``weight`` percent of the traffic from
``deploy_time`` on (windows before it are the baseline's pre-deploy history). It stops at the first
decisive verdict: FAIL (would have rolled back), PASS once ``min_duration_s`` has passed (would have
promoted this step), INCONCLUSIVE at ``max_duration_s``. The traffic share the canary was given is
not in the metrics: without ``weight`` the throughput check is left out.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from guardrail.config import AnalysisDefaults
from guardrail.domain.errors import ValidationError
from guardrail.domain.judge import AnalysisSpec, BaselineMode, Judge
from guardrail.domain.model import ChangeType, Decision, DeployState, Sample, Step, Strategy, Verdict
from guardrail.domain.records import AnalysisSettings, Deploy, Marker
from guardrail.domain.rollout import Rollout
from guardrail.ports import MetricSource, SourceQuery
from guardrail.service.analysis import build_judge

DECISIVE = (Decision.FAIL, Decision.INCONCLUSIVE)


@dataclass(frozen=True, slots=True)
class BacktestOutcome:
    decision: Decision  # PASS, FAIL, INCONCLUSIVE, or CONTINUE: no decision by the end of the data
    at: float | None  # data time of the deciding window end
    verdict: Verdict | None  # the last verdict (the deciding one)
    windows: int  # evaluations (window ends after the deploy time)


def backtest_deploy(
    *,
    service: str,
    environment: str,
    version: str,
    baseline_version: str,
    deploy_time: float,
    interval_s: float,
    weight: float | None,
    defaults: AnalysisDefaults,
    metrics: Mapping[str, Any] | None = None,
    max_duration_s: float | None = None,
) -> Deploy:
    """The deploy record live analysis would have had: one canary step at ``weight`` percent."""
    overrides: dict[str, Any] = {k: v for k, v in (metrics or {}).items()}
    if weight is None:  # the share it was given is unknown: nothing to compare the canary's share with
        per_metric = dict(overrides.get("overrides") or {})
        per_metric.setdefault("throughput", {"enabled": False})
        overrides["overrides"] = per_metric
    elif not 0 < weight <= 100:
        raise ValidationError(f"weight must be a percentage in (0, 100], got {weight}", field="weight")
    marker = Marker(
        service=service,
        environment=environment,
        version=version,
        previous_version=baseline_version,
        commit="backtest",
        strategy=Strategy.CANARY,
        change_type=ChangeType.FEATURE,
        metrics_source="backtest",
        metrics_overrides=overrides,
        analysis=AnalysisSettings(
            alpha=defaults.alpha,
            interval_s=interval_s,
            max_duration_s=max_duration_s if max_duration_s is not None else defaults.max_duration_s,
            warmup_s=defaults.warmup_s,
        ),
        steps=(Step(weight=weight),),
        started_at=deploy_time,
    )
    rollout = Rollout(
        steps=marker.steps,
        concurrent=True,
        state=DeployState.ANALYZING,
        step=0,
        step_started_at=deploy_time,
        traffic_started_at=deploy_time,
        history=((0, deploy_time),),
    )
    return Deploy(uuid.uuid4().hex[:16], marker, rollout, deploy_time, deploy_time, deploy_time)


async def backtest(
    source: MetricSource,
    *,
    service: str,
    environment: str,
    version: str,
    baseline_version: str,
    start: float,
    end: float,
    interval_s: float,
    deploy_time: float | None = None,
    weight: float | None = None,
    defaults: AnalysisDefaults | None = None,
    spec: AnalysisSpec | None = None,
    metrics: Mapping[str, Any] | None = None,
    source_overrides: Mapping[str, Any] | None = None,
    min_duration_s: float = 0.0,
    max_duration_s: float | None = None,
) -> list[tuple[float, Verdict]]:
    """Every evaluation ``(data time, verdict)`` from the first window after ``deploy_time``
    (default ``start``) until the first decisive verdict or the end of the data. ``spec`` replaces
    the spec built from ``defaults`` and ``metrics`` (the marker's ``metrics`` object)."""
    if end <= start:
        raise ValidationError(f"the end ({end}) must be after the start ({start})", field="to")
    if interval_s <= 0:
        raise ValidationError("interval must be > 0 seconds", field="interval")
    deploy_time = start if deploy_time is None else deploy_time
    if not start <= deploy_time < end:
        raise ValidationError("the deploy time must be within [from, to)", field="deploy_time")
    deploy = backtest_deploy(
        service=service, environment=environment, version=version, baseline_version=baseline_version,
        deploy_time=deploy_time, interval_s=interval_s, weight=weight, defaults=defaults or AnalysisDefaults(),
        metrics=metrics, max_duration_s=max_duration_s,
    )
    if spec is not None:
        judge = Judge(spec, start=deploy_time, mode=BaselineMode.CONCURRENT)
        if weight is not None:
            judge.set_weight(deploy_time, weight / 100)
    else:
        built = build_judge(deploy, defaults or AnalysisDefaults(), ())
        assert built is not None
        judge = built
    samples = await source.fetch(SourceQuery(
        service=service, environment=environment, canary_version=version, baseline_version=baseline_version,
        start=start, end=end, interval_s=interval_s,
        overrides={"prometheus": dict(source_overrides)} if source_overrides else {},
    ))
    by_end: dict[float, list[Sample]] = {}
    for s in samples:
        by_end.setdefault(s.end, []).append(s)
    timeline: list[tuple[float, Verdict]] = []
    for t in sorted(by_end):
        judge.add_many(by_end[t])
        if t <= deploy_time:
            continue  # pre-deploy history
        verdict = judge.evaluate(now=t)
        timeline.append((t, verdict))
        if verdict.decision in DECISIVE or (
            verdict.decision is Decision.PASS and t - deploy_time >= min_duration_s
        ):
            break
    return timeline


def outcome(timeline: list[tuple[float, Verdict]], *, deploy_time: float, min_duration_s: float = 0.0) -> BacktestOutcome:
    """What the backtest concluded: the decisive verdict, or CONTINUE when the data ran out first."""
    if not timeline:
        return BacktestOutcome(Decision.CONTINUE, None, None, 0)
    t, v = timeline[-1]
    decisive = v.decision in DECISIVE or (v.decision is Decision.PASS and t - deploy_time >= min_duration_s)
    return BacktestOutcome(v.decision if decisive else Decision.CONTINUE, t if decisive else None, v, len(timeline))
