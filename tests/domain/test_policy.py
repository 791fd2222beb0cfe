"""Deploy policy at marker time: deployment windows in local time zones (DST included), freeze ranges,
peak hours, team hours, the pre-deployment checklist, per-environment and change-type precedence,
and fast-track overrides."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrail.domain.errors import ValidationError
from guardrail.domain.model import ChangeType, Strategy
from guardrail.domain.policy import (
    ACTIONS,
    CHECKLIST,
    CHECKS,
    Freeze,
    PeakHours,
    Policy,
    PolicyFacts,
    PolicyResult,
    PolicyRule,
    Team,
    WeeklyRange,
    derive_facts,
    evaluate_policy,
    zone_or_error,
)
from guardrail.domain.records import AdapterRef, Marker

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
UTC = ZoneInfo("UTC")
WEEKDAYS = frozenset(range(5))
ALL_YES = {name: True for name in CHECKLIST}
FACTS_OK = PolicyFacts(monitoring_configured=True, rollback_configured=True)


def ts(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, zone: ZoneInfo = UTC) -> float:
    return datetime(y, mo, d, h, mi, s, tzinfo=zone).timestamp()


def marker(**kw) -> Marker:
    base = dict(
        service="checkout", environment="production", version="2.0.0", previous_version="1.9.0",
        commit="abc123", strategy=Strategy.CANARY, change_type=ChangeType.FEATURE, checklist=dict(ALL_YES),
    )
    return Marker(**{**base, **kw})


def only(*names: str, action: str = "warn") -> dict[str, str]:
    """Base actions: the named checks get ``action``, every other check is off."""
    return {n: (action if n in names else "off") for n in CHECKS}


def check(result: PolicyResult, name: str):
    (c,) = [c for c in result.checks if c.name == name]
    return c


def team(name: str, zone: ZoneInfo, start_h: int = 9, end_h: int = 18, days=WEEKDAYS) -> Team:
    return Team(name, WeeklyRange(zone, frozenset(days), start_h * 3600, end_h * 3600))


# --- Friday afternoon -------------------------------------------------------------------------------------

FRIDAY_BLOCK = Policy(base=only("friday_afternoon", action="block"), zone=BERLIN)


def test_friday_one_second_before_noon_is_not_friday_afternoon():
    r = evaluate_policy(marker(), FRIDAY_BLOCK, at=ts(2024, 6, 7, 11, 59, 59, BERLIN), facts=FACTS_OK)
    assert check(r, "friday_afternoon").status == "pass" and not r.blocked


def test_friday_noon_exactly_is_friday_afternoon_and_the_detail_says_where_and_why():
    r = evaluate_policy(marker(), FRIDAY_BLOCK, at=ts(2024, 6, 7, 12, 0, 0, BERLIN), facts=FACTS_OK)
    c = check(r, "friday_afternoon")
    assert c.status == "block" and r.blocked
    assert c.detail.startswith("Friday 12:00 Europe/Berlin is inside the Friday-afternoon window (from 12:00)")
    assert "rule: block for production feature deploys" in c.detail


def test_the_friday_start_time_is_configurable():
    policy = replace(FRIDAY_BLOCK, friday_start_s=15 * 3600)
    assert not evaluate_policy(marker(), policy, at=ts(2024, 6, 7, 14, 59, zone=BERLIN), facts=FACTS_OK).blocked
    assert evaluate_policy(marker(), policy, at=ts(2024, 6, 7, 15, 0, zone=BERLIN), facts=FACTS_OK).blocked


def test_saturday_afternoon_is_not_friday_afternoon():
    r = evaluate_policy(marker(), FRIDAY_BLOCK, at=ts(2024, 6, 8, 15, 0, zone=BERLIN), facts=FACTS_OK)
    assert check(r, "friday_afternoon").status == "pass"
    assert "Saturday 15:00 Europe/Berlin" in check(r, "friday_afternoon").detail


def test_one_instant_is_friday_afternoon_in_berlin_but_friday_morning_in_new_york():
    at = ts(2024, 6, 7, 13, 30)  # 15:30 in Berlin (CEST), 09:30 in New York (EDT)
    berlin = replace(FRIDAY_BLOCK, teams=(team("berlin", BERLIN),))
    new_york = replace(FRIDAY_BLOCK, teams=(team("nyc", NEW_YORK),))
    both = replace(FRIDAY_BLOCK, teams=(team("nyc", NEW_YORK), team("berlin", BERLIN)))
    assert evaluate_policy(marker(), berlin, at=at, facts=FACTS_OK).blocked
    r = evaluate_policy(marker(), new_york, at=at, facts=FACTS_OK)
    assert not r.blocked and "Friday 09:30 America/New_York" in check(r, "friday_afternoon").detail
    r = evaluate_policy(marker(), both, at=at, facts=FACTS_OK)
    assert r.blocked
    assert check(r, "friday_afternoon").detail.startswith("Friday 15:30 Europe/Berlin is inside")
    assert "New_York" not in check(r, "friday_afternoon").detail.split(";")[0]


def test_after_europe_moves_its_clocks_noon_in_berlin_is_ten_utc():
    """Summer time starts on the last Sunday of March (2024-03-31): the next Friday's window opens at
    10:00 UTC, the Friday before it at 11:00 UTC."""
    assert not evaluate_policy(marker(), FRIDAY_BLOCK, at=ts(2024, 4, 5, 9, 59, 59), facts=FACTS_OK).blocked
    assert evaluate_policy(marker(), FRIDAY_BLOCK, at=ts(2024, 4, 5, 10, 0, 0), facts=FACTS_OK).blocked
    assert not evaluate_policy(marker(), FRIDAY_BLOCK, at=ts(2024, 3, 29, 10, 30), facts=FACTS_OK).blocked
    assert evaluate_policy(marker(), FRIDAY_BLOCK, at=ts(2024, 3, 29, 11, 0), facts=FACTS_OK).blocked


def test_in_the_week_the_us_is_on_summer_time_and_europe_is_not_each_zone_uses_its_own_offset():
    """2024-03-15: New York is already on EDT (UTC-4) while Berlin is still on CET (UTC+1)."""
    policy = replace(FRIDAY_BLOCK, teams=(team("nyc", NEW_YORK),))
    assert not evaluate_policy(marker(), policy, at=ts(2024, 3, 15, 15, 59, 59), facts=FACTS_OK).blocked
    assert evaluate_policy(marker(), policy, at=ts(2024, 3, 15, 16, 0), facts=FACTS_OK).blocked


# --- freeze ------------------------------------------------------------------------------------------------

YEAR_END = Freeze(ts(2024, 12, 20, zone=BERLIN), ts(2025, 1, 2, zone=BERLIN), "year-end freeze", BERLIN)
FREEZE_BLOCK = Policy(base=only("freeze", action="block"), freezes=(YEAR_END,))


def test_the_freeze_starts_inclusive():
    r = evaluate_policy(marker(), FREEZE_BLOCK, at=YEAR_END.start, facts=FACTS_OK)
    assert r.blocked
    assert "inside the freeze 'year-end freeze' (2024-12-20 00:00 +0100 until 2025-01-02 00:00 +0100)" in (
        check(r, "freeze").detail
    )
    assert not evaluate_policy(marker(), FREEZE_BLOCK, at=YEAR_END.start - 0.001, facts=FACTS_OK).blocked


def test_the_freeze_ends_exclusive():
    assert evaluate_policy(marker(), FREEZE_BLOCK, at=YEAR_END.end - 0.001, facts=FACTS_OK).blocked
    r = evaluate_policy(marker(), FREEZE_BLOCK, at=YEAR_END.end, facts=FACTS_OK)
    assert check(r, "freeze").status == "pass" and not r.blocked


def test_without_freeze_ranges_the_freeze_check_is_skipped():
    r = evaluate_policy(marker(), replace(FREEZE_BLOCK, freezes=()), at=YEAR_END.start, facts=FACTS_OK)
    assert check(r, "freeze").status == "skipped" and "no freeze ranges" in check(r, "freeze").detail


# --- peak hours and team hours -----------------------------------------------------------------------------

CHECKOUT_PEAK = PeakHours("checkout peak", WeeklyRange(NEW_YORK, WEEKDAYS, 9 * 3600, 11 * 3600))


def test_peak_hours_warn_inside_the_local_range_on_listed_days_only():
    policy = Policy(base=only("peak_hours"), peak_hours=(CHECKOUT_PEAK,))
    inside = evaluate_policy(marker(), policy, at=ts(2024, 6, 3, 9, 30, zone=NEW_YORK), facts=FACTS_OK)
    assert check(inside, "peak_hours").status == "warn" and not inside.blocked
    assert check(inside, "peak_hours").detail.startswith(
        "Monday 09:30 America/New_York is inside peak hours 'checkout peak' (Mon-Fri 09:00-11:00 America/New_York)"
    )
    for at in (ts(2024, 6, 3, 11, 0, zone=NEW_YORK), ts(2024, 6, 8, 9, 30, zone=NEW_YORK)):  # end; Saturday
        assert check(evaluate_policy(marker(), policy, at=at, facts=FACTS_OK), "peak_hours").status == "pass"


def test_a_range_ending_before_it_starts_runs_past_midnight_from_its_listed_day():
    evening = WeeklyRange(BERLIN, frozenset({4}), 22 * 3600, 2 * 3600)  # Friday 22:00 to Saturday 02:00
    assert evening.contains(ts(2024, 6, 7, 23, 0, zone=BERLIN))
    assert evening.contains(ts(2024, 6, 8, 1, 59, zone=BERLIN))
    assert not evening.contains(ts(2024, 6, 8, 2, 0, zone=BERLIN))
    assert not evening.contains(ts(2024, 6, 7, 1, 0, zone=BERLIN))  # Friday early morning: Thursday's night


def test_outside_the_working_hours_of_every_team_warns_to_have_someone_watching():
    policy = Policy(base=only("team_hours"), teams=(team("berlin", BERLIN), team("nyc", NEW_YORK, 8, 20)))
    late = evaluate_policy(marker(), policy, at=ts(2024, 6, 4, 1, 0), facts=FACTS_OK)  # 03:00 Berlin, 21:00 NY
    c = check(late, "team_hours")
    assert c.status == "warn" and "have the team available for monitoring" in c.detail
    assert "berlin: Tuesday 03:00 Europe/Berlin" in c.detail and "nyc: Monday 21:00 America/New_York" in c.detail
    evening_berlin = evaluate_policy(marker(), policy, at=ts(2024, 6, 4, 19, 0), facts=FACTS_OK)  # 15:00 NY
    assert check(evening_berlin, "team_hours").status == "pass"
    assert "nyc (Tuesday 15:00 America/New_York)" in check(evening_berlin, "team_hours").detail


def test_team_hours_are_skipped_when_no_teams_are_listed():
    r = evaluate_policy(marker(), Policy(base=only("team_hours")), at=ts(2024, 6, 4, 1, 0), facts=FACTS_OK)
    assert check(r, "team_hours").status == "skipped"


# --- precedence --------------------------------------------------------------------------------------------

SATURDAY_NOON = ts(2024, 6, 8, 12, 0)
PEAK_ALWAYS = PeakHours("all week", WeeklyRange(UTC, frozenset(range(7)), 0, 0))  # whole day, every day


def peak_status(policy: Policy, environment: str, change_type: ChangeType = ChangeType.FEATURE) -> str:
    policy = replace(policy, peak_hours=(PEAK_ALWAYS,))
    r = evaluate_policy(marker(environment=environment, change_type=change_type), policy, at=SATURDAY_NOON,
                        facts=FACTS_OK)
    return check(r, "peak_hours").status


def test_the_base_applies_only_to_matching_environments():
    policy = Policy(environments=("prod*",), base=only("peak_hours"))
    assert peak_status(policy, "production") == "warn"
    assert peak_status(policy, "prod-eu") == "warn"
    assert peak_status(policy, "staging") == "skipped"


def test_an_exact_environment_beats_a_glob_whatever_the_order():
    rules = (
        PolicyRule({"peak_hours": "off"}, environments=("production",)),
        PolicyRule({"peak_hours": "block"}, environments=("prod*",)),
    )
    policy = Policy(base=only("peak_hours"), rules=rules)
    assert peak_status(policy, "production") == "skipped"
    assert peak_status(policy, "prod-eu") == "block"


def test_a_rule_naming_change_types_beats_one_that_does_not_for_the_same_environments():
    rules = (
        PolicyRule({"peak_hours": "warn"}, environments=("prod*",), change_types=frozenset({ChangeType.SECURITY})),
        PolicyRule({"peak_hours": "block"}, environments=("prod*",)),
    )
    policy = Policy(base=only("peak_hours"), rules=rules)
    assert peak_status(policy, "production", ChangeType.SECURITY) == "warn"
    assert peak_status(policy, "production", ChangeType.FEATURE) == "block"


def test_the_environment_ranks_before_the_change_type():
    rules = (
        PolicyRule({"peak_hours": "block"}, environments=("production",)),
        PolicyRule({"peak_hours": "off"}, change_types=frozenset({ChangeType.BUGFIX})),
    )
    assert peak_status(Policy(base=only("peak_hours"), rules=rules), "production", ChangeType.BUGFIX) == "block"


def test_between_equally_specific_rules_the_later_wins():
    rules = (PolicyRule({"peak_hours": "block"}, ("prod*",)), PolicyRule({"peak_hours": "off"}, ("pro*",)))
    assert peak_status(Policy(base=only("peak_hours"), rules=rules), "production") == "skipped"
    assert peak_status(Policy(base=only("peak_hours"), rules=rules[::-1]), "production") == "block"


def test_a_rule_overrides_only_the_checks_it_names_and_says_where_an_action_came_from():
    policy = Policy(
        base=only("peak_hours", "tests_passed"),
        rules=(PolicyRule({"tests_passed": "block"}, ("production",), frozenset({ChangeType.FEATURE})),),
        peak_hours=(PEAK_ALWAYS,),
    )
    r = evaluate_policy(marker(checklist={}), policy, at=SATURDAY_NOON, facts=FACTS_OK)
    assert check(r, "peak_hours").status == "warn" and "from policy for prod*" in check(r, "peak_hours").detail
    assert check(r, "tests_passed").status == "block"
    assert "from rules[0] (production; feature)" in check(r, "tests_passed").detail
    r = evaluate_policy(marker(checklist={}, change_type=ChangeType.BUGFIX), policy, at=SATURDAY_NOON,
                        facts=FACTS_OK)
    assert check(r, "tests_passed").status == "warn"


def test_a_rule_can_turn_checks_on_in_an_environment_the_base_does_not_cover():
    policy = Policy(base=only("peak_hours"), rules=(PolicyRule({"peak_hours": "block"}, ("staging",)),))
    assert peak_status(policy, "staging") == "block"
    assert peak_status(policy, "dev") == "skipped"


def test_a_rule_with_an_unknown_check_or_action_is_refused():
    with pytest.raises(ValidationError, match="unknown policy check") as e:
        PolicyRule({"friday": "block"})
    assert e.value.field == "actions"
    with pytest.raises(ValidationError, match="off, warn, block"):
        PolicyRule({"freeze": "deny"})  # type: ignore[dict-item]


# --- fast-track --------------------------------------------------------------------------------------------

STRICT = Policy(base=only("freeze", "tests_passed", action="block"), freezes=(YEAR_END,))


def test_a_fast_tracked_security_patch_turns_blocks_into_recorded_overrides():
    m = marker(change_type=ChangeType.SECURITY, fast_track="CVE-2024-1234 in the session cookie", checklist={})
    r = evaluate_policy(m, STRICT, at=YEAR_END.start, facts=FACTS_OK)
    assert not r.blocked and r.fast_tracked
    assert check(r, "fast_track").status == "pass"
    for name in ("freeze", "tests_passed"):
        c = check(r, name)
        assert c.status == "overridden"
        assert "overridden by fast-track: 'CVE-2024-1234 in the session cookie'" in c.detail
    assert "fast-tracked past freeze, tests_passed" in r.summary()


def test_a_fast_track_request_for_a_feature_is_itself_a_block_naming_the_allowed_types():
    m = marker(fast_track="marketing wants it today", checklist={})
    r = evaluate_policy(m, STRICT, at=YEAR_END.start, facts=FACTS_OK)
    assert r.blocked and not r.fast_tracked
    c = check(r, "fast_track")
    assert c.status == "block" and "only bugfix, security changes may be fast-tracked" in c.detail
    assert check(r, "freeze").status == "block"  # nothing was overridden


def test_fast_track_types_are_configurable():
    policy = replace(STRICT, fast_track_change_types=frozenset({ChangeType.SECURITY}))
    m = marker(change_type=ChangeType.BUGFIX, fast_track="hotfix")
    r = evaluate_policy(m, policy, at=YEAR_END.start, facts=FACTS_OK)
    assert r.blocked and "only security changes" in check(r, "fast_track").detail


def test_a_fast_tracked_marker_still_warns():
    policy = Policy(base=only("freeze"), freezes=(YEAR_END,))
    m = marker(change_type=ChangeType.BUGFIX, fast_track="checkout 500s")
    assert check(evaluate_policy(m, policy, at=YEAR_END.start, facts=FACTS_OK), "freeze").status == "warn"


# --- the checklist -----------------------------------------------------------------------------------------

CHECKLIST_BLOCK = Policy(base=only(*CHECKLIST, action="block"))
WEDNESDAY = ts(2024, 6, 5, 10, 0)


def test_a_missing_or_false_answer_gets_the_rule_action_and_a_true_one_passes():
    m = marker(checklist={"tests_passed": True, "review_approved": False})
    r = evaluate_policy(m, CHECKLIST_BLOCK, at=WEDNESDAY, facts=FACTS_OK)
    assert check(r, "tests_passed").status == "pass"
    assert check(r, "review_approved").status == "block"
    assert "code review approved: CI answered false" in check(r, "review_approved").detail
    assert check(r, "rollback_plan_documented").status == "block"
    assert "checklist.rollback_plan_documented is missing" in check(r, "rollback_plan_documented").detail


def test_migrations_tested_on_staging_only_applies_to_a_marker_with_migrations():
    m = marker(checklist={})
    r = evaluate_policy(m, CHECKLIST_BLOCK, at=WEDNESDAY, facts=FACTS_OK)
    assert check(r, "migrations_tested_on_staging").status == "skipped"
    r = evaluate_policy(replace(m, db_migrations=True), CHECKLIST_BLOCK, at=WEDNESDAY, facts=FACTS_OK)
    assert check(r, "migrations_tested_on_staging").status == "block"
    ok = replace(m, db_migrations=True, checklist={"migrations_tested_on_staging": True})
    assert check(evaluate_policy(ok, CHECKLIST_BLOCK, at=WEDNESDAY, facts=FACTS_OK),
                 "migrations_tested_on_staging").status == "pass"


def test_monitoring_and_rollback_are_verified_by_guardrail_not_taken_from_ci():
    m = marker()  # CI says yes to everything
    facts = PolicyFacts(monitoring_configured=False, rollback_configured=False,
                        monitoring_note="no prometheus.url", rollback_note="adapter is noop")
    r = evaluate_policy(m, CHECKLIST_BLOCK, at=WEDNESDAY, facts=facts)
    assert check(r, "monitoring_configured").status == "block"
    assert "monitoring configured: not met, verified by guardrail (no prometheus.url)" in check(r, "monitoring_configured").detail
    assert check(r, "rollback_configured").status == "block"
    r = evaluate_policy(marker(checklist={}), CHECKLIST_BLOCK, at=WEDNESDAY, facts=FACTS_OK)
    assert check(r, "monitoring_configured").status == "pass"
    assert "verified by guardrail" in check(r, "monitoring_configured").detail


def test_a_verified_item_still_fails_when_ci_says_no():
    m = marker(checklist={**ALL_YES, "monitoring_configured": False})
    r = evaluate_policy(m, CHECKLIST_BLOCK, at=WEDNESDAY, facts=FACTS_OK)
    assert check(r, "monitoring_configured").status == "block"
    assert "CI answered false" in check(r, "monitoring_configured").detail


def test_oncall_comes_from_guardrail_when_it_knows_and_from_ci_otherwise():
    m = marker(checklist={**ALL_YES, "oncall_available": True})
    assert check(evaluate_policy(m, CHECKLIST_BLOCK, at=WEDNESDAY, facts=FACTS_OK), "oncall_available").status \
        == "pass"
    nobody = replace(FACTS_OK, has_oncall=False, oncall_note="no page route")
    c = check(evaluate_policy(m, CHECKLIST_BLOCK, at=WEDNESDAY, facts=nobody), "oncall_available")
    assert c.status == "block" and "verified by guardrail (no page route)" in c.detail


def test_facts_follow_the_metric_source_and_the_adapter():
    pulled = marker(metrics_source="prometheus", adapter=AdapterRef(name="checkout-deploy"))
    f = derive_facts(pulled, prometheus_configured=False, adapter_type="command")
    assert not f.monitoring_configured and "prometheus.url is not set" in f.monitoring_note
    assert f.rollback_configured and "'checkout-deploy' (command) can roll back" in f.rollback_note
    assert derive_facts(pulled, prometheus_configured=True, adapter_type="command").monitoring_configured
    pushed = marker(adapter=AdapterRef(name="noop"))
    f = derive_facts(pushed, prometheus_configured=False, adapter_type="noop")
    assert f.monitoring_configured and not f.rollback_configured and f.has_oncall is None


# --- the whole result --------------------------------------------------------------------------------------


def test_the_default_policy_warns_in_production_and_never_blocks():
    friday = ts(2024, 6, 7, 16, 0)
    r = evaluate_policy(marker(checklist={}), Policy(), at=friday, facts=PolicyFacts(False, False))
    assert not r.blocked
    assert {c.status for c in r.checks} == {"warn", "skipped"}
    assert check(r, "friday_afternoon").status == "warn"
    staging = evaluate_policy(marker(environment="staging", checklist={}), Policy(), at=friday, facts=FACTS_OK)
    assert {c.status for c in staging.checks} == {"skipped"}
    assert "not checked for staging feature deploys (no rule applies)" in check(staging, "tests_passed").detail


def test_a_disabled_policy_checks_nothing():
    r = evaluate_policy(marker(checklist={}), replace(FRIDAY_BLOCK, enabled=False), at=ts(2024, 6, 7, 16),
                        facts=FACTS_OK)
    assert r.to_dict() == {
        "blocked": False, "fast_tracked": False, "summary": "deploy policy passed",
        "checks": [{"name": "policy", "status": "skipped", "detail": "deploy policy is disabled"}],
    }


def test_the_result_serializes_with_a_summary_of_what_blocks():
    r = evaluate_policy(marker(), FRIDAY_BLOCK, at=ts(2024, 6, 7, 15, 10, zone=BERLIN), facts=FACTS_OK)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["blocked"] is True
    assert d["summary"].startswith("deploy blocked by policy: Friday 15:10 Europe/Berlin is inside")
    assert [c["name"] for c in d["checks"]] == list(CHECKS)


def test_a_bad_zone_name_says_how_to_write_one():
    with pytest.raises(ValueError, match="IANA name such as UTC, Europe/Berlin"):
        zone_or_error("Europe/Berln")


# --- invariants --------------------------------------------------------------------------------------------

action = st.sampled_from(ACTIONS)
actions = st.dictionaries(st.sampled_from(CHECKS), action)
envs = st.sampled_from(["production", "prod-eu", "staging"])


@st.composite
def scenarios(draw):
    rules = tuple(
        PolicyRule(
            draw(actions),
            environments=tuple(draw(st.lists(st.sampled_from(["production", "prod*", "*", "staging"]), max_size=2))),
            change_types=frozenset(draw(st.sets(st.sampled_from(list(ChangeType)), max_size=2))),
        )
        for _ in range(draw(st.integers(0, 3)))
    )
    policy = Policy(
        base={n: draw(action) for n in CHECKS},
        rules=rules,
        zone=draw(st.sampled_from([BERLIN, NEW_YORK, UTC])),
        teams=draw(st.sampled_from([(), (team("berlin", BERLIN),), (team("nyc", NEW_YORK, 8, 20),)])),
        peak_hours=draw(st.sampled_from([(), (CHECKOUT_PEAK,)])),
        freezes=draw(st.sampled_from([(), (YEAR_END,)])),
        fast_track_change_types=frozenset(draw(st.sets(st.sampled_from(list(ChangeType))))),
    )
    m = marker(
        environment=draw(envs),
        change_type=draw(st.sampled_from(list(ChangeType))),
        db_migrations=draw(st.booleans()),
        fast_track=draw(st.sampled_from(["", "CVE fix"])),
        checklist=draw(st.dictionaries(st.sampled_from(list(CHECKLIST)), st.booleans())),
    )
    facts = PolicyFacts(draw(st.booleans()), draw(st.booleans()), draw(st.sampled_from([None, True, False])))
    at = draw(st.floats(ts(2024, 1, 1), ts(2025, 12, 31)))
    return m, policy, facts, at


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_blocked_exactly_when_some_check_blocks_and_never_when_fast_tracked(scenario):
    m, policy, facts, at = scenario
    r = evaluate_policy(m, policy, at=at, facts=facts)
    assert r.blocked == any(c.status == "block" for c in r.checks)
    if r.fast_tracked:
        assert not r.blocked
    else:
        assert all(c.status != "overridden" for c in r.checks)
    listed = [c.name for c in r.checks]
    assert listed == (["fast_track"] if m.fast_track else []) + list(CHECKS)
    assert all(c.detail for c in r.checks)
