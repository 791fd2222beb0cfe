"""DORA figures from recorded deploys, checked against numbers worked out by hand."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrail.domain.dora import DAY_S, Result, classify, dora_report, percentile, summarize
from guardrail.domain.errors import ValidationError
from guardrail.domain.model import ChangeType, DeployState, Step, Strategy
from guardrail.domain.records import Deploy, EventKind, Marker, TimelineEvent
from guardrail.domain.rollout import Rollout

W = 1_700_000_000.0  # start of the window (wall time)
WATCH_S = 1800.0
SINCE, UNTIL = W, W + 7 * DAY_S


class Timeline:
    """Builds one deploy's events in order (seq increasing), on wall time."""

    def __init__(self) -> None:
        self.events: list[TimelineEvent] = []

    def add(self, event_kind: EventKind, wall: float, **details: Any) -> Timeline:
        self.events.append(
            TimelineEvent(event_kind, event_kind.value, wall - 1e6, wall, details, seq=len(self.events) + 1)
        )
        return self

    def to(self, before: str, after: str, wall: float) -> Timeline:
        return self.add(EventKind.TRANSITION, wall, before=before, after=after)

    def rule(self, wall: float, state: str, severity: str = "page", name: str = "HighErrorRate") -> Timeline:
        alert = {"rule": name, "kind": "error_rate", "severity": severity, "track": "canary", "state": state}
        return self.add(EventKind.ALERT, wall, alert=alert)

    def external(self, wall: float, status: str, severity: str = "page") -> Timeline:
        alert = {
            "fingerprint": "f00d",
            "status": status,
            "labels": {"alertname": "Slow", "severity": severity},
        }
        return self.add(EventKind.ALERT, wall, alert=alert)


def deploy(
    deploy_id: str,
    state: DeployState,
    created: float,
    *,
    commit_time: float | None = None,
    service: str = "checkout",
    environment: str = "production",
) -> Deploy:
    marker = Marker(
        service=service,
        environment=environment,
        version=f"v-{deploy_id}",
        previous_version="v0",
        commit="abc123",
        strategy=Strategy.CANARY,
        change_type=ChangeType.FEATURE,
        commit_time=commit_time,
        started_at=created - 1e6,  # data time: deliberately far from wall time, and never used
    )
    rollout = Rollout(steps=(Step(weight=10), Step(weight=100)), concurrent=True, state=state)
    return Deploy(deploy_id, marker, rollout, created_at=created, updated_at=created + 3600, data_time=0.0)


def promoted_run(t: float) -> Timeline:
    """Created at t, analysing from t+60, promoted at t+600."""
    return (
        Timeline()
        .add(EventKind.CREATED, t)
        .to("pending", "analyzing", t + 60)
        .to("analyzing", "promoted", t + 600)
    )


def records() -> list[tuple[Deploy, list[TimelineEvent]]]:
    """The handful of deploys the figures below are worked out for."""
    out = []
    # d1: promoted, committed an hour before it was recorded: lead time 3600 + 600 = 4200 s
    t = W + 100
    out.append((deploy("d1", DeployState.PROMOTED, t, commit_time=t - 3600), promoted_run(t).events))
    # d2: promoted, lead time 3 h
    t = W + DAY_S
    out.append((deploy("d2", DeployState.PROMOTED, t, commit_time=t + 600 - 10800), promoted_run(t).events))
    # d3: the judge failed it at +300, the rollback finished at +420: recovery 120 s
    t = W + 2 * DAY_S
    tl = (
        Timeline()
        .add(EventKind.CREATED, t)
        .to("pending", "analyzing", t + 60)
        .add(EventKind.VERDICT, t + 300, verdict={"decision": "fail", "summary": "5xx up"})
        .to("analyzing", "rolling_back", t + 301)
        .add(EventKind.ACTION_STARTED, t + 302, kind="rollback")
        .add(EventKind.ACTION_DONE, t + 420, kind="rollback")
        .to("rolling_back", "rolled_back", t + 421)
    )
    out.append((deploy("d3", DeployState.ROLLED_BACK, t, commit_time=t - 100), tl.events))
    # d4: promoted (lead 1800 s), a page rule fired 900 s later and resolved 600 s after that
    t = W + 3 * DAY_S
    tl = promoted_run(t).rule(t + 1500, "firing").rule(t + 2100, "resolved")
    out.append((deploy("d4", DeployState.PROMOTED, t, commit_time=t + 600 - 1800), tl.events))
    # d5: promoted, no commit time; a page alert 2400 s after promotion (outside the watch) and a
    # ticket alert inside it: neither makes it a failure
    t = W + 4 * DAY_S
    tl = promoted_run(t).rule(t + 900, "firing", severity="ticket").external(t + 3000, "firing")
    out.append((deploy("d5", DeployState.PROMOTED, t), tl.events))
    # d6: an Alertmanager page at +100 during the canary, every rollback attempt failed
    t = W + 5 * DAY_S
    tl = (
        Timeline()
        .add(EventKind.CREATED, t)
        .to("pending", "analyzing", t + 60)
        .external(t + 100, "firing")
        .to("analyzing", "rolling_back", t + 100)
        .add(EventKind.ACTION_FAILED, t + 200, kind="rollback")
        .to("rolling_back", "rollback_failed", t + 700)
    )
    out.append((deploy("d6", DeployState.ROLLBACK_FAILED, t), tl.events))
    # d7: still analysing: not counted yet
    t = W + 6 * DAY_S
    out.append((deploy("d7", DeployState.ANALYZING, t), Timeline().to("pending", "analyzing", t + 60).events))
    # d8: recorded before the window
    t = W - 10
    out.append(
        (deploy("d8", DeployState.ROLLED_BACK, t), Timeline().to("analyzing", "rolled_back", t + 5).events)
    )
    # another group: one promoted deploy of search
    t = W + 200
    out.append((deploy("s1", DeployState.PROMOTED, t, service="search"), promoted_run(t).events))
    return out


def checkout() -> Any:
    groups = dora_report(records(), since=SINCE, until=UNTIL, watch_s=WATCH_S)
    assert [(g.service, g.environment) for g in groups] == [
        ("checkout", "production"),
        ("search", "production"),
    ]
    return groups[0]


def test_only_terminal_deploys_created_in_the_window_count() -> None:
    g = checkout()
    assert g.finished == 6  # d1-d6: d7 is still analysing, d8 was recorded before the window


def test_results_are_disjoint_and_classify_each_deploy() -> None:
    g = checkout()
    assert g.results == {
        Result.PROMOTED: 3,  # d1, d2, d5
        Result.FAILED_AFTER_PROMOTION: 1,  # d4
        Result.ROLLED_BACK: 1,  # d3
        Result.ROLLBACK_FAILED: 1,  # d6
    }


def test_deployment_frequency_counts_every_deploy_that_reached_production() -> None:
    g = checkout()
    assert g.deployments == 4  # d1, d2, d4, d5
    assert g.deployment_frequency_per_day == pytest.approx(4 / 7)


def test_lead_time_median_and_p90_leave_out_deploys_without_commit_time() -> None:
    g = checkout()
    # d4 1800, d1 4200, d2 10800; p90 at rank 1.8: 4200 + 0.8 * 6600
    assert g.lead_time_median_s == pytest.approx(4200)
    assert g.lead_time_p90_s == pytest.approx(9480)
    assert g.lead_time_measured == 3
    assert g.lead_time_excluded_no_commit_time == 1  # d5


def test_change_failure_rate_counts_rollbacks_and_pages_within_the_watch() -> None:
    g = checkout()
    assert g.failed == 3
    assert g.change_failure_rate == pytest.approx(3 / 6)
    assert g.rollback_rate == pytest.approx(2 / 6)
    assert [f.deploy_id for f in g.failures] == ["d3", "d4", "d6"]


def test_recovery_time_runs_from_detection_to_rollback_done_or_alert_resolved() -> None:
    g = checkout()
    by_id = {f.deploy_id: f for f in g.failures}
    assert by_id["d3"].recovery_s == pytest.approx(120)  # fail verdict at +300 -> rollback done at +420
    assert by_id["d4"].recovery_s == pytest.approx(600)  # page firing -> resolved
    assert by_id["d6"].recovery_s is None  # the rollback failed: not recovered
    assert g.recovery_median_s == pytest.approx(360)
    assert (g.recovered, g.unrecovered) == (2, 1)


def test_groups_are_separate_per_service_and_environment() -> None:
    search = dora_report(records(), since=SINCE, until=UNTIL, watch_s=WATCH_S)[1]
    assert (search.finished, search.deployments, search.failed) == (1, 1, 0)
    assert search.change_failure_rate == 0.0
    assert search.lead_time_median_s is None
    assert search.lead_time_excluded_no_commit_time == 1


def test_a_manual_rollback_after_promotion_is_detected_when_it_starts_not_by_earlier_canary_alerts() -> None:
    t = W
    tl = (
        Timeline()
        .add(EventKind.CREATED, t)
        .to("pending", "analyzing", t + 60)
        .rule(t + 100, "firing")  # a page during the canary that did not fail it: not this failure
        .to("analyzing", "promoted", t + 600)
        .add(EventKind.OVERRIDE, t + 5000, action="rollback")
        .to("promoted", "rolling_back", t + 5000)
        .add(EventKind.ACTION_DONE, t + 5090, kind="rollback")
        .to("rolling_back", "rolled_back", t + 5091)
    )
    o = classify(deploy("m1", DeployState.ROLLED_BACK, t, commit_time=t - 400), tl.events, watch_s=WATCH_S)
    assert o is not None
    assert o.result is Result.ROLLED_BACK and o.deployed
    assert o.lead_time_s == pytest.approx(1000)
    assert o.recovery_s == pytest.approx(90)


def test_a_page_that_never_resolves_leaves_the_failure_unrecovered() -> None:
    t = W
    o = classify(
        deploy("p1", DeployState.PROMOTED, t), promoted_run(t).rule(t + 700, "firing").events, watch_s=WATCH_S
    )
    assert o is not None and o.result is Result.FAILED_AFTER_PROMOTION
    assert o.detected_at == t + 700 and o.recovered_at is None


def test_a_commit_time_after_the_promotion_is_left_out_and_counted() -> None:
    t = W
    o = classify(
        deploy("k1", DeployState.PROMOTED, t, commit_time=t + 9999), promoted_run(t).events, watch_s=WATCH_S
    )
    assert o is not None
    g = summarize([o], service="checkout", environment="production", since=SINCE, until=UNTIL)
    assert g.lead_time_median_s is None and g.lead_time_excluded_negative == 1


def test_an_empty_window_has_no_rates() -> None:
    g = summarize([], service="a", environment="b", since=SINCE, until=UNTIL)
    assert g.finished == 0 and g.change_failure_rate is None and g.rollback_rate is None
    assert g.deployment_frequency_per_day == 0.0


def test_a_window_that_ends_before_it_starts_is_rejected_naming_until() -> None:
    with pytest.raises(ValidationError) as e:
        dora_report([], since=UNTIL, until=SINCE, watch_s=WATCH_S)
    assert e.value.field == "until"


def test_percentile_interpolates_between_closest_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.9) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)
    assert percentile([10.0, 20.0, 30.0], 0.9) == pytest.approx(28.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(list(Result)), max_size=30))
def test_results_add_up_to_finished_and_rates_stay_between_0_and_1(results: list[Result]) -> None:
    from guardrail.domain.dora import DeployOutcome

    outcomes = [
        DeployOutcome(
            str(i), "s", "e", "v", r, W, W + 10, W + 5 if r is not Result.ROLLED_BACK else None, None
        )
        for i, r in enumerate(results)
    ]
    g = summarize(outcomes, service="s", environment="e", since=SINCE, until=UNTIL)
    assert sum(g.results.values()) == g.finished == len(results)
    if g.finished:
        assert g.change_failure_rate is not None and g.rollback_rate is not None
        assert 0.0 <= g.rollback_rate <= g.change_failure_rate <= 1.0
