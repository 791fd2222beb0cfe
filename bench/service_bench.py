"""The service-level benchmark: ``python -m bench.service_bench`` (second table of ``make bench``).

Each run is one canary deploy replayed through the real :class:`guardrail.service.engine.Engine`:
in-memory SQLite store, the ``noop`` deploy adapter loaded like the server loads it, the default
canary steps (10% -> 50% -> 100%), default settings (alert rules on, default analysis), a manual
wall clock moved with data time. One canary and one baseline 10-s window are pushed per look, the
canary's share of traffic being the weight of the step the engine put in effect, until the deploy is
promoted, rolled back or paused, or 45 minutes of data time pass. The harness only uses the public
API (``Engine.record_deploy``, ``Engine.ingest``, ``Engine.get_deploy``, the store), so it measures
whatever the engine, rules and judge do, however they change.

The peers of bench/peers.py (Kayenta, Argo Rollouts, Flagger) run over the same scenarios, each with
its own steps: run ``i`` of a peer draws from the same generator as guardrail's run ``i``, at the
canary share the peer puts in effect (:func:`run_peer_runs`); their rows form a second table.

Run ``i`` of scenario ``s`` draws from ``default_rng(SeedSequence(seed, spawn_key=(crc32(s), i)))``:
results do not depend on the number of workers, on chunking, or on the order of the scenarios.
Writes ``service.md`` and ``service.json`` into ``--out`` (default bench/results).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.judge_bench import wilson_hi, wilson_lo
from bench.peers import ALL_PEERS, SERVICE_PEERS, ArgoConfig, FlaggerConfig, KayentaConfig, Tracks, drive
from bench.service_sim import BY_NAME, SCENARIOS_SERVICE, T0, RunModel, ServiceScenario
from bench.sim import LOOK_S, N_BUCKETS
from guardrail.adapters.db.store import SqlStore
from guardrail.adapters.http.schemas import MarkerIn
from guardrail.config import Settings
from guardrail.domain.model import DeployState, Strategy, default_steps
from guardrail.domain.records import Deploy
from guardrail.plugins import load_deploy_adapter
from guardrail.ports import Store
from guardrail.service.engine import Engine
from guardrail.testing import ManualClock

DEFAULT_SEED = 20240601
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
MAX_WINDOWS = 270  # 45 minutes of data time
CHUNK_RUNS = 20  # runs per task (load balance only: seeds are per run)
PEER_CHUNK_RUNS = 50  # runs per peer task (a peer judges its chunk's runs at once)
CRASH_TARGET_S = 30.0
POWER_HORIZON_S = 1800.0  # "rolled back within 30 minutes" of the first canary window
BAD_CANARIES = ("errors_x2", "errors_x5", "p99_tail_+50%")  # issue 11: none may reach 100%
DB_URL = "sqlite+aiosqlite://"  # in-memory


@dataclass(frozen=True, slots=True)
class RunResult:
    """What happened to one deploy. Times are data seconds after the first canary window's start."""

    scenario: str
    index: int
    outcome: str  # promoted | rolled_back | paused | analyzing (45 min passed) | other terminal states
    at_s: float | None  # data time of the outcome (None: still analysing)
    rollback_by: str | None  # judge | rule | inconclusive | other (rolled back only)
    reason: str
    max_weight: float  # highest canary weight (percent) the engine put in effect
    windows: int  # window pairs pushed
    # (window start, canary weight %) whenever the share the harness pushed changed, and (data time,
    # weight %) of each step the engine put in effect: the first must follow the second
    shares: tuple[tuple[float, float], ...] = ()
    steps: tuple[tuple[float, float], ...] = ()
    stop_s: float | None = None  # crash_loop: when the canary stopped serving
    from_stop_s: float | None = None  # crash_loop: rollback time - start of the first empty window
    method: str = "guardrail"  # or the name of a peer configuration (bench/peers.py)


def run_seed(seed: int, scenario: str, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(zlib.crc32(scenario.encode()), index))


_ALERT = re.compile(r"\balert \S+ firing\b")


def rollback_class(reason: str, verdict: dict | None) -> str:
    """Why a deploy was rolled back, from its public record: a firing alert rule named in the
    reason, the judge's stored FAIL verdict, an inconclusive analysis set to roll back, or other."""
    if _ALERT.search(reason):
        return "rule"
    if verdict is not None and verdict.get("decision") == "fail":
        return "judge"
    if "inconclusive" in reason:
        return "inconclusive"
    return "other"


def _weight(deploy: Deploy) -> float:
    """The canary weight (percent) of the step the engine put in effect."""
    r = deploy.rollout
    if r.step < 0:
        return 0.0
    w = r.steps[r.step].weight
    return 0.0 if w is None else float(w)


async def run_one(store: Store, settings: Settings, sc: ServiceScenario, index: int, seed: int) -> RunResult:
    """Replay one deploy of scenario ``sc`` through a fresh Engine on ``store``."""
    model = RunModel(sc, np.random.default_rng(run_seed(seed, sc.name, index)))
    clock = ManualClock(T0)
    engine = Engine(store=store, settings=settings, adapter_factory=load_deploy_adapter, clock=clock)
    marker = MarkerIn.model_validate_json(  # as POST /api/v1/deploys reads a marker
        json.dumps(
            {
                "service": f"bench-{index}",
                "environment": "bench",
                "version": f"v{index}",
                "previous_version": "old",
                "commit": f"{seed:x}{index:05d}",
                "change_type": "feature",
                "strategy": "canary",
                "started_at": T0,
                "adapter": {"name": "noop"},
            }
        )
    ).to_domain(settings.analysis)
    try:
        # actions run in the background: each push is followed by waiting for the actions it started,
        # so the next window is pushed at the weight of the step that was applied (as before)
        deploy, _ = await engine.record_deploy(marker)
        deploy = await engine.settle(deploy.id)
        history = model.history()
        if history:
            await engine.ingest(deploy.id, history)
            deploy = await engine.settle(deploy.id)
        max_weight = _weight(deploy)
        windows = 0
        rolling_back = (DeployState.ROLLING_BACK, DeployState.ROLLED_BACK)
        rollback_at = deploy.data_time - T0 if deploy.state in rolling_back else None  # e.g. on history alone
        shares: list[tuple[float, float]] = []
        stop_states = (DeployState.PAUSED, DeployState.ROLLING_BACK)
        for k in range(MAX_WINDOWS):
            if deploy.state.terminal or deploy.state in stop_states:
                break
            w = _weight(deploy)
            if not shares or shares[-1][1] != w:
                shares.append((k * LOOK_S, w))
            canary, baseline = model.window(k, w / 100.0)
            clock.now = canary.end  # the wall clock follows data time: a window is pushed at its end
            await engine.ingest(deploy.id, [canary, baseline])
            deploy = await engine.settle(deploy.id)
            windows += 1
            max_weight = max(max_weight, _weight(deploy))
            if rollback_at is None and deploy.state in rolling_back:
                rollback_at = canary.end - T0
        final = await engine.get_deploy(deploy.id)
        max_weight = max(max_weight, _weight(final))
        state = final.state.value
        if final.state in rolling_back:
            at_s, by = rollback_at, rollback_class(final.rollout.reason, final.verdict)
        elif final.state is DeployState.ANALYZING:
            at_s, by = None, None
        else:
            at_s, by = final.data_time - T0, None
        from_stop = None
        if at_s is not None and by is not None and model.first_empty_s is not None:
            from_stop = at_s - model.first_empty_s  # negative: rolled back before the canary stopped
        steps = tuple(
            (at - T0, float(final.rollout.steps[i].weight or 0.0)) for i, at in final.rollout.history
        )
        return RunResult(
            scenario=sc.name,
            index=index,
            outcome="rolled_back" if by is not None else state,
            at_s=at_s,
            rollback_by=by,
            reason=final.rollout.reason,
            max_weight=max_weight,
            windows=windows,
            shares=tuple(shares),
            steps=steps,
            stop_s=model.stop_s,
            from_stop_s=from_stop,
        )
    finally:
        await engine.close()


def run_peer_runs(name: str, sc: ServiceScenario, first: int, n: int, seed: int) -> list[RunResult]:
    """Runs first .. first + n - 1 of scenario ``sc`` under peer ``name`` (bench/peers.py), with the
    peer's own steps: each run draws its windows from the same generator as the guardrail run of the
    same index (history first, then window by window at the canary share the peer put in effect), so
    the two see the same traffic for as long as their shares agree."""
    cfg = ALL_PEERS[name]
    models = [
        RunModel(sc, np.random.default_rng(run_seed(seed, sc.name, i))) for i in range(first, first + n)
    ]
    for model in models:
        model.history()  # drawn as in the guardrail run; peers do not use history
    tr = Tracks.empty(n, MAX_WINDOWS, N_BUCKETS)
    shares: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    windows = np.zeros(n, dtype=int)

    def fill(tr: Tracks, k0: int, k1: int, share: np.ndarray, alive: np.ndarray) -> None:
        for i in np.flatnonzero(alive):
            w = float(share[i])
            if not shares[i] or shares[i][-1][1] != 100 * w:
                shares[i].append((k0 * LOOK_S, 100 * w))
            for k in range(k0, k1):
                c, b = models[i].window(k, w)
                tr.c_req[i, k], tr.c_err[i, k], tr.c_lat[i, k] = c.requests, c.errors, c.latency.counts
                tr.b_req[i, k], tr.b_err[i, k], tr.b_lat[i, k] = b.requests, b.errors, b.latency.counts
                tr.share[i, k] = w
            windows[i] = k1

    machine = cfg.machine(n)
    steps: list[list[tuple[float, float]]] = [[(0.0, 100 * float(w))] for w in machine.share()]
    decide = machine.decide

    def decide_and_record(tr: Tracks, k: int) -> None:  # the weights the peer puts in effect, as it does
        decide(tr, k)
        now = machine.share()
        for i in np.flatnonzero(machine.alive):
            if steps[i][-1][1] != 100 * now[i]:
                steps[i].append((k * LOOK_S, 100 * float(now[i])))

    machine.decide = decide_and_record  # type: ignore[method-assign]
    drive(machine, tr, MAX_WINDOWS, fill)
    out = []
    for i, model in enumerate(models):
        fail_s, pass_s = machine.fail_s[i], machine.pass_s[i]
        st = list(steps[i])
        if not np.isnan(pass_s):
            st.append((float(pass_s), 100.0))
        outcome, at_s = "analyzing", None
        if not np.isnan(fail_s):
            outcome, at_s = "rolled_back", float(fail_s)
        elif not np.isnan(pass_s):
            outcome, at_s = "promoted", float(pass_s)
        from_stop = None
        if outcome == "rolled_back" and model.first_empty_s is not None:
            from_stop = at_s - model.first_empty_s
        out.append(
            RunResult(
                scenario=sc.name,
                index=first + i,
                outcome=outcome,
                at_s=at_s,
                rollback_by="peer" if outcome == "rolled_back" else None,
                reason="",
                max_weight=max(w for _, w in st),
                windows=int(windows[i]),
                shares=tuple(shares[i]),
                steps=tuple(st),
                stop_s=model.stop_s,
                from_stop_s=from_stop,
                method=name,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Workers.


def _settings() -> Settings:
    """The server's defaults (as `guardrail serve` with an empty config file, on in-memory SQLite)."""
    return Settings.model_validate({"database_url": DB_URL})


async def _run_chunk(scenario: str, first: int, n: int, seed: int) -> tuple[list[RunResult], float]:
    store = await SqlStore.open(DB_URL, migrate=True)
    settings = _settings()
    sc = BY_NAME[scenario]
    t = time.process_time()
    try:
        out = [await run_one(store, settings, sc, i, seed) for i in range(first, first + n)]
    finally:
        await store.close()
    return out, time.process_time() - t


Task = tuple[str, str, int, int, int]  # (method, scenario, first run, runs, seed)


def run_task(task: Task) -> tuple[list[RunResult], float]:
    method, scenario, first, n, seed = task
    if method == "guardrail":
        return asyncio.run(_run_chunk(scenario, first, n, seed))
    t = time.process_time()
    out = run_peer_runs(method, BY_NAME[scenario], first, n, seed)
    return out, time.process_time() - t


def make_tasks(
    runs_null: int, runs_reg: int, seed: int, names: list[str], methods: tuple[str, ...] = ("guardrail",)
) -> list[Task]:
    tasks = []
    for method in methods:
        size = CHUNK_RUNS if method == "guardrail" else PEER_CHUNK_RUNS
        for name in names:
            runs = runs_reg if BY_NAME[name].regression else runs_null
            tasks += [(method, name, c, min(size, runs - c), seed) for c in range(0, runs, size)]
    # no-regression runs of the engine last longest (until promotion): start them first; peers last
    return sorted(
        tasks,
        key=lambda t: (
            t[0] != "guardrail",
            BY_NAME[t[1]].regression,
            methods.index(t[0]),
            names.index(t[1]),
            t[2],
        ),
    )


# --------------------------------------------------------------------------------------------
# Summary.


def _pct(a: list[float], q: float) -> float | None:
    return float(np.percentile(a, q)) if a else None


def summarize(sc: ServiceScenario, results: list[RunResult], cpu_s: float) -> dict[str, object]:
    runs = len(results)
    rolled = [r for r in results if r.outcome == "rolled_back"]
    promoted = [r for r in results if r.outcome == "promoted"]
    # crash_loop: time from the stop; a rollback before the stop is counted apart, not as a time
    times = [r.from_stop_s if sc.crash else r.at_s for r in rolled]
    times = [t for t in times if t is not None and t >= 0]
    row: dict[str, object] = {
        "method": results[0].method if results else None,
        "scenario": sc.name,
        "regression": sc.regression,
        "runs": runs,
        "rolled_back": len(rolled),
        "rollback_rate": len(rolled) / runs,
        "false_rollback_rate": None if sc.regression else len(rolled) / runs,
        "false_rollback_wilson_hi": None if sc.regression else wilson_hi(len(rolled), runs),
        "bad_promoted": len(promoted) if sc.regression else None,
        "ttr_from": "first empty window" if sc.crash else "first canary window",
        # regression scenarios: rolled back within 30 min of data time (crash_loop: of the stop)
        "within_30min": sum(t <= POWER_HORIZON_S for t in times) if sc.regression else None,
        "within_30min_rate": sum(t <= POWER_HORIZON_S for t in times) / runs if sc.regression else None,
        "ttr_median_s": _pct(times, 50),
        "ttr_p90_s": _pct(times, 90),
        "paused": sum(r.outcome == "paused" for r in results),
        "analyzing_at_45min": sum(r.outcome == "analyzing" for r in results),
        "promoted": len(promoted),
        "promote_median_s": _pct([r.at_s for r in promoted if r.at_s is not None], 50),
        "reached_50pct": sum(r.max_weight >= 50 for r in results),
        "paused_after_50pct": sum(r.outcome == "paused" and r.max_weight >= 50 for r in results),
        "rollback_by": {
            k: sum(r.rollback_by == k for r in rolled) for k in ("judge", "rule", "inconclusive", "other")
        },
        "other_outcomes": sum(
            r.outcome not in ("rolled_back", "promoted", "paused", "analyzing") for r in results
        ),
        # runs whose pushed canary share did not follow the engine's steps (a harness fault: must be 0)
        "share_mismatches": sum(r.shares != tuple(st for st in r.steps if st[1] < 100) for r in results),
        "cpu_s": round(cpu_s, 1),
        "windows": sum(r.windows for r in results),
    }
    if sc.crash:
        before = [r for r in rolled if r.from_stop_s is not None and r.from_stop_s < 0]
        within = [r for r in rolled if r.from_stop_s is not None and 0 <= r.from_stop_s <= CRASH_TARGET_S]
        row["rolled_back_before_stop"] = len(before)
        row["within_30s_of_stop"] = len(within)
        row["within_30s_rate"] = len(within) / runs
    return row


COLUMNS = (
    "scenario",
    "runs",
    "rolled back",
    "false rollback % (Wilson 95% hi)",
    "bad promoted to 100%",
    "rolled back within 30 min",
    "TTR median s",
    "TTR p90 s",
    "paused",
    "analysing at 45 min",
    "promoted (median s)",
    "rollbacks judge / rule / other",
)


def targets(rows: list[dict]) -> str:
    """Issue 11's targets at deploy-level alpha 0.01, each checked against this run's rows."""
    by = {r["scenario"]: r for r in rows}
    lines = ["| target | measured | met |", "|---|---|---|"]

    def add(what: str, measured: str, ok: bool) -> None:
        lines.append(f"| {what} | {measured} | {'yes' if ok else '**no**'} |")

    for r in rows:
        if r["regression"]:
            continue
        rate, hi = 100 * r["false_rollback_rate"], 100 * r["false_rollback_wilson_hi"]
        add(
            f"`{r['scenario']}`: false rollback <= 1%, Wilson 95% upper bound <= 2%",
            f"{r['rolled_back']}/{r['runs']} = {rate:.2f}% (hi {hi:.2f}%)",
            rate <= 1.0 and hi <= 2.0,
        )
    bad = [by[n] for n in BAD_CANARIES if n in by]
    if bad:
        n_bad = sum(r["bad_promoted"] for r in bad)
        add(
            "bad canaries (" + ", ".join(f"`{r['scenario']}`" for r in bad) + ") promoted to 100%: 0",
            f"{n_bad} of {sum(r['runs'] for r in bad)}",
            n_bad == 0,
        )
    crash = by.get("crash_loop")
    if crash is not None:
        add(
            f"`crash_loop` rolled back within {CRASH_TARGET_S:g} s of data time after the stop in >= 95% of runs",
            f"{crash['within_30s_of_stop']}/{crash['runs']} = {100 * crash['within_30s_rate']:.1f}%",
            crash["within_30s_rate"] >= 0.95,
        )
    x15 = by.get("errors_x1.5")
    if x15 is not None:
        lo = wilson_lo(x15["within_30min"], x15["runs"])
        add(
            "`errors_x1.5` rolled back within 30 min in >= 98% of runs",
            f"{x15['within_30min']}/{x15['runs']} = {100 * x15['within_30min_rate']:.1f}% (Wilson 95% low {100 * lo:.1f}%)",
            x15["within_30min_rate"] >= 0.98,
        )
    return "\n".join(lines)


def _fmt(v: object, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _false_rollback_cell(r: dict) -> str:
    if r["false_rollback_rate"] is None:
        return "—"
    return f"{100 * r['false_rollback_rate']:.2f} ({100 * r['false_rollback_wilson_hi']:.2f})"


def _ttr_cell(r: dict) -> str:
    ttr = _fmt(r["ttr_median_s"], ".0f")
    if r["ttr_from"] != "first canary window" and r["ttr_median_s"] is not None:
        ttr += " (from stop)"
    return ttr


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        ff = _false_rollback_cell(r)
        by = r["rollback_by"]
        ttr = _ttr_cell(r)
        cells = (
            r["scenario"],
            str(r["runs"]),
            f"{r['rolled_back']} ({100 * r['rollback_rate']:.1f}%)",
            ff,
            _fmt(r["bad_promoted"], "d"),
            "—"
            if r["within_30min"] is None
            else f"{r['within_30min']} ({100 * r['within_30min_rate']:.1f}%)",
            ttr,
            _fmt(r["ttr_p90_s"], ".0f"),
            str(r["paused"]),
            str(r["analyzing_at_45min"]),
            f"{r['promoted']} ({_fmt(r['promote_median_s'], '.0f')})",
            f"{by['judge']} / {by['rule']} / {by['inconclusive'] + by['other']}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


PEER_COLUMNS = (
    "peer",
    "scenario",
    "runs",
    "rolled back",
    "false rollback % (Wilson 95% hi)",
    "bad promoted to 100%",
    "TTR median s",
    "TTR p90 s",
    "promoted (median s)",
    "undecided at 45 min",
)


def peer_table(rows: list[dict]) -> str:
    """One row per (peer, scenario); the same columns as guardrail's where they apply."""
    lines = ["| " + " | ".join(PEER_COLUMNS) + " |", "|" + "---|" * len(PEER_COLUMNS)]
    for r in rows:
        ff = _false_rollback_cell(r)
        ttr = _ttr_cell(r)
        cells = (
            r["method"],
            r["scenario"],
            str(r["runs"]),
            f"{r['rolled_back']} ({100 * r['rollback_rate']:.1f}%)",
            ff,
            _fmt(r["bad_promoted"], "d"),
            ttr,
            _fmt(r["ttr_p90_s"], ".0f"),
            f"{r['promoted']} ({_fmt(r['promote_median_s'], '.0f')})",
            str(r["analyzing_at_45min"]),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peer_notes() -> str:
    lines = [f"- `{c.name}`: {c.label}; {_peer_steps(c)}" for c in SERVICE_PEERS]
    return (
        "Each peer is simulated by bench/peers.py (its upstream sources are cited there) on the traffic models of "
        "this benchmark: run i of a scenario draws from the same generator as guardrail's run i, window by window, "
        "at the canary share of the peer's own steps. A peer's promotion is the moment the new version gets all the "
        "traffic (or, for Flagger, its spec is copied to the primary). No alert rules, no history.\n"
        + "\n".join(lines)
    )


def _peer_steps(c: object) -> str:

    if isinstance(c, KayentaConfig):
        return (
            f"canary share {100 * c.weight:g}% for the {c.lifetime_s / 60:g}-min canary stage, then 100% if it "
            "succeeds (the pipeline's next stage deploys to production)."
        )
    if isinstance(c, ArgoConfig):
        changes, start, done = c.schedule()
        return (
            "shares "
            + " -> ".join(f"{100 * w:g}% at {t / 60:g} min" for t, w in changes)
            + f", analysis from minute {start / 60:g}, 100% at minute {done / 60:g} unless aborted."
        )
    if isinstance(c, FlaggerConfig):
        return (
            f"share {c.step_weight}% at start, +{c.step_weight}% after each passing check up to {c.max_weight}%, "
            f"promoted at the next passing check; rollback at the check after {c.threshold} failed checks in total."
        )
    return ""


def notes(
    args: argparse.Namespace,
    names: list[str],
    wall_s: float,
    cpu_s: float,
    rows: list[dict],
    commit: str,
    peers_cpu_s: float = 0.0,
) -> str:
    settings = _settings()
    a = settings.analysis
    steps = " -> ".join(
        f"{s.weight:g}%" + (f" (min {s.min_duration_s:g} s)" if s.min_duration_s else "")
        for s in default_steps(Strategy.CANARY, a.watch_s)
    )
    rules = ", ".join(f"{r.name} ({r.severity.value})" for r in settings.rules.specs())
    scen = "\n".join(
        f"  - `{n}`{' (regression)' if BY_NAME[n].regression else ''}: {BY_NAME[n].what}"
        + ("" if BY_NAME[n].history else " (no history)")
        for n in names
    )
    windows = sum(r["windows"] for r in rows)
    crash = next((r for r in rows if r["scenario"] == "crash_loop"), None)
    crash_line = ""
    if crash is not None:
        crash_line = (
            f"\n- crash_loop: rolled back within {CRASH_TARGET_S:g} s of the first empty window in "
            f"{crash['within_30s_of_stop']}/{crash['runs']} runs ({100 * crash['within_30s_rate']:.1f}%, target >= 95%); "
            f"rolled back before the stop: {crash['rolled_back_before_stop']}."
        )
    mismatched = sum(r["share_mismatches"] for r in rows)
    check = (
        "every run pushed the canary share of the step the engine had in effect"
        if mismatched == 0
        else f"WARNING: in {mismatched} run(s) the pushed canary share did not follow the engine's steps"
    )
    return f"""## Settings
- Engine: `guardrail.service.engine.Engine` on `SqlStore.open("{DB_URL}", migrate=True)` (in-memory SQLite, one
  store per chunk of {CHUNK_RUNS} runs, a fresh Engine per run), adapter `noop` loaded by `load_deploy_adapter`,
  `ManualClock` set to each window's end before it is pushed. Wall-clock timers (`Engine.tick`) are not driven:
  data arrives every window.
- Marker: canary strategy, default steps {steps}; the analysis settings are the server defaults
  (`MarkerIn.to_domain(settings.analysis)`: alpha {a.alpha}, max duration {a.max_duration_s:g} s, warm-up {a.warmup_s:g} s,
  on_inconclusive {a.on_inconclusive!r}, interval {a.interval_s:g} s); alert rules on ({rules}),
  rules fail deploys: {settings.rules.fails_deploy}.
- Traffic as in bench/sim.py (Poisson 200 req/s in total, errors 0.5%, lognormal latency median 100 ms, sigma 0.5
  in Prometheus buckets, bursty model as in bench/README.md), except that the canary's share is the weight of the
  step in effect when the window starts (10%, then 50%). Ten pre-deploy baseline minutes (60-s windows at
  200 req/s, the scenario's baseline models) are pushed first unless a scenario says "no history".
- A run ends when the deploy is promoted, rolled back or paused, or after {MAX_WINDOWS} windows (45 min of data time).
  Time to rollback (TTR) is the data time from the first canary window's start to the end of the window whose push
  made the engine roll back (crash_loop: from the start of the first window in which the canary served nothing).
- Rollback reason classes: `rule` = the rollback reason names a firing alert rule; `judge` = the stored verdict is a
  FAIL; `other` = anything else (an inconclusive analysis set to roll back, a failed step).
- Scenarios:
{scen}
- Runs: {args.runs_null} per no-regression scenario, {args.runs_reg} per regression scenario; {check}.{crash_line}

## Seeds and runtime
- Master seed {args.seed}; run i of scenario s draws from
  `default_rng(SeedSequence({args.seed}, spawn_key=(zlib.crc32(s), i)))`; reproduce one run with
  `python -m bench.service_bench --scenario s --run i --seed {args.seed}`.
- Code: {commit}. Wall time {wall_s:.0f} s on {args.workers} worker processes; CPU {cpu_s:.0f} s in the workers
  for the engine ({1000 * cpu_s / max(windows, 1):.1f} ms per pushed window pair, {windows} pushes) and
  {peers_cpu_s:.0f} s for the peers.
"""


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def reproduce(args: argparse.Namespace) -> int:
    async def go() -> RunResult:
        store = await SqlStore.open(DB_URL, migrate=True)
        try:
            return await run_one(store, _settings(), BY_NAME[args.scenario[0]], args.run, args.seed)
        finally:
            await store.close()

    print(json.dumps(asdict(asyncio.run(go())), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.service_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--runs-null", type=int, default=400, help="runs per no-regression scenario")
    ap.add_argument("--runs-reg", type=int, default=100, help="runs per regression scenario")
    ap.add_argument("--runs", type=int, default=None, help="runs per scenario (both kinds)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="master seed")
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--quick", action="store_true", help="development run: 40 runs per scenario")
    ap.add_argument("--scenario", action="append", choices=sorted(BY_NAME), help="only these (repeatable)")
    ap.add_argument("--run", type=int, default=None, help="reproduce one run of --scenario and print it")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--no-peers", action="store_true", help="guardrail's engine only")
    which.add_argument("--peers-only", action="store_true", help="the peers only (no engine: a few minutes)")
    args = ap.parse_args(argv)
    if args.run is not None:
        if not args.scenario or len(args.scenario) != 1:
            ap.error("--run needs exactly one --scenario")
        return reproduce(args)
    if args.quick:
        args.runs_null = args.runs_reg = 40
    if args.runs is not None:
        args.runs_null = args.runs_reg = args.runs
    names = [sc.name for sc in SCENARIOS_SERVICE if not args.scenario or sc.name in args.scenario]
    peers = () if args.no_peers else tuple(c.name for c in SERVICE_PEERS)
    methods = (*(() if args.peers_only else ("guardrail",)), *peers)

    commit = _commit()  # of the code being measured (read before the long run)
    began = time.perf_counter()
    tasks = make_tasks(args.runs_null, args.runs_reg, args.seed, names, methods)
    print(f"{len(tasks)} chunks on {args.workers} workers", file=sys.stderr)
    results: dict[tuple[str, str], list[RunResult]] = {(m, n): [] for m in methods for n in names}
    cpu: dict[tuple[str, str], float] = dict.fromkeys(results, 0.0)
    done = 0
    ctx = multiprocessing.get_context("spawn")  # no event loop or database handle inherited
    with ctx.Pool(args.workers) as pool:
        for out, cpu_s in pool.imap_unordered(run_task, tasks):
            key = (out[0].method, out[0].scenario)
            results[key] += out
            cpu[key] += cpu_s
            done += 1
            print(
                f"\r{done}/{len(tasks)} chunks, {time.perf_counter() - began:.0f} s", end="", file=sys.stderr
            )
    print(file=sys.stderr)

    def rows_of(method: str) -> list[dict]:
        return [
            summarize(BY_NAME[n], sorted(results[(method, n)], key=lambda r: r.index), cpu[(method, n)])
            for n in names
        ]

    rows = rows_of("guardrail") if "guardrail" in methods else []
    peer_rows = [row for m in peers for row in rows_of(m)]
    wall_s = time.perf_counter() - began
    engine_cpu = sum(v for (m, _), v in cpu.items() if m == "guardrail")
    peers_cpu = sum(v for (m, _), v in cpu.items() if m != "guardrail")

    parts = []
    if rows:
        parts.append(table(rows))
        parts.append("## Targets (issue 11, deploy-level alpha 0.01)\n\n" + targets(rows))
    if peer_rows:
        parts.append(
            "## Peers, each with its own steps, on the same simulated traffic\n\n"
            + peer_table(peer_rows)
            + "\n\n"
            + peer_notes()
        )
    md = "\n\n".join(parts)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "seed": args.seed,
        "runs_null": args.runs_null,
        "runs_reg": args.runs_reg,
        "workers": args.workers,
        "commit": commit,
        "wall_s": round(wall_s, 1),
        "cpu_s": round(engine_cpu, 1),
        "peers_cpu_s": round(peers_cpu, 1),
        "rows": rows,
        "peer_rows": peer_rows,
        "rollbacks_of_no_regression_runs": [
            asdict(r)
            for n in names
            if not BY_NAME[n].regression and "guardrail" in methods
            for r in results[("guardrail", n)]
            if r.outcome == "rolled_back"
        ],
    }
    (args.out / "service.json").write_text(json.dumps(payload, indent=1) + "\n")
    (args.out / "service.md").write_text(
        "# Service-level benchmark\n\nGenerated by `python -m bench.service_bench`; see bench/README.md for how to "
        f"read it.\n\n{md}\n\n{notes(args, names, wall_s, engine_cpu, rows, commit, peers_cpu)}"
    )
    print(md)
    print(f"\ntotal runtime {wall_s:.1f} s; wrote {args.out / 'service.md'} and {args.out / 'service.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
