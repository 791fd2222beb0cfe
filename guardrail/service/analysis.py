"""Building a deploy's judge: its analysis spec from the marker and defaults, and its state from the
stored samples (so a restart, a replay or a backtest re-derives the same verdicts)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields, replace
from typing import Any

from guardrail.config import AnalysisDefaults
from guardrail.domain.errors import ValidationError
from guardrail.domain.judge import AnalysisSpec, BaselineMode, Judge, MetricKind, MetricSpec, default_metrics
from guardrail.domain.model import Direction, Sample
from guardrail.domain.records import Deploy

_TUNABLE = {f.name for f in fields(MetricSpec)} - {"name", "kind"}


def _metric_from(name: str, raw: Mapping[str, Any], base: MetricSpec | None, where: str) -> MetricSpec | None:
    if not isinstance(raw, Mapping):
        raise ValidationError(f"{where} must be an object", field=where)
    raw = dict(raw)
    enabled = raw.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise ValidationError(f"{where}.enabled must be true or false", field=f"{where}.enabled")
    if not enabled:
        return None
    unknown = set(raw) - _TUNABLE - ({"kind"} if base is None else set())
    if unknown:
        raise ValidationError(
            f"unknown key(s) {sorted(unknown)} in {where}; accepted: {sorted(_TUNABLE | {'enabled'})}",
            field=f"{where}.{sorted(unknown)[0]}",
        )
    try:
        if base is None:
            kind = MetricKind(raw.pop("kind"))
            if "direction" in raw:
                raw["direction"] = Direction(raw["direction"])
            return MetricSpec(name=name, kind=kind, **raw)
        if "direction" in raw:
            raw["direction"] = Direction(raw["direction"])
        return replace(base, **raw)
    except KeyError:
        raise ValidationError(
            f"{where}.kind is required: one of {[k.value for k in MetricKind]}", field=f"{where}.kind"
        ) from None
    except (TypeError, ValueError) as e:
        if isinstance(e, ValidationError):
            raise
        raise ValidationError(f"{where}: {e}", field=where) from None


def analysis_spec(deploy: Deploy, defaults: AnalysisDefaults) -> AnalysisSpec:
    """Defaults, then the marker's analysis settings, then its metric overrides:
    ``metrics.overrides: {latency_p95: {enabled: false}, error_rate: {critical_change: 0.3}}`` and
    ``metrics.custom: [{name, kind, ...}]`` (counter_ratio, histogram_threshold, gauge...)."""
    m = deploy.marker
    specs = {s.name: s for s in default_metrics()}
    overrides = m.metrics_overrides.get("overrides", {}) or {}
    for name, raw in overrides.items():
        if name not in specs:
            raise ValidationError(
                f"metrics.overrides.{name}: no such built-in metric; known: {sorted(specs)}",
                field=f"metrics.overrides.{name}",
            )
        spec = _metric_from(name, raw, specs[name], f"metrics.overrides.{name}")
        if spec is None:
            del specs[name]
        else:
            specs[name] = spec
    for i, raw in enumerate(m.metrics_overrides.get("custom", []) or []):
        where = f"metrics.custom[{i}]"
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
            raise ValidationError(f"{where}.name is required", field=f"{where}.name")
        raw = dict(raw)
        name = raw.pop("name")
        if name in specs:
            raise ValidationError(f"{where}.name {name!r} is already used", field=f"{where}.name")
        spec = _metric_from(name, raw, None, where)
        if spec is not None:
            specs[name] = spec
    return AnalysisSpec(
        alpha=m.analysis.alpha,
        pass_alpha=defaults.pass_alpha,
        warmup_s=m.analysis.warmup_s,
        max_duration_s=m.analysis.max_duration_s,
        min_canary_requests=defaults.min_canary_requests,
        metrics=tuple(specs.values()),
    )


def build_judge(deploy: Deploy, defaults: AnalysisDefaults, samples: Iterable[Sample]) -> Judge | None:
    """The judge of a deploy whose new version has traffic, fed with every stored sample."""
    r = deploy.rollout
    if r.traffic_started_at is None:
        return None
    mode = BaselineMode.CONCURRENT if r.concurrent else BaselineMode.PRE_POST
    judge = Judge(analysis_spec(deploy, defaults), start=r.traffic_started_at, mode=mode)
    judge.on_inconclusive = r.on_inconclusive
    for step, at in r.history:
        apply_weight(judge, deploy, step, at)
    judge.add_many(samples)
    return judge


def apply_weight(judge: Judge, deploy: Deploy, step: int, at: float) -> None:
    """Step ``step`` took effect at data time ``at``: its traffic share, analysis window and warm-up."""
    judge.mark_step(at)
    w = deploy.rollout.steps[step].weight
    if w is not None and 0 < w <= 100:
        judge.set_weight(at, w / 100)
