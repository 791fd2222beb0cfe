"""The facts object: what guardrail's own record says about one deploy, for the documents it drafts.

:func:`build_facts` is pure (no I/O, no clock): the same record gives the same dict, which is
JSON-serialisable (no NaN or infinity: an unbounded figure is ``None``). It holds facts only, never
a guess; a figure the record cannot give is ``None`` ("unknown" in a document). Numbers are rounded
to what a person reads: percentages to 3 significant digits, latencies to whole milliseconds,
durations to 0.1 s. Units are in the key names (``_pct``, ``_ms``, ``_s``, ``_rps``); times are
ISO-8601 UTC *data time* (the samples' own clock), with ``offset_s`` from the deploy's start.

The marker's adapter config is never copied (it may hold secrets): only the adapter's name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from guardrail.domain.drafts.model import Draft
from guardrail.domain.errors import ValidationError
from guardrail.domain.model import DeployState, Sample, Track
from guardrail.domain.records import Action, ActionStatus, Deploy, EventKind, TimelineEvent
from guardrail.domain.rollout import MAX_ROLLBACK_ATTEMPTS, CommandKind, Rollout

FACTS_VERSION = 1
BUDGET_DAYS = 30
_QUANTILES = (0.95, 0.99)

# what an Evidence's canary_value / baseline_value mean, per metric kind (fractions become percents)
_VALUE_MEANING = {
    "errors": "share of requests that failed",
    "latency": "share of requests slower than the latency threshold the judge fixed",
    "histogram_threshold": "share of requests slower than the threshold",
    "throughput": "share of all requests served by the track",
    "counter_ratio": "ratio of the two counters",
}


# --- small helpers ---------------------------------------------------------------------------------


def iso(t: float | None) -> str | None:
    """ISO-8601 UTC to the second, e.g. ``2023-11-14T22:13:20Z``."""
    if t is None or not math.isfinite(t):
        return None
    return datetime.fromtimestamp(round(t), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sig(x: float | None, digits: int = 3) -> float | None:
    """Rounded to ``digits`` significant digits; None for None or a non-finite value."""
    if x is None or not math.isfinite(x):
        return None
    if x == 0:
        return 0.0
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else _sig(100 * fraction)


def _ms(seconds: float | None) -> float | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    return float(round(seconds * 1000))


def _s(seconds: float | None) -> float | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    return round(float(seconds), 1)


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (``sorted_values`` not empty)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _spread(values: Iterable[float], rnd: Any) -> dict[str, float | None] | None:
    v = sorted(values)
    if not v:
        return None
    return {
        "min": rnd(v[0]),
        "p5": rnd(_percentile(v, 0.05)),
        "median": rnd(_percentile(v, 0.5)),
        "p95": rnd(_percentile(v, 0.95)),
        "max": rnd(v[-1]),
    }


# --- latency quantiles -----------------------------------------------------------------------------


def _latency(samples: Sequence[Sample]) -> dict[str, Any]:
    """p95/p99 in ms of the pooled windows: from the histograms (the most common bucket layout,
    interpolated linearly inside a bucket as Prometheus' histogram_quantile does), else from raw
    latencies (nearest rank). ``*_is_lower_bound`` when the quantile falls in the +Inf bucket."""
    out: dict[str, Any] = {"p95_ms": None, "p99_ms": None, "latency_source": None, "latency_windows": 0}
    layouts: dict[tuple[float, ...], list[int]] = {}
    windows: dict[tuple[float, ...], int] = {}
    for s in samples:
        if s.latency is not None and s.latency.total > 0:
            acc = layouts.setdefault(s.latency.bounds, [0] * len(s.latency.counts))
            for i, c in enumerate(s.latency.counts):
                acc[i] += c
            windows[s.latency.bounds] = windows.get(s.latency.bounds, 0) + 1
    if layouts:
        bounds = max(layouts, key=lambda b: (windows[b], b))
        counts = layouts[bounds]
        total = sum(counts)
        out.update(latency_source="histogram", latency_windows=windows[bounds])
        for q in _QUANTILES:
            rank = q * total
            cum = 0
            for i, c in enumerate(counts):
                if c and cum + c >= rank:
                    if i == len(bounds):  # the +Inf bucket: only "slower than the last bound" is known
                        out[f"p{round(q * 100)}_ms"] = _ms(bounds[-1])
                        out[f"p{round(q * 100)}_is_lower_bound"] = True
                    else:
                        lower = bounds[i - 1] if i > 0 else 0.0
                        value = lower + (bounds[i] - lower) * (rank - cum) / c
                        out[f"p{round(q * 100)}_ms"] = _ms(value)
                    break
                cum += c
        return out
    raw = sorted(x for s in samples for x in s.latencies)
    if raw:
        out.update(latency_source="raw", latency_windows=sum(1 for s in samples if s.latencies))
        for q in _QUANTILES:
            out[f"p{round(q * 100)}_ms"] = _ms(raw[min(len(raw) - 1, max(0, math.ceil(q * len(raw)) - 1))])
    return out


def _track_figures(samples: Sequence[Sample]) -> dict[str, Any] | None:
    if not samples:
        return None
    requests = sum(s.requests for s in samples)
    errors = sum(s.errors for s in samples)
    seconds = sum(s.end - s.start for s in samples)
    return {
        "windows": len(samples),
        "from": iso(min(s.start for s in samples)),
        "to": iso(max(s.end for s in samples)),
        "requests": requests,
        "errors": errors,
        "error_rate_pct": _pct(errors / requests) if requests else None,
        **_latency(samples),
        "throughput_rps": _sig(requests / seconds) if seconds > 0 else None,
    }


# --- evidence --------------------------------------------------------------------------------------


def _evidence(e: Mapping[str, Any]) -> dict[str, Any]:
    kind = str(e.get("kind", ""))
    as_pct = kind in ("errors", "latency", "histogram_threshold", "throughput")
    value = _pct if as_pct else _sig
    confidence = _num(e.get("confidence"))
    return {
        "metric": e.get("metric"),
        "kind": kind,
        "status": e.get("status"),
        "critical": bool(e.get("critical")),
        "estimate": _sig(_num(e.get("estimate"))),
        "ci_low": _sig(_num(e.get("ci_low"))),
        "ci_high": _sig(_num(e.get("ci_high"))),  # None: not bounded above yet
        "confidence_pct": None if confidence is None else round(100 * confidence, 2),
        "canary_value": value(_num(e.get("canary_value"))),
        "baseline_value": value(_num(e.get("baseline_value"))),
        "values_are": (_VALUE_MEANING.get(kind, "the metric's value") + (", in percent" if as_pct else "")),
        "canary_n": _num(e.get("canary_n")),
        "baseline_n": _num(e.get("baseline_n")),
        # FAIL: the whole interval beyond fail_ratio in the harmful direction; PASS: pass_ratio ruled out
        "harmful": _harmful(_num(e.get("allowed")), _num(e.get("critical_change"))),
        "fail_ratio": _sig(_num(e.get("allowed"))),
        "pass_ratio": _sig(_num(e.get("critical_change"))),
        "detail": e.get("detail", ""),
    }


def _harmful(allowed: float | None, critical: float | None) -> str | None:
    """Which way a change hurts, from the judge's two margins (the critical one lies further out)."""
    if allowed is None or critical is None or allowed == critical:
        return None
    return "increase" if critical > allowed else "decrease"


def _verdict(v: Mapping[str, Any] | None, traffic_at: float | None, start: float) -> dict[str, Any] | None:
    if not v:
        return None
    at = _num(v.get("decided_at")) or _num(v.get("evaluated_at"))
    return {
        "decision": v.get("decision"),
        "at": iso(at),
        "offset_s": _s(at - start) if at is not None else None,
        "since_traffic_s": _s(at - traffic_at) if at is not None and traffic_at is not None else None,
        "mode": v.get("mode"),
        "summary": v.get("summary", ""),
        "power": v.get("power"),
        "metrics": [_evidence(e) for e in v.get("evidence", []) or []],
    }


# --- the parts of the facts object -----------------------------------------------------------------


def _trigger(reason: str) -> str | None:
    if not reason:
        return None
    if reason.startswith("canary analysis failed: alert "):
        return "alert"
    if reason.startswith("canary analysis failed"):
        return "judge"
    if reason.startswith("step "):
        return "step_failure"
    if reason.startswith("promotion failed"):
        return "promotion_failure"
    if reason.startswith("manual rollback"):
        return "manual"
    if reason.startswith("analysis inconclusive"):
        return "inconclusive"
    if reason.startswith("paused by"):
        return "paused"
    return "other"


def _alert(ev: TimelineEvent, start: float) -> dict[str, Any]:
    a = ev.details.get("alert") or {}
    if "labels" in a:  # an Alertmanager alert
        labels, notes = a.get("labels") or {}, a.get("annotations") or {}
        return {
            "at": iso(ev.data_time),
            "offset_s": _s(ev.data_time - start) if ev.data_time is not None else None,
            "source": "alertmanager",
            "rule": labels.get("alertname", ""),
            "severity": labels.get("severity", ""),
            "state": a.get("status", ""),
            "track": labels.get("track"),
            "sentence": notes.get("summary") or notes.get("description") or ev.message,
            "fails_deploy": None,
        }
    return {
        "at": iso(ev.data_time),
        "offset_s": _s(ev.data_time - start) if ev.data_time is not None else None,
        "source": "guardrail",
        "rule": a.get("rule", ""),
        "severity": a.get("severity", ""),
        "state": a.get("state", ""),
        "track": a.get("track"),
        "sentence": a.get("sentence") or ev.message,
        "fails_deploy": a.get("fails_deploy"),
    }


def _policy(created: TimelineEvent | None) -> list[dict[str, str]] | None:
    checks = (created.details.get("policy") if created is not None else None) or None
    if isinstance(checks, Mapping):  # the engine records the whole result: {blocked, summary, checks}
        checks = checks.get("checks") or None
    if checks is None:
        return None
    return [
        {
            "name": str(c.get("name", "")),
            "status": str(c.get("status", "")),
            "detail": str(c.get("detail", "")),
        }
        for c in checks
        if isinstance(c, Mapping)
    ]


def build_facts(
    deploy: Deploy,
    events: Sequence[TimelineEvent],
    actions: Sequence[Action],
    samples: Sequence[Sample],
    *,
    public_url: str,
    slo: float = 0.999,
    grafana_url: str | None = None,
    drafts: Sequence[Draft] = (),
) -> dict[str, Any]:
    """The facts object of one deploy (see the module docstring). Pure and deterministic."""
    if not (isinstance(slo, int | float) and 0 < slo < 1):
        raise ValidationError(
            f"slo must be a fraction between 0 and 1 (e.g. 0.999), got {slo!r}", field="slo"
        )
    m, r = deploy.marker, deploy.rollout
    events = sorted(events, key=lambda e: e.seq)
    actions = sorted(actions, key=lambda a: a.id)
    start = m.started_at if m.started_at is not None else deploy.data_time
    traffic_at = r.traffic_started_at
    base = public_url.rstrip("/")

    def off(t: float | None) -> float | None:
        return _s(t - start) if t is not None else None

    created = next((e for e in events if e.kind is EventKind.CREATED), None)

    # --- outcome: when the deploy reached its terminal state (data time)
    end_event = next(
        (
            e
            for e in reversed(events)
            if e.kind is EventKind.TRANSITION and e.details.get("after") == deploy.state.value
        ),
        None,
    )
    ended = end_event.data_time if deploy.state.terminal and end_event is not None else None

    # --- rollback (each rollback action row is an attempt; a restart may repeat one: its attempts)
    rb_actions = [a for a in actions if a.command.kind is CommandKind.ROLLBACK]
    rb_events = [e for e in events if e.details.get("kind") == CommandKind.ROLLBACK.value]
    rb_started = next((e for e in rb_events if e.kind is EventKind.ACTION_STARTED), None)
    rb_done = next((e for e in rb_events if e.kind is EventKind.ACTION_DONE), None)
    rb_failed = [e for e in rb_events if e.kind is EventKind.ACTION_FAILED]
    rollback: dict[str, Any] = {
        "needed": bool(rb_actions)
        or deploy.state in (DeployState.ROLLING_BACK, DeployState.ROLLED_BACK, DeployState.ROLLBACK_FAILED),
        "reason": r.reason if rb_actions else "",
        "trigger": _trigger(r.reason) if rb_actions else None,
        "automatic": _trigger(r.reason) not in (None, "manual") if rb_actions else None,
        "to_version": m.previous_version,
        "started_at": iso(rb_started.data_time) if rb_started else None,
        "finished_at": iso(rb_done.data_time) if rb_done else None,
        "succeeded": deploy.state is DeployState.ROLLED_BACK if rb_actions else None,
        "attempts": sum(max(a.attempts, 0) for a in rb_actions),
        "failed_attempts": [e.message for e in rb_failed],
        "max_attempts": MAX_ROLLBACK_ATTEMPTS,  # then the deploy is left rollback_failed and on-call is paged
        # wall time from the first attempt to the successful one, retries and their back-off included
        "seconds": _s(rb_done.wall_time - rb_started.wall_time) if rb_started and rb_done else None,
        # time spent inside the adapter's calls, all attempts
        "adapter_seconds": _s(sum(_num(a.result.get("seconds")) or 0.0 for a in rb_actions))
        if rb_actions
        else None,
    }

    # --- steps and how far the rollout got
    first_at: dict[int, float] = {}
    for i, at in r.history:
        first_at.setdefault(i, at)
    failed_steps = {
        a.command.step: str(a.result.get("detail", ""))
        for a in actions
        if a.command.kind is CommandKind.APPLY_STEP and a.status is ActionStatus.FAILED
    }
    # the new version is exposed until the rollback succeeds; otherwise up to the latest data
    exposure_end = (
        rb_done.data_time if rb_done is not None and rb_done.data_time is not None else deploy.data_time
    )
    reached = sorted(first_at)
    steps = []
    for i, st in enumerate(r.steps):
        at = first_at.get(i)
        nxt = [first_at[j] for j in reached if j > i]
        until = nxt[0] if nxt else (exposure_end if at is not None else None)
        if i in failed_steps:
            status = "failed to apply"
        elif at is None:
            status = "not reached"
        elif nxt or deploy.state is DeployState.PROMOTED:
            status = "passed"
        elif deploy.state in (DeployState.ROLLED_BACK, DeployState.ROLLING_BACK, DeployState.ROLLBACK_FAILED):
            status = "rolled back"
        else:
            status = "in effect"
        steps.append(
            {
                "number": i + 1,
                "target": st.describe(),
                "weight_pct": st.weight,
                "servers": st.servers,
                "min_duration_s": _s(st.min_duration_s),
                "started_at": iso(at),
                "offset_s": off(at),
                "duration_s": _s(until - at) if at is not None and until is not None else None,
                "status": status,
                "failure": failed_steps.get(i),
            }
        )

    # --- detection: what stopped the deploy, and the judge's first FAIL
    verdict_events = [
        e for e in events if e.kind is EventKind.VERDICT and isinstance(e.details.get("verdict"), Mapping)
    ]
    first_fail = next((e for e in verdict_events if e.details["verdict"].get("decision") == "fail"), None)
    stop = next(
        (e for e in events if e.kind is EventKind.TRANSITION and e.details.get("after") == "rolling_back"),
        None,
    )
    if stop is None and deploy.state is DeployState.PAUSED:
        stop = next(
            (
                e
                for e in reversed(events)
                if e.kind is EventKind.TRANSITION and e.details.get("after") == "paused"
            ),
            None,
        )
    trigger = _trigger(r.reason) if r.reason else None
    fail_verdict = _verdict(first_fail.details["verdict"], traffic_at, start) if first_fail else None
    if fail_verdict is not None:
        failing = [x for x in fail_verdict["metrics"] if x["status"] == "fail"]
        others = [x for x in fail_verdict["metrics"] if x["status"] != "fail"]
        fail_verdict = {**fail_verdict, "metrics": failing, "other_metrics": others}
    detected_at = (
        first_fail.data_time
        if trigger == "judge" and first_fail is not None
        else (stop.data_time if stop is not None and trigger is not None else None)
    )
    detection = {
        "problem_found": trigger in ("judge", "alert", "step_failure", "promotion_failure", "manual"),
        "trigger": trigger,
        "reason": r.reason,
        "at": iso(detected_at),
        "offset_s": off(detected_at),
        "since_traffic_s": _s(detected_at - traffic_at)
        if detected_at is not None and traffic_at is not None
        else None,
        "verdict": fail_verdict,
    }

    # --- measurements over the analysis (from the first traffic to the end of exposure)
    canary_all = [s for s in samples if s.track is Track.CANARY]
    baseline_all = [s for s in samples if s.track is Track.BASELINE]

    def during(ss: Sequence[Sample]) -> list[Sample]:
        if traffic_at is None or exposure_end is None:
            return []
        return [s for s in ss if traffic_at <= s.start < exposure_end]

    canary, baseline = during(canary_all), during(baseline_all)
    measurements = {
        "from": iso(traffic_at),
        "to": iso(exposure_end) if traffic_at is not None else None,
        "canary": _track_figures(canary),
        "baseline": _track_figures(baseline),
        "method": "windows from the first traffic on the new version to the end of its exposure; p95/p99 "
        "from the pooled latency histograms (linear inside a bucket) or raw latencies; throughput is "
        "requests per second of the windows received",
    }

    # --- the baseline's own variation, per window (pre-deploy windows when there are enough)
    pre = [s for s in baseline_all if s.end <= (traffic_at if traffic_at is not None else start)]
    basis_samples, basis = (
        (pre, "pre-deploy baseline windows") if len(pre) >= 3 else (baseline_all, "baseline windows")
    )
    p99s = [_latency([s]).get("p99_ms") for s in basis_samples if s.requests >= 100]
    variation = {
        "basis": basis,
        "windows": len(basis_samples),
        "window_s": _spread((s.end - s.start for s in basis_samples), _s),
        "error_rate_pct": _spread((s.errors / s.requests for s in basis_samples if s.requests), _pct),
        "p99_ms": _spread((x / 1000 for x in p99s if x is not None), _ms),
        "requests_per_s": _spread((s.requests / (s.end - s.start) for s in basis_samples), _sig),
        "pooled": _track_figures(basis_samples),
        "note": "per-window p99 only from windows with at least 100 requests; requests per second of the "
        "baseline track, whose share of traffic shrinks as the canary's grows",
    }

    # --- impact of the new version
    impact = _impact(r, traffic_at, exposure_end, canary, baseline, pre, slo)

    # --- alerts, overrides, actions, timeline
    alerts = [_alert(e, start) for e in events if e.kind is EventKind.ALERT]
    overrides = [
        {
            "at": iso(e.data_time),
            "offset_s": off(e.data_time),
            "action": e.details.get("action", ""),
            "who": e.details.get("who", ""),
            "why": e.details.get("why", ""),
        }
        for e in events
        if e.kind is EventKind.OVERRIDE
    ]
    action_list = [
        {
            "kind": a.command.kind.value,
            "step": None if a.command.step is None else a.command.step + 1,
            "status": a.status.value,
            "attempts": a.attempts,
            "seconds": _s(_num(a.result.get("seconds"))),
            "detail": str(a.result.get("detail", "")),
        }
        for a in actions
    ]
    timeline = [
        {"at": iso(e.data_time), "offset_s": off(e.data_time), "kind": e.kind.value, "message": e.message}
        for e in events
        if not (
            e.kind is EventKind.VERDICT and (e.details.get("verdict") or {}).get("decision") == "continue"
        )
    ]

    policy = _policy(created)
    latest = _verdict(deploy.verdict, traffic_at, start)
    verified = _verified(m.adapter.name, policy, latest, bool(samples))

    links: dict[str, Any] = {
        "deploy": f"{base}/deploys/{deploy.id}",
        "api": f"{base}/api/v1/deploys/{deploy.id}",
        "grafana": _grafana(grafana_url, m.service, traffic_at or start, exposure_end)
        if grafana_url
        else None,
        "marker": {k: m.links[k] for k in sorted(m.links)},
        "drafts": [
            {
                "kind": d.kind.value,
                "version": d.version,
                "source": d.source,
                "url": f"{base}/api/v1/deploys/{d.deploy_id}/drafts/{d.kind.value}?version={d.version}",
            }
            for d in sorted(drafts, key=lambda d: (d.kind.value, d.version))
        ],
    }

    return {
        "facts_version": FACTS_VERSION,
        "deploy": {
            "id": deploy.id,
            "service": m.service,
            "environment": m.environment,
            "version": m.version,
            "previous_version": m.previous_version,
            "commit": m.commit,
            "commit_time": iso(m.commit_time),
            "author": m.author or None,
            "strategy": m.strategy.value,
            "change_type": m.change_type.value,
            "description": m.description or None,
            "changes": list(m.changes),
            "db_migrations": m.db_migrations,
            "db_migrations_description": m.db_migrations_description or None,
            "adapter": m.adapter.name,
            "metrics_source": m.metrics_source,
            "checklist": [{"item": k, "answer": bool(v)} for k, v in m.checklist.items()],
            "fast_track": m.fast_track or None,
            "policy_checks": policy,
            "analysis": {
                "alpha": m.analysis.alpha,
                "max_duration_s": _s(m.analysis.max_duration_s),
                "interval_s": _s(m.analysis.interval_s),
                "on_inconclusive": m.analysis.on_inconclusive,
            },
        },
        "rollout": {
            "steps": steps,
            "total_steps": len(r.steps),
            "steps_reached": len(reached),
            "furthest_step": (reached[-1] + 1) if reached else None,
            "traffic_started_at": iso(traffic_at),
            "min_duration_total_s": _s(sum(s.min_duration_s for s in r.steps)),
        },
        "outcome": {
            "state": deploy.state.value,
            "finished": deploy.state.terminal,
            "reason": r.reason or None,
            "started_at": iso(start),
            "ended_at": iso(ended),
            "duration_s": _s(ended - start) if ended is not None else None,
            "data_until": iso(deploy.data_time),
        },
        "verdict": latest,
        "detection": detection,
        "rollback": rollback,
        "actions": action_list,
        "alerts": alerts,
        "overrides": overrides,
        "measurements": measurements,
        "baseline_variation": variation,
        "impact": impact,
        "verified": verified,
        "timeline": timeline,
        "links": links,
    }


def _impact(
    r: Rollout,
    traffic_at: float | None,
    exposure_end: float | None,
    canary: Sequence[Sample],
    baseline: Sequence[Sample],
    pre: Sequence[Sample],
    slo: float,
) -> dict[str, Any]:
    method = {
        "duration": "from the first step that gave the new version traffic to the end of its exposure (the "
        "successful rollback, or the latest data), in data time",
        "traffic_share": "each step's traffic weight, weighted by how long it was in effect; measured: the "
        "canary's share of the requests of both tracks in those windows",
        "excess_errors": "errors on the new version minus its requests times the baseline's error rate over "
        "the same windows (the pre-deploy rate when there is no concurrent baseline), never below 0",
        "error_budget": f"a {BUDGET_DAYS}-day budget of (1 - SLO) x the observed request rate of both tracks "
        f"x {BUDGET_DAYS} days; burn is the excess errors as a share of it",
    }
    if traffic_at is None or exposure_end is None:
        return {
            "exposed": False,
            "duration_s": None,
            "traffic_share_pct": None,
            "peak_traffic_pct": None,
            "measured_share_pct": None,
            "requests_on_new_version": 0 if traffic_at is None else None,
            "errors_on_new_version": 0 if traffic_at is None else None,
            "baseline_error_rate_pct": None,
            "baseline_basis": None,
            "expected_errors": None,
            "excess_errors": None,
            "slo": slo,
            "traffic_rps": None,
            "budget_errors": None,
            "budget_burn_pct": None,
            "method": method,
        }
    # time-weighted traffic weight over the exposure
    order = sorted(r.history, key=lambda h: h[1])  # (step, data time it took effect)
    weighted, total, weights = 0.0, 0.0, []
    known = True
    for k, (i, at) in enumerate(order):
        until = order[k + 1][1] if k + 1 < len(order) else exposure_end
        w = r.steps[i].weight
        if w is None:
            known = False
            continue
        if w > 0 or at >= traffic_at:
            weights.append(w)
        dur = max(0.0, min(until, exposure_end) - max(at, traffic_at))
        weighted += w * dur
        total += dur
    if known and total > 0:
        share = weighted / total
    elif known and weights:
        share = weights[-1]  # rolled back the moment it got traffic: the weight then in effect
    else:
        share = None
    c_req = sum(s.requests for s in canary)
    c_err = sum(s.errors for s in canary)
    b_req = sum(s.requests for s in baseline)
    b_err = sum(s.errors for s in baseline)
    concurrent = r.concurrent and b_req > 0
    ref_req, ref_err = (
        (b_req, b_err) if concurrent else (sum(s.requests for s in pre), sum(s.errors for s in pre))
    )
    rate = ref_err / ref_req if ref_req else None
    expected = c_req * rate if rate is not None else None
    excess = max(0.0, c_err - expected) if expected is not None else None
    windows = {(s.start, s.end) for s in (*canary, *baseline)}
    seconds = sum(e - s for s, e in windows)
    rps = (c_req + b_req) / seconds if seconds > 0 else None
    budget = (1 - slo) * rps * BUDGET_DAYS * 86400 if rps else None
    return {
        "exposed": True,
        "duration_s": _s(exposure_end - traffic_at),
        "traffic_share_pct": _sig(share),
        "peak_traffic_pct": max(weights) if weights else None,
        "measured_share_pct": _pct(c_req / (c_req + b_req)) if concurrent and c_req + b_req else None,
        "requests_on_new_version": c_req,
        "errors_on_new_version": c_err,
        "baseline_error_rate_pct": _pct(rate),
        "baseline_basis": "concurrent baseline"
        if concurrent
        else ("pre-deploy windows" if rate is not None else None),
        "expected_errors": _sig(expected),
        "excess_errors": None if excess is None else round(excess),
        "slo": slo,
        "traffic_rps": _sig(rps),
        "budget_errors": None if budget is None else round(budget),
        "budget_burn_pct": _sig(100 * excess / budget) if budget and excess is not None else None,
        "method": method,
    }


def _verified(
    adapter: str, policy: list[dict[str, str]] | None, verdict: dict[str, Any] | None, has_data: bool
) -> list[dict[str, Any]]:
    """What guardrail itself checked or set up, each with whether the record shows it done."""
    out: list[dict[str, Any]] = []
    for c in policy or []:
        out.append(
            {
                "item": f"policy check {c['name']}",
                "ok": c["status"] == "pass",
                "how": f"{c['status']}: {c['detail']}" if c["detail"] else c["status"],
            }
        )
    metrics = [x["metric"] for x in (verdict or {}).get("metrics", [])]
    out.append(
        {
            "item": "monitoring and canary analysis",
            "ok": has_data and bool(metrics),
            "how": f"guardrail received metrics and judged {', '.join(metrics)}"
            if has_data and metrics
            else "no metrics were analysed for this deploy",
        }
    )
    out.append(
        {
            "item": "automatic rollback",
            "ok": adapter != "noop",
            "how": f"deploy adapter {adapter!r} carries out steps and rollbacks"
            if adapter != "noop"
            else "the noop adapter changes nothing: a rollback must be done by hand",
        }
    )
    return out


def _grafana(url: str, service: str, start: float, end: float | None) -> str:
    """The guardrail-canary dashboard for the service over the deploy, 10 minutes either side."""
    t0 = int((start - 600) * 1000)
    t1 = int(((end if end is not None else start) + 600) * 1000)
    return f"{url.rstrip('/')}/d/guardrail-canary?" + urlencode(
        {"var-service": service, "from": t0, "to": t1}
    )
