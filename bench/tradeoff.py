"""The trade-off picture of the judge benchmark: ``python -m bench.tradeoff [tradeoff.json] [out.png]``.

x: false-rollback rate on A/A (%, Wilson 95% interval as a bar); y: median time to detect errors x2
over all runs (a run not rolled back within the 30 minutes counts as never detected). One point per
peer configuration (filled and named: as documented; hollow: a common variant), and guardrail's
curve over its deploy-level alpha. A configuration that misses errors x2 in half of the runs or
more has no median: it is drawn in the band above the plot, "not detected". ``judge_bench`` calls
:func:`plot` after its tables; matplotlib comes with the ``bench`` extra (pip install -e '.[bench]').
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: a file only
import matplotlib.pyplot as plt

STYLE = {  # family -> (marker, colour)
    "guardrail": ("o", "#1b7837"),
    "Kayenta": ("s", "#2166ac"),
    "Argo Rollouts": ("^", "#d6604d"),
    "Flagger": ("D", "#8c510a"),
    "Threshold rule": ("v", "#762a83"),
}
HORIZON_S = 1800.0
NOT_DETECTED_Y = 2500.0  # where "not detected" points are drawn (above the 30-min horizon)
LINTHRESH = 0.1  # the x axis is linear within +-0.1% (so 0% shows), logarithmic beyond


def _y(p: dict) -> float:
    return NOT_DETECTED_Y if p["x2_ttd_median_s"] is None else p["x2_ttd_median_s"]


def _xerr(p: dict) -> list[list[float]]:
    x = 100 * p["false_rollback_rate"]
    return [
        [max(0.0, x - 100 * p["false_rollback_wilson_lo"])],
        [max(0.0, 100 * p["false_rollback_wilson_hi"] - x)],
    ]


def _place_labels(fig, ax, labels: list[tuple[float, float, str, str, bool]]) -> None:
    """Annotate points without overlapping earlier labels: try a few offsets around each point."""
    renderer = fig.canvas.get_renderer()
    placed = []
    offsets = [(6, 4), (6, -12), (-6, 6), (6, 14), (6, -22), (-6, -14), (6, 24), (6, -32)]
    for x, y, text, colour, documented in labels:  # in the caller's order: earlier labels win
        for dx, dy in offsets:
            ann = ax.annotate(
                text,
                (x, y),
                textcoords="offset points",
                xytext=(dx, dy - 16 if text.startswith("α") else dy),
                ha="left" if dx > 0 else "right",
                fontsize=7.5 if documented else 6.5,
                fontweight="bold" if documented else "normal",
                color=colour,
                zorder=6,
            )
            box = ann.get_window_extent(renderer)
            if not any(box.overlaps(b) for b in placed):
                placed.append(box)
                break
            ann.remove()
        else:  # nowhere free: keep the first position
            ann = ax.annotate(
                text, (x, y), textcoords="offset points", xytext=offsets[0], fontsize=6.5, color=colour
            )
            placed.append(ann.get_window_extent(renderer))


def plot(payload: dict, path: Path) -> Path:
    """Draw the picture of ``payload`` (the content of tradeoff.json) into ``path`` (PNG)."""
    fig, ax = plt.subplots(figsize=(11, 7.5), dpi=110)
    ax.set_xscale("symlog", linthresh=LINTHRESH, linscale=0.6)
    ax.set_yscale("log")
    ax.axhspan(HORIZON_S * 1.2, NOT_DETECTED_Y * 3, color="#eeeeee", zorder=0)
    ax.text(
        0.005,
        0.99,
        "not detected in half of the runs or more (no median):",
        transform=ax.transAxes,
        va="top",
        fontsize=8,
    )

    lowest = min(_y(p) for p in (*payload["guardrail"], *payload["peers"]))
    y_low = min(40.0, lowest / 1.6)
    ax.set_xticks([0, 0.1, 0.3, 1, 3, 10, 30])
    ax.set_xticklabels(["0", "0.1", "0.3", "1", "3", "10", "30"])
    y_ticks = [t for t in (10, 30, 60, 120, 300, 600, 1200, 1800) if t >= y_low]
    ax.set_yticks(y_ticks)
    ax.set_yticklabels([str(t) for t in y_ticks])
    ax.set_xlim(-0.03, 120)
    ax.set_ylim(y_low, NOT_DETECTED_Y * 3)
    ax.set_xlabel("false rollbacks on A/A, % of healthy deploys (bars: Wilson 95%)")
    ax.set_ylabel("median time to detect errors ×2, s (all runs; missed = never)")
    ax.set_title(
        f"Judge benchmark: {payload['runs_null']} A/A and {payload['runs_reg']} errors ×2 runs per point "
        f"(seed {payload['seed']}); filled = as documented, hollow = variant",
        fontsize=10,
    )
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()

    curve = sorted(payload["guardrail"], key=lambda p: p["alpha"])
    marker, colour = STYLE["guardrail"]
    ax.plot(
        [100 * p["false_rollback_rate"] for p in curve],
        [_y(p) for p in curve],
        "-",
        color=colour,
        lw=2,
        zorder=3,
        label="guardrail (alpha 0.001 … 0.03)",
    )
    alpha_labels: list[tuple[float, float, str, str, bool]] = []
    for p in curve:
        x, y = 100 * p["false_rollback_rate"], _y(p)
        ax.errorbar(x, y, xerr=_xerr(p), fmt=marker, color=colour, ms=7, capsize=2, elinewidth=0.8, zorder=4)
        alpha_labels.append((x, y, f"α={p['alpha']:g}", colour, True))

    seen: set[str] = set()
    labels: list[tuple[float, float, str, str, bool]] = []
    missed: list[str] = []
    for p in payload["peers"]:
        marker, colour = STYLE.get(p["family"], ("x", "black"))
        x, y = 100 * p["false_rollback_rate"], _y(p)
        label = p["family"] if p["family"] not in seen else None
        seen.add(p["family"])
        ax.errorbar(
            x,
            y,
            xerr=_xerr(p),
            fmt=marker,
            color=colour,
            mfc=colour if p["documented"] else "white",
            ms=9 if p["documented"] else 6,
            capsize=2,
            elinewidth=0.8,
            alpha=0.9,
            zorder=5,
            label=label,
        )
        power = f"{100 * p['x2_power_30min']:.0f}% detected"
        if p["x2_ttd_median_s"] is None:
            missed.append(f"{p['name']} ({power}, {100 * p['false_rollback_rate']:.2g}% false)")
            continue
        text = p["name"] + ("" if p["x2_power_30min"] >= 0.995 else f" ({power})")
        labels.append((x, y, text, colour, p["documented"]))
    labels.sort(key=lambda t: (not t[4], t[0], t[1]))  # documented first
    if missed:
        lines = ["; ".join(missed[i : i + 3]) for i in range(0, len(missed), 3)]
        ax.text(0.005, 0.962, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=6.5)
    ax.legend(loc="upper right", fontsize=7.5, framealpha=0.9)
    _place_labels(fig, ax, [*alpha_labels, *labels])

    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    results = Path(__file__).resolve().parent / "results"
    src = Path(argv[0]) if argv else results / "tradeoff.json"
    out = Path(argv[1]) if len(argv) > 1 else src.with_suffix(".png")
    print(plot(json.loads(src.read_text()), out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
