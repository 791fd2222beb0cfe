"""Render a deploy page in real headless Chromium: ``docs/deploy-page.png``.

Starts guardrail for real (``guardrail.main.build_app``, SQLite in a temporary directory, the demo's
``command`` adapter preset), drives one canary deploy through the API on data time, and takes a
screenshot of ``/deploys/{id}``. The deploy is healthy at 10% and passes that step; at 50% its new
payment client saturates and errors and slow requests climb, the judge fails it and guardrail rolls
it back.

    .venv/bin/python scripts/screenshot_deploy_page.py [--out docs/deploy-page.png]

The helpers (``start_guardrail``, ``drive_regressed_deploy``, ``run_chromium``) are also used by
``tests/integration/test_deploy_page_browser.py``.
"""

from __future__ import annotations

import argparse
import asyncio
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

from guardrail.demo import CI_TOKEN, Demo
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


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any], expect: int) -> dict[str, Any]:
    async with http.post(url, json=body, headers={"Authorization": f"Bearer {CI_TOKEN}"}) as r:
        out = await r.json()
        if r.status != expect:
            raise RuntimeError(f"POST {url}: {r.status} {out}")
        return out


async def drive_regressed_deploy(
    running: Running, *, seed: int = 7, max_minutes: float = 40
) -> dict[str, Any]:
    """Mark checkout 2.8.0 and push windows until it is rolled back (or ``max_minutes`` of data)."""
    api = f"{running.base_url}/api/v1"
    demo = running.demo
    marker = demo.marker("2.8.0", "2.7.4", T_START, "checkout: new payment client with connection pooling")
    marker.update(
        commit="4be19c2",
        author="dana",
        analysis={"alpha": 0.01, "interval_s": 10, "max_duration_s": 3600},
        steps=[{"weight": 10, "min_duration_s": 120}, {"weight": 50, "min_duration_s": 120}, {"weight": 100}],
    )
    healthy = SyntheticTraffic(rate=1000)
    # under half the traffic the new client's pool saturates: 3x the errors and a heavier tail
    saturated = SyntheticTraffic(rate=1000, err_ratio=3.0, canary_sigma=0.62)
    rng = np.random.default_rng(seed)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as http:
        deploy = await _post(http, f"{api}/deploys", marker, 201)
        history = [sample_json(s) for s in healthy.history(rng, minutes=10, end=T_START)]
        await _post(http, f"{api}/deploys/{deploy['id']}/samples", {"samples": history}, 202)
        t = T_START
        while (
            deploy["state"] not in ("promoted", "rolled_back", "rollback_failed")
            and t < T_START + 60 * max_minutes
        ):
            w = demo.canary_weight("2.8.0")
            traffic = saturated if w >= 0.5 else healthy
            c, b = traffic.window(rng, t, weight=w if w > 0 else None)
            out = await _post(
                http,
                f"{api}/deploys/{deploy['id']}/samples",
                {"samples": [sample_json(c), sample_json(b)]},
                202,
            )
            deploy = out["deploy"]
            t += traffic.interval
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


async def main(out: Path, height: int) -> int:
    with tempfile.TemporaryDirectory(prefix="guardrail-page-") as tmp:
        async with start_guardrail(Path(tmp)) as running:
            deploy = await drive_regressed_deploy(running)
            url = f"{running.base_url}/deploys/{deploy['id']}"
            print(f"deploy {deploy['id']}: {deploy['state']} ({deploy['reason'][:100]})")
            await screenshot(url, out, height=height)
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "deploy-page.png")
    # 2445 px: the header, the four charts and the evidence table, ending before the timeline
    parser.add_argument("--height", type=int, default=2445, help="window height in pixels")
    ns = parser.parse_args()
    sys.exit(asyncio.run(main(ns.out, ns.height)))
