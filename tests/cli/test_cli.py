"""The ``guardrail`` command as CI and on-call run it: a real subprocess against the real server.

The server runs in-process (``build_app`` on a free loopback port, SQLite in a temp dir, a `command`
adapter preset whose script writes the canary weight to a state file); the CLI runs as
``python -m guardrail.cli`` through ``asyncio.create_subprocess_exec`` so the server keeps serving
while the command waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import yaml
from aiohttp import web

from guardrail.adapters.db.store import SqlStore
from guardrail.config import Settings
from guardrail.main import build_app
from guardrail.testing import T0, SyntheticTraffic, sample_json

TOKENS = {"ci": "cli-test-ci-token", "operator": "cli-test-operator-token", "read": "cli-test-read-token"}
TERMINAL = ("promoted", "rolled_back", "rollback_failed")
DEPLOY_ID = re.compile(r"^[0-9a-f]{16}$")

SCRIPT = """#!/bin/sh
# deploy.sh VERSION WEIGHT: puts VERSION on WEIGHT percent of the traffic (a state file the test reads)
set -eu
echo "$1 $2" > "$(dirname "$0")/traffic.state"
echo "$1 $2" >> "$(dirname "$0")/deploy.log"
"""

# the CLI must not pick up the developer's or CI's own guardrail settings
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("GUARDRAIL_", "GITHUB_"))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Result:
    code: int
    out: str
    err: str


def cli_argv(*args: str, url: str, token: str | None) -> list[str]:
    return [sys.executable, "-m", "guardrail.cli", "--url", url, *(["--token", TOKENS[token]] if token else []), *args]


async def start(argv: list[str], cwd: Path | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=CLEAN_ENV, cwd=cwd
    )


async def finish(proc: asyncio.subprocess.Process, timeout: float = 30) -> Result:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def run(*args: str, cwd: Path | None = None) -> Result:
    """A local command (serve, db): no server address, no token."""
    return await finish(await start(cli_argv(*args, url="http://127.0.0.1:9", token=None), cwd))


@dataclass
class Guardrail:
    """The running server, its work directory, and helpers to run the CLI against it."""

    url: str
    tmp: Path
    http: aiohttp.ClientSession

    def argv(self, *args: str, token: str | None = "ci", url: str | None = None) -> list[str]:
        return cli_argv(*args, url=url or self.url, token=token)

    async def start(self, *args: str, token: str | None = "ci", url: str | None = None) -> asyncio.subprocess.Process:
        return await start(self.argv(*args, token=token, url=url), self.tmp)

    async def cli(self, *args: str, token: str | None = "ci", url: str | None = None) -> Result:
        return await finish(await self.start(*args, token=token, url=url))

    def headers(self, token: str = "ci") -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[token]}"}

    async def get(self, deploy_id: str) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/api/v1/deploys/{deploy_id}", headers=self.headers("read")) as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())

    async def create(self, version: str, previous: str, **extra: Any) -> dict[str, Any]:
        """A canary deploy through the adapter preset, posted straight to the API."""
        marker = {
            "service": "checkout", "environment": "production", "version": version,
            "previous_version": previous, "commit": "c0ffee1", "change_type": "feature",
            "strategy": "canary", "started_at": T0, "adapter": {"name": "checkout-deploy"},
            "steps": [{"weight": 10, "min_duration_s": 60}, {"weight": 50, "min_duration_s": 60}, {"weight": 100}],
            **extra,
        }
        async with self.http.post(f"{self.url}/api/v1/deploys", json=marker, headers=self.headers()) as r:
            assert r.status == 201, await r.text()
            created = dict(await r.json())
        return {**created, **await self.settled(created["id"])}  # the first step is applied in the background

    async def settled(self, deploy_id: str) -> dict[str, Any]:
        """The deploy once its adapter actions are done (``?until=settled``)."""
        async with self.http.get(f"{self.url}/api/v1/deploys/{deploy_id}/wait", headers=self.headers("read"),
                                 params={"until": "settled", "timeout": "30"}) as r:
            assert r.status == 200, await r.text()
            return dict(await r.json())

    def weight(self, version: str) -> float:
        state = self.tmp / "traffic.state"
        if not state.exists():
            return 0.0
        v, w = state.read_text().split()
        return float(w) / 100 if v == version else 0.0

    async def drive(self, deploy_id: str, version: str, traffic: SyntheticTraffic, seed: int) -> str:
        """Push baseline history, then canary/baseline windows at the weight the deploy script set,
        until the deploy ends. Returns the final state."""
        rng = np.random.default_rng(seed)
        await self._push(deploy_id, [sample_json(s) for s in traffic.history(rng, minutes=10, end=T0)])
        t, state = T0, "analyzing"
        while state not in TERMINAL and t < T0 + 3600:
            w = self.weight(version)
            if w >= 1.0:
                break
            c, b = traffic.window(rng, t, weight=w if w > 0 else None)
            await self._push(deploy_id, [sample_json(c), sample_json(b)])
            state = (await self.settled(deploy_id))["state"]  # the weight the actions it started set
            t += traffic.interval
        return str((await self.settled(deploy_id))["state"])

    async def _push(self, deploy_id: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
        async with self.http.post(f"{self.url}/api/v1/deploys/{deploy_id}/samples", json={"samples": samples},
                                  headers=self.headers()) as r:
            assert r.status == 202, await r.text()
            return dict(await r.json())


def settings_for(tmp: Path, port: int, database_url: str | None = None) -> dict[str, Any]:
    script = tmp / "deploy.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    return {
        "database_url": database_url or f"sqlite+aiosqlite:///{tmp / 'guardrail.db'}",
        "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
        "tokens": [{"name": f"{scope}-bot", "token": token, "scopes": [scope]} for scope, token in TOKENS.items()],
        "engine": {"tick_s": 0.5},
        "adapters": {"checkout-deploy": {"type": "command", "config": {
            "apply_step": f"{script} {{version}} {{weight}}",
            "finalize": f"{script} {{version}} 100",
            "rollback": f"{script} {{previous_version}} 100",
            "timeout_s": 30,
        }}},
    }


@pytest.fixture
async def g(tmp_path: Path) -> AsyncIterator[Guardrail]:
    port = _free_port()
    app = await build_app(Settings.model_validate(settings_for(tmp_path, port)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            yield Guardrail(f"http://127.0.0.1:{port}", tmp_path, http)
    finally:
        await runner.cleanup()


MARK_FLAGS = (
    "--service", "checkout", "--environment", "production", "--version", "1.4.2",
    "--previous-version", "1.4.1", "--commit", "9f8e7d6", "--commit-time", "2026-01-01T09:30:00Z",
    "--author", "alice", "--change-type", "bugfix", "--strategy", "canary",
    "--description", "checkout: faster tax lookup", "--change", "cache tax rates", "--change", "drop v1 client",
    "--adapter", "checkout-deploy",
)


# --- mark ----------------------------------------------------------------------------------------------


async def test_mark_from_flags_prints_the_id_of_the_deploy_it_created(g: Guardrail):
    r = await g.cli("mark", *MARK_FLAGS)
    assert r.code == 0, r.err
    deploy_id = r.out.strip()
    assert DEPLOY_ID.match(deploy_id), r.out
    assert "checkout 1.4.2 -> production" in r.err
    d = await g.get(deploy_id)
    assert {k: d[k] for k in ("service", "environment", "version", "previous_version", "commit", "author",
                              "change_type", "strategy", "description", "changes")} == {
        "service": "checkout", "environment": "production", "version": "1.4.2", "previous_version": "1.4.1",
        "commit": "9f8e7d6", "author": "alice", "change_type": "bugfix", "strategy": "canary",
        "description": "checkout: faster tax lookup", "changes": ["cache tax rates", "drop v1 client"],
    }
    assert d["commit_time"] == 1_767_259_800.0  # 2026-01-01T09:30:00Z
    assert d["adapter"]["name"] == "checkout-deploy"
    assert (g.tmp / "traffic.state").read_text().split() == ["1.4.2", "10"]  # step 1 applied by the preset


@pytest.mark.parametrize("fmt", ["yaml", "json"])
async def test_mark_from_a_file_with_flags_overriding_its_fields(g: Guardrail, fmt: str):
    marker = {
        "service": "checkout", "environment": "staging", "version": "2.0.0", "previous_version": "1.9.0",
        "commit": "abc1234", "commit_time": "2026-01-01T09:30:00Z",  # unquoted in YAML: stays text
        "change_type": "feature", "strategy": "canary", "description": "from the file",
        "changes": ["first change"], "adapter": {"name": "checkout-deploy"},
        "steps": [{"weight": 25}, {"weight": 100}],
    }
    path = g.tmp / f"marker.{fmt}"
    if fmt == "yaml":  # written by hand, as people do: the timestamp unquoted
        text = yaml.safe_dump(marker, sort_keys=False).replace("'2026-01-01T09:30:00Z'", "2026-01-01T09:30:00Z")
        assert "commit_time: 2026-01-01T09:30:00Z\n" in text
    else:
        text = json.dumps(marker)
    path.write_text(text)
    r = await g.cli("mark", "-f", str(path), "--environment", "production", "--version", "2.0.1",
                    "--change", "second change")
    assert r.code == 0, r.err
    d = await g.get(r.out.strip())
    assert (d["environment"], d["version"]) == ("production", "2.0.1")  # the flags win
    assert (d["service"], d["previous_version"], d["description"]) == ("checkout", "1.9.0", "from the file")
    assert d["changes"] == ["first change", "second change"]
    assert [s["weight"] for s in d["steps"]] == [25, 100]
    assert d["commit_time"] == 1_767_259_800.0


async def test_mark_from_stdin(g: Guardrail):
    proc = await asyncio.create_subprocess_exec(
        *g.argv("mark", "-f", "-", "--adapter", "checkout-deploy"),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=CLEAN_ENV,
    )
    marker = {"service": "checkout", "environment": "production", "version": "3.0.0",
              "previous_version": "2.9.9", "commit": "d00d", "change_type": "security", "strategy": "canary"}
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(marker).encode()), 30)
    assert proc.returncode == 0, err.decode()
    assert (await g.get(out.decode().strip()))["change_type"] == "security"


async def test_the_same_idempotency_key_twice_returns_the_same_deploy(g: Guardrail):
    first = await g.cli("mark", *MARK_FLAGS, "--idempotency-key", "gh-4242-1")
    again = await g.cli("mark", *MARK_FLAGS, "--idempotency-key", "gh-4242-1")
    other = await g.cli("mark", *MARK_FLAGS, "--idempotency-key", "gh-4242-2")
    assert (first.code, again.code, other.code) == (0, 0, 0), (first.err, again.err, other.err)
    assert first.out == again.out
    assert other.out != first.out
    async with g.http.get(f"{g.url}/api/v1/deploys", headers=g.headers("read")) as resp:
        assert len((await resp.json())["deploys"]) == 2


async def test_a_marker_with_an_unknown_change_type_exits_2_naming_the_field(g: Guardrail):
    by_flag = await g.cli("mark", *MARK_FLAGS, "--change-type", "refactor")
    path = g.tmp / "marker.yaml"
    path.write_text("service: checkout\nenvironment: production\nversion: '1'\nprevious_version: '0'\n"
                    "commit: abc\nchange_type: refactor\nstrategy: canary\n")
    by_file = await g.cli("mark", "-f", str(path))
    assert by_flag.code == 2 and "--change-type" in by_flag.err and "refactor" in by_flag.err
    assert by_file.code == 2 and "field: change_type" in by_file.err, by_file.err
    assert "Traceback" not in by_file.err
    async with g.http.get(f"{g.url}/api/v1/deploys", headers=g.headers("read")) as resp:
        assert (await resp.json())["deploys"] == []


async def test_a_marker_file_that_is_not_yaml_exits_2(g: Guardrail):
    path = g.tmp / "marker.yaml"
    path.write_text("service: [checkout\n")
    r = await g.cli("mark", "-f", str(path))
    assert r.code == 2 and "not valid YAML" in r.err and "Traceback" not in r.err, r.err


# --- wait ----------------------------------------------------------------------------------------------


async def test_wait_exits_0_when_the_deploy_is_promoted(g: Guardrail):
    d = await g.create("1.4.2", "1.4.1")
    proc = await g.start("wait", d["id"])  # default 60 s long-polls: the promotion must wake it
    assert proc.stderr is not None
    first = await asyncio.wait_for(proc.stderr.readline(), 30)  # it is waiting before any data arrives
    assert b"analyzing" in first, first
    final = await g.drive(d["id"], "1.4.2", SyntheticTraffic(rate=400), seed=1)
    r = await finish(proc, timeout=15)
    assert final == "promoted"
    assert r.code == 0, r.err
    assert r.out.strip() == "promoted"
    assert "analyzing -> promoted" in r.err  # the timeline it printed while waiting
    assert (g.tmp / "traffic.state").read_text().split() == ["1.4.2", "100"]


async def test_wait_exits_1_when_the_canary_regresses_and_is_rolled_back(g: Guardrail):
    d = await g.create("1.4.3", "1.4.2")
    proc = await g.start("wait", d["id"])
    assert proc.stderr is not None
    await asyncio.wait_for(proc.stderr.readline(), 30)
    final = await g.drive(d["id"], "1.4.3", SyntheticTraffic(rate=400, err_ratio=5), seed=2)
    r = await finish(proc, timeout=15)
    assert final == "rolled_back"
    assert r.code == 1, r.err
    assert r.out.strip() == "rolled_back"
    assert "FAIL" in r.err and "rolling_back -> rolled_back" in r.err  # the timeline it printed
    assert (g.tmp / "traffic.state").read_text().split() == ["1.4.2", "100"]  # the previous version is back


async def test_wait_exits_3_on_timeout_when_no_data_arrives(g: Guardrail):
    d = await g.create("1.5.0", "1.4.2")
    r = await g.cli("wait", d["id"], "--timeout", "2")
    assert r.code == 3, r.err
    assert "timed out after 2 s; deploy is analyzing" in r.err
    assert (await g.get(d["id"]))["state"] == "analyzing"  # waiting changes nothing


async def test_wait_exits_2_when_the_server_is_unreachable(g: Guardrail):
    r = await g.cli("wait", "0123456789abcdef", url=f"http://127.0.0.1:{_free_port()}")
    assert r.code == 2
    assert "cannot reach guardrail" in r.err and "Traceback" not in r.err


async def test_wait_exits_2_for_an_unknown_deploy(g: Guardrail):
    r = await g.cli("wait", "0123456789abcdef")
    assert r.code == 2 and "HTTP 404" in r.err, r.err


# --- status --------------------------------------------------------------------------------------------


async def test_status_prints_the_state_reason_and_evidence(g: Guardrail):
    d = await g.create("1.4.3", "1.4.2")
    assert await g.drive(d["id"], "1.4.3", SyntheticTraffic(rate=400, err_ratio=5), seed=2) == "rolled_back"
    text, as_json, listed = await asyncio.gather(
        g.cli("status", d["id"], token="read"),
        g.cli("status", d["id"], "--json", token="read"),
        g.cli("status", "--service", "checkout", "--state", "rolled_back", "--json", token="read"),
    )
    assert text.code == 0, text.err
    lines = text.out.splitlines()
    assert lines[0].startswith(f"{d['id']}  checkout 1.4.3 (production): rolled_back")
    assert "verdict fail" in lines[0]
    assert any(line.strip().startswith("reason: canary analysis failed") for line in lines)
    evidence = [line.split()[0] for line in lines[1:] if not line.strip().startswith("reason:")]
    assert {"error_rate", "throughput"} <= set(evidence)
    assert as_json.code == 0
    body = json.loads(as_json.out)
    assert (body["id"], body["state"], body["verdict"]["decision"]) == (d["id"], "rolled_back", "fail")
    assert [x["id"] for x in json.loads(listed.out)] == [d["id"]]


async def test_status_lists_recent_deploys(g: Guardrail):
    a = await g.create("1.0.0", "0.9.0")
    b = await g.create("1.0.1", "1.0.0", service="cart")
    r = await g.cli("status", "--limit", "5", token="read")
    assert r.code == 0, r.err
    assert [line.split()[0] for line in r.out.splitlines()] == [b["id"], a["id"]]  # newest first


# --- overrides -----------------------------------------------------------------------------------------


async def test_pause_resume_and_rollback_with_the_operator_token(g: Guardrail):
    d = await g.create("2.1.0", "2.0.0")
    paused = await g.cli("pause", d["id"], "--reason", "watching a dashboard", token="operator")
    assert paused.code == 0, paused.err
    assert ": paused," in paused.out
    resumed = await g.cli("resume", d["id"], "--reason", "dashboard is fine", token="operator")
    assert resumed.code == 0, resumed.err
    assert ": analyzing," in resumed.out
    rolled = await g.cli("rollback", d["id"], "--reason", "customer reports", token="operator")
    assert rolled.code == 0, rolled.err
    assert ": rolling_back," in rolled.out or ": rolled_back," in rolled.out  # answered before the call
    assert (await g.settled(d["id"]))["state"] == "rolled_back"
    assert (g.tmp / "deploy.log").read_text().splitlines() == ["2.1.0 10", "2.0.0 100"]
    async with g.http.get(f"{g.url}/api/v1/deploys/{d['id']}/events", headers=g.headers("read")) as resp:
        overrides = [e["message"] for e in (await resp.json())["events"] if e["kind"] == "override"]
    assert overrides == ["pause by operator-bot: watching a dashboard", "resume by operator-bot: dashboard is fine",
                         "rollback by operator-bot: customer reports"]


@pytest.mark.parametrize("command", ["pause", "resume", "rollback", "promote"])
async def test_overrides_with_the_ci_token_fail_naming_the_scope(g: Guardrail, command: str):
    d = await g.create("2.2.0", "2.1.0")
    r = await g.cli(command, d["id"], "--reason", "ci should not do this", token="ci")
    assert r.code == 2
    assert "HTTP 403" in r.err and "'operator' scope" in r.err, r.err
    assert (await g.get(d["id"]))["state"] == "analyzing"


async def test_an_override_without_a_reason_is_refused_by_the_parser(g: Guardrail):
    r = await g.cli("rollback", "0123456789abcdef", token="operator")
    assert r.code == 2 and "--reason" in r.err


# --- db upgrade and serve ------------------------------------------------------------------------------


async def test_db_upgrade_creates_a_usable_database(tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    r = await run("db", "upgrade", "--database-url", url)
    assert r.code == 0, r.err
    assert "applied" in r.out
    with contextlib.closing(sqlite3.connect(tmp_path / "fresh.db")) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"deploys", "events", "samples", "actions"} <= tables
    async with await SqlStore.open(url) as store:  # no migration here: the tables must already be there
        assert await store.list_deploys() == []


async def test_db_upgrade_with_a_bad_database_url_exits_2_naming_the_key(tmp_path: Path):
    cfg = tmp_path / "guardrail.yaml"
    cfg.write_text("database_url: mysql://localhost/guardrail\n")
    r = await run("db", "upgrade", "--config", str(cfg))
    assert r.code == 2 and "database_url" in r.err, r.err


async def test_serve_starts_from_a_config_file_and_answers_healthz(tmp_path: Path):
    port = _free_port()
    cfg = tmp_path / "guardrail.yaml"
    cfg.write_text(yaml.safe_dump(settings_for(tmp_path, port)))
    env = {**CLEAN_ENV, "GUARDRAIL_URL": "http://elsewhere:1", "GUARDRAIL_TOKEN": "t"}  # the CLI's, not settings
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "guardrail.cli", "serve", "--config", str(cfg),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )
    try:
        status = None
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for _ in range(300):
                if proc.returncode is not None:
                    break
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        status = resp.status
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            assert status == 200, f"serve exited {proc.returncode}" if proc.returncode is not None else status
            async with http.get(f"http://127.0.0.1:{port}/api/v1/deploys",
                                headers={"Authorization": f"Bearer {TOKENS['read']}"}) as resp:
                assert resp.status == 200  # the config's tokens are in force
            async with http.get(f"http://127.0.0.1:{port}/api/v1/deploys") as resp:
                assert resp.status == 401
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert (tmp_path / "guardrail.db").exists()
