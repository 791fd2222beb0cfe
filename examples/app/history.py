"""Seeded history of the sample service's metrics in OpenMetrics text, for
``promtool tsdb create-blocks-from openmetrics`` (backtests and the pull benchmark).

One ``Deploy`` is a service whose baseline version runs from ``start`` and whose canary version
gets ``weight`` of the traffic from ``deploy_at`` on; the canary may be worse (more errors, slower).
Counters are cumulative like a real process's (``http_requests_total{service, track, version, code}``
and the ``http_request_duration_seconds`` histogram with the sample service's buckets), one point
per ``step_s``; ``baseline_restart_at`` makes the baseline process restart (its counters drop to
zero) at that time. The same seed gives the same bytes.

    python -m examples.app.history --out history.om   # two services: one healthy, one regressed
"""

from __future__ import annotations

import argparse
import math
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from examples.app.service import BUCKETS_S

T0 = 1_700_000_000.0


@dataclass(frozen=True)
class Deploy:
    service: str
    version: str = "1.4.2"
    baseline_version: str = "1.4.1"
    start: float = T0
    deploy_at: float = T0 + 1200
    end: float = T0 + 3600
    step_s: float = 15.0
    rate: float = 200.0  # requests per second, both tracks
    weight: float = 0.10  # canary share after deploy_at
    error_rate: float = 0.005  # below the 1% HighErrorRate alert rule
    latency_median: float = 0.1
    latency_sigma: float = 0.5
    canary_error_factor: float = 1.0
    canary_latency_factor: float = 1.0
    baseline_restart_at: float | None = None
    seed: int = 0


def _bucket_probs(median: float, sigma: float) -> np.ndarray:
    from scipy.special import ndtr

    edges = np.log(np.array(BUCKETS_S))
    cdf = ndtr((edges - math.log(median)) / sigma)
    return np.diff(np.concatenate(([0.0], cdf, [1.0])))


def _fmt(x: float) -> str:
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


def series(d: Deploy) -> dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]]:
    """(metric name, labels) -> [(timestamp, cumulative value)] of one deploy."""
    rng = np.random.default_rng(np.random.SeedSequence(d.seed, spawn_key=(zlib.crc32(d.service.encode()),)))
    n = round((d.end - d.start) / d.step_s)
    out: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]] = {}
    les = [*(_fmt(b) for b in BUCKETS_S), "+Inf"]
    for track, version in (("baseline", d.baseline_version), ("canary", d.version)):
        canary = track == "canary"
        err = d.error_rate * (d.canary_error_factor if canary else 1.0)
        probs = _bucket_probs(d.latency_median * (d.canary_latency_factor if canary else 1.0), d.latency_sigma)
        base = (("service", d.service), ("track", track), ("version", version))
        ok = err_n = 0
        buckets = np.zeros(len(les))
        total_s = 0.0
        for k in range(n + 1):
            t = d.start + k * d.step_s
            if canary and t < d.deploy_at:
                continue  # the canary process does not exist yet
            if not canary and d.baseline_restart_at is not None and t - d.step_s < d.baseline_restart_at <= t:
                ok = err_n = 0
                buckets[:] = 0
                total_s = 0.0
            if k > 0 and (not canary or t - d.step_s >= d.deploy_at):
                share = (d.weight if canary else 1 - d.weight) if t > d.deploy_at else (0.0 if canary else 1.0)
                reqs = int(rng.poisson(d.rate * share * d.step_s))
                e = int(rng.binomial(reqs, min(err, 1.0)))
                ok += reqs - e
                err_n += e
                per = rng.multinomial(reqs, probs)
                buckets += np.cumsum(per)
                total_s += reqs * d.latency_median
            for code, v in (("200", ok), ("500", err_n)):
                out.setdefault(("http_requests_total", (("code", code), *base)), []).append((t, v))
            for le, v in zip(les, buckets, strict=True):
                out.setdefault(("http_request_duration_seconds_bucket", (*base, ("le", le))), []).append((t, v))
            out.setdefault(("http_request_duration_seconds_count", base), []).append((t, buckets[-1]))
            out.setdefault(("http_request_duration_seconds_sum", base), []).append((t, round(total_s, 3)))
    return out


def openmetrics(deploys: Iterable[Deploy]) -> Iterator[str]:
    """Lines of one OpenMetrics file holding every deploy's series (families grouped, then ``# EOF``)."""
    families: dict[str, list[tuple[str, tuple[tuple[str, str], ...], list[tuple[float, float]]]]] = {}
    for d in deploys:
        for (name, labels), points in series(d).items():
            family = "http_requests_total" if name == "http_requests_total" else "http_request_duration_seconds"
            families.setdefault(family, []).append((name, labels, points))
    for family, members in families.items():
        kind = "counter" if family.endswith("_total") else "histogram"
        yield f"# HELP {family} {'Total HTTP requests.' if kind == 'counter' else 'HTTP request latency.'}"
        yield f"# TYPE {family} {kind}"
        for name, labels, points in members:
            lab = ",".join(f'{k}="{v}"' for k, v in labels)
            for t, v in points:
                yield f"{name}{{{lab}}} {_fmt(v)} {_fmt(t)}"
    yield "# EOF"


def write(path: str, deploys: Iterable[Deploy]) -> None:
    with open(path, "w") as f:
        for line in openmetrics(deploys):
            f.write(line + "\n")


def example_deploys(seed: int = 7) -> list[Deploy]:
    """checkout: a healthy canary; payments: a canary failing 4x as often."""
    return [
        Deploy("checkout", seed=seed, baseline_restart_at=T0 + 600),
        Deploy("payments", version="2.0.1", baseline_version="2.0.0", canary_error_factor=4.0, seed=seed),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.app.history", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    write(args.out, example_deploys(args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
