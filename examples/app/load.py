"""A small bounded load generator for the sample service.

    python -m examples.app.load --target http://127.0.0.1:9101/work --target http://127.0.0.1:9102/work \\
        --weight 90 --weight 10 --rps 200 --duration 60

Sends ``int(rps * duration)`` GET requests, paced evenly, at most ``--concurrency`` in flight, and
stops by itself. Requests go to the targets in proportion to their weights with a smooth weighted
round robin (deterministic: 90/10 sends exactly 1 request in 10 to the second target). The weights
can be changed while it runs (``LoadGenerator.set_weights``), which is how tests simulate a canary
getting 10% then 50% of the traffic. Loopback targets only.

From code::

    result = await run_load(["http://127.0.0.1:9101/work"], rps=200, duration_s=5)
    result.codes["http://127.0.0.1:9101/work"]  # Counter({200: 995, 500: 5})
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ipaddress
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp


def check_loopback(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        ok = parts.scheme in ("http", "https") and (host == "localhost" or ipaddress.ip_address(host).is_loopback)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"target {url!r} is not an http URL on a loopback address (127.0.0.1, ::1, localhost)")
    return url


@dataclass
class LoadResult:
    """Per target: answers by status code, and requests that got no answer (connection errors)."""

    codes: dict[str, collections.Counter[int]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def answered(self, target: str) -> int:
        return sum(self.codes.get(target, {}).values())

    def errors(self, target: str) -> int:
        return sum(n for c, n in self.codes.get(target, {}).items() if c >= 500)

    def as_dict(self) -> dict[str, object]:
        return {
            "elapsed_s": round(self.elapsed_s, 3),
            "targets": {
                t: {"answered": self.answered(t), "errors_5xx": self.errors(t), "failures": self.failures.get(t, 0),
                    "codes": {str(k): v for k, v in sorted(c.items())}}
                for t, c in self.codes.items()
            },
        }


class LoadGenerator:
    def __init__(
        self,
        targets: Sequence[str],
        *,
        rps: float,
        weights: Sequence[float] | None = None,
        concurrency: int = 64,
        timeout_s: float = 5.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if not targets:
            raise ValueError("give at least one target")
        if rps <= 0:
            raise ValueError("rps must be > 0")
        self.targets = [check_loopback(t) for t in targets]
        self.rps = rps
        self.concurrency = concurrency
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._credits = [0.0] * len(self.targets)
        self._weights: list[float] = []
        self.set_weights(weights or [1.0] * len(self.targets))
        self._stop = asyncio.Event()
        self.result = LoadResult(
            codes={t: collections.Counter() for t in self.targets}, failures=dict.fromkeys(self.targets, 0)
        )

    def set_weights(self, weights: Sequence[float]) -> None:
        """Shares of the following requests (any scale; a zero weight gets nothing)."""
        if len(weights) != len(self.targets) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"need {len(self.targets)} non-negative weights with a positive sum, got {list(weights)}")
        self._weights = [float(w) for w in weights]
        self._credits = [0.0] * len(self.targets)

    def stop(self) -> None:
        """Stop sending (requests in flight complete)."""
        self._stop.set()

    def _pick(self) -> str:
        total = sum(self._weights)
        for i, w in enumerate(self._weights):
            self._credits[i] += w
        i = max(range(len(self._credits)), key=self._credits.__getitem__)
        self._credits[i] -= total
        return self.targets[i]

    async def _one(self, session: aiohttp.ClientSession, target: str, sem: asyncio.Semaphore) -> None:
        try:
            async with session.get(target, timeout=self.timeout) as r:
                await r.read()
                self.result.codes[target][r.status] += 1
        except (aiohttp.ClientError, TimeoutError):
            self.result.failures[target] += 1
        finally:
            sem.release()

    async def run(self, duration_s: float) -> LoadResult:
        """Send ``int(rps * duration_s)`` requests (fewer if stopped), wait for the answers."""
        total = int(self.rps * duration_s)
        session = self._session or aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency)
        )
        sem = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()
        try:
            for i in range(total):
                delay = t0 + i / self.rps - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), timeout=delay)
                if self._stop.is_set():
                    break
                await sem.acquire()
                task = asyncio.create_task(self._one(session, self._pick(), sem))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            if self._session is None:
                await session.close()
        self.result.elapsed_s = time.monotonic() - t0
        return self.result


async def run_load(
    targets: Sequence[str],
    *,
    rps: float,
    duration_s: float,
    weights: Sequence[float] | None = None,
    concurrency: int = 64,
) -> LoadResult:
    return await LoadGenerator(targets, rps=rps, weights=weights, concurrency=concurrency).run(duration_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.app.load", description=__doc__.splitlines()[0])
    p.add_argument("--target", action="append", required=True, help="loopback URL; repeat for several")
    p.add_argument("--weight", action="append", type=float, default=None, help="one per target (default equal)")
    p.add_argument("--rps", type=float, default=200)
    p.add_argument("--duration", type=float, default=60, help="seconds")
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args(argv)
    try:
        result = asyncio.run(run_load(args.target, rps=args.rps, duration_s=args.duration,
                                      weights=args.weight, concurrency=args.concurrency))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
