"""Backtests on history backfilled with ``promtool tsdb create-blocks-from openmetrics`` into a fresh
data dir, served by a real Prometheus: a healthy and a regressed past deploy (examples/app/history),
the decisions and their times, the CLI's output and exit codes, and the same verdicts as the
engine reaches when the same windows are pushed to it."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from examples.app.history import T0, example_deploys, write
from guardrail.adapters.db.store import SqlStore
from guardrail.adapters.sources.prometheus import PrometheusMetricSource
from guardrail.cli import main as cli
from guardrail.config import AnalysisDefaults, Settings
from guardrail.domain.model import Decision, Step, Track
from guardrail.domain.records import AdapterRef
from guardrail.ports import SourceQuery
from guardrail.service.backtest import backtest, backtest_deploy, outcome
from guardrail.service.engine import Engine
from guardrail.testing import RecordingDeployAdapter
from tests.integration.conftest import PrometheusServer, backfill

pytestmark = pytest.mark.integration

DEPLOY_AT = T0 + 1200  # both example deploys: 20 min of baseline history, then 10% to the canary
END = T0 + 3600
HEALTHY = {"service": "checkout", "version": "1.4.2", "baseline_version": "1.4.1"}
REGRESSED = {"service": "payments", "version": "2.0.1", "baseline_version": "2.0.0"}


@pytest.fixture(scope="module")
def history_prometheus(prometheus_binaries: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a Prometheus whose only data is the backfilled history (it scrapes nothing)."""
    prom_bin, promtool = prometheus_binaries
    tmp = tmp_path_factory.mktemp("backfill")
    write(str(tmp / "history.om"), example_deploys(seed=7))
    backfill(promtool, tmp / "history.om", tmp / "tsdb")
    server = PrometheusServer(prom_bin, tmp / "tsdb", []).start()
    yield server.url
    server.stop()


@pytest.fixture
async def source(history_prometheus: str) -> AsyncIterator[PrometheusMetricSource]:
    s = PrometheusMetricSource(history_prometheus)
    yield s
    await s.close()


async def test_the_regressed_deploy_would_have_been_rolled_back_in_its_first_minutes(source) -> None:
    timeline = await backtest(source, environment="production", start=T0, end=END, interval_s=60,
                              deploy_time=DEPLOY_AT, weight=10, **REGRESSED)
    result = outcome(timeline, deploy_time=DEPLOY_AT)
    assert result.decision is Decision.FAIL
    assert result.at is not None and DEPLOY_AT < result.at <= DEPLOY_AT + 300
    failing = [e for e in result.verdict.evidence if e.status.value == "fail"]
    assert [e.metric for e in failing] == ["error_rate"]
    assert failing[0].estimate is not None and 2 < failing[0].estimate < 8  # the canary fails 4x as often
    assert "canary error rate" in failing[0].detail


async def test_the_healthy_deploy_would_have_passed_on_counts_across_a_counter_reset(source) -> None:
    timeline = await backtest(source, environment="production", start=T0, end=END, interval_s=60,
                              deploy_time=DEPLOY_AT, weight=10, min_duration_s=300, **HEALTHY)
    result = outcome(timeline, deploy_time=DEPLOY_AT, min_duration_s=300)
    assert result.decision is Decision.PASS, result.verdict.summary
    assert result.at is not None and result.at >= DEPLOY_AT + 300
    assert all(v.decision in (Decision.CONTINUE, Decision.PASS) for _, v in timeline)
    # the baseline process restarted at T0+600 in that history (its counters fell to zero): the
    # window of the restart counts what the new process counted (what the old one counted after the
    # boundary at T0+540 is lost: boundaries are all this method sees), every other one ~200 rps
    history = await source.fetch(SourceQuery("checkout", "production", "1.4.2", "1.4.1", T0, DEPLOY_AT, 60))
    baseline = {s.start - T0: s.requests for s in history if s.track is Track.BASELINE}
    assert len(baseline) == 20 and 2_000 < baseline.pop(540) < 4_000
    assert all(11_000 < n < 13_000 for n in baseline.values()), baseline


async def test_without_the_weight_throughput_is_left_out(source) -> None:
    timeline = await backtest(source, environment="production", start=T0, end=END, interval_s=60,
                              deploy_time=DEPLOY_AT, **REGRESSED)
    metrics = {e.metric for e in timeline[-1][1].evidence}
    assert "throughput" not in metrics and {"error_rate", "latency_p99"} <= metrics
    assert timeline[-1][1].decision is Decision.FAIL


@pytest.mark.parametrize(("deploy", "min_duration_s", "calls"), [
    (REGRESSED, 0, ["apply_step", "rollback"]),
    (HEALTHY, 300, ["apply_step", "apply_step", "finalize"]),
], ids=["regressed", "healthy"])
async def test_backtest_decides_what_the_engine_decides_on_the_same_windows(
    source, sqlite_template: Path, tmp_path: Path, deploy: dict, min_duration_s: float, calls: list[str]
) -> None:
    """The same code path: the same windows pushed to the engine give the same verdicts at the same
    data times, up to the step change or the rollback."""
    timeline = await backtest(source, environment="production", start=T0, end=END, interval_s=60,
                              deploy_time=DEPLOY_AT, weight=10, min_duration_s=min_duration_s, **deploy)
    shutil.copyfile(sqlite_template, tmp_path / "g.db")
    store = await SqlStore.open(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    adapter = RecordingDeployAdapter()
    engine = Engine(store=store, settings=Settings.model_validate({"allow_marker_adapters": True}),
                    adapter_factory=lambda name, cfg: adapter)
    try:
        live = backtest_deploy(environment="production", deploy_time=DEPLOY_AT, interval_s=60, weight=10,
                               defaults=AnalysisDefaults(), **deploy)
        # two steps: the backtest's 10% step, then 100% (a one-step rollout would be promoted at once)
        steps = (Step(weight=10, min_duration_s=min_duration_s), Step(weight=100))
        d, _ = await engine.record_deploy(replace(live.marker, adapter=AdapterRef("recording"),
                                                  metrics_source="push", steps=steps))
        d = await engine.settle(d.id)  # its first step is applied in the background
        samples = await source.fetch(SourceQuery(deploy["service"], "production", deploy["version"],
                                                 deploy["baseline_version"], T0, END, 60))
        decisions = []
        for end in sorted({s.end for s in samples}):
            r = await engine.ingest(d.id, [s for s in samples if s.end == end])
            now = await engine.settle(d.id)
            if end > DEPLOY_AT:
                decisions.append((end, r.deploy.verdict["decision"]))
            if now.state.terminal or now.rollout.step > 0:
                break
    finally:
        await engine.close()
        await store.close()
    assert decisions == [(t, v.decision.value) for t, v in timeline]
    assert len(decisions) >= (6 if min_duration_s else 1)
    assert adapter.methods() == calls


def test_cli_prints_the_timeline_and_exits_0_pass_1_fail_2_undecided(history_prometheus: str, capsys) -> None:
    common = ["backtest", "--prometheus-url", history_prometheus, "--from", "2023-11-14T22:13:20Z",
              "--to", str(END), "--deploy-time", str(DEPLOY_AT), "--weight", "10"]
    assert cli([*common, "--service", "payments", "--version", "2.0.1", "--baseline-version", "2.0.0"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: guardrail would have rolled back at 2023-11-14T22:3" in out
    assert "error_rate [fail, critical]: canary error rate" in out
    assert cli([*common, "--service", "checkout", "--version", "1.4.2", "--baseline-version", "1.4.1",
                "--min-duration", "300"]) == 0
    assert "PASS: guardrail would have promoted this step" in capsys.readouterr().out
    # 5 minutes of data after the deploy are not enough for the healthy one: no decision, exit 2
    short = [*common[:6], str(DEPLOY_AT + 300), *common[7:]]
    assert cli([*short, "--service", "checkout", "--version", "1.4.2", "--baseline-version", "1.4.1"]) == 2
    assert "NO DECISION" in capsys.readouterr().out
    assert cli([*common, "--service", "nothing-here", "--version", "1", "--baseline-version", "0"]) == 2
    assert "no data after the deploy time" in capsys.readouterr().out
    with pytest.raises(SystemExit) as bad:
        cli(["backtest", "--prometheus-url", history_prometheus, "--from", "2023-11-14T22:13:20", "--to", str(END),
             "--service", "x", "--version", "1", "--baseline-version", "0"])
    assert bad.value.code == 2 and "no time zone: add Z or an offset" in capsys.readouterr().err
