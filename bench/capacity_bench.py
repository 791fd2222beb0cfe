"""Capacity benchmark: ``python -m bench.capacity_bench`` (``--quick`` for a smoke run).

How many active deploys guardrail keeps up with when each deploy reports every 10 s.

1. **Push path.** Real ``python -m guardrail.cli serve`` processes; this process is the load driver.
   Each deploy is a canary marker (adapter preset ``noop``, first step 10% with a one-day
   ``min_duration_s``, so it stays analysing) with 10 minutes of baseline history, recorded before
   the servers start (see ``seed_deploys``), then pushes one canary + one baseline 10-s window
   (``SyntheticTraffic(rate=400)``: histogram latency, as in the demo) per round through the API.
   The first round after the servers start is a warm-up (judges are built from the store) and is
   not counted. A round is one push for every one of the N deploys, sent with at most
   ``--concurrency`` requests in flight; rounds run back to back, so the server is never idle and a
   round's wall time is the time it needs for N deploys' 10 s of data. N is *sustained* when every
   measured round took at most 10 s. Configurations, side by side for each N in one run (N
   ascending; the fleets grow, so earlier deploys are older; one SQLite file and one fresh
   PostgreSQL database for the whole run, dropped after it): ``sqlite`` (one replica), and
   ``postgresql`` with 1, 2 and 3 replicas (``engine.leases: "on"`` on each; pushes spread over the
   replicas by deploy, deploy i always to replica i mod R, as a balancer with keep-alive connections
   or routing by deploy would; the replica order alternates between N to even out drift). A
   configuration that did not sustain N is not run at larger N. ``--rotating`` adds a
   3-replica run where every push of a deploy goes to the next replica (a plain round-robin balancer),
   which makes each push rebuild the deploy's judge from the store. ``--tick-ablation`` adds a
   3-replica run with ``engine.tick_s: 3600``, i.e. without the 5-s timer sweeps, to show what the
   sweeps cost. After the rounds, 10 marker POSTs (one at a time) give
   the marker latency with N deploys active (those 10 are rolled back right after).
   A separate probe pushes 30 minutes of windows to 4 deploys, one request at a time, to show
   whether a push gets dearer as a deploy accumulates samples.
   CPU is read from ``/proc/<pid>/stat`` (utime + stime) for each server process, for this driver,
   and for the PostgreSQL backends of the benchmark database plus the server's background writers.
2. **Pull path.** One in-process ``Poller`` + ``Engine`` (SQLite) against a real Prometheus, as in
   ``bench/pull_bench.py`` (its helpers are reused), but with 10-s analysis windows: the seeded
   history of the sample service is written at 5-s resolution, backfilled with promtool, and each
   analysis step pulls one 10-s window for all N deploys. A poller keeps up with N when a step for
   all N takes at most 10 s.

Data is the same for the same seed; timings are of this machine (see the environment lines).
Writes ``capacity.md`` and ``capacity.json`` into ``--out`` (default bench/results).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from sqlalchemy.engine import make_url

from bench.pull_bench import TimedEngine, TimedSource, free_port, percentile, start_prometheus
from guardrail.adapters.db.engine import execute_autocommit
from guardrail.adapters.db.migrate import upgrade
from guardrail.testing import SyntheticTraffic, sample_json

INTERVAL_S = 10.0  # each deploy reports one window this often
T_START = 1_767_261_600.0  # data time of every deploy's marker
TOKEN = "capacity-bench-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")
DAY_S = 86_400.0


# --- CPU accounting --------------------------------------------------------------------------------
def proc_cpu_s(pid: int, children: bool = False) -> float:
    """utime + stime of a process (plus its reaped children's with ``children``), in seconds."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3 -> index 0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def _postgres_processes() -> tuple[int | None, list[tuple[int, str]]]:
    """(postmaster pid, [(pid, cmdline)] of its children) of a PostgreSQL running on this machine."""
    master, children = None, []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            comm = (d / "comm").read_text().strip()
        except OSError:
            continue
        if comm != "postgres" and not cmd.startswith("postgres:"):
            continue
        if cmd.startswith("postgres:"):
            children.append((int(d.name), cmd))
        else:
            master = int(d.name)
    return master, children


def postgres_cpu_s(dbname: str) -> float | None:
    """CPU of the local PostgreSQL for the benchmark: the live backends of ``dbname``, the server-wide
    background processes (WAL writer, checkpointer, background writer) and, through the postmaster's
    reaped-children counters, backends that already exited (the connection pool closes its overflow
    connections when they are returned, so many backends are short-lived). That last part also
    counts exited backends of other clients of the same server. None: no local PostgreSQL."""
    master, children = _postgres_processes()
    if master is None:
        return None
    total = proc_cpu_s(master, children=True)
    for pid, cmd in children:
        if f" {dbname} " in cmd or any(w in cmd for w in ("walwriter", "checkpointer", "background writer")):
            total += proc_cpu_s(pid)
    return total


# --- servers ---------------------------------------------------------------------------------------
class Server:
    """One ``guardrail serve`` process on a free loopback port."""

    def __init__(self, work: Path, name: str, database_url: str, *, leases: str, tick_s: float | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/api/v1"
        self.log = work / f"{name}.log"
        self.config = work / f"{name}.yaml"
        self.config.write_text(json.dumps({  # JSON is YAML
            "database_url": database_url,
            "server": {"host": "127.0.0.1", "port": self.port, "public_url": f"http://127.0.0.1:{self.port}"},
            "tokens": [{"name": "bench", "token": TOKEN, "scopes": ["ci", "operator", "read"]}],
            "adapters": {"bench": {"type": "noop"}},
            "engine": {"leases": leases, "replica_id": name, **({"tick_s": tick_s} if tick_s else {})},
        }))
        env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDRAIL_")}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "guardrail.cli", "serve", "--config", str(self.config)],
                                         env=env, stdout=subprocess.DEVNULL, stderr=log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ready(self, http: aiohttp.ClientSession, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"guardrail serve exited with {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            try:
                async with http.get(f"http://127.0.0.1:{self.port}/readyz",
                                    timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"guardrail serve not ready within {timeout_s:.0f} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


# --- the load --------------------------------------------------------------------------------------
@dataclass
class Fleet:
    """The deploys and their seeded traffic. Deploy i's data depends only on the seed and i, so the
    fleet can grow between deploy counts; each deploy keeps its own next window."""

    seed: int
    traffic: SyntheticTraffic = field(default_factory=lambda: SyntheticTraffic(rate=400.0))
    ids: list[str] = field(default_factory=list)  # of the deploys recorded so far
    rngs: list[np.random.Generator] = field(default_factory=list)
    windows_done: list[int] = field(default_factory=list)
    rounds_sent: int = 0

    @property
    def n(self) -> int:
        return len(self.rngs)

    def grow(self, n: int) -> None:
        for i in range(self.n, n):
            self.rngs.append(np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(i,))))
            self.windows_done.append(0)

    @staticmethod
    def marker(i: int, service: str | None = None) -> dict[str, Any]:
        return {
            "service": service or f"svc-{i:04d}", "environment": "production", "version": "2.0.0",
            "previous_version": "1.9.9", "commit": f"{i:07x}", "author": "bench", "change_type": "feature",
            "strategy": "canary", "started_at": T_START, "adapter": {"name": "bench"},
            "analysis": {"interval_s": INTERVAL_S, "max_duration_s": DAY_S},
            "steps": [{"weight": 10, "min_duration_s": DAY_S}, {"weight": 100}],
        }

    def bodies(self, rounds: int) -> list[list[bytes]]:
        """The next ``rounds`` rounds of push bodies (serialised before any timing starts)."""
        out: list[list[bytes]] = [[] for _ in range(rounds)]
        for i, rng in enumerate(self.rngs):
            for j in range(rounds):
                c, b = self.traffic.window(rng, T_START + INTERVAL_S * (self.windows_done[i] + j))
                out[j].append(json.dumps({"samples": [sample_json(c), sample_json(b)]}).encode())
            self.windows_done[i] += rounds
        return out


async def _post(http: aiohttp.ClientSession, url: str, body: bytes, want: int) -> dict[str, Any]:
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        payload = await r.read()
        if r.status != want:
            raise RuntimeError(f"POST {url}: {r.status} {payload[:500]!r}")
        return json.loads(payload)


async def create_deploys(http: aiohttp.ClientSession, fleet: Fleet, bases: Sequence[str], concurrency: int) -> None:
    """Record the fleet's markers and push their baseline history through the API (small fleets)."""
    sem = asyncio.Semaphore(concurrency)
    ids: list[str] = [""] * fleet.n

    async def one(i: int) -> None:
        base = bases[i % len(bases)]
        async with sem:
            d = await _post(http, f"{base}/deploys", json.dumps(fleet.marker(i)).encode(), 201)
            if d["state"] != "analyzing":
                raise RuntimeError(f"deploy {i} is {d['state']} right after its marker, expected analyzing")
            history = [sample_json(s) for s in fleet.traffic.history(fleet.rngs[i], minutes=10, end=T_START)]
            await _post(http, f"{base}/deploys/{d['id']}/samples", json.dumps({"samples": history}).encode(), 202)
            ids[i] = d["id"]

    await asyncio.gather(*(one(i) for i in range(fleet.n)))
    fleet.ids = ids


async def push_round(http: aiohttp.ClientSession, fleet: Fleet, bodies: list[bytes], bases: Sequence[str],
                     k: int, concurrency: int, rotating: bool) -> tuple[float, dict[str, int], int]:
    """One push per deploy; returns (wall seconds, deploy states seen, errors)."""
    sem = asyncio.Semaphore(concurrency)
    states: dict[str, int] = {}
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        base = bases[(i + k) % len(bases)] if rotating else bases[i % len(bases)]
        async with sem:
            try:
                d = await _post(http, f"{base}/deploys/{fleet.ids[i]}/samples", bodies[i], 202)
            except (RuntimeError, aiohttp.ClientError, TimeoutError):
                errors += 1
                return
        state = d["deploy"]["state"]
        states[state] = states.get(state, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(fleet.n)))
    return time.perf_counter() - t0, states, errors


@dataclass
class Config:
    name: str  # sqlite | postgresql
    replicas: int
    rotating: bool = False
    tick_s: float | None = None  # engine.tick_s (None: the default, 5 s)

    @property
    def label(self) -> str:
        extra = (" rotating" if self.rotating else "") + (f" tick_s={self.tick_s:g}" if self.tick_s else "")
        return f"{self.name} x{self.replicas}{extra}"


async def measure(http: aiohttp.ClientSession, cfg: Config, fleet: Fleet, servers: Sequence[Server],
                  rounds: int, concurrency: int, pg_db: str | None, warmup: bool) -> dict[str, Any]:
    """With ``warmup``, a round not counted (servers that did not create the deploys rebuild their
    judges from the store on their first push), then ``rounds`` measured rounds."""
    bases = [s.base for s in servers]
    warm = 1 if warmup else 0
    bodies = fleet.bodies(rounds + warm)
    k0 = fleet.rounds_sent
    fleet.rounds_sent += rounds + warm
    warm_errors = 0
    if warm:
        _, _, warm_errors = await push_round(http, fleet, bodies[0], bases, k0, concurrency, cfg.rotating)
    cpu0 = [proc_cpu_s(s.pid) for s in servers]
    pg0 = postgres_cpu_s(pg_db) if pg_db else None
    me0 = proc_cpu_s(os.getpid())
    walls, errors, states = [], warm_errors, {}
    t0 = time.perf_counter()
    for j in range(warm, warm + rounds):
        wall, st, err = await push_round(http, fleet, bodies[j], bases, k0 + j, concurrency, cfg.rotating)
        walls.append(wall)
        errors += err
        states = st
    span = time.perf_counter() - t0
    server_cpu = [proc_cpu_s(s.pid) - c for s, c in zip(servers, cpu0, strict=True)]
    pg1 = postgres_cpu_s(pg_db) if pg_db else None
    pg_cpu = pg1 - pg0 if pg1 is not None and pg0 is not None else None
    driver_cpu = proc_cpu_s(os.getpid()) - me0
    pushes = fleet.n * rounds
    return {
        "config": cfg.label, "backend": cfg.name, "replicas": cfg.replicas, "rotating": cfg.rotating,
        "tick_s": cfg.tick_s, "deploys": fleet.n, "rounds": rounds, "warmup_round": warmup,
        "concurrency": concurrency,
        "round_median_s": round(statistics.median(walls), 3),
        "round_p90_s": round(percentile(walls, 0.9), 3),
        "round_max_s": round(max(walls), 3),
        "rounds_s": [round(w, 3) for w in walls],
        "pushes_per_s": round(pushes / sum(walls), 1),
        "sustained": max(walls) <= INTERVAL_S and errors == 0,
        "headroom": round(INTERVAL_S / statistics.median(walls), 2),
        "server_cpu_ms_per_push": round(1000 * sum(server_cpu) / pushes, 2),
        "server_cores": [round(c / span, 2) for c in server_cpu],
        "postgres_cores": round(pg_cpu / span, 2) if pg_cpu is not None else None,
        "postgres_cpu_ms_per_push": round(1000 * pg_cpu / pushes, 2) if pg_cpu is not None else None,
        "driver_cores": round(driver_cpu / span, 2),
        "states_last_round": states,
        "errors": errors,
    }


async def seed_deploys(db_url: str, fleet: Fleet) -> float:
    """Record the fleet's new markers and push their 10 minutes of baseline history with an
    in-process engine on the benchmark database, before any server starts (returns the seconds it
    took). Setup, not measured: it stays out of the servers' CPU counters, and a fleet can grow
    between deploy counts without a server running. The marker cost through the API is measured
    by ``marker_probe``."""
    from guardrail.adapters.db.store import SqlStore
    from guardrail.adapters.http.schemas import MarkerIn
    from guardrail.config import Settings
    from guardrail.plugins import load_deploy_adapter
    from guardrail.service.engine import Engine

    t0 = time.perf_counter()
    settings = Settings.model_validate({"database_url": db_url, "adapters": {"bench": {"type": "noop"}},
                                       "engine": {"leases": "off"}})
    await upgrade(db_url)
    store = SqlStore(db_url)
    engine = Engine(store=store, settings=settings, adapter_factory=load_deploy_adapter)
    try:
        for i in range(len(fleet.ids), fleet.n):
            marker = MarkerIn.model_validate_json(json.dumps(fleet.marker(i))).to_domain(settings.analysis)
            deploy, _ = await engine.record_deploy(marker)
            if deploy.state.value != "analyzing":
                raise RuntimeError(f"deploy {i} is {deploy.state.value} right after its marker, expected analyzing")
            await engine.ingest(deploy.id, fleet.traffic.history(fleet.rngs[i], minutes=10, end=T_START))
            fleet.ids.append(deploy.id)
    finally:
        await engine.close()
        await store.close()
    return time.perf_counter() - t0


async def marker_probe(http: aiohttp.ClientSession, base: str, n: int, count: int) -> float:
    """Median latency (ms) of ``count`` marker POSTs, one at a time, with ``n`` deploys active. The
    probe deploys are rolled back afterwards (operator override), so they do not stay active."""
    lat, ids = [], []
    for j in range(count):
        body = json.dumps(Fleet.marker(j, service=f"probe-{n}-{j}")).encode()
        t0 = time.perf_counter()
        ids.append((await _post(http, f"{base}/deploys", body, 201))["id"])
        lat.append(time.perf_counter() - t0)
    for deploy_id in ids:
        await _post(http, f"{base}/deploys/{deploy_id}/rollback", b'{"reason": "capacity bench probe"}', 200)
    return round(1000 * statistics.median(lat), 1)


async def push_benchmark(args: argparse.Namespace, work: Path, log: list[str]) -> list[dict[str, Any]]:
    """For each N (ascending; the fleets grow, so a deploy measured at N=250 is older at N=1000):
    SQLite with one replica, then PostgreSQL with each replica count side by side. One SQLite file
    and one PostgreSQL database for the whole run. A configuration that did not sustain N is not
    run at larger N."""
    counts = sorted(int(x) for x in args.deploys.split(","))
    replica_counts = [int(x) for x in args.replicas.split(",")]
    rows: list[dict[str, Any]] = []
    failed: set[str] = set()
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    sqlite_url = f"sqlite+aiosqlite:///{work / 'push.db'}"
    sqlite_fleet, pg_fleet = Fleet(args.seed), Fleet(args.seed)
    pg_name = f"guardrail_capbench_{uuid.uuid4().hex[:10]}"
    pg_url = make_url(args.pg_url).set(database=pg_name).render_as_string(hide_password=False)
    if not args.no_postgres:
        await execute_autocommit(args.pg_url, f'CREATE DATABASE "{pg_name}"')
        log.append(f"database {pg_name} created for the run and dropped after it")
    try:
        async with aiohttp.ClientSession(connector=connector, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=120)) as http:

            async def run(cfg: Config, fleet: Fleet, url: str, pg_db: str | None, setup_s: float,
                          probe: bool) -> None:
                tag = f"{cfg.name}-n{fleet.n}-{cfg.replicas}{'-rot' if cfg.rotating else ''}{'-tick' if cfg.tick_s else ''}"
                servers = [Server(work, f"{tag}-r{r}", url, leases="on" if cfg.name == "postgresql" else "off",
                                  tick_s=cfg.tick_s) for r in range(cfg.replicas)]
                try:
                    for s in servers:
                        await s.ready(http)
                    row = await measure(http, cfg, fleet, servers, args.rounds, args.concurrency, pg_db,
                                        warmup=True)
                    row["setup_s"] = round(setup_s, 1)
                    row["marker_post_ms"] = await marker_probe(http, servers[0].base, fleet.n, 10) if probe else None
                finally:
                    for s in servers:
                        s.stop()
                rows.append(row)
                print(json.dumps(row), flush=True)
                if not row["sustained"]:
                    failed.add(cfg.label)

            for idx, n in enumerate(counts):
                if "sqlite x1" not in failed:
                    sqlite_fleet.grow(n)
                    setup_s = await seed_deploys(sqlite_url, sqlite_fleet)
                    await run(Config("sqlite", 1), sqlite_fleet, sqlite_url, None, setup_s, probe=True)
                if args.no_postgres:
                    continue
                order = replica_counts if idx % 2 == 0 else list(reversed(replica_counts))
                configs = [Config("postgresql", r) for r in order]
                if args.rotating and n == args.rotating:
                    configs.append(Config("postgresql", max(replica_counts), rotating=True))
                if args.tick_ablation and n == args.tick_ablation:
                    configs.append(Config("postgresql", max(replica_counts), tick_s=3600.0))
                configs = [c for c in configs if c.label not in failed]
                if not configs:
                    continue
                pg_fleet.grow(n)
                setup_s = await seed_deploys(pg_url, pg_fleet)
                plain = [j for j, c in enumerate(configs) if not c.rotating and not c.tick_s]
                for j, cfg in enumerate(configs):
                    await run(cfg, pg_fleet, pg_url, pg_name, setup_s, probe=bool(plain) and j == plain[-1])
    finally:
        if not args.no_postgres:
            await execute_autocommit(args.pg_url, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    return rows


async def age_probe(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Does a push get dearer as a deploy ages? A few deploys on one SQLite server, each pushed
    ``--age-minutes`` of 10-s windows one request at a time; median latency per 10 minutes of data."""
    n, per_block = 4, int(600 / INTERVAL_S)
    rounds = int(args.age_minutes * 60 / INTERVAL_S)
    server = Server(work, "age", f"sqlite+aiosqlite:///{work / 'age.db'}", leases="off")
    out = []
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"},
                                         timeout=aiohttp.ClientTimeout(total=60)) as http:
            await server.ready(http)
            fleet = Fleet(args.seed + 1)
            fleet.grow(n)
            await create_deploys(http, fleet, [server.base], n)
            bodies = fleet.bodies(rounds)
            lat: list[float] = []
            for row in bodies:
                for i in range(n):
                    t0 = time.perf_counter()
                    await _post(http, f"{server.base}/deploys/{fleet.ids[i]}/samples", row[i], 202)
                    lat.append(time.perf_counter() - t0)
            for b in range(0, rounds, per_block):
                block = lat[b * n : (b + per_block) * n]
                out.append({"data_minutes": f"{b * INTERVAL_S / 60:.0f}-{(b + per_block) * INTERVAL_S / 60:.0f}",
                            "push_median_ms": round(1000 * statistics.median(block), 2),
                            "push_p90_ms": round(1000 * percentile(block, 0.9), 2)})
    finally:
        server.stop()
    print(json.dumps(out), flush=True)
    return out


# --- pull path -------------------------------------------------------------------------------------
async def pull_step_times(url: str, n: int, steps: int, work: Path, deploy_at: float,
                          prom_pid: int) -> dict[str, Any]:
    """One Poller + Engine (SQLite) pulling N deploys at 10-s windows from the real Prometheus."""
    from guardrail.adapters.db.store import SqlStore
    from guardrail.adapters.sources.prometheus import PrometheusMetricSource
    from guardrail.config import Settings
    from guardrail.domain.model import ChangeType, Step, Strategy
    from guardrail.domain.records import AdapterRef, AnalysisSettings, Marker
    from guardrail.service.engine import Engine
    from guardrail.service.poller import Poller, PollSettings
    from guardrail.testing import ManualClock, RecordingDeployAdapter

    db = f"sqlite+aiosqlite:///{work / f'pull-{n}.db'}"
    await upgrade(db)
    store = SqlStore(db)
    clock = ManualClock(deploy_at)
    adapter = RecordingDeployAdapter()
    engine = Engine(store=store, settings=Settings.model_validate({"allow_marker_adapters": True}),
                    adapter_factory=lambda name, cfg: adapter, clock=clock)
    source = TimedSource(PrometheusMetricSource(url, timeout_s=60))
    timed = TimedEngine(engine)
    scrape_delay = 15.0
    poller = Poller(timed, source, clock=clock,  # type: ignore[arg-type]
                    settings=PollSettings(scrape_delay_s=scrape_delay, history_s=600.0))
    try:
        for i in range(n):
            await engine.record_deploy(Marker(
                service=f"svc-{i:03d}", environment="production", version="1.4.2", previous_version="1.4.1",
                commit="bench", strategy=Strategy.CANARY, change_type=ChangeType.FEATURE,
                metrics_source="prometheus", adapter=AdapterRef("recording"),
                analysis=AnalysisSettings(interval_s=INTERVAL_S, max_duration_s=DAY_S),
                steps=(Step(weight=10, min_duration_s=DAY_S), Step(weight=100)), started_at=deploy_at,
            ))
        clock.now = deploy_at + INTERVAL_S + scrape_delay
        t0 = time.perf_counter()
        await poller.poll_once()
        first = time.perf_counter() - t0
        for _ in range(3):  # the window in which the first step took effect is skipped: catch up
            clock.advance(INTERVAL_S)
            if await poller.poll_once() == 2 * n:
                break
        source.seconds.clear()
        timed.seconds.clear()
        cpu0, prom0 = proc_cpu_s(os.getpid()), proc_cpu_s(prom_pid)
        walls, got = [], []
        for _ in range(steps):
            clock.advance(INTERVAL_S)
            t0 = time.perf_counter()
            got.append(await poller.poll_once())
            walls.append(time.perf_counter() - t0)
        cpu, prom_cpu = proc_cpu_s(os.getpid()) - cpu0, proc_cpu_s(prom_pid) - prom0
        active = await engine.active_deploys()
        if any(g > 2 * n for g in got) or got[0] < 2 * n:
            raise RuntimeError(f"expected {2 * n} samples per step, got {got}")
        # fewer later on: a deploy left analysing (a verdict ended it), so the poller stopped pulling it
        return {
            "deploys": n, "steps": steps, "first_step_s": round(first, 3),
            "step_median_s": round(statistics.median(walls), 3),
            "step_p90_s": round(percentile(walls, 0.9), 3),
            "step_max_s": round(max(walls), 3),
            "per_deploy_ms": round(1000 * statistics.median(walls) / n, 2),
            "fetch_median_ms": round(1000 * statistics.median(source.seconds), 2),
            "ingest_median_ms": round(1000 * statistics.median(timed.seconds), 2),
            "poller_cores": round(cpu / sum(walls), 2),
            "prometheus_cores": round(prom_cpu / sum(walls), 2),
            "keeps_up": max(walls) <= INTERVAL_S,
            "still_active": len(active),
            "samples_per_step": got,
        }
    finally:
        await source.inner.close()
        await engine.close()
        await store.close()


async def pull_benchmark(args: argparse.Namespace, work: Path, log: list[str]) -> list[dict[str, Any]]:
    from examples.app.history import T0, Deploy, write

    prom, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not prom or not promtool:
        log.append("pull path skipped: the prometheus and promtool binaries are missing")
        return []
    counts = [int(x) for x in args.pull_deploys.split(",")]
    deploy_at = T0 + 600.0
    end = deploy_at + (args.pull_steps + 6) * INTERVAL_S + 15.0
    history = work / "history.om"
    t0 = time.perf_counter()
    write(str(history), [Deploy(f"svc-{i:03d}", start=T0, deploy_at=deploy_at, end=end, step_s=5.0, seed=args.seed)
                         for i in range(max(counts))])
    out = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(history), str(work / "tsdb")],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"promtool failed: {out.stderr[-2000:]}")
    log.append(f"pull history: {max(counts)} services at 5-s resolution, written and backfilled in "
               f"{time.perf_counter() - t0:.1f} s")
    port = free_port()
    proc = start_prometheus(prom, work / "tsdb", port)
    rows = []
    try:
        for n in counts:
            rows.append(await pull_step_times(f"http://127.0.0.1:{port}", n, args.pull_steps, work, deploy_at,
                                              proc.pid))
            print(json.dumps(rows[-1]), flush=True)
            if not rows[-1]["keeps_up"]:
                break
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


# --- report ----------------------------------------------------------------------------------------
def _largest(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    ok = [r for r in rows if r[key]]
    return max(ok, key=lambda r: r["deploys"]) if ok else None


def summary(push: list[dict[str, Any]], pull: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration: largest sustained N measured, its headroom, and the saturated throughput."""
    out = []
    for label in dict.fromkeys(r["config"] for r in push):
        rows = [r for r in push if r["config"] == label]
        best = _largest(rows, "sustained")
        top = max(rows, key=lambda r: r["pushes_per_s"])
        out.append({
            "path": f"push, {label}",
            "largest_sustained_n": best["deploys"] if best else 0,
            "headroom_at_it": best["headroom"] if best else None,
            "max_pushes_per_s": top["pushes_per_s"],
            "deploys_at_10s_from_rate": int(top["pushes_per_s"] * INTERVAL_S),
        })
    if pull:
        best = _largest(pull, "keeps_up")
        top = max(pull, key=lambda r: r["deploys"] * 1.0 / r["step_median_s"])
        out.append({
            "path": "pull, one poller",
            "largest_sustained_n": best["deploys"] if best else 0,
            "headroom_at_it": round(INTERVAL_S / best["step_median_s"], 2) if best else None,
            "max_pushes_per_s": round(top["deploys"] / top["step_median_s"], 1),
            "deploys_at_10s_from_rate": int(INTERVAL_S * top["deploys"] / top["step_median_s"]),
        })
    return out


def findings(push: list[dict[str, Any]], age: list[dict[str, Any]], pull: list[dict[str, Any]]) -> list[str]:
    """What the numbers say, computed from them (nothing here is typed in by hand)."""
    out: list[str] = []
    by = {(r["config"], r["deploys"]): r for r in push}
    ns = sorted({r["deploys"] for r in push})
    top = max((n for n in ns if all((c, n) in by for c in ("sqlite x1", "postgresql x1"))), default=None)
    if top is not None:
        sq, pg = by[("sqlite x1", top)], by[("postgresql x1", top)]
        out.append(
            f"One replica at N={top}: SQLite {sq['pushes_per_s']:.0f} pushes/s with the server at "
            f"{sq['server_cores'][0]:.2f} cores, PostgreSQL {pg['pushes_per_s']:.0f} pushes/s at "
            f"{pg['server_cores'][0]:.2f} cores (+ {pg['postgres_cores']:.2f} for PostgreSQL). A guardrail process "
            f"is one event loop: near 1.00 core it is CPU-bound, and its CPU per push "
            f"({sq['server_cpu_ms_per_push']:.1f} / {pg['server_cpu_ms_per_push']:.1f} ms) sets its ceiling "
            f"(~{1000 / sq['server_cpu_ms_per_push'] * INTERVAL_S:.0f} / "
            f"~{1000 / pg['server_cpu_ms_per_push'] * INTERVAL_S:.0f} deploys at 10 s per core)."
        )
    reps = sorted({r["replicas"] for r in push if r["backend"] == "postgresql" and not r["rotating"] and not r["tick_s"]})
    if top is not None and len(reps) > 1 and all((f"postgresql x{k}", top) in by for k in reps):
        cells, busiest = [], 0.0
        for k in reps:
            r = by[(f"postgresql x{k}", top)]
            busy = sum(r["server_cores"]) + (r["postgres_cores"] or 0) + r["driver_cores"]
            busiest = max(busiest, busy)
            cells.append(f"x{k}: {r['pushes_per_s']:.0f} pushes/s, {r['server_cpu_ms_per_push']:.1f} ms server CPU "
                         f"per push, {busy:.2f} of {os.cpu_count()} cores busy")
        why = (" The machine's cores are the limit here: more replicas split the same CPU, and each adds its "
               "own timer sweep." if busiest >= 0.85 * (os.cpu_count() or 1) else "")
        out.append(f"Replicas on one PostgreSQL at N={top}: " + "; ".join(cells) + "." + why)
    tick = [r for r in push if r["tick_s"]]
    for r in tick:
        plain = by.get((f"postgresql x{r['replicas']}", r["deploys"]))
        if plain:
            out.append(
                f"Lease sweeps (engine.tick_s 5 s) at N={r['deploys']}, x{r['replicas']}: "
                f"{plain['server_cpu_ms_per_push']:.1f} ms server CPU per push with them, "
                f"{r['server_cpu_ms_per_push']:.1f} ms with tick_s=3600 "
                f"({plain['pushes_per_s']:.0f} vs {r['pushes_per_s']:.0f} pushes/s)."
            )
    for r in (r for r in push if r["rotating"]):
        plain = by.get((f"postgresql x{r['replicas']}", r["deploys"]))
        if plain:
            out.append(
                f"Routing at N={r['deploys']}, x{r['replicas']}: deploy-sticky {plain['server_cpu_ms_per_push']:.1f} ms "
                f"server CPU per push ({plain['pushes_per_s']:.0f}/s), plain round-robin "
                f"{r['server_cpu_ms_per_push']:.1f} ms ({r['pushes_per_s']:.0f}/s): every push that lands on another "
                "replica than the last one rebuilds the judge."
            )
    probes = sorted((r["deploys"], r["marker_post_ms"], r["config"]) for r in push if r.get("marker_post_ms"))
    if probes:
        out.append("Marker POST latency with N deploys active: " + ", ".join(
            f"{ms:.0f} ms at N={n} ({c})" for n, ms, c in probes) + " (median of 10, one at a time).")
    ended = [(r["config"], r["deploys"], r["deploys"] - r["states_last_round"].get("analyzing", 0)) for r in push]
    ended = [e for e in ended if e[2]]
    if ended:
        out.append("Deploys that left analysing (a verdict on the A/A data rolled them back, within the "
                   "alpha = 0.01 budget; their later pushes are stored but not judged): "
                   + ", ".join(f"{k} of {n} ({c})" for c, n, k in ended) + ".")
    if len(age) > 1:
        out.append(f"Deploy age: a push took {age[0]['push_median_ms']:.1f} ms (median) in the first 10 minutes of "
                   f"data and {age[-1]['push_median_ms']:.1f} ms in minutes {age[-1]['data_minutes']}.")
    if pull:
        ok = [r for r in pull if r["keeps_up"]]
        r = max(pull, key=lambda r: r["deploys"])
        out.append(
            f"Pull: one poller kept up with N={max(x['deploys'] for x in ok) if ok else 0} "
            f"(largest measured); at N={r['deploys']} a step took {r['step_median_s']:.2f} s "
            f"({r['per_deploy_ms']:.1f} ms per deploy, poller+engine {r['poller_cores']:.2f} cores, Prometheus "
            f"{r['prometheus_cores']:.2f}), i.e. ~{INTERVAL_S * 1000 / r['per_deploy_ms']:.0f} deploys per 10 s "
            "for one poller process."
        )
    return out


def render(meta: dict[str, Any], push: list[dict[str, Any]], age: list[dict[str, Any]], pull: list[dict[str, Any]],
           summ: list[dict[str, Any]]) -> str:
    lines = [
        "# Capacity: active deploys per replica at a 10-s interval",
        "",
        "Generated by `python -m bench.capacity_bench` (method in its docstring). Every deploy reports",
        "one canary and one baseline 10-s window (histogram latency, 400 req/s) every 10 s; N is",
        "*sustained* when every measured round of N pushes (or pull step for N deploys) took at most",
        "10 s. Rounds run back to back, so the numbers are the saturated rate; *headroom* is 10 s over",
        "the median round. CPU columns are cores used during the measured rounds (1.00 = one core busy).",
        "",
        "## Summary",
        "",
        "| path | largest sustained N measured | headroom there | best rate (deploy windows/s) | N at 10 s from that rate |",
        "|---|---|---|---|---|",
    ]
    for s in summ:
        head = f"{s['headroom_at_it']:.2f}x" if s["headroom_at_it"] else "-"
        lines.append(f"| {s['path']} | {s['largest_sustained_n']} | {head} | {s['max_pushes_per_s']:.0f} | "
                     f"{s['deploys_at_10s_from_rate']} |")
    lines += ["", "## What the numbers say", ""]
    lines += [f"- {f}" for f in findings(push, age, pull)]
    lines += [
        "",
        "## Push path: round time per N",
        "",
        "| config | N | round median s | p90 s | max s | pushes/s | sustained | headroom | server ms CPU/push | "
        "server cores (per replica) | PostgreSQL cores (ms/push) | driver cores | errors | marker POST ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(push, key=lambda r: (r["backend"], r["rotating"], bool(r["tick_s"]), r["replicas"], r["deploys"])):
        pg = f"{r['postgres_cores']:.2f} ({r['postgres_cpu_ms_per_push']:.1f})" if r["postgres_cores"] is not None else "-"
        lines.append(
            f"| {r['config']} | {r['deploys']} | {r['round_median_s']:.2f} | {r['round_p90_s']:.2f} | "
            f"{r['round_max_s']:.2f} | {r['pushes_per_s']:.0f} | {'yes' if r['sustained'] else 'no'} | "
            f"{r['headroom']:.2f}x | {r['server_cpu_ms_per_push']:.1f} | "
            f"{' + '.join(f'{c:.2f}' for c in r['server_cores'])} | {pg} | {r['driver_cores']:.2f} | {r['errors']} | "
            f"{r['marker_post_ms'] if r['marker_post_ms'] is not None else '-'} |"
        )
    if age:
        lines += [
            "",
            "## Push cost by deploy age (4 deploys, one push at a time, SQLite)",
            "",
            "| data minutes since the marker | push latency median ms | p90 ms |",
            "|---|---|---|",
        ]
        lines += [f"| {a['data_minutes']} | {a['push_median_ms']:.2f} | {a['push_p90_ms']:.2f} |" for a in age]
    if pull:
        lines += [
            "",
            "## Pull path: one poller, one 10-s window per deploy per step",
            "",
            "| N | step median s | p90 s | max s | per deploy ms | fetch median ms | ingest+verdict median ms | "
            "keeps up | poller+engine cores | Prometheus cores | first step s (10 min history) | still analysing at the end |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in pull:
            lines.append(
                f"| {r['deploys']} | {r['step_median_s']:.2f} | {r['step_p90_s']:.2f} | {r['step_max_s']:.2f} | "
                f"{r['per_deploy_ms']:.1f} | {r['fetch_median_ms']:.1f} | {r['ingest_median_ms']:.1f} | "
                f"{'yes' if r['keeps_up'] else 'no'} | {r['poller_cores']:.2f} | {r['prometheus_cores']:.2f} | "
                f"{r['first_step_s']:.2f} | {r['still_active']} of {r['deploys']} |"
            )
    lines += ["", "Environment and parameters:", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    return "\n".join(lines) + "\n"


def _git_revision() -> str:
    """The commit the servers ran, and whether guardrail/ had uncommitted changes at the end."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "guardrail"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    return f"{rev or 'unknown'}" + (" + uncommitted changes under guardrail/" if dirty else "")


def _source_hash() -> str:
    """A hash of guardrail/'s Python sources: the servers load them at start, so a change in the
    middle of a run would mix two versions of the code in one table."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).resolve().parent.parent.joinpath("guardrail").rglob("*.py")):
        h.update(f.as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


async def main_async(args: argparse.Namespace) -> int:
    t_all = time.perf_counter()
    source_at_start = _source_hash()
    log: list[str] = []
    if not args.no_postgres:
        try:
            await execute_autocommit(args.pg_url, "SELECT 1")
        except Exception as e:
            print(f"capacity_bench: PostgreSQL at --pg-url is unreachable ({type(e).__name__}); "
                  "start it or pass --no-postgres", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="capacity-bench-") as tmp:
        work = Path(tmp)
        push = await push_benchmark(args, work, log) if not args.no_push else []
        age = await age_probe(args, work) if args.age_minutes > 0 and not args.no_push else []
        pull = await pull_benchmark(args, work, log) if not args.no_pull else []
    summ = summary(push, pull)
    meta = {
        "command": "python -m bench.capacity_bench " + " ".join(sys.argv[1:]),
        "seed": args.seed,
        "push": f"N in {args.deploys}; {args.rounds} measured rounds after a warm-up round; "
                f"{args.concurrency} requests in flight at most; replicas {args.replicas}",
        "pull": f"N in {args.pull_deploys}; {args.pull_steps} measured steps after the first (history) step",
        "stop rule": "a configuration that did not sustain N (a round over 10 s) is not run at larger N",
        "postgresql": "skipped" if args.no_postgres else
        f"server of {make_url(args.pg_url).render_as_string(hide_password=True)}, one fresh database for the run",
        "notes": "; ".join(log) or "-",
        "guardrail code": _git_revision(),
        "guardrail sources": f"sha256 {source_at_start}"
        + (" at the start, CHANGED during the run: the rows mix two versions of the code"
           if _source_hash() != source_at_start else ", unchanged during the run"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), {platform.platform()}",
        "load average at the end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "total wall time": f"{time.perf_counter() - t_all:.0f} s",
    }
    report = render(meta, push, age, pull, summ)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "capacity.json").write_text(json.dumps({"meta": meta, "summary": summ, "push": push, "age": age, "pull": pull},
                                                      indent=2) + "\n")
    (out_dir / "capacity.md").write_text(report)
    print(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.capacity_bench", description=__doc__.splitlines()[0])
    p.add_argument("--deploys", default="250,1000,1500", help="push path deploy counts")
    p.add_argument("--replicas", default="1,2,3", help="PostgreSQL replica counts, side by side")
    p.add_argument("--rounds", type=int, default=3, help="measured push rounds per configuration and N")
    p.add_argument("--concurrency", type=int, default=32, help="push requests in flight at most")
    p.add_argument("--rotating", type=int, default=250, metavar="N",
                   help="also run the rotating (plain round-robin) 3-replica case at this N (0: never)")
    p.add_argument("--tick-ablation", type=int, default=1000, metavar="N",
                   help="also run 3 replicas with engine.tick_s=3600 (no lease sweeps) at this N (0: never)")
    p.add_argument("--age-minutes", type=int, default=30, help="data minutes of the push-cost-by-age probe (0: skip)")
    p.add_argument("--pull-deploys", default="1000", help="pull path deploy counts")
    p.add_argument("--pull-steps", type=int, default=3, help="measured pull steps per N")
    p.add_argument("--pg-url", default=os.environ.get("GUARDRAIL_TEST_DATABASE_URL")
                   or "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
                   help="a PostgreSQL database on a server that allows CREATE DATABASE")
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--no-push", action="store_true")
    p.add_argument("--no-pull", action="store_true")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--quick", action="store_true", help="N 25,100; 2 rounds; pull N 20,100, 2 steps (~2 min)")
    p.add_argument("--out", default=None, help="default bench/results (--quick: a temp dir, printed)")
    p.add_argument("--render", metavar="JSON", help="only re-render the Markdown from a capacity.json")
    args = p.parse_args(argv)
    if args.render:
        data = json.loads(Path(args.render).read_text())
        report = render(data["meta"], data["push"], data["age"], data["pull"], data["summary"])
        Path(args.render).with_suffix(".md").write_text(report)
        print(report)
        return 0
    if args.quick:
        args.deploys, args.rounds, args.rotating, args.age_minutes = "25,100", 2, 100, 20
        args.tick_ablation = 100
        args.pull_deploys, args.pull_steps = "20,100", 2
    if args.out is None:
        args.out = tempfile.mkdtemp(prefix="capacity-quick-") if args.quick else "bench/results"
        print(f"results go to {args.out}", flush=True)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
