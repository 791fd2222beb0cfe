"""The service-level benchmark's harness (bench/service_bench.py): its bookkeeping of what the engine
did, and its traffic models. A handful of real runs through the Engine; no outcome of the engine is
assumed beyond what any sane engine does (a canary that stops serving is rolled back within 45 min)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from bench.judge_bench import wilson_hi
from bench.service_bench import (
    DB_URL,
    RunResult,
    _settings,
    rollback_class,
    run_one,
    run_peer_runs,
    run_seed,
    summarize,
    targets,
)
from bench.service_sim import BURST_LEN_S, BY_NAME, T0, RunModel
from guardrail.adapters.db.store import SqlStore

SEED = 7


@pytest.fixture
async def store():
    s = await SqlStore.open(DB_URL, migrate=True)
    yield s
    await s.close()


async def test_crash_loop_rollback_is_timed_from_the_first_empty_window(store):
    sc = BY_NAME["crash_loop"]
    r = await run_one(store, _settings(), sc, 0, SEED)
    assert 60 <= r.stop_s <= 300
    assert r.outcome == "rolled_back" and r.rollback_by is not None
    first_empty = math.ceil(r.stop_s / 10) * 10
    assert r.at_s % 10 == 0 and r.at_s == r.windows * 10  # the push that made the engine roll back
    assert r.from_stop_s == r.at_s - first_empty
    row = summarize(sc, [r], 0.0)
    assert row["ttr_from"] == "first empty window" and row["bad_promoted"] == 0
    if r.from_stop_s >= 0:
        assert row["ttr_median_s"] == r.from_stop_s
        assert row["within_30s_of_stop"] == (r.from_stop_s <= 30)
    else:  # rolled back before the canary stopped: counted apart, not as a time
        assert row["ttr_median_s"] is None and row["rolled_back_before_stop"] == 1


async def test_canary_share_follows_the_steps_the_engine_took_and_promotion_is_no_false_rollback(store):
    sc = BY_NAME["aa"]
    results = [await run_one(store, _settings(), sc, i, SEED) for i in (0, 2)]
    promoted = [r for r in results if r.outcome == "promoted"]
    assert promoted, [r.reason for r in results]  # a healthy canary is promoted in most runs
    for r in promoted:
        assert [w for _, w in r.steps] == [10.0, 50.0, 100.0] and r.max_weight == 100.0
        assert r.shares == r.steps[:2]  # pushed at 10% from T0, at 50% from the data time step 2 began
        assert r.at_s == r.steps[-1][0] == r.windows * 10 and r.rollback_by is None
    for r in results:  # whatever happened, the harness pushed at the weights the engine put in effect
        assert r.shares == tuple(s for s in r.steps if s[1] < 100)
    row = summarize(sc, results, 0.0)
    rolled = sum(r.outcome == "rolled_back" for r in results)
    assert row["promoted"] == len(promoted) and row["rolled_back"] == rolled
    assert row["false_rollback_rate"] == rolled / 2 and row["bad_promoted"] is None
    assert row["false_rollback_wilson_hi"] == pytest.approx(wilson_hi(rolled, 2))


def test_summary_counts_outcomes_and_reason_classes():
    steps = ((0.0, 10.0), (600.0, 50.0), (900.0, 100.0))
    base = RunResult("aa", 0, "promoted", 900.0, None, "", 100.0, 90, shares=steps[:2], steps=steps)
    early = {"max_weight": 10.0, "shares": steps[:1], "steps": steps[:1]}
    results = [
        base,
        replace(base, index=1, outcome="rolled_back", at_s=120.0, rollback_by="judge", **early),
        replace(base, index=2, outcome="rolled_back", at_s=310.0, rollback_by="rule", **early),
        replace(base, index=3, outcome="paused", at_s=1810.0, max_weight=50.0, steps=steps[:2]),
        replace(
            base, index=4, outcome="analyzing", at_s=None, max_weight=50.0, shares=steps[:1], steps=steps[:2]
        ),
    ]
    row = summarize(BY_NAME["aa"], results, 1.0)
    assert (row["rolled_back"], row["promoted"], row["paused"], row["analyzing_at_45min"]) == (2, 1, 1, 1)
    assert (
        row["false_rollback_rate"] == 2 / 5 and row["rollback_by"]["judge"] == row["rollback_by"]["rule"] == 1
    )
    assert row["ttr_median_s"] == 215.0 and row["reached_50pct"] == 3
    assert (
        row["paused_after_50pct"] == 1 and row["share_mismatches"] == 1
    )  # run 4 kept pushing at 10% after the engine moved to 50%
    reg = summarize(BY_NAME["errors_x2"], results, 1.0)
    assert reg["bad_promoted"] == 1 and reg["false_rollback_rate"] is None


def test_power_at_30_minutes_and_the_targets_table():
    """errors_x1.5: rolled back within 30 min counts rollbacks at <= 1800 s only; the targets table
    says 'no' where a target is missed (a late rollback, a false-rollback rate over 1%)."""
    steps = ((0.0, 10.0),)
    late = RunResult("errors_x1.5", 0, "rolled_back", 1790.0, "judge", "", 10.0, 179, steps, steps)
    results = [replace(late, index=i, at_s=t) for i, t in enumerate([300.0] * 97 + [1790.0, 1800.0, 1810.0])]
    x15 = summarize(BY_NAME["errors_x1.5"], results, 0.0)
    assert x15["within_30min"] == 99 and x15["within_30min_rate"] == 0.99
    aa_runs = [
        replace(late, scenario="aa", index=i, outcome="rolled_back" if i < 3 else "promoted")
        for i in range(200)
    ]
    aa = summarize(BY_NAME["aa"], aa_runs, 0.0)
    assert aa["within_30min"] is None  # no power column for a healthy canary
    lines = {ln.split(" | ")[0].strip("| `"): ln for ln in targets([aa, x15]).splitlines()[2:]}
    assert lines["aa`: false rollback <= 1%, Wilson 95% upper bound <= 2%"].endswith("| **no** |")  # 1.5%
    assert "99/100 = 99.0%" in lines["errors_x1.5` rolled back within 30 min in >= 98% of runs"]
    assert lines["errors_x1.5` rolled back within 30 min in >= 98% of runs"].endswith("| yes |")
    x15_missed = summarize(BY_NAME["errors_x1.5"], results[:97] + [replace(late, at_s=1900.0)] * 3, 0.0)
    assert targets([x15_missed]).splitlines()[-1].endswith("| **no** |")  # 97%


def test_rollback_reason_classes():
    assert (
        rollback_class("canary analysis failed: alert HighLatencyP99 firing: canary p99 1.9 s > 1 s", None)
        == "rule"
    )
    assert rollback_class("canary analysis failed: FAIL: error rate", {"decision": "fail"}) == "judge"
    assert (
        rollback_class("analysis inconclusive: not enough data", {"decision": "inconclusive"})
        == "inconclusive"
    )
    assert rollback_class("step 1/3 (10% of traffic) failed: refused", {"decision": "continue"}) == "other"


async def test_a_run_is_reproduced_from_its_seed_alone(store):
    sc = BY_NAME["errors_x5"]
    first = await run_one(store, _settings(), sc, 3, SEED)
    await run_one(store, _settings(), sc, 4, SEED)  # other deploys in the same store change nothing
    other = await SqlStore.open(DB_URL, migrate=True)
    try:
        again = await run_one(other, _settings(), sc, 3, SEED)
    finally:
        await other.close()
    assert again == first


def test_crashed_canary_serves_nothing_while_the_baseline_serves():
    m = RunModel(BY_NAME["crash_loop"], np.random.default_rng(run_seed(SEED, "crash_loop", 0)))
    for k in range(40):
        c, b = m.window(k, 0.10)
        assert b.requests > 1000
        if k * 10 >= m.first_empty_s:
            assert (c.requests, c.errors, c.latency.total) == (0, 0, 0)
        elif (k + 1) * 10 <= m.stop_s:
            assert c.requests > 100


def test_scenario_models():
    rng = np.random.default_rng(run_seed(SEED, "models", 0))
    # one instance against nine: the canary's error count is far more overdispersed than binomial
    m = RunModel(BY_NAME["one_instance_canary"], rng)
    ec = np.array([m.window(k, 0.5)[0].errors for k in range(400)])
    assert 3.5 < ec.mean() < 6.5 and ec.var() / ec.mean() > 2.0  # np = 5, var/mean = 1 + 5 * 0.5
    assert m.history() == []
    # intermittent bursts: windows wholly inside a burst run at ~10% errors, the rest at 0.5%
    m = RunModel(BY_NAME["intermittent_bursts"], rng)
    inside, outside = [0, 0], [0, 0]
    for k in range(180):
        c, _ = m.window(k, 0.5)
        t = k * 10
        phase = (t - m.burst_offset_s) % 300
        whole = t >= m.burst_offset_s and phase + 10 <= BURST_LEN_S
        clear = t + 10 <= m.burst_offset_s or (t >= m.burst_offset_s and BURST_LEN_S <= phase <= 290)
        for acc, ok in ((inside, whole), (outside, clear)):
            if ok:
                acc[0] += c.errors
                acc[1] += c.requests
    assert 0.08 < inside[0] / inside[1] < 0.12 and outside[0] / outside[1] < 0.01
    # slow-tail A/A: both tracks' p99 above 1 s; the pre-deploy windows use the same model
    m = RunModel(BY_NAME["slow_tail_aa"], rng)
    c, b = m.window(0, 0.5)
    for s in (c, b, *m.history()):
        above_1s = sum(s.latency.counts[s.latency.bounds.index(1.0) + 1 :]) / s.latency.total
        assert 0.005 < above_1s < 0.04  # true P(> 1 s) = 2.2%
    assert all(s.start < T0 for s in m.history())


def test_peers_run_with_their_own_steps_on_the_scenario_traffic():
    """Flagger (the Istio tutorial's 10% steps to 50%) promotes a healthy canary after five passing
    minutes, the share pushed following its steps; Argo's documented rollout never aborts on A/A and
    completes at 40 minutes; Kayenta keeps 10% for its 30-minute stage."""
    aa = BY_NAME["aa"]
    flagger = run_peer_runs("flagger", aa, 0, 2, SEED)
    for r in flagger:
        assert r.method == "flagger" and r.outcome == "promoted" and r.at_s == 300
        assert r.shares == ((0.0, 10.0), (60.0, 20.0), (120.0, 30.0), (180.0, 40.0), (240.0, 50.0))
        assert r.steps == (*r.shares, (300.0, 100.0)) and r.windows == 30
    argo = run_peer_runs("argo", aa, 0, 1, SEED)[0]
    assert argo.outcome == "promoted" and argo.at_s == 2400 and argo.windows == 240
    assert argo.shares == ((0.0, 20.0), (600.0, 40.0), (1200.0, 60.0), (1800.0, 80.0))
    kayenta = run_peer_runs("kayenta", BY_NAME["errors_x5"], 0, 1, SEED)[0]
    assert kayenta.outcome == "rolled_back" and kayenta.at_s == 600 and kayenta.shares == ((0.0, 10.0),)
    row = summarize(BY_NAME["errors_x5"], [kayenta], 0.0)
    assert row["method"] == "kayenta" and row["bad_promoted"] == 0 and row["share_mismatches"] == 0
