"""The deploy page in real headless Chromium: guardrail started for real (``build_app``, SQLite in a
temp dir), one regressed canary driven to rollback through the API, then the page rendered by
Chromium (``--dump-dom`` and ``--screenshot``) and checked: timeline, SVG chart paths, evidence, and
pixels of the canary and baseline colours in the PNG."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import struct
import sys
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests.api.pagedom import Element, parse, timeline

pytestmark = pytest.mark.integration

REQUIRE_ENV = "GUARDRAIL_REQUIRE_INTEGRATION"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "screenshot_deploy_page.py"
WIDTH, HEIGHT = 1280, 2000
CANARY_RGB = (0xD9, 0x48, 0x0F)  # --canary and --baseline in base.html.j2
BASELINE_RGB = (0x19, 0x71, 0xC2)


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("screenshot_deploy_page", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def _chromium_or_skip(script: ModuleType) -> None:
    if script.chromium_binary() is not None:
        return
    why = "chromium is not installed (Debian: apt-get install chromium), so the browser test cannot run"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs everything once: the deploy, Chromium's DOM and its screenshot."""
    script = _script()
    _chromium_or_skip(script)
    tmp = tmp_path_factory.mktemp("deploy-page")
    png = tmp / "page.png"

    async def run() -> dict[str, Any]:
        async with script.start_guardrail(tmp / "guardrail") as running:
            deploy = await script.drive_regressed_deploy(running)
            url = f"{running.base_url}/deploys/{deploy['id']}"
            dom = await script.dump_dom(url)
            await script.screenshot(url, png, width=WIDTH, height=HEIGHT)
        return {"deploy": deploy, "dom": parse(dom), "png": png}

    return asyncio.run(run())


def test_the_driven_deploy_was_rolled_back(rendered: dict[str, Any]) -> None:
    assert rendered["deploy"]["state"] == "rolled_back"


def test_header_shows_the_state_and_why(rendered: dict[str, Any]) -> None:
    dom: Element = rendered["dom"]
    assert dom.one(id="state").text == "rolled back"
    assert dom.one(id="reason").text.startswith("canary analysis failed: FAIL")
    assert "2.8.0" in dom.one("h1").text and "2.7.4" in dom.one("h1").text


def test_timeline_shows_steps_the_fail_and_the_rollback(rendered: dict[str, Any]) -> None:
    entries = timeline(rendered["dom"])
    badges = [e.badge for e in entries]
    assert badges.count("FAIL") == 1 and "PASS" in badges and "rolled back" in badges
    actions = [e.body for e in entries if "action" in e.classes]
    assert actions[0].startswith("step 1/3: 2.8.0 on 10% of traffic: done")
    assert actions[1].startswith("step 2/3: 2.8.0 on 50% of traffic: done")
    assert any(a.startswith("roll back to 2.7.4: done") for a in actions)
    assert all("(took " in a for a in actions)
    assert any("fold" in e.classes for e in entries)  # CONTINUE snapshots folded


def test_charts_are_svg_paths_with_both_tracks_and_the_judges_band(rendered: dict[str, Any]) -> None:
    dom: Element = rendered["dom"]
    for chart_id in ("chart-error-rate", "chart-latency-p99"):
        fig = dom.one("figure", id=chart_id)
        for track in ("canary", "baseline"):
            d = fig.one("path", data_series=track).attrs["d"]
            assert d.startswith("M") and d.count("L") >= 10, (chart_id, track)
    for chart_id in ("chart-judge-error-rate", "chart-judge-latency-p99"):
        fig = dom.one("figure", id=chart_id)
        assert fig.one("path", cls="band").attrs["d"].endswith("Z")
        assert [t.text for t in fig.find_all("text", cls="mark-decision-fail")] == ["FAIL"]
        assert len(fig.find_all("line", cls="mark-step")) == 2  # 10%, then 50%


def test_evidence_table_has_every_metric_of_the_failing_verdict(rendered: dict[str, Any]) -> None:
    rows = rendered["dom"].one("table", id="evidence").find_all("tr", cls="metric")
    status = {r.attrs["data-metric"]: r.one("span", cls="status").text for r in rows}
    assert {"error_rate", "latency_p99", "latency_p95", "throughput"} <= set(status)
    assert "fail" in status.values()


def test_grafana_link_points_at_the_dashboard(rendered: dict[str, Any]) -> None:
    href = rendered["dom"].one("a", id="grafana").attrs["href"]
    assert href.startswith("https://grafana.example.com/d/guardrail-canary?var-service=checkout&var-deploy_id=")


def _pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered RGB(A) rows of an 8-bit truecolour PNG."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = data
        elif kind == b"IDAT":
            idat += data
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), (depth, colour)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line) if bpp == 3 else bytes(v for j, v in enumerate(line) if j % 4 != 3))
        prev = line
    return width, height, rows


def test_screenshot_shows_the_canary_and_baseline_lines(rendered: dict[str, Any]) -> None:
    png: Path = rendered["png"]
    data = png.read_bytes()
    assert len(data) > 50_000  # a blank page of this size compresses to a few kB
    width, height, rows = _pixels(data)
    assert (width, height) == (WIDTH, HEIGHT)
    pixels = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, 3)
    canary = int(np.all(pixels == CANARY_RGB, axis=1).sum())
    baseline = int(np.all(pixels == BASELINE_RGB, axis=1).sum())
    assert canary > 300 and baseline > 300, (canary, baseline)  # lines and dots of the charts
