"""Deploy communication: the message before a deploy (what, when, expected impact, rollback time,
where to watch) and the one after it (error rate, response time and throughput against the
baseline, then "All systems nominal." or what went wrong), with the figures the judge measured.
Pure: notices are built from the deploy record and its verdict; sending them is the notifiers' job.

Both are ``Notice``\\s with severity info and action announce; ``text`` holds the Markdown body,
``summary`` one line, ``details`` the figures (JSON-able) for notifiers that lay them out themselves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from guardrail.domain.judge.explain import interval, ratio, seconds
from guardrail.domain.model import ChangeType, DeployState, Strategy
from guardrail.domain.notifications import Link, Notice, NoticeAction, Severity, incident_key
from guardrail.domain.records import Deploy
from guardrail.domain.rules import duration, pct

RULE = "DeployAnnouncement"

_CHANGE_IMPACT = {
    ChangeType.FEATURE: "a user-facing feature: users will see the new behaviour once it reaches them",
    ChangeType.BUGFIX: "a bug fix: nothing else should change for users",
    ChangeType.INFRASTRUCTURE: (
        "an infrastructure change: ops is in the loop, and undoing it may need manual steps"
    ),
    ChangeType.SECURITY: "a security fix: details stay in the security channel until it is out",
}


def _when(t: float | None) -> str:
    if t is None or not math.isfinite(t):
        return "now"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _steps(deploy: Deploy) -> list[str]:
    return [s.describe() for s in deploy.rollout.steps]


def _rollout_impact(deploy: Deploy) -> str:
    steps = _steps(deploy)
    strategy = deploy.marker.strategy
    if strategy is Strategy.CANARY:
        if not steps:
            return "Canary rollout: a small share of traffic first, compared live with the current version"
        rest = f", then {', then '.join(steps[1:])}" if len(steps) > 1 else ""
        return (
            f"Canary rollout: {steps[0]} first{rest}; each step is compared live with the current version "
            "and rolled back on a regression"
        )
    if strategy is Strategy.BLUE_GREEN:
        return (
            "Blue-green: the new version starts next to the current one and takes all traffic when "
            "switched; switching back is instant"
        )
    if strategy is Strategy.ROLLING:
        plan = ", then ".join(steps) if steps else "a few servers at a time"
        return (
            f"Rolling: {plan}; both versions serve traffic until it ends, and it stops at the first "
            "sign of trouble"
        )
    return (
        "All at once: every server gets the new version together; it is compared with the metrics "
        "from before the deploy"
    )


def before(
    deploy: Deploy,
    *,
    dashboard_url: str,
    rollback_time_s: float,
    deploy_url: str | None = None,
) -> Notice:
    """The announcement posted when a deploy starts."""
    m = deploy.marker
    when = _when(m.started_at if m.started_at is not None else deploy.created_at)
    head = f"Deploying {m.service} {m.version} to {m.environment}"
    lines = [
        f"**{head}** (replacing {m.previous_version}, commit `{m.commit}`{f' by {m.author}' if m.author else ''})",
        "",
        f"- **What:** {m.description or 'no description given'}",
    ]
    lines += [f"  - {c}" for c in m.changes[:20]]
    if len(m.changes) > 20:
        lines.append(f"  - and {len(m.changes) - 20} more")
    lines += [
        f"- **When:** {when}",
        f"- **Expected impact:** {_CHANGE_IMPACT[m.change_type]}. {_rollout_impact(deploy)}.",
    ]
    if m.db_migrations:
        what = f": {m.db_migrations_description}" if m.db_migrations_description else ""
        lines.append(f"- **Database migrations:** yes{what}")
    lines += [
        f"- **Rollback:** under {duration(rollback_time_s)} if needed; guardrail rolls back on its own "
        "if the new version does worse than the current one",
        f"- **Monitoring:** [dashboard]({dashboard_url})"
        + (f", [deploy]({deploy_url})" if deploy_url else ""),
    ]
    links = [Link(dashboard_url, "Dashboard")]
    if deploy_url:
        links.append(Link(deploy_url, "Deploy"))
    return Notice(
        key=incident_key(m.service, m.environment, deploy.id, f"{RULE}:before"),
        action=NoticeAction.ANNOUNCE,
        severity=Severity.INFO,
        summary=f"{head} ({m.strategy.value.replace('_', '-')}, {m.change_type.value}) at {when}",
        service=m.service,
        environment=m.environment,
        deploy_id=deploy.id,
        rule=RULE,
        details={
            "phase": "before",
            "version": m.version,
            "previous_version": m.previous_version,
            "commit": m.commit,
            "strategy": m.strategy.value,
            "change_type": m.change_type.value,
            "steps": _steps(deploy),
            "starts_at": m.started_at if m.started_at is not None else deploy.created_at,
            "rollback_time_s": rollback_time_s,
            "db_migrations": m.db_migrations,
            "dashboard_url": dashboard_url,
        },
        links=tuple(links),
        text="\n".join(lines),
        occurred_at=deploy.created_at,
    )


# --- after -----------------------------------------------------------------------------------------


def _evidence(verdict: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    if not verdict:
        return {}
    return {
        e["metric"]: e for e in verdict.get("evidence", []) or [] if isinstance(e, Mapping) and "metric" in e
    }


def _num(e: Mapping[str, Any] | None, key: str) -> float | None:
    if e is None:
        return None
    v = e.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def _versus(e: Mapping[str, Any]) -> str:
    """ "ratio 1.05, 99% CS 0.81-1.4" from the evidence's estimate and confidence sequence."""
    est = _num(e, "estimate")
    if est is None:
        return ""
    conf = _num(e, "confidence")
    cs = f", {interval(_num(e, 'ci_low'), _num(e, 'ci_high'), conf)}" if conf is not None else ""
    return f"; ratio {ratio(est)}{cs}"


def _no_data(e: Mapping[str, Any] | None) -> bool:
    return e is None or e.get("status") == "no_data"


def _error_line(e: Mapping[str, Any] | None) -> tuple[str, str | None]:
    if _no_data(e) or _num(e, "canary_value") is None:
        return "- **Error rate:** no data", None
    assert e is not None
    c, b = _num(e, "canary_value"), _num(e, "baseline_value")
    return (
        f"- **Error rate:** {pct(c)} (normal: {pct(b)}{_versus(e)})",
        f"error rate {pct(c)} (normal {pct(b)})",
    )


def _latency_line(p95: Mapping[str, Any] | None, p99: Mapping[str, Any] | None) -> tuple[str, str | None]:
    parts, short = [], []
    for name, e in (("p95", p95), ("p99", p99)):
        if _no_data(e) or _num(e, "canary_value") is None:
            continue
        assert e is not None
        c, b = _num(e, "canary_value"), _num(e, "baseline_value")
        parts.append(f"{name} {seconds(c)} (normal: {seconds(b)}{_versus(e)})")
        short.append(f"{name} {seconds(c)} (normal {seconds(b)})")
    if not parts:
        return "- **Response time:** no data", None
    return f"- **Response time:** {'; '.join(parts)}", short[-1]


def _throughput_line(e: Mapping[str, Any] | None, pre_post: bool) -> str:
    if e is None:
        why = " (no concurrent baseline to compare the share with)" if pre_post else ""
        return f"- **Throughput:** not measured{why}"
    c, b = _num(e, "canary_value"), _num(e, "baseline_value")
    if _no_data(e) or c is None or b is None:
        return "- **Throughput:** no data"
    n = _num(e, "canary_n")
    served = f"; {n:,.0f} requests on the new version" if n else ""
    return (
        f"- **Throughput:** the new version served {pct(c)} of requests (given: {pct(b)}{_versus(e)}){served}"
    )


def _failing(evidence: Mapping[str, Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    fails = [e for e in evidence.values() if e.get("status") == "fail"]
    return sorted(fails, key=lambda e: not e.get("critical", False))  # critical ones first


def after(
    deploy: Deploy,
    verdict: Mapping[str, Any] | None,
    *,
    dashboard_url: str,
    deploy_url: str | None = None,
    occurred_at: float | None = None,
) -> Notice:
    """The announcement posted when a deploy ends: the figures of ``verdict`` (a ``Verdict.to_dict()``,
    usually ``deploy.verdict``) and how it ended."""
    m = deploy.marker
    ev = _evidence(verdict)
    pre_post = bool(verdict) and verdict.get("mode") == "pre_post"  # type: ignore[union-attr]
    err_line, err_short = _error_line(ev.get("error_rate"))
    lat_line, lat_short = _latency_line(ev.get("latency_p95"), ev.get("latency_p99"))
    state = deploy.state
    failing = _failing(ev)
    target = f"{m.service} {m.version} in {m.environment}"
    if state is DeployState.PROMOTED:
        head = f"Deploy complete: {target}"
        if failing:
            ending = "Promoted, but keep watching: " + "; ".join(
                str(e.get("detail", e.get("metric"))) for e in failing
            )
            outcome = "promoted, with a metric worse than normal"
        else:
            ending = "All systems nominal."
            outcome = "promoted"
    elif state in (DeployState.ROLLED_BACK, DeployState.ROLLING_BACK):
        done = "Rolled back" if state is DeployState.ROLLED_BACK else "Rolling back"
        head = f"{done}: {target}, back on {m.previous_version}"
        why = "; ".join(str(e.get("detail", e.get("metric"))) for e in failing if e.get("critical", True))
        reason = deploy.rollout.reason
        ending = f"{done} to {m.previous_version}. What happened: " + (why or reason or "no reason recorded")
        if why and reason and reason not in why:
            ending += f" ({reason})"
        outcome = "rolled back" if state is DeployState.ROLLED_BACK else "rolling back"
    elif state is DeployState.ROLLBACK_FAILED:
        head = f"ROLLBACK FAILED: {target}"
        ending = (
            f"The rollback to {m.previous_version} failed: on-call is paged. Roll back by hand, then record "
            f"it with `guardrail rollback {deploy.id}`. Reason: {deploy.rollout.reason or 'n/a'}"
        )
        outcome = "rollback failed"
    else:  # not finished: e.g. held for a human after an inconclusive analysis
        head = f"Deploy {state.value.replace('_', ' ')}: {target}"
        ending = f"Not finished: {deploy.rollout.reason or (verdict or {}).get('summary') or state.value}."
        outcome = state.value.replace("_", " ")
    lines = [f"**{head}**", "", err_line, lat_line, _throughput_line(ev.get("throughput"), pre_post)]
    if pre_post:
        lines.append('- _"Normal" is the metrics from before the deploy (no concurrent baseline)._')
    lines += [
        "",
        ending,
        "",
        f"Monitoring: [dashboard]({dashboard_url})" + (f", [deploy]({deploy_url})" if deploy_url else ""),
    ]
    summary = f"{target}: {outcome}" + "".join(f"; {s}" for s in (err_short, lat_short) if s)
    links = [Link(dashboard_url, "Dashboard")]
    if deploy_url:
        links.append(Link(deploy_url, "Deploy"))
    return Notice(
        key=incident_key(m.service, m.environment, deploy.id, f"{RULE}:after"),
        action=NoticeAction.ANNOUNCE,
        severity=Severity.INFO,
        summary=summary[:1024],
        service=m.service,
        environment=m.environment,
        deploy_id=deploy.id,
        rule=RULE,
        details={
            "phase": "after",
            "state": state.value,
            "version": m.version,
            "previous_version": m.previous_version,
            "decision": (verdict or {}).get("decision"),
            "figures": {
                name: {
                    k: ev[name].get(k)
                    for k in ("canary_value", "baseline_value", "estimate", "ci_low", "ci_high")
                }
                for name in ("error_rate", "latency_p95", "latency_p99", "throughput")
                if name in ev
            },
            "dashboard_url": dashboard_url,
        },
        links=tuple(links),
        text="\n".join(lines),
        occurred_at=occurred_at if occurred_at is not None else deploy.updated_at,
    )
