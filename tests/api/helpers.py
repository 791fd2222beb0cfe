"""Request bodies and synthetic sample windows for the API tests."""

from __future__ import annotations

from typing import Any

T0 = 1_700_000_000.0  # data time of the deploys under test
WINDOW_S = 10.0
BOUNDS = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
SHAPE = [0.30, 0.30, 0.20, 0.12, 0.05, 0.02, 0.008, 0.002]  # the same latency distribution on both tracks


def marker(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "service": "checkout",
        "environment": "production",
        "version": "v2.4.1",
        "previous_version": "v2.4.0",
        "commit": "9f1c2ab",
        "commit_time": "2023-11-14T22:00:00Z",
        "author": "dana",
        "change_type": "feature",
        "strategy": "canary",
        "description": "faster cart totals",
        "changes": ["cart: cache totals"],
        "db_migrations": {"applied": False, "description": ""},
        "steps": [
            {"weight": 10, "min_duration_s": 0},
            {"weight": 50, "min_duration_s": 0},
            {"weight": 100},
        ],
        "started_at": T0,
    }
    body.update(overrides)
    return body


def histogram(n: int) -> dict[str, Any]:
    counts = [int(n * p) for p in SHAPE]
    counts[0] += n - sum(counts)
    return {"bounds": BOUNDS, "counts": counts}


def window(
    i: int,
    weight: float,
    *,
    total: int = 2000,
    canary_error_rate: float = 0.005,
    baseline_error_rate: float = 0.005,
) -> list[dict[str, Any]]:
    """The i-th 10-s window after T0: canary gets ``weight`` percent of ``total`` requests."""
    start, end = T0 + i * WINDOW_S, T0 + (i + 1) * WINDOW_S
    canary = round(total * weight / 100)
    baseline = total - canary
    return [
        {
            "track": track,
            "start": start,
            "end": end,
            "requests": n,
            "errors": round(n * rate),
            "latency_histogram": histogram(n),
        }
        for track, n, rate in (
            ("canary", canary, canary_error_rate),
            ("baseline", baseline, baseline_error_rate),
        )
    ]
