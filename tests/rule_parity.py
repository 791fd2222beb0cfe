"""One data set, two rule engines: guardrail's in-service evaluator (guardrail.domain.rules) and
Prometheus's (the real ``promtool test rules`` on alerts/rules.yml), compared point by point.

A data set is what a scrape of each track sees once a minute: cumulative counters (requests by code,
latency buckets) and gauges (DB pool, filesystem, resident memory), with holes (minutes nobody
scraped: the process kept counting), zero traffic and counter resets (a restart: the counters start
again from 0). It becomes

- for Prometheus: one ``input_series`` line per series, ``_`` where a scrape is missing (promtool's
  notation; no staleness marker, like backfilled or remote-written data), evaluated by promtool at
  every evaluation interval (1 minute) from time 0;
- for the service: one ``Sample`` window per pair of consecutive scrapes (the counters' increase, a
  reset counted as in Prometheus's ``rate``: a drop means the counter restarted from 0), with the
  gauges read at the window's end, fed minute by minute to a ``RuleEvaluator`` as a live push.

What promtool computed is read back from its own report: every evaluation time has a
``promql_expr_test`` expecting nothing, so promtool prints what it got, i.e. the ``ALERTS`` series
(pending, firing) and the value of each rule's expression without its threshold. Data times are the
same seconds in both engines (time 0 is the first scrape).

Run ``python -m tests.rule_parity`` for the disagreement table (markdown).
"""

from __future__ import annotations

import itertools
import math
import random
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from guardrail.config import Settings
from guardrail.domain.model import Histogram, Sample, Track
from guardrail.domain.rules import GIB, RuleEvaluator

ALERTS_DIR = Path(__file__).resolve().parent.parent / "alerts"
RULES_YML = ALERTS_DIR / "rules.yml"
STEP = 60  # scrape interval = window length = evaluation interval (Prometheus's default 1m)
MIB = 1024**2
BOUNDS = (0.1, 0.25, 0.5, 1.0, 2.5)
EDGE_BOUNDS = (0.1, 0.25, 0.5, 1.0)  # the top finite bucket bound is the p99 threshold
SERVICE = "checkout"
TRACKS = ("canary", "baseline")
RULES = (
    "HighErrorRate",
    "HighLatencyP99",
    "DBConnectionPoolExhausted",
    "DiskSpaceLow",
    "MemoryLeakSuspected",
)

# The value each rule reports: its expression in alerts/rules.yml without the threshold comparison
# (checked to appear verbatim in the rule's expression, so the values are the rule file's own).
RAW = {
    "HighErrorRate": 'sum by (service, track) (rate(http_requests_total{code=~"5.."}[5m])) '
    "/ sum by (service, track) (rate(http_requests_total[5m]))",
    "HighLatencyP99": "histogram_quantile(0.99, sum by (le, service, track) "
    "(rate(http_request_duration_seconds_bucket[5m])))",
    "DBConnectionPoolExhausted": "max by (service, instance) (db_pool_connections_in_use / db_pool_connections_max)",
    "DiskSpaceLow": 'node_filesystem_avail_bytes{fstype!~"tmpfs|overlay"} '
    '/ node_filesystem_size_bytes{fstype!~"tmpfs|overlay"}',
    "MemoryLeakSuspected": "predict_linear(process_resident_memory_bytes[1h], 4 * 3600)",
}


# --- data sets ------------------------------------------------------------------------------------


@dataclass
class Minute:
    """One track over one minute ``((i - 1) * 60, i * 60]`` and the scrape at its end."""

    requests: int
    errors: int
    buckets: tuple[int, ...]  # per bucket (not cumulative), +Inf last; sums to requests
    in_use: float
    pool_max: float
    avail: float
    size: float
    memory: float
    scraped: bool = True  # False: a hole (the process kept counting, nobody read it)
    reset: bool = False  # the process restarted during the minute: its counters start again from 0


@dataclass
class Dataset:
    name: str
    what: str
    bounds: tuple[float, ...]
    minutes: dict[str, list[Minute]]  # per track, minutes 1..n (index 0 is minute 1)

    @property
    def n(self) -> int:
        return len(self.minutes[TRACKS[0]])


@dataclass
class Profile:
    """What a track does in one minute: rates and gauge levels (the generator adds noise)."""

    errors: float = 0.002  # share of requests failing with a 5xx
    slow: float = 0.002  # share slower than 1 s (in the bucket above 1 s, or +Inf on EDGE_BOUNDS)
    requests: int = 1000
    in_use: float = 5
    disk_free: float = 0.4
    memory: float = 600 * MIB
    scraped: bool = True
    reset: bool = False


def _buckets(rng: random.Random, bounds: tuple[float, ...], requests: int, slow: float) -> tuple[int, ...]:
    """Counts per bucket: ``slow`` of the requests above 1 s, the rest spread below 0.5 s."""
    n_slow = min(requests, max(0, round(requests * slow + rng.uniform(-0.5, 0.5))))
    fast = requests - n_slow
    mid = round(fast * rng.uniform(0.003, 0.006))  # (0.5, 1]
    low = round(fast * rng.uniform(0.25, 0.35))  # (0.1, 0.25]
    q = round(fast * rng.uniform(0.05, 0.1))  # (0.25, 0.5]
    first = fast - mid - low - q
    above = [n_slow] if bounds == EDGE_BOUNDS else [n_slow, 0]  # BOUNDS: slow ones in (1, 2.5]
    return (first, low, q, mid, *above)


def _minute(rng: random.Random, bounds: tuple[float, ...], p: Profile) -> Minute:
    requests = 0 if p.requests == 0 else max(1, round(p.requests * rng.uniform(0.9, 1.1)))
    errors = min(requests, max(0, round(requests * p.errors + rng.uniform(-0.5, 0.5))))
    size = 100 * GIB
    return Minute(
        requests=requests,
        errors=errors,
        buckets=_buckets(rng, bounds, requests, p.slow),
        in_use=p.in_use,
        pool_max=20,
        avail=float(round(size * p.disk_free)),
        size=float(size),
        memory=float(round(p.memory + rng.uniform(-1, 1) * MIB)),
        scraped=p.scraped,
        reset=p.reset,
    )


def _track(
    rng: random.Random, bounds: tuple[float, ...], n: int, profile: Callable[[int], Profile]
) -> list[Minute]:
    return [_minute(rng, bounds, profile(i)) for i in range(1, n + 1)]


def _between(i: int, *spans: tuple[int, int]) -> bool:
    return any(a <= i < b for a, b in spans)


def datasets(seed: int = 17) -> list[Dataset]:
    """The seeded data sets of the differential test (issue 17)."""
    out: list[Dataset] = []

    def add(name: str, what: str, n: int, canary, baseline, bounds=BOUNDS) -> None:
        rng = random.Random(f"{seed}-{name}")
        out.append(
            Dataset(
                name,
                what,
                bounds,
                {"canary": _track(rng, bounds, n, canary), "baseline": _track(rng, bounds, n, baseline)},
            )
        )

    def healthy(i: int) -> Profile:
        return Profile(memory=(600 + 0.02 * i) * MIB)

    add("healthy", "both tracks well under every threshold", 90, healthy, healthy)

    def hover(phase: int) -> Callable[[int], Profile]:
        def p(i: int) -> Profile:
            up = ((i + phase) // 4) % 2 == 0  # four minutes just above, four just below
            return Profile(
                errors=0.0115 if up else 0.0088,
                slow=0.0115 if up else 0.0085,
                in_use=20 if (i + phase) % 5 < 3 else 19,
                disk_free=(0.102, 0.100, 0.098)[(i + phase) // 3 % 3],
                memory=(1.8 * GIB + 100 * MIB * math.sin(2 * math.pi * (i + phase) / 80)),
            )

        return p

    add(
        "hovering",
        "each value hovers around its threshold (and sits exactly on it for gauges)",
        150,
        hover(0),
        hover(2),
    )

    def step(i: int) -> Profile:
        if i < 30:
            return healthy(i)
        return Profile(
            errors=0.03,
            slow=0.03,
            in_use=20 if i < 40 else 6,
            disk_free=0.05,
            memory=(1.0 * GIB + 8 * MIB * (i - 30)),
        )

    add(
        "step-change",
        "the canary turns bad at minute 30 on every rule; the baseline stays healthy",
        120,
        step,
        healthy,
    )

    def bad(i: int) -> Profile:
        return Profile(errors=0.025, slow=0.025, in_use=20, disk_free=0.06, memory=(1.2 * GIB + 6 * MIB * i))

    def holes_pending(i: int) -> Profile:
        p = bad(i) if _between(i, (10, 40), (55, 80)) else healthy(i)
        p.scraped = not _between(i, (13, 21), (57, 60))  # 8 minutes, then 3 minutes, while pending
        return p

    def baseline_hole(i: int) -> Profile:
        p = healthy(i)
        p.scraped = not _between(i, (30, 36))
        return p

    add(
        "holes-pending",
        "no scrapes for 8 min from 3 min into a breach (pending), and for 3 min 2 min into another",
        90,
        holes_pending,
        baseline_hole,
    )

    def holes_firing(i: int) -> Profile:
        p = bad(i) if _between(i, (5, 70)) else healthy(i)
        p.scraped = not _between(i, (20, 28), (45, 48))  # 8 minutes, then 3 minutes, while firing
        return p

    add(
        "holes-firing",
        "no scrapes for 8 min and for 3 min while the canary's rules are firing",
        100,
        holes_firing,
        healthy,
    )

    def zero(i: int) -> Profile:
        p = Profile(errors=0.03, slow=0.03) if _between(i, (5, 50), (60, 80)) else healthy(i)
        if _between(i, (20, 32), (62, 70), (42, 45)):
            p.requests = 0
        return p

    add(
        "zero-traffic",
        "no requests for 12 min while firing, 3 min while firing, 8 min while pending",
        90,
        zero,
        healthy,
    )

    def resets(i: int) -> Profile:
        p = Profile(errors=0.03, slow=0.03) if _between(i, (10, 50)) else healthy(i)
        p.reset = i in (25, 60)  # a restart while firing, and one while healthy
        return p

    def baseline_reset(i: int) -> Profile:
        p = healthy(i)
        p.reset = i == 35
        return p

    add(
        "counter-reset",
        "the canary restarts while firing and while healthy (counters back to 0)",
        90,
        resets,
        baseline_reset,
    )

    def edge(i: int) -> Profile:
        return Profile(slow=0.02 if _between(i, (10, 30), (34, 45)) else 0.004)

    def edge_baseline(i: int) -> Profile:
        return Profile(slow=0.005)

    add(
        "inf-edge",
        "top bucket bound 1 s = the threshold; 2% of the canary's requests beyond it",
        70,
        edge,
        edge_baseline,
        EDGE_BOUNDS,
    )

    def leak(i: int) -> Profile:
        p = healthy(i)
        p.memory = 1.2 * GIB + 2.5 * MIB * i + 3 * MIB * math.sin(i / 3)
        p.scraped = not _between(i, (150, 156))
        return p

    def flat(i: int) -> Profile:
        p = healthy(i)
        p.memory = 1.5 * GIB
        return p

    add(
        "memory-trend",
        "the canary's memory grows 2.5 MiB/min (projection crosses 2 GiB), with a 6-min hole",
        200,
        leak,
        flat,
    )
    return out


# --- the two inputs -------------------------------------------------------------------------------


def _le(b: float) -> str:
    return f"{b:g}"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _offsets(d: Dataset) -> dict[str, Any]:
    """Counter values at time 0: the process has run for a while (1000 minutes of healthy traffic),
    so no counter is close to 0 where Prometheus extrapolates a rate to the range's start."""
    return {
        "requests": 1_000_000,
        "errors": 2_000,
        "buckets": [v * 1000 for v in (690, 250, 50, 5)] + [3, 2][: len(d.bounds) - 3],
    }


def promtool_series(d: Dataset) -> list[dict[str, str]]:
    """The data set as promtool input series (time 0: the first scrape, counters only)."""
    out: list[dict[str, str]] = []
    off = _offsets(d)
    for track in TRACKS:
        base = f'service="{SERVICE}",track="{track}"'
        ok: list[str] = [_num(off["requests"] - off["errors"])]
        err: list[str] = [_num(off["errors"])]
        cum_b = [off["buckets"][: i + 1] for i in range(len(d.bounds) + 1)]
        buckets: list[list[str]] = [[_num(sum(c))] for c in cum_b]
        pool_use, pool_max, avail, size, mem = (["_"] for _ in range(5))
        c_req, c_err, c_b = off["requests"], off["errors"], list(off["buckets"])
        for m in d.minutes[track]:
            if m.reset:
                c_req, c_err, c_b = 0, 0, [0] * len(c_b)
            c_req += m.requests
            c_err += m.errors
            c_b = [a + b for a, b in zip(c_b, m.buckets, strict=True)]
            if not m.scraped:
                for s in (ok, err, *buckets, pool_use, pool_max, avail, size, mem):
                    s.append("_")
                continue
            ok.append(_num(c_req - c_err))
            err.append(_num(c_err))
            for i, s in enumerate(buckets):
                s.append(_num(sum(c_b[: i + 1])))
            pool_use.append(_num(m.in_use))
            pool_max.append(_num(m.pool_max))
            avail.append(_num(m.avail))
            size.append(_num(m.size))
            mem.append(_num(m.memory))
        instance = f'instance="{track}:8080"'
        fs = f'{instance},mountpoint="/",fstype="ext4",track="{track}"'
        rows = [
            (f'http_requests_total{{code="200",{base}}}', ok),
            (f'http_requests_total{{code="500",{base}}}', err),
            *[
                (f'http_request_duration_seconds_bucket{{le="{le}",{base}}}', s)
                for le, s in zip([*map(_le, d.bounds), "+Inf"], buckets, strict=True)
            ],
            (f"db_pool_connections_in_use{{{instance},{base}}}", pool_use),
            (f"db_pool_connections_max{{{instance},{base}}}", pool_max),
            (f"node_filesystem_avail_bytes{{{fs}}}", avail),
            (f"node_filesystem_size_bytes{{{fs}}}", size),
            (f'process_resident_memory_bytes{{job="{SERVICE}",{instance},track="{track}"}}', mem),
        ]
        out += [{"series": name, "values": " ".join(values)} for name, values in rows]
    return out


def service_windows(d: Dataset) -> dict[int, list[Sample]]:
    """The data set as the service's windows, by the data time they end at (one per pair of
    consecutive scrapes; a drop of a counter is a restart, as in Prometheus's ``rate``)."""
    out: dict[int, list[Sample]] = {}
    for track in TRACKS:
        off = _offsets(d)
        last = (0, off["requests"], off["errors"], list(off["buckets"]))  # (time, cumulative...)
        c_req, c_err, c_b = off["requests"], off["errors"], list(off["buckets"])
        for i, m in enumerate(d.minutes[track], start=1):
            if m.reset:
                c_req, c_err, c_b = 0, 0, [0] * len(c_b)
            c_req += m.requests
            c_err += m.errors
            c_b = [a + b for a, b in zip(c_b, m.buckets, strict=True)]
            if not m.scraped:
                continue
            t0, r0, e0, b0 = last

            def inc(new: int, old: int) -> int:
                return new if new < old else new - old

            requests, errors = inc(c_req, r0), inc(c_err, e0)
            counts = [inc(sum(c_b[: k + 1]), sum(b0[: k + 1])) for k in range(len(c_b))]  # cumulative le
            per_bucket = tuple(counts[0:1] + [b - a for a, b in itertools.pairwise(counts)])
            gauges = {
                "db_pool_in_use": m.in_use,
                "db_pool_max": m.pool_max,
                "disk_avail_bytes": m.avail,
                "disk_size_bytes": m.size,
                "memory_bytes": m.memory,
            }
            sample = Sample(
                Track(track), float(t0), float(i * STEP), requests, errors,
                latency=Histogram(d.bounds, per_bucket), gauges=gauges,
            )  # fmt: skip
            out.setdefault(i * STEP, []).append(sample)
            last = (i * STEP, c_req, c_err, list(c_b))
    return out


# --- running the two engines ----------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    state: str  # inactive, pending, firing
    value: float | None  # the rule's value at this evaluation (None: no data)


Timeline = dict[tuple[str, str, int], Point]  # (rule, track, time) -> point


def service_evaluator() -> RuleEvaluator:
    """The evaluator the service builds for a deploy with the default settings (its rules and its
    evaluation interval, which must be Prometheus's 1 minute the data sets are scraped at)."""
    rules = Settings().rules
    assert rules.evaluation_interval_s == STEP, rules.evaluation_interval_s
    return RuleEvaluator(rules.specs(), interval_s=rules.evaluation_interval_s)


def run_service(d: Dataset, evaluator: Callable[[], RuleEvaluator] = service_evaluator) -> Timeline:
    """The in-service evaluator fed the data set minute by minute, as a live push."""
    ev = evaluator()
    windows = service_windows(d)
    out: Timeline = {}
    for t in range(STEP, d.n * STEP + 1, STEP):
        ev.add_many(windows.get(t, []))
        ev.evaluate(float(t))
        for spec in ev.specs:
            for track in spec.tracks:
                s = ev.status(spec.name, track)
                value = s.value if s.value is not None and math.isfinite(s.value) else None
                out[(spec.name, track.value, t)] = Point(s.state, value)
    return out


def _expr(d: Dataset) -> str:
    parts = " or ".join(f'label_replace({RAW[r]}, "rule", "{r}", "", "")' for r in RULES)
    return f'label_replace(ALERTS or {parts}, "dataset", "{d.name}", "", "")'


def promtool_file(ds: Iterable[Dataset], rules: Path = RULES_YML) -> dict[str, Any]:
    """A promtool unit-test file: one test group per data set, a ``promql_expr_test`` expecting
    nothing at every evaluation time (promtool then reports what it got)."""
    return {
        "rule_files": [str(rules)],
        "evaluation_interval": f"{STEP}s",
        "tests": [
            {
                "name": d.name,
                "interval": f"{STEP}s",
                "input_series": promtool_series(d),
                "promql_expr_test": [
                    {"expr": _expr(d), "eval_time": f"{t}s", "exp_samples": []}
                    for t in range(0, d.n * STEP + 1, STEP)
                ],
            }
            for d in ds
        ],
    }


_FAILURE = re.compile(r'^\s*expr: "(?P<expr>(?:[^"\\]|\\.)*)", time: (?P<time>\S+),$')
_DATASET = re.compile(r'\\"dataset\\", \\"([^"\\]+)\\"')
_SAMPLE = re.compile(r"\{(?P<labels>[^{}]*)\} (?P<value>\S+?)(?:, |$)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _seconds(text: str) -> int:
    total = 0
    for n, unit in re.findall(r"(\d+)([hms])", text):
        total += int(n) * {"h": 3600, "m": 60, "s": 1}[unit]
    return total


def run_promtool(ds: list[Dataset], promtool: str, rules: Path = RULES_YML) -> dict[str, Timeline]:
    """Every data set through ``promtool test rules`` in one run; Prometheus's timeline of each."""
    with tempfile.TemporaryDirectory(prefix="rule-parity-") as tmp:
        path = Path(tmp) / "parity.yml"
        path.write_text(yaml.safe_dump(promtool_file(ds, rules), width=1 << 20, sort_keys=False))
        r = subprocess.run(
            [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=300, check=False
        )
    got: dict[str, dict[int, list[dict[str, str] | float]]] = {d.name: {} for d in ds}
    lines = r.stderr.splitlines()
    seen = 0
    for i, line in enumerate(lines):
        m = _FAILURE.match(line)
        if not m:
            continue
        (name,) = _DATASET.findall(m["expr"])
        got_line = lines[i + 2].strip()
        assert got_line.startswith("got: "), got_line
        got[name][_seconds(m["time"])] = [
            (dict(_LABEL.findall(s["labels"])), float(s["value"])) for s in _SAMPLE.finditer(got_line[5:])
        ]
        seen += 1
    # An evaluation whose result is empty passes (nothing expected, nothing got) and is not reported;
    # anything promtool could not load or evaluate is reported without a "got:" line.
    broken = [line for line in lines if re.match(r"^\s*(expr: .*, err: |rule: .*, err: )", line)]
    if broken or r.returncode not in (0, 1) or not seen or any(not got[d.name] for d in ds):
        raise RuntimeError(f"promtool could not evaluate every data set:\n{r.stdout}\n{r.stderr[-3000:]}")
    out: dict[str, Timeline] = {}
    for d in ds:
        tl: Timeline = {}
        for t in range(STEP, d.n * STEP + 1, STEP):
            states: dict[tuple[str, str], str] = {}
            values: dict[tuple[str, str], float] = {}
            for labels, value in got[d.name].get(t, []):
                track = labels.get("track") or labels["instance"].split(":")[0]
                if labels.get("__name__") == "ALERTS":
                    states[(labels["alertname"], track)] = labels["alertstate"]
                elif "rule" in labels:
                    values[(labels["rule"], track)] = value
            for rule in RULES:
                for track in TRACKS:
                    v = values.get((rule, track))
                    tl[(rule, track, t)] = Point(
                        states.get((rule, track), "inactive"),
                        v if v is not None and math.isfinite(v) else None,
                    )
        out[d.name] = tl
    return out


# --- comparing ------------------------------------------------------------------------------------


@dataclass
class Comparison:
    dataset: str
    points: int = 0  # (rule, track, evaluation time) compared
    state_mismatches: list[tuple[str, str, int, str, str]] = field(default_factory=list)
    value_mismatches: list[tuple[str, str, int, float | None, float | None]] = field(default_factory=list)
    max_rel: float = 0.0  # the largest relative value difference where both have a value
    pages: dict[str, int] = field(default_factory=lambda: {"service": 0, "prometheus": 0})
    firing_alone_s: int = 0  # seconds one engine sees a rule firing and the other does not

    @property
    def agree(self) -> bool:
        return not self.state_mismatches and not self.value_mismatches


def rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b))


def compare(d: Dataset, service: Timeline, prom: Timeline, tolerance: float = 1e-6) -> Comparison:
    c = Comparison(d.name)
    for rule in RULES:
        for track in TRACKS:
            before = {"service": "inactive", "prometheus": "inactive"}
            for t in range(STEP, d.n * STEP + 1, STEP):
                s, p = service[(rule, track, t)], prom[(rule, track, t)]
                c.points += 1
                for who, pt in (("service", s), ("prometheus", p)):
                    if pt.state == "firing" and before[who] != "firing":
                        c.pages[who] += 1
                    before[who] = pt.state
                if s.state != p.state:
                    c.state_mismatches.append((rule, track, t, s.state, p.state))
                    if "firing" in (s.state, p.state):
                        c.firing_alone_s += STEP
                if s.value is None or p.value is None:
                    if s.value is not p.value:
                        c.value_mismatches.append((rule, track, t, s.value, p.value))
                    continue
                r = rel(s.value, p.value)
                c.max_rel = max(c.max_rel, r)
                if r > tolerance:
                    c.value_mismatches.append((rule, track, t, s.value, p.value))
    return c


def table(results: list[Comparison]) -> str:
    rows = [
        "| data set | points | state differs | firing in one engine only | pages service / Prometheus "
        "| value present in one only | value differs > 1e-6 | max rel. difference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in results:
        one_only = sum(1 for m in c.value_mismatches if (m[3] is None) != (m[4] is None))
        differs = len(c.value_mismatches) - one_only
        rows.append(
            f"| {c.dataset} | {c.points} | {len(c.state_mismatches)} | {c.firing_alone_s} s "
            f"| {c.pages['service']} / {c.pages['prometheus']} | {one_only} | {differs} | {c.max_rel:.2g} |"
        )
    return "\n".join(rows)


def first_mismatches(c: Comparison, n: int = 8) -> str:
    lines = [f"{r} {tr} t={t}s: service {s}, prometheus {p}" for r, tr, t, s, p in c.state_mismatches[:n]]
    lines += [
        f"{r} {tr} t={t}s: value service {s!r}, prometheus {p!r}" for r, tr, t, s, p in c.value_mismatches[:n]
    ]
    return "\n".join(lines)


def main() -> None:  # pragma: no cover - a report for people
    import shutil

    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (Debian package prometheus)"
    ds = datasets()
    prom = run_promtool(ds, promtool)
    print(table([compare(d, run_service(d), prom[d.name]) for d in ds]))


if __name__ == "__main__":  # pragma: no cover
    main()
