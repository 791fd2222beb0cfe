"""``guardrail demo``: the main job end to end on the embedded SQLite default.

Starts guardrail on a free loopback port, a simulated service with a baseline and a canary track
(synthetic traffic pushed through the real API, on data time, 10-second windows), and runs two
deploys through the `command` deploy adapter: a healthy one promoted 10% -> 50% -> 100%, and a
regressed one rolled back. Prints progress, then each deploy's timeline and verdict evidence.

``--serve`` keeps the server running on the demo database afterwards, until Ctrl-C, so every link
the demo printed (deploy pages, the post-mortem) answers. Every hint it prints is a command that
runs as printed, from any directory (the ``guardrail`` script next to this Python, by absolute path).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from guardrail.config import Settings, TokenConfig
from guardrail.main import build_app
from guardrail.testing import SyntheticTraffic, sample_json

CI_TOKEN = "demo-ci-token"
OPS_TOKEN = "demo-operator-token"
T_START = 1_767_261_600.0  # 2026-01-01 10:00 UTC, data time of the first deploy

DEPLOY_SCRIPT = """#!/bin/sh
# The demo's "deploy-production.sh": puts VERSION on WEIGHT percent of the traffic (a rollback puts
# the previous version back on 100%).
# A real one would call the load balancer / Kubernetes; this one writes a state file the simulated
# service reads. GUARDRAIL_ACTION_KEY lets a target recognise a repeated action after a crash.
set -eu
version="$1"; weight="$2"
echo "$version $weight" > "$(dirname "$0")/traffic.state"
echo "$(date -u +%H:%M:%S) ${GUARDRAIL_ACTION_KEY:-manual} $version -> ${weight}%" >> "$(dirname "$0")/deploy.log"
echo "routing ${weight}% of traffic to $version"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _say(msg: str) -> None:
    print(msg, flush=True)


def guardrail_command() -> str:
    """How to run this guardrail from a shell, as printed in hints: the ``guardrail`` script installed
    next to the running Python (``.venv/bin/guardrail`` after ``make``), by absolute path, or else
    ``python -m guardrail.cli`` with this Python. Neither relies on PATH or on the current directory."""
    script = Path(sys.executable).parent / "guardrail"
    if script.is_file() and os.access(script, os.X_OK):
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m guardrail.cli"


class Demo:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or _free_port()
        self.base = f"http://127.0.0.1:{self.port}/api/v1"
        self.script = workdir / "deploy-production.sh"
        self.state_file = workdir / "traffic.state"

    def settings(self) -> Settings:
        return Settings.model_validate({
            "database_url": f"sqlite+aiosqlite:///{self.workdir / 'guardrail.db'}",
            "server": {"host": "127.0.0.1", "port": self.port, "public_url": f"http://127.0.0.1:{self.port}"},
            "tokens": [
                TokenConfig(name="ci", token=CI_TOKEN, scopes=["ci", "read"]).model_dump(mode="python"),
                TokenConfig(name="on-call", token=OPS_TOKEN, scopes=["operator", "read"]).model_dump(mode="python"),
            ],
            # the operator's preset: markers name it, they cannot choose commands themselves
            "adapters": {"checkout-deploy": {"type": "command", "config": {
                "apply_step": f"{self.script} {{version}} {{weight}}",
                "finalize": f"{self.script} {{version}} 100",
                "rollback": f"{self.script} {{previous_version}} 100",
                "timeout_s": 30,
            }}},
        })

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for f in ("guardrail.db", "guardrail.db-wal", "guardrail.db-shm", "deploy.log", "traffic.state"):
            (self.workdir / f).unlink(missing_ok=True)
        self.script.write_text(DEPLOY_SCRIPT)
        self.script.chmod(self.script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def canary_weight(self, version: str) -> float:
        if not self.state_file.exists():
            return 0.0
        v, w = self.state_file.read_text().split()
        return float(w) / 100 if v == version else 0.0

    def marker(self, version: str, previous: str, started_at: float, description: str) -> dict[str, Any]:
        return {
            "service": "checkout", "environment": "production", "version": version, "previous_version": previous,
            "commit": f"{abs(hash(version)) % 16**7:07x}", "author": "demo", "change_type": "feature",
            "strategy": "canary", "description": description,
            "changes": [description], "started_at": started_at,
            "adapter": {"name": "checkout-deploy"},
            "analysis": {"alpha": 0.01, "interval_s": 60, "max_duration_s": 1800},
            "steps": [{"weight": 10, "min_duration_s": 120}, {"weight": 50, "min_duration_s": 120}, {"weight": 100}],
        }

    async def run_deploy(self, http: aiohttp.ClientSession, *, version: str, previous: str, traffic: SyntheticTraffic,
                         started_at: float, seed: int, description: str) -> dict[str, Any]:
        ci = {"Authorization": f"Bearer {CI_TOKEN}"}
        rng = np.random.default_rng(seed)
        _say(f"\n== deploy {version} ({description}) ==")
        async with http.post(f"{self.base}/deploys", json=self.marker(version, previous, started_at, description),
                             headers={**ci, "Idempotency-Key": f"demo-{version}"}) as r:
            body = await r.json()
            if r.status != 201:
                raise RuntimeError(f"marker rejected: {r.status} {body}")
        deploy_id = body["id"]
        _say(f"marker posted: deploy {deploy_id}, state {body['state']}, step {body['step']['description']}")
        history = [sample_json(s) for s in traffic.history(rng, minutes=10, end=started_at)]
        await self._push(http, deploy_id, history)
        t = started_at
        state, step = body["state"], body["step"]["index"]
        while state not in ("promoted", "rolled_back", "rollback_failed") and t < started_at + 3600:
            w = self.canary_weight(version)
            if w >= 1.0:
                break
            c, b = traffic.window(rng, t, weight=w if w > 0 else None)
            body = await self._push(http, deploy_id, [sample_json(c), sample_json(b)])
            t += traffic.interval
            d = body["deploy"]
            if d["state"] != state or d["step"]["index"] != step:
                state, step = d["state"], d["step"]["index"]
                _say(f"  [data +{(t - started_at) / 60:4.1f} min] {state:<12} step {step + 1}/{d['step']['total']}: "
                     f"{d['step']['description']}  (canary weight now {self.canary_weight(version):.0%})")
        async with http.get(f"{self.base}/deploys/{deploy_id}/wait", params={"timeout": "30"}, headers=ci) as r:
            final = await r.json()
        _say(f"result: {final['state']}" + (f" ({final['reason']})" if final.get("reason") else ""))
        return final

    async def _push(self, http: aiohttp.ClientSession, deploy_id: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
        async with http.post(f"{self.base}/deploys/{deploy_id}/samples", json={"samples": samples},
                             headers={"Authorization": f"Bearer {CI_TOKEN}"}) as r:
            body = await r.json()
            if r.status != 202:
                raise RuntimeError(f"samples rejected: {r.status} {body}")
            return body

    async def print_record(self, http: aiohttp.ClientSession, deploy: dict[str, Any]) -> None:
        ops = {"Authorization": f"Bearer {OPS_TOKEN}"}
        async with http.get(f"{self.base}/deploys/{deploy['id']}/events", headers=ops) as r:
            events = (await r.json())["events"]
        t0 = next((e["data_time"] for e in events if e["data_time"] is not None), 0.0)
        _say(f"\n-- timeline of {deploy['version']} ({deploy['id']}) --")
        for e in events:
            if e["kind"] == "verdict" and not e["message"].startswith(("FAIL", "PASS", "INCONCLUSIVE")):
                continue  # the periodic 'continue' snapshots: kept in the record, skipped here
            when = f"+{(e['data_time'] - t0) / 60:5.1f} min" if e["data_time"] is not None else "          "
            _say(f"  {when}  {e['kind']:<14} {e['message'][:160]}")
        verdict = deploy.get("verdict") or {}
        _say(f"-- verdict: {verdict.get('decision', 'none')} --")
        for ev in verdict.get("evidence", []):
            _say(f"  {ev['metric']:<12} {ev['detail']}")


    async def print_postmortem(self, http: aiohttp.ClientSession, deploy: dict[str, Any]) -> None:
        """The post-mortem guardrail drafted by itself after the rollback (offline templates)."""
        ops = {"Authorization": f"Bearer {OPS_TOKEN}"}
        url = f"{self.base}/deploys/{deploy['id']}/drafts/postmortem"
        for _ in range(100):  # drafted in the background right after the rollback
            async with http.get(url, headers=ops) as r:
                if r.status == 200:
                    draft = await r.json()
                    break
            await asyncio.sleep(0.1)
        else:
            _say("\n(no post-mortem draft yet)")
            return
        lines = draft["markdown"].splitlines()
        _say(f"\n-- post-mortem drafted automatically after the rollback ({draft['source']}, "
             f"{len(lines)} lines; first 12) --")
        for line in lines[:12]:
            _say(f"  {line}")
        db = shlex.quote(f"sqlite+aiosqlite:///{self.workdir / 'guardrail.db'}")
        _say(f"  ...\n  all of it: {guardrail_command()} draft postmortem {deploy['id']} --database-url {db}")


async def run(
    workdir: Path, *, serve: bool = False, port: int | None = None, result: dict[str, int] | None = None
) -> int:
    """The demo; with ``serve`` the server keeps running afterwards until cancelled (Ctrl-C).
    ``result["code"]`` is set as soon as the demo's outcome is known (before serving)."""
    demo = Demo(workdir, port)
    demo.prepare()
    wall0 = time.perf_counter()
    app = await build_app(demo.settings())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", demo.port).start()
    site = f"http://127.0.0.1:{demo.port}"
    _say(f"guardrail listening on {site}/deploys (SQLite: {workdir / 'guardrail.db'})")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            healthy = SyntheticTraffic(rate=400)
            good = await demo.run_deploy(http, version="1.4.2", previous="1.4.1", traffic=healthy,
                                         started_at=T_START, seed=1, description="checkout: faster tax lookup")
            regressed = SyntheticTraffic(rate=400, err_ratio=4.0, canary_sigma=0.62)
            bad = await demo.run_deploy(http, version="1.4.3", previous="1.4.2", traffic=regressed,
                                        started_at=T_START + 7200, seed=2,
                                        description="checkout: new payment client (regressed)")
            for d in (good, bad):
                await demo.print_record(http, d)
            await demo.print_postmortem(http, bad)
        _say(f"\ndeploy script log ({workdir / 'deploy.log'}):")
        _say((workdir / "deploy.log").read_text().rstrip())
        ok = good["state"] == "promoted" and bad["state"] == "rolled_back"
        code = 0 if ok else 1
        if result is not None:
            result["code"] = code
        _say(f"\ndemo {'OK' if ok else 'FAILED'}: 1.4.2 {good['state']}, 1.4.3 {bad['state']} "
             f"in {time.perf_counter() - wall0:.1f} s of wall time")
        _say("deploy pages:")
        for d in (good, bad):
            _say(f"  {d['version']} {d['state']}: {site}/deploys/{d['id']}")
        if serve:
            _say(f"\nserving {site}/deploys on the demo database until Ctrl-C. The API needs a token, e.g.\n"
                 f"  curl -H 'Authorization: Bearer {OPS_TOKEN}' {site}/api/v1/deploys\n"
                 f"  GUARDRAIL_URL={site} GUARDRAIL_TOKEN={OPS_TOKEN} {guardrail_command()} status")
            await asyncio.Event().wait()  # until cancelled: Ctrl-C
    finally:
        await runner.cleanup()
    _say("\nthe server has stopped: the links above are dead now. To keep them working, run the demo with "
         f"--serve (make demo-serve, or {guardrail_command()} demo --serve)")
    return code


def main(workdir: str | None = None, *, serve: bool = False, port: int | None = None) -> int:
    path = Path(workdir or os.environ.get("GUARDRAIL_DEMO_DIR", ".demo")).resolve()
    result: dict[str, int] = {}
    try:
        return asyncio.run(run(path, serve=serve, port=port, result=result))
    except KeyboardInterrupt:  # Ctrl-C while serving ends the demo normally; before that, it failed
        if serve and "code" in result:
            _say("\nstopped (Ctrl-C)")
            return result["code"]
        raise


if __name__ == "__main__":
    sys.exit(main())
