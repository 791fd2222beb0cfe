"""Render a deploy page in real headless Chromium: ``docs/deploy-page.png``.

Starts guardrail for real (``guardrail.main.build_app``, SQLite in a temporary directory, the demo's
``command`` adapter preset), drives one canary deploy through the API on data time, and takes a
screenshot of ``/deploys/{id}``. The deploy is healthy at 10% and passes that step; at 50% its new
payment client saturates and errors and slow requests climb, the judge fails it and guardrail rolls
it back.

    .venv/bin/python scripts/screenshot_deploy_page.py [--out docs/deploy-page.png] [--scenario rolled_back]

The helpers (``start_guardrail``, ``drive_scenario``, ``Browser``) are also used by
``tests/integration/test_deploy_page_browser.py``, which drives every scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from guardrail.demo import CI_TOKEN, OPS_TOKEN, Demo
from guardrail.main import build_app
from guardrail.testing import SyntheticTraffic, sample_json

T_START = 1_767_270_600.0  # 2026-01-01 12:30 UTC, data time of the deploy
GRAFANA_URL = "https://grafana.example.com"
CHROMIUM_TIMEOUT_S = 90.0
HTTP_TIMEOUT_S = 30.0
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Running:
    base_url: str  # http://127.0.0.1:PORT
    demo: Demo


@asynccontextmanager
async def start_guardrail(workdir: Path, *, grafana_url: str | None = GRAFANA_URL) -> AsyncIterator[Running]:
    """guardrail on a free loopback port with SQLite in ``workdir`` (stopped on exit)."""
    demo = Demo(workdir)
    demo.prepare()
    settings = demo.settings()
    settings = settings.model_copy(
        update={"server": settings.server.model_copy(update={"grafana_url": grafana_url})}
    )
    app = await build_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", demo.port).start()
        yield Running(f"http://127.0.0.1:{demo.port}", demo)
    finally:
        await runner.cleanup()


async def _post(
    http: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    expect: int,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    async with http.post(url, json=body, headers=headers or {"Authorization": f"Bearer {CI_TOKEN}"}) as r:
        out = await r.json()
        if r.status != expect:
            raise RuntimeError(f"POST {url}: {r.status} {out}")
        return out


SCENARIOS = ("analyzing", "promoted", "rolled_back", "paused", "inconclusive", "first_look")


async def drive_regressed_deploy(
    running: Running, *, seed: int = 7, max_minutes: float = 40
) -> dict[str, Any]:
    """Mark checkout 2.8.0 and push windows until it is rolled back (or ``max_minutes`` of data)."""
    return await drive_scenario(running, "rolled_back", seed=seed, max_minutes=max_minutes)


async def drive_scenario(
    running: Running, scenario: str, *, seed: int = 7, max_minutes: float = 40
) -> dict[str, Any]:
    """One deploy of checkout 2.8.0 driven through the API on data time into the page state
    ``scenario``:

    - ``rolled_back``: healthy at 10% (PASS), at 50% the new client's pool saturates; FAIL, rollback;
    - ``promoted``: healthy throughout;
    - ``analyzing``: healthy, stopped after a minute of data (no decision yet);
    - ``paused``: healthy for a minute, then paused by on-call;
    - ``inconclusive``: little traffic, a two-minute analysis window, no decision: held for a human;
    - ``first_look``: the canary fails a fifth of its requests; FAIL at the first verdict, rollback.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    api = f"{running.base_url}/api/v1"
    demo = running.demo
    marker = demo.marker("2.8.0", "2.7.4", T_START, "checkout: new payment client with connection pooling")
    analysis: dict[str, Any] = {"alpha": 0.01, "interval_s": 10, "max_duration_s": 3600}
    if scenario == "inconclusive":
        analysis.update(max_duration_s=120, on_inconclusive="hold")
    marker.update(
        commit="4be19c2",
        author="dana",
        analysis=analysis,
        steps=[{"weight": 10, "min_duration_s": 120}, {"weight": 50, "min_duration_s": 120}, {"weight": 100}],
    )
    healthy = SyntheticTraffic(rate=1000)
    # under half the traffic the new client's pool saturates: 3x the errors and a heavier tail
    saturated = SyntheticTraffic(rate=1000, err_ratio=3.0, canary_sigma=0.62)
    quiet = SyntheticTraffic(rate=4, canary_sigma=0.55)  # too few requests for any decision in 2 min
    broken = SyntheticTraffic(rate=1000, err_ratio=40.0)

    def traffic(weight: float) -> SyntheticTraffic:
        if scenario == "rolled_back" and weight >= 0.5:
            return saturated
        return {"inconclusive": quiet, "first_look": broken}.get(scenario, healthy)

    stop_after = {"analyzing": 60.0, "paused": 60.0}.get(scenario, 60 * max_minutes)
    ops = {"Authorization": f"Bearer {OPS_TOKEN}"}
    rng = np.random.default_rng(seed)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as http:
        deploy = await _post(http, f"{api}/deploys", marker, 201)
        history = [sample_json(s) for s in traffic(0).history(rng, minutes=10, end=T_START)]
        await _post(http, f"{api}/deploys/{deploy['id']}/samples", {"samples": history}, 202)
        t = T_START
        while deploy["state"] not in ("promoted", "rolled_back", "rollback_failed", "paused") and (
            t < T_START + stop_after
        ):
            w = demo.canary_weight("2.8.0")
            c, b = traffic(w).window(rng, t, weight=w if w > 0 else None)
            out = await _post(
                http,
                f"{api}/deploys/{deploy['id']}/samples",
                {"samples": [sample_json(c), sample_json(b)]},
                202,
            )
            deploy = out["deploy"]
            t += healthy.interval
        if scenario == "paused":
            deploy = await _post(
                http,
                f"{api}/deploys/{deploy['id']}/pause",
                {"reason": "checking a payment-provider incident first"},
                200,
                headers=ops,
            )
    return deploy


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


async def run_chromium(*args: str, timeout: float = CHROMIUM_TIMEOUT_S) -> tuple[int, bytes, bytes]:
    """Headless Chromium with a throwaway profile; (exit code, stdout, stderr). Killed on timeout."""
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="guardrail-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise TimeoutError(f"chromium did not finish within {timeout:.0f} s") from None
    return proc.returncode or 0, out, err


class Browser:
    """One headless Chromium driven over the DevTools protocol (a websocket): open a page, evaluate an
    expression in it (DevTools evaluation is not page script, so the page's CSP still forbids every
    script of its own), take a screenshot. ``async with Browser() as b: page = await b.open(url)``."""

    def __init__(self, *, width: int = 1280, height: int = 2000, timeout: float = CHROMIUM_TIMEOUT_S) -> None:
        self.width, self.height, self.timeout = width, height, timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._profile: tempfile.TemporaryDirectory[str] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._next = 0

    async def __aenter__(self) -> Browser:
        binary = chromium_binary()
        if binary is None:
            raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
        self._profile = tempfile.TemporaryDirectory(prefix="guardrail-chromium-")
        self._proc = await asyncio.create_subprocess_exec(
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
            f"--user-data-dir={self._profile.name}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            ws_url = await asyncio.wait_for(self._devtools_url(), timeout=self.timeout)
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            self._ws = await self._http.ws_connect(ws_url, max_msg_size=0)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _devtools_url(self) -> str:
        assert self._proc is not None and self._proc.stderr is not None
        seen = []
        while line := await self._proc.stderr.readline():
            text = line.decode(errors="replace").strip()
            seen.append(text)
            if text.startswith("DevTools listening on "):
                return text.removeprefix("DevTools listening on ")
        raise RuntimeError("chromium exited before it listened: " + " | ".join(seen[-10:]))

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        if self._profile is not None:
            self._profile.cleanup()

    async def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> Any:
        """One DevTools command; its result (events arriving meanwhile are dropped)."""
        assert self._ws is not None
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self._ws.send_json(msg)
        async with asyncio.timeout(self.timeout):
            while True:
                reply = await self._ws.receive_json()
                if reply.get("id") == self._next:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})

    async def open(self, url: str) -> Page:
        """A new tab of the window's size showing ``url``, once its load event fired."""
        target = await self.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )
        await page.call("Page.navigate", {"url": url})
        await page.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")
        return page


@dataclass
class Page:
    browser: Browser
    session: str

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.browser.call(method, params, self.session)

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression evaluated in the page."""
        out = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in out:
            raise RuntimeError(f"evaluation failed: {out['exceptionDetails']}")
        return out["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not await self.evaluate(expression):
                await asyncio.sleep(0.05)

    async def screenshot(self, path: Path, selector: str | None = None) -> None:
        """The viewport as a PNG, or only the box of the element ``selector`` finds."""
        params: dict[str, Any] = {"format": "png"}
        if selector is not None:
            r = await self.evaluate(
                f"(r => ({{x: r.x, y: r.y, width: r.width, height: r.height}}))"
                f"(document.querySelector({json.dumps(selector)}).getBoundingClientRect())"
            )
            params["clip"] = {**r, "scale": 1}
        out = await self.call("Page.captureScreenshot", params)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(out["data"]))


async def dump_dom(url: str) -> str:
    rc, out, err = await run_chromium("--dump-dom", url)
    if rc != 0:
        raise RuntimeError(f"chromium --dump-dom exited {rc}: {err.decode(errors='replace')[-2000:]}")
    return out.decode()


async def screenshot(url: str, path: Path, *, width: int = 1280, height: int = 2000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    rc, _, err = await run_chromium(f"--screenshot={path}", f"--window-size={width},{height}", url)
    if rc != 0 or not path.exists():
        raise RuntimeError(f"chromium --screenshot exited {rc}: {err.decode(errors='replace')[-2000:]}")


async def main(out: Path, scenario: str, until: str) -> int:
    with tempfile.TemporaryDirectory(prefix="guardrail-page-") as tmp:
        async with start_guardrail(Path(tmp)) as running:
            deploy = await drive_scenario(running, scenario)
            url = f"{running.base_url}/deploys/{deploy['id']}"
            print(f"deploy {deploy['id']}: {deploy['state']} ({deploy['reason'][:100]})")
            async with Browser(width=1280, height=4000) as browser:
                page = await browser.open(url)
                # the page from its top to the end of the element ``until`` (and a margin)
                bottom = await page.evaluate(
                    f"document.querySelector({json.dumps(until)}).getBoundingClientRect().bottom"
                )
                await page.call(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": 1280, "height": int(bottom) + 24, "deviceScaleFactor": 1, "mobile": False},
                )
                await page.screenshot(out)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "deploy-page.png")
    parser.add_argument("--scenario", choices=SCENARIOS, default="rolled_back", help="the page state shown")
    parser.add_argument(
        "--until",
        default="div.how-to-read",
        help="CSS selector of the last element shown (default: the header, the four charts, the evidence "
        "table and its explanations, ending before the timeline)",
    )
    ns = parser.parse_args()
    sys.exit(asyncio.run(main(ns.out, ns.scenario, ns.until)))
