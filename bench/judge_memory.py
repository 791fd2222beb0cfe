"""Memory of one deploy's Judge: bounded by buckets and metrics, not by the request count.

``python -m bench.judge_memory`` feeds the same number of windows at traffic levels three orders of
magnitude apart and reports the judge's retained memory (tracemalloc), then the growth per window.
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np

from guardrail.domain.judge import AnalysisSpec, Judge
from guardrail.testing import T0, SyntheticTraffic


def retained_bytes(rate: float, windows: int, seed: int = 1) -> int:
    rng = np.random.default_rng(seed)
    traffic = SyntheticTraffic(rate=rate)
    samples = [traffic.window(rng, T0 + 10 * k) for k in range(windows)]
    history = traffic.history(rng)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    judge = Judge(AnalysisSpec(max_duration_s=1e9), start=T0)
    judge.set_weight(T0, traffic.weight)
    judge.add_many(history)
    for c, b in samples:
        judge.add(c)
        judge.add(b)
        judge.decide(c.end)
    judge.evaluate()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del judge
    return after - before


def main() -> None:
    retained_bytes(20.0, 2)  # warm-up: the priors of a grid are built once per process and shared
    rows = []
    for rate in (20.0, 2_000.0, 200_000.0):
        for windows in (180, 720):
            rows.append((rate, windows, retained_bytes(rate, windows)))
    print("| requests/s | windows | retained by the judge |")
    print("|---|---|---|")
    for rate, windows, b in rows:
        print(f"| {rate:,.0f} | {windows} | {b / 1024:,.1f} KiB |")
    per_window = (rows[1][2] - rows[0][2]) / (720 - 180)
    print(f"\ngrowth per extra window (the keys that detect duplicate windows): {per_window:.0f} bytes")


if __name__ == "__main__":
    main()
