"""Deploy announcements: before (what, when, expected impact, rollback time, monitoring link) and
after (error rate, response time, throughput against normal, then how it ended), with real figures."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from guardrail.domain import announcements
from guardrail.domain.model import ChangeType, DeployState, Step, Strategy, default_steps
from guardrail.domain.notifications import Link, NoticeAction, Severity
from guardrail.domain.records import Deploy, Marker
from guardrail.domain.rollout import Rollout

T0 = 1_714_557_600.0  # 2024-05-01 10:00 UTC
DASH = "https://grafana.example/d/guardrail-canary?var-service=checkout"


def deploy(
    *,
    strategy: Strategy = Strategy.CANARY,
    change_type: ChangeType = ChangeType.FEATURE,
    state: DeployState = DeployState.PENDING,
    reason: str = "",
    verdict: dict[str, Any] | None = None,
    **marker: Any,
) -> Deploy:
    m = Marker(
        service="checkout",
        environment="production",
        version="v2.4.1",
        previous_version="v2.4.0",
        commit="9f1c2ab",
        strategy=strategy,
        change_type=change_type,
        author="dana",
        description="faster cart totals",
        changes=("cart: cache totals", "cart: drop the legacy tax path"),
        started_at=T0,
        **marker,
    )
    steps = default_steps(strategy)
    r = Rollout(
        steps=steps, concurrent=strategy in (Strategy.CANARY, Strategy.BLUE_GREEN), state=state, reason=reason
    )
    return Deploy("d-42", m, r, created_at=T0 + 3, updated_at=T0 + 1800, data_time=T0 + 1790, verdict=verdict)


def evidence(
    metric: str, status: str, cv: float, bv: float, est: float, lo: float, hi: float, **kw: Any
) -> dict:
    return {
        "metric": metric,
        "kind": kw.pop("kind", "errors"),
        "status": status,
        "critical": kw.pop("critical", True),
        "estimate": est,
        "ci_low": lo,
        "ci_high": hi,
        "confidence": kw.pop("confidence", 0.99),
        "canary_value": cv,
        "baseline_value": bv,
        "canary_n": kw.pop("canary_n", 48_210.0),
        "baseline_n": 433_900.0,
        "detail": kw.pop("detail", f"{metric} detail"),
        **kw,
    }


def passing_verdict() -> dict[str, Any]:
    return {
        "decision": "pass",
        "mode": "concurrent",
        "summary": "PASS",
        "evidence": [
            evidence("error_rate", "pass", 0.0002, 0.00025, 0.8, 0.41, 1.32),
            evidence("latency_p99", "pass", 0.420, 0.410, 1.02, 0.9, 1.2, kind="latency", confidence=0.996),
            evidence("latency_p95", "pass", 0.095, 0.094, 1.01, 0.95, 1.1, kind="latency", critical=False),
            evidence(
                "throughput", "pass", 0.1004, 0.1, 1.004, 0.97, 1.04, kind="throughput", canary_n=48_210.0
            ),
        ],
    }


def failing_verdict() -> dict[str, Any]:
    v = passing_verdict()
    v["decision"] = "fail"
    v["evidence"][0] = evidence(
        "error_rate",
        "fail",
        0.047,
        0.001,
        47.0,
        21.0,
        95.0,
        detail="canary error rate 4.7% vs baseline 0.1% (ratio 47, 99% CS 21-95) after 3,120 canary requests: fail",
    )
    return v


# --- before ---------------------------------------------------------------------------------------


def test_before_says_what_when_impact_rollback_time_and_where_to_watch():
    n = announcements.before(
        deploy(),
        dashboard_url=DASH,
        rollback_time_s=120,
        deploy_url="https://guardrail.example/api/v1/deploys/d-42",
    )
    assert (n.action, n.severity, n.rule) == (NoticeAction.ANNOUNCE, Severity.INFO, "DeployAnnouncement")
    assert n.key == "guardrail:checkout:production:d-42:DeployAnnouncement:before"
    assert n.summary == "Deploying checkout v2.4.1 to production (canary, feature) at 2024-05-01 10:00 UTC"
    text = n.text
    assert "**Deploying checkout v2.4.1 to production** (replacing v2.4.0, commit `9f1c2ab` by dana)" in text
    assert "- **What:** faster cart totals" in text and "  - cart: drop the legacy tax path" in text
    assert "- **When:** 2024-05-01 10:00 UTC" in text
    assert "10% of traffic first, then 50% of traffic, then 100% of traffic" in text
    assert "a user-facing feature" in text
    assert "- **Rollback:** under 2 min if needed" in text
    assert (
        f"[dashboard]({DASH})" in text and "[deploy](https://guardrail.example/api/v1/deploys/d-42)" in text
    )
    assert n.links == (
        Link(DASH, "Dashboard"),
        Link("https://guardrail.example/api/v1/deploys/d-42", "Deploy"),
    )
    assert n.details["rollback_time_s"] == 120 and n.details["steps"][0] == "10% of traffic"
    assert n.occurred_at == T0 + 3


def test_expected_impact_follows_the_change_type_and_strategy():
    cases = {
        (Strategy.BLUE_GREEN, ChangeType.BUGFIX): ("switching back is instant", "a bug fix"),
        (Strategy.ROLLING, ChangeType.INFRASTRUCTURE): (
            "Rolling: 1 server(s), then 3 server(s), then all servers",
            "manual steps",
        ),
        (Strategy.ALL_AT_ONCE, ChangeType.SECURITY): (
            "every server gets the new version together",
            "security",
        ),
    }
    for (strategy, change), phrases in cases.items():
        text = announcements.before(
            deploy(strategy=strategy, change_type=change), dashboard_url=DASH, rollback_time_s=30
        ).text
        for phrase in phrases:
            assert phrase in text, (strategy, phrase)
        assert "- **Rollback:** under 30 s if needed" in text


def test_before_mentions_database_migrations_and_custom_steps():
    d = deploy(db_migrations=True, db_migrations_description="add orders.created_at (expand)")
    d = replace(d, rollout=replace(d.rollout, steps=(Step(weight=5), Step(weight=25), Step(weight=100))))
    text = announcements.before(d, dashboard_url=DASH, rollback_time_s=90).text
    assert "- **Database migrations:** yes: add orders.created_at (expand)" in text
    assert "Canary rollout: 5% of traffic first, then 25% of traffic, then 100% of traffic" in text
    assert "under 2 min" in text  # 90 s rounds to the minute


# --- after ----------------------------------------------------------------------------------------


def test_after_a_promotion_gives_the_figures_against_normal_and_all_systems_nominal():
    v = passing_verdict()
    n = announcements.after(deploy(state=DeployState.PROMOTED, verdict=v), v, dashboard_url=DASH)
    text = n.text
    assert n.key.endswith(":DeployAnnouncement:after") and n.severity is Severity.INFO
    assert text.startswith("**Deploy complete: checkout v2.4.1 in production**")
    assert "- **Error rate:** 0.020% (normal: 0.025%; ratio 0.8, 99% CS 0.41-1.32)" in text
    assert (
        "- **Response time:** p95 95 ms (normal: 94 ms; ratio 1.01, 99% CS 0.95-1.1); p99 420 ms (normal: 410 ms"
        in text
    )
    assert "- **Throughput:** the new version served 10% of requests (given: 10%; ratio 1" in text
    assert "48,210 requests on the new version" in text
    assert text.rstrip().endswith(f"Monitoring: [dashboard]({DASH})")
    assert "All systems nominal." in text
    assert (
        n.summary
        == "checkout v2.4.1 in production: promoted; error rate 0.020% (normal 0.025%); p99 420 ms (normal 410 ms)"
    )
    assert n.details["figures"]["latency_p99"]["canary_value"] == 0.42
    assert n.details["state"] == "promoted" and n.occurred_at == T0 + 1800


def test_after_a_rollback_says_what_happened_with_the_failing_metric():
    v = failing_verdict()
    d = deploy(state=DeployState.ROLLED_BACK, verdict=v, reason="canary regression: error_rate")
    n = announcements.after(d, v, dashboard_url=DASH)
    assert n.text.startswith("**Rolled back: checkout v2.4.1 in production, back on v2.4.0**")
    assert "- **Error rate:** 4.7% (normal: 0.1%; ratio 47, 99% CS 21-95)" in n.text
    assert "Rolled back to v2.4.0. What happened: canary error rate 4.7% vs baseline 0.1%" in n.text
    assert "All systems nominal" not in n.text
    assert n.summary.startswith("checkout v2.4.1 in production: rolled back; error rate 4.7% (normal 0.1%)")


def test_after_a_rollback_by_a_rule_or_an_operator_gives_the_recorded_reason():
    v = passing_verdict()
    d = deploy(state=DeployState.ROLLED_BACK, verdict=v, reason="rollback by alice: checkout is down")
    text = announcements.after(d, v, dashboard_url=DASH).text
    assert "What happened: rollback by alice: checkout is down" in text


def test_a_failed_rollback_and_an_unfinished_deploy_are_not_nominal():
    v = failing_verdict()
    text = announcements.after(
        deploy(state=DeployState.ROLLBACK_FAILED, verdict=v), v, dashboard_url=DASH
    ).text
    assert text.startswith("**ROLLBACK FAILED") and "guardrail rollback d-42" in text
    held = deploy(state=DeployState.PAUSED, reason="inconclusive: latency_p99 needs ~2x more traffic")
    text = announcements.after(held, passing_verdict(), dashboard_url=DASH).text
    assert "Not finished: inconclusive: latency_p99 needs ~2x more traffic." in text
    assert "nominal" not in text


def test_promoted_with_a_failing_non_critical_metric_says_to_keep_watching():
    v = passing_verdict()
    v["evidence"][2] = evidence(
        "latency_p95",
        "fail",
        0.2,
        0.1,
        2.0,
        1.6,
        2.5,
        critical=False,
        detail="canary p95 200 ms vs baseline 100 ms: fail",
    )
    text = announcements.after(deploy(state=DeployState.PROMOTED), v, dashboard_url=DASH).text
    assert "Promoted, but keep watching: canary p95 200 ms vs baseline 100 ms: fail" in text
    assert "nominal" not in text


def test_missing_figures_are_no_data_not_zero():
    v = {"decision": "pass", "mode": "pre_post", "evidence": [
        {"metric": "error_rate", "status": "no_data", "canary_value": None, "baseline_value": None},
    ]}  # fmt: skip
    text = announcements.after(
        deploy(strategy=Strategy.ALL_AT_ONCE, state=DeployState.PROMOTED), v, dashboard_url=DASH
    ).text
    assert "- **Error rate:** no data" in text and "- **Response time:** no data" in text
    assert "- **Throughput:** not measured (no concurrent baseline" in text
    assert "metrics from before the deploy" in text
    text = announcements.after(deploy(state=DeployState.PROMOTED), None, dashboard_url=DASH).text
    assert "- **Error rate:** no data" in text and "0%" not in text
