"""The deploy page in real headless Chromium, one page per state: guardrail started for real
(``build_app``, SQLite in a temp dir), six deploys driven through the API on data time (analyzing,
promoted, rolled back after a PASS at 10%, paused by on-call, held as inconclusive, rolled back at the
first look), then each page opened in one Chromium over the DevTools protocol: its DOM, a screenshot,
and the geometry Chromium laid out (element boxes of every chart label, the data points, the bands).

What is checked can fail: no chart label overlaps another or the data, every label (the last time
label too) lies inside its SVG's viewBox, the confidence band of a first-look verdict has height, the
post-mortem link answers text/html, and the screenshots show the tracks' colours."""

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

import aiohttp
import numpy as np
import pytest

from guardrail.demo import OPS_TOKEN
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


STATES = ("analyzing", "promoted", "rolled_back", "paused", "inconclusive", "first_look")
SHOW_STATE = {
    "analyzing": "analyzing",
    "promoted": "promoted",
    "rolled_back": "rolled back",
    "paused": "paused",
    "inconclusive": "paused",
    "first_look": "rolled back",
}

# Run in the page by DevTools (not page script: the CSP forbids that). Per chart: the viewBox, every
# text element's box in screen pixels and in SVG units, the data (dots and points along each series'
# line, in screen pixels) and each band's box.
GEOMETRY_JS = """
(() => {
  const box = r => ({x: r.x, y: r.y, w: r.width, h: r.height});
  return [...document.querySelectorAll('figure.chart')].map(fig => {
    const svg = fig.querySelector('svg.plot');
    const vb = svg.viewBox.baseVal, ctm = svg.getScreenCTM();
    const texts = [...svg.querySelectorAll('text')].map(t => ({
      text: t.textContent, cls: t.getAttribute('class') || '',
      screen: box(t.getBoundingClientRect()), user: box(t.getBBox())}));
    const data = [];
    svg.querySelectorAll('circle').forEach(c => {
      const r = c.getBoundingClientRect(); data.push([r.x + r.width / 2, r.y + r.height / 2]); });
    svg.querySelectorAll('path[data-series]').forEach(p => {
      if (!p.getAttribute('d')) return;
      const n = p.getTotalLength();
      for (let i = 0; i <= n; i += 2) { const q = p.getPointAtLength(i).matrixTransform(ctm); data.push([q.x, q.y]); }
    });
    const bands = [...svg.querySelectorAll('path.band')].map(p => box(p.getBoundingClientRect()));
    return {id: fig.id, viewBox: [vb.x, vb.y, vb.width, vb.height], texts, data, bands};
  });
})()
"""


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Runs everything once: the six deploys, then each page's DOM, geometry and screenshot, and the
    post-mortem links of the rolled-back ones."""
    script = _script()
    _chromium_or_skip(script)
    tmp = tmp_path_factory.mktemp("deploy-page")

    async def run() -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        async with script.start_guardrail(tmp / "guardrail") as running:
            deploys = {state: await script.drive_scenario(running, state) for state in STATES}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                for state in ("rolled_back", "first_look"):  # a rollback drafts its post-mortem
                    await _wait_for_postmortem(http, running.base_url, deploys[state]["id"])
                async with script.Browser(width=WIDTH, height=HEIGHT) as browser:
                    for state, deploy in deploys.items():
                        url = f"{running.base_url}/deploys/{deploy['id']}"
                        page = await browser.open(url)
                        png = tmp / f"{state}.png"
                        await page.screenshot(png, selector="#chart-error-rate")
                        if state == "rolled_back":
                            await page.screenshot(tmp / "page.png")
                        html = await page.evaluate("document.documentElement.outerHTML")
                        out[state] = {
                            "deploy": deploy,
                            "dom": parse(html),
                            "charts": await page.evaluate(GEOMETRY_JS),
                            "png": tmp / "page.png",
                            "chart_png": png,
                        }
                        links = [a for a in parse(html).find_all("a") if "draft" in a.classes]
                        out[state]["drafts"] = []
                        for a in links:
                            async with http.get(running.base_url + a.attrs["href"]) as r:
                                body = await r.text()
                                out[state]["drafts"].append((a.text, r.status, r.content_type, body))
        return out

    return asyncio.run(run())


async def _wait_for_postmortem(http: aiohttp.ClientSession, base: str, deploy_id: str) -> None:
    headers = {"Authorization": f"Bearer {OPS_TOKEN}"}
    for _ in range(100):
        async with http.get(f"{base}/api/v1/deploys/{deploy_id}/drafts", headers=headers) as r:
            if any(d["kind"] == "postmortem" for d in (await r.json())["drafts"]):
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no post-mortem was drafted for the rolled-back deploy {deploy_id}")


@pytest.fixture(scope="module")
def rendered(pages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The rolled-back deploy's page (the README's screenshot)."""
    return pages["rolled_back"]


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
    assert href.startswith(
        "https://grafana.example.com/d/guardrail-canary?var-service=checkout&var-deploy_id="
    )


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


# --- every state ---------------------------------------------------------------------------------


def _overlap(a: dict[str, float], b: dict[str, float]) -> float:
    """The area two boxes share (0 when they only touch)."""
    w = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
    h = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
    return max(w, 0.0) * max(h, 0.0)


@pytest.mark.parametrize("state", STATES)
def test_the_page_shows_the_state(pages: dict[str, dict[str, Any]], state: str) -> None:
    page = pages[state]
    assert page["deploy"]["state"] == SHOW_STATE[state].replace(" ", "_")
    assert page["dom"].one(id="state").text == SHOW_STATE[state]
    if state == "inconclusive":
        assert page["dom"].one(id="reason").text.startswith("analysis inconclusive, held for a human")
    if state == "paused":
        assert "paused by on-call" in page["dom"].one(id="reason").text


@pytest.mark.parametrize("state", STATES)
def test_no_chart_label_overlaps_another_label_or_the_data(
    pages: dict[str, dict[str, Any]], state: str
) -> None:
    charts = pages[state]["charts"]
    assert len(charts) == 4
    for chart in charts:
        texts = [t for t in chart["texts"] if t["screen"]["w"] > 0]
        assert texts, chart["id"]
        for i, a in enumerate(texts):
            for b in texts[i + 1 :]:
                assert _overlap(a["screen"], b["screen"]) < 1.0, (state, chart["id"], a["text"], b["text"])
        for t in texts:
            r = t["screen"]
            inside = [
                (x, y)
                for x, y in chart["data"]
                if r["x"] + 1 < x < r["x"] + r["w"] - 1 and r["y"] + 1 < y < r["y"] + r["h"] - 1
            ]
            assert not inside, (state, chart["id"], t["text"], inside[:3])
            for band in chart["bands"]:
                assert _overlap(r, band) < 1.0, (state, chart["id"], t["text"], "band")


@pytest.mark.parametrize("state", STATES)
def test_every_label_lies_inside_its_charts_viewbox(pages: dict[str, dict[str, Any]], state: str) -> None:
    for chart in pages[state]["charts"]:
        vx, vy, vw, vh = chart["viewBox"]
        for t in chart["texts"]:
            u = t["user"]
            assert vx <= u["x"] and u["x"] + u["w"] <= vx + vw, (state, chart["id"], t["text"], u, vw)
            assert vy <= u["y"] and u["y"] + u["h"] <= vy + vh, (state, chart["id"], t["text"], u, vh)
        ticks = [t for t in chart["texts"] if "x-tick" in t["cls"].split()]
        last = max(ticks, key=lambda t: t["user"]["x"])
        assert last["user"]["x"] + last["user"]["w"] <= vx + vw, (state, chart["id"], last)


def test_a_verdict_at_the_first_look_draws_a_band_with_height(pages: dict[str, dict[str, Any]]) -> None:
    page = pages["first_look"]
    decisions = [e.badge for e in timeline(page["dom"]) if e.badge in ("FAIL", "PASS", "INCONCLUSIVE")]
    fig = page["dom"].one("figure", id="chart-judge-error-rate")
    assert decisions == ["FAIL"] and len(fig.find_all("circle", cls="estimate")) == 1  # one look, decided
    judge = {c["id"]: c for c in page["charts"]}["chart-judge-error-rate"]
    (band,) = judge["bands"]
    assert band["h"] >= 5 and band["w"] >= 8, band


@pytest.mark.parametrize("state", ["rolled_back", "first_look"])
def test_the_post_mortem_link_opens_a_rendered_page(pages: dict[str, dict[str, Any]], state: str) -> None:
    drafts = {kind: rest for kind, *rest in pages[state]["drafts"]}
    status, content_type, body = drafts["postmortem"]
    assert status == 200 and content_type == "text/html"
    doc = parse(body).one("article", id="draft")
    assert doc.find_all("h1") and len(doc.find_all("h2")) >= 3


@pytest.mark.parametrize("state", STATES)
def test_each_screenshot_shows_the_tracks(pages: dict[str, dict[str, Any]], state: str) -> None:
    """The first chart's screenshot (the whole page is decoded once, above: it takes seconds)."""
    width, height, rows = _pixels(pages[state]["chart_png"].read_bytes())
    assert width >= 600 and height >= 150, (width, height)
    pixels = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, 3)
    baseline = int(np.all(pixels == BASELINE_RGB, axis=1).sum())
    canary = int(np.all(pixels == CANARY_RGB, axis=1).sum())
    assert baseline > 300 and canary > 30, (state, baseline, canary)
