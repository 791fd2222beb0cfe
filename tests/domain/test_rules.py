"""In-service alert rules: the lesson's thresholds and ``for`` durations on data time, no data is not
zero, any arrival order, bounded memory, and the same policy as alerts/rules.yml."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrail.config import Settings, load_settings
from guardrail.domain.errors import ConfigError, ValidationError
from guardrail.domain.model import Histogram, Sample, Track
from guardrail.domain.notifications import NoticeAction, Severity
from guardrail.domain.rules import (
    GIB,
    AlertState,
    RuleEvaluator,
    RuleKind,
    RuleSpec,
    RuleStatus,
    RuleTransition,
    attribute,
    configure_rules,
    default_rules,
)

T0 = 1_700_000_000.0
W = 60.0  # window length
BOUNDS = (0.1, 0.25, 0.5, 1.0, 2.5)
RULES_YML = Path(__file__).resolve().parents[2] / "alerts" / "rules.yml"


def rule(name: str) -> RuleSpec:
    (spec,) = [r for r in default_rules() if r.name == name]
    return spec


def win(i: int, track: Track = Track.CANARY, *, requests: int = 1000, errors: int = 0, **kw) -> Sample:
    return Sample(track, T0 + i * W, T0 + (i + 1) * W, requests, errors, **kw)


def end(i: int) -> float:
    return T0 + (i + 1) * W


def run(specs, samples, now=None, **kw) -> list[RuleTransition]:
    ev = RuleEvaluator(specs, **kw)
    ev.add_many(samples)
    return ev.evaluate(now if now is not None else max(s.end for s in samples))


def brief(ts: list[RuleTransition]) -> list[tuple[str, str, str, float]]:
    return [(t.rule.name, t.track.value, t.state.value, t.at) for t in ts]


# --- error rate -----------------------------------------------------------------------------------


def test_error_rate_above_1_percent_fires_after_5_minutes_of_data_time_with_the_figures():
    ev = RuleEvaluator([rule("HighErrorRate")])
    out = []
    for i in range(10):
        ev.add(win(i, errors=23))
        out += ev.evaluate(end(i))
    (fired,) = out
    assert fired.state is AlertState.FIRING and fired.track is Track.CANARY
    assert fired.at == end(5) and fired.since == end(0)  # true at every point from the first, for 300 s
    assert fired.value == pytest.approx(0.023) and fired.threshold == 0.01
    assert fired.sentence == "canary error rate 2.3% > 1% for 5 min"
    assert fired.fails_deploy


def test_error_rate_exactly_at_the_threshold_does_not_fire():
    assert run([rule("HighErrorRate")], [win(i, errors=10) for i in range(20)]) == []  # 1.0% is not > 1%
    assert len(run([rule("HighErrorRate")], [win(i, errors=11) for i in range(20)])) == 1


def test_a_short_spike_does_not_fire_and_resets_the_for_clock():
    # two bad minutes stay in the 5-min rate for 4 min (end(0) to end(4)): short of the 5 min needed
    samples = [win(i, errors=50 if i in (0, 1) else 0) for i in range(12)]
    assert run([rule("HighErrorRate")], samples) == []


def test_error_rate_resolves_when_back_under_the_threshold():
    samples = [win(i, errors=30) for i in range(8)] + [win(i, errors=0) for i in range(8, 20)]
    fired, resolved = run([rule("HighErrorRate")], samples)
    assert fired.state is AlertState.FIRING and resolved.state is AlertState.RESOLVED
    # the 5-min rate (5 windows) is back under 1% once only one bad window is left in it: 30/5000
    assert resolved.at == end(11) and resolved.value == pytest.approx(0.006)
    assert resolved.sentence.startswith("canary error rate 0.6%, back under 1% (fired for")
    assert not resolved.fails_deploy


def test_no_requests_is_no_data_not_zero_errors_and_resolves_once_the_window_is_empty():
    """Issue 17 (was: no data kept the state): a point with no requests in the window does not hold,
    as in Prometheus (0/0 is NaN, no alert): a firing rule resolves, saying it had no data, not
    that the error rate recovered; a pending one starts over, and the silence never counts toward
    ``for``."""
    bad = [win(i, errors=30) for i in range(7)]
    silent = [win(i, requests=0) for i in range(7, 30)]  # 23 min without a single request
    fired, resolved = run([rule("HighErrorRate")], bad + silent)
    assert (fired.state, fired.at) == (AlertState.FIRING, end(5))
    # the last bad window (6) leaves the 5-min range [t - 300 s, t] after end(10)
    assert (resolved.state, resolved.at, resolved.value) == (
        AlertState.RESOLVED,
        end(11),
        pytest.approx(0.03),
    )
    assert (
        resolved.sentence
        == "canary error rate: no data in the last 5 min, resolved without a reading (fired for 11 min)"
    )
    ev = RuleEvaluator([rule("HighErrorRate")])
    ev.add_many([win(0, errors=30)] + [win(i, requests=0) for i in range(1, 20)])
    assert ev.evaluate(end(19)) == []  # held from end(0) to end(4), then no data: pending dropped
    assert ev.status("HighErrorRate", Track.CANARY) == RuleStatus("inactive", None, None, end(19))
    out = []
    for i in range(20, 26):
        ev.add(win(i, errors=30))
        out += ev.evaluate(end(i))
    (fired,) = out
    assert fired.since == end(20) and fired.at == end(25)  # the full 5 min again after the silence


def test_each_track_is_judged_on_its_own_and_only_the_canary_fails_the_deploy():
    samples = [win(i, Track.BASELINE, errors=40) for i in range(10)] + [win(i, errors=0) for i in range(10)]
    (fired,) = run([rule("HighErrorRate")], samples)
    assert fired.track is Track.BASELINE and fired.rule.fails_deploy and not fired.fails_deploy
    only_canary = configure_rules({"HighErrorRate": {"tracks": ["canary"]}})
    assert run([s for s in only_canary if s.name == "HighErrorRate"], samples) == []


def test_min_requests_treats_a_thin_window_as_no_data():
    spec = configure_rules({"HighErrorRate": {"min_requests": 100}})[0]
    assert run([spec], [win(i, requests=10, errors=1) for i in range(20)]) == []
    assert len(run([rule("HighErrorRate")], [win(i, requests=10, errors=1) for i in range(20)])) == 1


# --- latency --------------------------------------------------------------------------------------


def hist(counts) -> Histogram:
    return Histogram(BOUNDS, tuple(counts))


def test_p99_from_the_window_histograms_with_prometheus_interpolation():
    # per window: 1000 requests, 20 between 1 and 2.5 s -> rank 990 of 1000 lands in (1, 2.5]
    h = hist((900, 50, 20, 10, 20, 0))
    (fired,) = run([rule("HighLatencyP99")], [win(i, latency=h) for i in range(8)])
    # rank 0.99 * total at 980 below 1 s: 1 + 1.5 * (990 - 980) / 20 = 1.75 s, as histogram_quantile
    assert fired.value == pytest.approx(1.75) and fired.at == end(5)
    assert fired.sentence == "canary p99 1.75 s > 1 s for 5 min" and fired.fails_deploy


def test_p99_under_one_second_does_not_fire():
    h = hist((900, 60, 25, 15, 0, 0))  # p99 inside (0.5, 1]
    assert run([rule("HighLatencyP99")], [win(i, latency=h) for i in range(20)]) == []


def test_p99_in_the_inf_bucket_counts_as_above_the_last_bound():
    h = Histogram((0.5, 1.0), (970, 10, 20))  # the slowest 2% are past the last bound, 1 s
    (fired,) = run([rule("HighLatencyP99")], [win(i, latency=h) for i in range(8)])
    assert fired.value == 1.0 and "above 1 s (the last bucket bound) > 1 s" in fired.sentence


def test_p99_from_raw_latencies_without_a_histogram():
    slow = tuple([0.05] * 97 + [1.5] * 3)
    fast = tuple([0.05] * 99 + [0.9])
    (fired,) = run([rule("HighLatencyP99")], [win(i, requests=100, latencies=slow) for i in range(8)])
    assert 1.0 < fired.value <= 2.5
    assert run([rule("HighLatencyP99")], [win(i, requests=100, latencies=fast) for i in range(20)]) == []


def test_windows_without_latency_are_no_data_for_the_latency_rule():
    h = hist((900, 50, 20, 10, 20, 0))
    samples = [win(i, latency=h) for i in range(7)] + [win(i) for i in range(7, 30)]
    assert brief(run([rule("HighLatencyP99")], samples)) == [
        ("HighLatencyP99", "canary", "firing", end(5)),
        ("HighLatencyP99", "canary", "resolved", end(11)),  # no histogram left in [t - 5 min, t]
    ]


# --- gauges ---------------------------------------------------------------------------------------


def pool(in_use: float, cap: float = 20) -> dict[str, float]:
    return {"db_pool_in_use": in_use, "db_pool_max": cap}


def test_db_pool_maxed_out_for_2_minutes_pages_and_resolves():
    samples = [win(i, gauges=pool(20)) for i in range(4)] + [win(i, gauges=pool(12)) for i in range(4, 6)]
    fired, resolved = run([rule("DBConnectionPoolExhausted")], samples)
    assert fired.at == end(2) and fired.rule.severity is Severity.PAGE
    assert fired.sentence == "canary DB connection pool 20/20 in use: maxed out for 2 min"
    assert resolved.at == end(4) and "no longer maxed out" in resolved.sentence
    assert run([rule("DBConnectionPoolExhausted")], [win(i, gauges=pool(19)) for i in range(10)]) == []


def test_gauge_names_are_configurable():
    (spec,) = [
        s
        for s in configure_rules(
            {"DBConnectionPoolExhausted": {"gauges": ["pg_busy", "pg_size"], "for_s": 0}}
        )
        if s.name == "DBConnectionPoolExhausted"
    ]
    (fired,) = run([spec], [win(0, gauges={"pg_busy": 5, "pg_size": 5})])
    assert fired.at == end(0) and "for" not in fired.sentence
    assert run([spec], [win(0, gauges=pool(20))]) == []  # the default names are no longer read


def test_disk_under_10_percent_free_from_the_ratio_or_from_bytes():
    ratio = [win(i, gauges={"disk_free_ratio": 0.08}) for i in range(17)]
    (fired,) = run([rule("DiskSpaceLow")], ratio)
    assert fired.at == end(15) and fired.rule.severity is Severity.TICKET and not fired.fails_deploy
    assert fired.sentence == "canary disk 8% free < 10% for 15 min"
    by_bytes = [win(i, gauges={"disk_avail_bytes": 9e9, "disk_size_bytes": 1e11}) for i in range(17)]
    assert len(run([rule("DiskSpaceLow")], by_bytes)) == 1
    edge = [win(i, gauges={"disk_free_ratio": 0.10}) for i in range(30)]
    assert run([rule("DiskSpaceLow")], edge) == []  # exactly 10% free is not under 10%


def test_a_stale_gauge_is_no_data():
    samples = [win(i, gauges={"disk_free_ratio": 0.05}) for i in range(2)] + [win(i) for i in range(2, 40)]
    # 5% free was last seen at end(1); 5 min later it is stale: the rule stays pending, never fires
    assert run([rule("DiskSpaceLow")], samples) == []


def memory(i: int, start: float, per_min: float) -> dict[str, float]:
    return {"memory_bytes": start + per_min * i}


def test_memory_growing_towards_the_limit_is_a_leak_ticket_after_30_minutes():
    # 1.5 GiB growing 4 MiB/min: 4 h at this rate adds ~0.94 GiB, past the 2 GiB limit
    samples = [win(i, gauges=memory(i, 1.5 * GIB, 4 * 1024**2)) for i in range(40)]
    (fired,) = run([rule("MemoryLeakSuspected")], samples)
    assert fired.at == end(31) and fired.since == end(1)  # two points needed for a line
    assert fired.value > 2 * GIB and not fired.fails_deploy
    assert (
        fired.sentence.startswith("canary memory grows +240 MiB/h: ")
        and "in 4 h at this rate > 2 GiB" in fired.sentence
    )


def test_flat_or_slow_memory_is_not_a_leak():
    flat = [win(i, gauges=memory(i, 2.5 * GIB, 0)) for i in range(60)]  # high but not growing: no slope
    slow = [win(i, gauges=memory(i, 1.0 * GIB, 64 * 1024)) for i in range(60)]  # +15 MiB in 4 h
    shrinking = [win(i, gauges=memory(i, 3.0 * GIB, -(1024**2))) for i in range(60)]
    for samples in (flat, slow, shrinking):
        assert run([rule("MemoryLeakSuspected")], samples) == []


# --- data time, order, memory ---------------------------------------------------------------------


def mixed(n: int = 40) -> list[Sample]:
    out = []
    for i in range(n):
        bad = 5 <= i < 20
        out.append(win(i, errors=30 if bad else 1, gauges=pool(20 if 10 <= i < 16 else 5)))
        out.append(win(i, Track.BASELINE, errors=2, latency=hist((900, 50, 20, 10, 20, 0)) if bad else None))
    return out


@settings(max_examples=40, deadline=None)
@given(st.permutations(mixed()), st.integers(0, 2))
def test_arrival_order_and_duplicates_do_not_change_the_transitions(samples, dup_every):
    expected = run(default_rules(), mixed())
    assert len(expected) >= 5
    ev = RuleEvaluator(default_rules())
    for i, s in enumerate(samples):
        ev.add(s)
        if dup_every and i % (dup_every + 1) == 0:
            ev.add(s)
    assert brief(ev.evaluate(max(s.end for s in samples))) == brief(expected)


def test_replaying_in_one_push_is_the_same_as_receiving_live():
    samples = mixed()
    live = RuleEvaluator(default_rules())
    out = []
    for i in range(40):
        live.add_many([s for s in samples if s.end == end(i)])
        out += live.evaluate(end(i))
    assert brief(out) == brief(run(default_rules(), samples))
    assert [t.sentence for t in out] == [t.sentence for t in run(default_rules(), samples)]


def test_transitions_come_in_data_time_order():
    out = run(default_rules(), mixed())
    assert [t.at for t in out] == sorted(t.at for t in out)


def test_memory_stays_bounded_by_the_longest_lookback():
    ev = RuleEvaluator(default_rules())  # longest lookback: the memory rule's hour
    for i in range(2000):
        ev.add(win(i, gauges=memory(i, GIB, 0)))
        ev.add(win(i, Track.BASELINE))
        ev.evaluate(end(i))
    assert ev.retained <= 2 * (3600 / W + 1)
    ev.add(win(5))  # a window older than every lookback left: dropped, not resurrected
    assert ev.late == 1 and ev.retained <= 2 * (3600 / W + 1)
    short = RuleEvaluator([rule("HighErrorRate")])
    for i in range(2000):
        short.add(win(i))
        short.evaluate(end(i))
    assert short.retained <= 300 / W + 1


def test_a_late_window_counts_in_the_points_after_it():
    ev = RuleEvaluator([configure_rules({"HighErrorRate": {"for_s": 0}})[0]])
    ev.add(win(1, errors=0))
    assert ev.evaluate(end(1)) == []
    ev.add(win(0, errors=200))  # arrives late: its own point (end(0)) is past
    assert ev.evaluate(end(1)) == []
    ev.add(win(2, errors=0))
    (fired,) = ev.evaluate(end(2))  # 200 / 3000 over the last 5 min
    assert fired.at == end(2) and fired.value == pytest.approx(200 / 3000)


def test_close_resolves_what_is_firing():
    ev = RuleEvaluator([rule("HighErrorRate")])
    ev.add_many([win(i, errors=50) for i in range(8)])
    assert len(ev.evaluate(end(7))) == 1 and len(ev.firing) == 1
    (resolved,) = ev.close(end(7), "the watch window ended")
    assert resolved.state is AlertState.RESOLVED and "the watch window ended" in resolved.sentence
    assert ev.firing == [] and ev.close(end(8)) == []


# --- specs, config, parity with alerts/rules.yml -------------------------------------------------


def test_transition_as_a_notice_is_one_incident_per_deploy_rule_and_track():
    fired, resolved = run(
        [rule("HighErrorRate")], [win(i, errors=30) for i in range(8)] + [win(i) for i in range(8, 20)]
    )
    a = fired.notice(service="checkout", environment="production", deploy_id="d1", occurred_at=5.0)
    b = resolved.notice(service="checkout", environment="production", deploy_id="d1", occurred_at=6.0)
    assert a.key == b.key == "guardrail:checkout:production:d1:HighErrorRate-canary"
    assert (a.action, b.action) == (NoticeAction.TRIGGER, NoticeAction.RESOLVE)
    assert a.severity is Severity.PAGE and a.rule == "HighErrorRate"
    assert a.summary == "checkout (production): canary error rate 3% > 1% for 5 min"
    assert a.details["value"] == pytest.approx(0.03) and a.details["fails_deploy"] is True


def test_fails_deploy_defaults_to_page_rules_and_is_configurable():
    assert {r.name: r.fails_deploy for r in default_rules()} == {
        "HighErrorRate": True,
        "HighLatencyP99": True,
        "DBConnectionPoolExhausted": True,
        "DiskSpaceLow": False,
        "MemoryLeakSuspected": False,
    }
    specs = {
        s.name: s
        for s in configure_rules(
            {"HighErrorRate": {"fails_deploy": False}, "DiskSpaceLow": {"severity": "page"}}
        )
    }
    assert not specs["HighErrorRate"].fails_deploy and specs["DiskSpaceLow"].fails_deploy
    assert not any(s.fails_deploy for s in configure_rules(fails_deploy=False))


def test_configure_rejects_unknown_rules_and_keys_naming_them():
    with pytest.raises(ValidationError) as e:
        configure_rules({"HighErorRate": {}})
    assert e.value.field == "rules.overrides.HighErorRate" and "HighErrorRate" in e.value.detail
    with pytest.raises(ValidationError) as e:
        configure_rules({"HighErrorRate": {"treshold": 0.02}})
    assert e.value.field == "rules.overrides.HighErrorRate.treshold"
    with pytest.raises(ValidationError) as e:
        configure_rules({"DiskSpaceLow": {"gauges": ["free"]}})
    assert e.value.field == "rules.overrides.DiskSpaceLow.gauges"
    assert [s.name for s in configure_rules({"DiskSpaceLow": {"enabled": False}})] == [
        "HighErrorRate", "HighLatencyP99", "DBConnectionPoolExhausted", "MemoryLeakSuspected",
    ]  # fmt: skip


def test_settings_rules_section(tmp_path):
    assert [s.name for s in Settings().rules.specs()] == [s.name for s in default_rules()]
    cfg = tmp_path / "guardrail.yaml"
    cfg.write_text(
        "rules:\n  fails_deploy: false\n  overrides:\n    HighErrorRate: {threshold: 0.02, for_s: 60}\n"
    )
    specs = load_settings(cfg, env={}).rules.specs()
    assert specs[0].threshold == 0.02 and specs[0].for_s == 60 and not any(s.fails_deploy for s in specs)
    assert load_settings(env={"GUARDRAIL_RULES__ENABLED": "false"}).rules.specs() == ()
    cfg.write_text("rules:\n  overrides:\n    HighErorRate: {threshold: 0.02}\n")
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, env={})
    assert e.value.field == "rules.overrides" and "HighErorRate" in e.value.detail
    cfg.write_text("rules:\n  overrides:\n    DBConnectionPoolExhausted: {gauges: [busy]}\n")
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, env={})
    assert e.value.field == "rules.overrides" and "reads 2 gauge(s)" in e.value.detail


def _duration(text: str) -> float:
    n, unit = re.fullmatch(r"(\d+)([smh])", text).groups()  # type: ignore[union-attr]
    return int(n) * {"s": 1, "m": 60, "h": 3600}[unit]


def _number(text: str) -> float:
    out = 1.0
    for factor in text.split("*"):
        out *= float(factor)
    return out


def test_default_rules_match_the_prometheus_rules():
    groups = yaml.safe_load(RULES_YML.read_text())["groups"]
    (prom,) = [g["rules"] for g in groups if g["name"] == "deployment-guardrails"]
    ours = {r.name: r for r in default_rules()}
    assert {r["alert"] for r in prom} == set(ours)
    op_of = {
        RuleKind.ERROR_RATE: ">",
        RuleKind.LATENCY_QUANTILE: ">",
        RuleKind.POOL_SATURATION: ">=",
        RuleKind.DISK_FREE: "<",
        RuleKind.MEMORY_TREND: ">",
    }
    for r in prom:
        spec = ours[r["alert"]]
        assert spec.for_s == _duration(r["for"]), spec.name
        assert spec.severity.value == r["labels"]["severity"], spec.name
        # the first comparison is the rule's threshold (the p99 rule's `or` and the memory rule's
        # `and` come after it); tests/test_rule_parity.py checks what the rules compute
        op, threshold = re.search(r"(>=|<=|>|<)\s*(\d[\d.]*(?:\s*\*\s*\d[\d.]*)*)", r["expr"]).groups()  # type: ignore[union-attr]
        assert op == op_of[spec.kind] and spec.threshold == pytest.approx(_number(threshold)), spec.name
        ranges = re.findall(r"\[(\d+[smh])\]", r["expr"])
        if ranges:  # rate / deriv window; gauges use Prometheus's 5-min staleness
            assert spec.window_s == _duration(ranges[0]), spec.name
        else:
            assert spec.window_s == 300, spec.name
        if spec.kind is RuleKind.LATENCY_QUANTILE:
            assert f"histogram_quantile({spec.quantile:g}" in r["expr"]
        if spec.kind is RuleKind.MEMORY_TREND:
            assert re.search(rf"predict_linear\([^,]+,\s*{int(spec.horizon_s // 3600)} \* 3600\)", r["expr"])


def test_spec_validation_names_the_key():
    with pytest.raises(ValidationError) as e:
        RuleSpec("X", RuleKind.ERROR_RATE, Severity.INFO, 0.01, for_s=0)
    assert e.value.field == "rules.overrides.X.severity"
    with pytest.raises(ValidationError) as e:
        RuleSpec("X", RuleKind.ERROR_RATE, Severity.PAGE, 0.01, for_s=-1)
    assert e.value.field == "rules.overrides.X.for_s"
    with pytest.raises(ValidationError):
        RuleEvaluator([rule("HighErrorRate"), rule("HighErrorRate")])


# --- the canary starts with the new version; attribution --------------------------------------------


def lat(i: int, track: Track = Track.CANARY, *, slow: int = 0, requests: int = 1000) -> Sample:
    """A window whose p99 is in the (1 s, 2.5 s] bucket when ``slow`` >= 2% of requests, else fast."""
    return win(i, track, requests=requests, latency=Histogram(BOUNDS, (requests - slow, 0, 0, 0, slow, 0)))


def test_canary_windows_of_the_old_version_cannot_fire_a_canary_rule():
    """Pre-deploy history pushed for the canary track is the old version: ignored, like the judge does."""
    er = replace(rule("HighErrorRate"), for_s=60)
    ev = RuleEvaluator([er], canary_start=end(9))
    ev.add_many(win(i, errors=50) for i in range(10))  # ten bad minutes, all before the deploy
    assert ev.evaluate(end(9)) == [] and ev.before_start == 10
    ev.add_many(win(i) for i in range(10, 14))  # the new version is healthy
    assert ev.evaluate(end(13)) == []
    # before this fix, the old version's windows fired the canary rule at data time 0 of the deploy
    legacy = RuleEvaluator([er])
    legacy.add_many(win(i, errors=50) for i in range(10))
    assert brief(legacy.evaluate(end(9))) == [("HighErrorRate", "canary", "firing", end(1))]


def test_canary_points_wait_until_the_new_version_serves():
    er = replace(rule("HighErrorRate"), for_s=60)
    ev = RuleEvaluator([er], canary_start=None)
    ev.add_many(win(i, errors=50) for i in range(5))
    assert ev.evaluate(end(4)) == []  # not serving yet: nothing evaluated, nothing lost
    ev.set_canary_start(end(1))
    assert brief(ev.evaluate(end(4))) == [("HighErrorRate", "canary", "firing", end(3))]


def _checks(samples, *, specs=None, evidence=(), metrics=(), canary_start=-math.inf, at=None):
    ev = RuleEvaluator(specs or [replace(rule("HighLatencyP99"), for_s=120)], canary_start=canary_start)
    ev.add_many(samples)
    now = at if at is not None else max(s.end for s in samples)
    ev.evaluate(now)
    return attribute(ev, now, metrics=metrics, evidence=evidence)


def test_a_slow_tail_on_both_tracks_pages_but_is_not_blamed_on_the_canary():
    samples = [lat(i, Track.CANARY, slow=30) for i in range(6)] + [
        lat(i, Track.BASELINE, slow=300, requests=9000) for i in range(6)
    ]
    (check,) = _checks(samples)
    assert not check.attributable
    assert "baseline (old version) breaches it too" in check.reason and "p99" in check.reason
    assert "not blamed on the new version" in check.sentence


def test_a_slow_tail_on_the_canary_alone_is_blamed_on_it():
    samples = [lat(i, Track.CANARY, slow=30) for i in range(6)] + [
        lat(i, Track.BASELINE, requests=9000) for i in range(6)
    ]
    (check,) = _checks(samples)
    assert check.attributable and check.rule == "HighLatencyP99"
    assert check.reason.startswith("the baseline stays under p99 1 s over the same windows")
    assert "fails the deploy" in check.sentence


def test_a_baseline_breach_anywhere_in_the_rule_window_shares_the_blame():
    """The baseline dipped under the threshold at the last point but breached 2 minutes earlier."""
    samples = [lat(i, Track.CANARY, slow=30) for i in range(6)]
    samples += [lat(i, Track.BASELINE, slow=300 if i < 4 else 0, requests=9000) for i in range(6)]
    (check,) = _checks(samples)
    assert not check.attributable
    samples = [
        lat(i, Track.CANARY, slow=30) for i in range(12)
    ]  # 7 clean baseline minutes: > the 5-min window
    samples += [lat(i, Track.BASELINE, slow=300 if i < 4 else 0, requests=9000) for i in range(12)]
    (check,) = _checks(samples)
    assert check.attributable


def test_without_a_concurrent_baseline_a_breach_the_old_version_already_had_is_not_blamed():
    """Pre/post: the baseline is the pre-deploy window; it was already slow at its end."""
    before = [lat(i, Track.BASELINE, slow=300, requests=9000) for i in range(5)]
    after = [lat(i, Track.CANARY, slow=30) for i in range(5, 12)]
    (check,) = _checks(before + after, canary_start=end(4))
    assert not check.attributable and "already breaching it at its last data" in check.reason
    healthy_before = [lat(i, Track.BASELINE, requests=9000) for i in range(5)]
    (check,) = _checks(healthy_before + after, canary_start=end(4))
    assert check.attributable


def test_the_judge_ruling_out_harm_on_the_metric_clears_the_canary():
    from guardrail.domain.judge import default_metrics
    from guardrail.domain.model import Evidence, MetricStatus

    samples = [lat(i, Track.CANARY, slow=30) for i in range(6)] + [
        lat(i, Track.BASELINE, requests=9000) for i in range(6)
    ]

    def evidence(status: MetricStatus) -> Evidence:
        return Evidence(
            metric="latency_p99",
            kind="latency",
            status=status,
            critical=True,
            estimate=1.05,
            ci_low=0.8,
            ci_high=1.4,
            confidence=0.97,
            e_value_fail=1.0,
            e_value_pass=80.0,
            canary_n=6000,
            baseline_n=54000,
            allowed=1.0,
            critical_change=1.5,
            detail="",
        )

    (check,) = _checks(samples, metrics=default_metrics(), evidence=[evidence(MetricStatus.PASS)])
    assert not check.attributable and "the judge rules out harm on latency_p99" in check.reason
    (check,) = _checks(samples, metrics=default_metrics(), evidence=[evidence(MetricStatus.CONTINUE)])
    assert check.attributable and "does not rule out harm on latency_p99 (continue)" in check.reason


def test_ticket_rules_and_baseline_alerts_are_never_checked_for_blame():
    disk = replace(rule("DiskSpaceLow"), for_s=0)
    samples = [win(i, Track.CANARY, gauges={"disk_free_ratio": 0.05}) for i in range(3)]
    samples += [lat(i, Track.BASELINE, slow=300, requests=9000) for i in range(6)]
    assert _checks(samples, specs=[disk, replace(rule("HighLatencyP99"), for_s=0)]) == []


def test_a_canary_breach_within_the_noise_of_the_baseline_is_not_blamed():
    """A tenth of the traffic is noisy: 1.5% errors on 1,000 canary requests against 0.78% on the
    baseline's 9,000 is 2.4 standard errors: the rule pages, the deploy is not failed on it."""
    er = replace(rule("HighErrorRate"), for_s=120)
    noisy = [win(i, Track.CANARY, requests=200, errors=3) for i in range(5)]
    base = [win(i, Track.BASELINE, requests=1800, errors=14) for i in range(5)]
    (check,) = _checks(noisy + base, specs=[er])
    assert not check.attributable
    assert "not above the baseline's (0.78%) by more than the noise (z 2.4 < 4)" in check.reason
    clear = [win(i, Track.CANARY, requests=200, errors=6) for i in range(5)]
    (check,) = _checks(clear + base, specs=[er])
    assert check.attributable and "(errors: canary 3% vs baseline 0.78%)" in check.reason


# --- issue 17: one semantics with Prometheus (alerts/RUNBOOK.md, "How the rules read data") ------


def test_a_hole_longer_than_the_window_resolves_and_the_rule_pages_again_after_its_for():
    """As Prometheus: no scrape for 8 min while firing resolves the rule 5 min into the hole (the
    range has data until then), and the breach after it pages again after a full ``for``."""
    samples = [win(i, errors=30) for i in range(10)] + [win(i, errors=30) for i in range(18, 30)]
    assert brief(run([rule("HighErrorRate")], samples)) == [
        ("HighErrorRate", "canary", "firing", end(5)),
        ("HighErrorRate", "canary", "resolved", end(14)),  # window 9 left [t - 5 min, t] after end(13)
        ("HighErrorRate", "canary", "firing", end(23)),  # pending from end(18), fired 5 min later
    ]


def test_a_hole_shorter_than_the_window_keeps_the_rule_on_the_data_before_it():
    samples = [win(i, errors=30) for i in range(3)] + [win(i, errors=30) for i in range(6, 10)]
    (fired,) = run([rule("HighErrorRate")], samples)
    assert (fired.since, fired.at) == (end(0), end(5))  # the 3-min hole never emptied the range


def test_traffic_across_a_hole_counts_only_in_ranges_holding_both_of_its_scrapes():
    """The first window after a hole covers the hole (the counter's jump): a 5-min rate reads it
    only while the whole window lies in [t - 5 min, t], as Prometheus's rate needs both samples."""
    er = replace(rule("HighErrorRate"), for_s=0)
    long = Sample(Track.CANARY, end(0), end(7), 7000, 700)  # 7 minutes, 10% errors
    ev = RuleEvaluator([er])
    ev.add_many([win(0), long, win(8), win(9)])
    ev.evaluate(end(9))
    assert ev.status("HighErrorRate", Track.CANARY).value == pytest.approx(0.0)  # windows 8 and 9 only
    short = Sample(Track.CANARY, end(0), end(3), 3000, 300)  # 3 minutes: inside the range
    ev = RuleEvaluator([er])
    ev.add_many([win(0), short, win(4)])
    (fired,) = ev.evaluate(end(4))
    assert fired.at == end(3) and fired.value == pytest.approx(300 / 4000)  # windows 0 and 1-3
    assert ev.status("HighErrorRate", Track.CANARY).value == pytest.approx(300 / 5000)


def test_ranges_include_their_left_end_like_prometheus_2():
    # a gauge exactly 5 min old still counts (the 5-minute lookback includes its left end)
    disk = replace(rule("DiskSpaceLow"), for_s=0)
    ev = RuleEvaluator([disk])
    ev.add(win(0, gauges={"disk_free_ratio": 0.05}))
    ev.add(win(5, gauges={}))
    ev.evaluate(end(5))
    assert ev.status("DiskSpaceLow", Track.CANARY) == RuleStatus("firing", end(0), 0.05, end(5))
    ev.add(win(6, gauges={}))
    ev.evaluate(end(6))
    assert ev.status("DiskSpaceLow", Track.CANARY).state == "inactive"
    # the memory line is fit through every value in [t - 1 h, t]: 61 one-minute values
    mem = replace(rule("MemoryLeakSuspected"), for_s=0, threshold=0.0)
    flat_then_up = [win(i, gauges={"memory_bytes": GIB if i else 0.0}) for i in range(62)]
    ev = RuleEvaluator([mem])
    ev.add_many(flat_then_up[:61])
    ev.evaluate(end(60))  # the value at end(0) is exactly 1 h old: still in, the slope is > 0
    assert ev.status("MemoryLeakSuspected", Track.CANARY).state == "firing"
    ev.add(flat_then_up[61])
    ev.evaluate(end(61))  # now it is out: a flat line, no growth
    assert ev.status("MemoryLeakSuspected", Track.CANARY).state == "inactive"


def test_points_come_every_evaluation_interval_not_with_every_window():
    er = replace(rule("HighErrorRate"), for_s=60)
    tens = [Sample(Track.CANARY, T0 + 10 * i, T0 + 10 * (i + 1), 100, 5) for i in range(30)]
    (fired,) = run([er], tens)  # 10-s windows, points at T0 + 10 s, + 70 s, + 130 s, ...
    assert (fired.since, fired.at) == (T0 + 10, T0 + 70)
    (fired,) = run([er], tens, interval_s=30)  # points at T0 + 10 s, + 40 s, + 70 s, ...
    assert (fired.since, fired.at) == (T0 + 10, T0 + 70)
    with pytest.raises(ValidationError) as e:
        RuleEvaluator([er], interval_s=0)
    assert e.value.field == "rules.evaluation_interval_s"


def test_after_a_long_silence_evaluation_resumes_where_data_does():
    """Hours without data are skipped in one step (nothing can hold there), not walked minute by minute."""
    er = rule("HighErrorRate")
    ev = RuleEvaluator([er, rule("MemoryLeakSuspected")])
    ev.add_many(win(i, errors=30) for i in range(8))
    ev.evaluate(end(7))
    ev.add_many(win(i, errors=30) for i in range(600, 606))
    fired_again = [t for t in ev.evaluate(end(605)) if t.state is AlertState.FIRING]
    assert [(t.since, t.at) for t in fired_again] == [(end(600), end(605))]


def test_the_p99_rule_holds_when_more_than_1_percent_are_slower_than_a_bound_at_the_threshold():
    """The +Inf edge and its twin inside the histogram: with 1 s a bucket bound, p99 > 1 s exactly
    when more than 1% of the requests took longer; exactly 1% is p99 = 1 s, not above."""
    p99 = replace(rule("HighLatencyP99"), for_s=0)
    top_at_1 = Histogram((0.5, 1.0), (980, 8, 12))  # 1.2% past the last bound
    assert brief(run([p99], [win(0, latency=top_at_1)])) == [("HighLatencyP99", "canary", "firing", end(0))]
    exactly = Histogram((0.5, 1.0, 2.5), (980, 10, 10, 0))  # 1% above 1 s: p99 is 1 s
    assert run([p99], [win(0, latency=exactly)]) == []
    ev = RuleEvaluator([p99])
    ev.add(win(0, latency=exactly))
    ev.evaluate(end(0))
    assert ev.status("HighLatencyP99", Track.CANARY).value == pytest.approx(1.0)
    below_bound = Histogram((0.5, 0.9), (970, 10, 20))  # past a last bound under 1 s: unknown, no alert
    assert run([p99], [win(0, latency=below_bound)]) == []


def test_status_says_pending_firing_and_no_data():
    ev = RuleEvaluator([rule("HighErrorRate")])
    assert ev.status("HighErrorRate", Track.CANARY) == RuleStatus("inactive", None, None, None)
    ev.add_many(win(i, errors=30) for i in range(3))
    ev.evaluate(end(2))
    assert ev.status("HighErrorRate", Track.CANARY) == RuleStatus(
        "pending", end(0), pytest.approx(0.03), end(2)
    )
    ev.add_many(win(i, errors=30) for i in range(3, 6))
    ev.evaluate(end(5))
    assert ev.status("HighErrorRate", Track.CANARY).state == "firing"
    baseline = ev.status("HighErrorRate", Track.BASELINE)  # evaluated, never any data
    assert (baseline.state, baseline.since, baseline.value) == ("inactive", None, None)


def test_pre_post_the_baseline_rule_resolves_without_data_but_its_last_reading_still_counts():
    """The baseline is the pre-deploy window: its rule resolves once its data leaves the range
    (no data), yet a canary breach is still compared with what the baseline last read."""
    before = [lat(i, Track.BASELINE, slow=300, requests=9000) for i in range(5)]
    after = [lat(i, Track.CANARY, slow=30) for i in range(5, 40)]
    ev = RuleEvaluator([replace(rule("HighLatencyP99"), for_s=120)], canary_start=end(4))
    ev.add_many(before + after)
    out = ev.evaluate(end(39))
    assert ("HighLatencyP99", "baseline", "resolved", end(9)) in brief(out)
    assert "no data in the last 5 min" in next(t.sentence for t in out if t.state is AlertState.RESOLVED)
    (check,) = attribute(ev, end(39))
    assert not check.attributable and "already breaching it at its last data" in check.reason
