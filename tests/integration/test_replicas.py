"""Three guardrail processes on one PostgreSQL share a rollout: pushes land on any replica, one
replica is killed (-9) in the middle of an adapter action, and the survivors finish the deploy with
every adapter action carried out once (the one cut short is repeated with the same action key)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import text

from guardrail.adapters.db.engine import create_engine
from guardrail.adapters.db.migrate import upgrade
from guardrail.testing import T0, SyntheticTraffic, sample_json
from tests.integration.servers import GuardrailProcess, command_target_config, free_port

pytestmark = pytest.mark.integration

TOKEN = "replica-test-token"

# logs each call with its action key and the pid of the replica that ran it; hangs once on a step
SCRIPT = """#!/bin/sh
echo "$GUARDRAIL_ACTION_KEY $1 $2 $PPID start" >> "$(dirname "$0")/calls.log"
if [ -f "$(dirname "$0")/hang-on-$1-$2" ]; then rm "$(dirname "$0")/hang-on-$1-$2"; sleep 30; fi
echo "$GUARDRAIL_ACTION_KEY $1 $2 $PPID done" >> "$(dirname "$0")/calls.log"
"""


class Replica(GuardrailProcess):
    """Replica ``n``: leases on, the shared PostgreSQL, notifications to ``hook_url``."""

    what = "replica"

    def __init__(self, tmp: Path, n: int, db_url: str, hook_url: str) -> None:
        super().__init__(tmp / f"replica-{n}.yaml", tmp / f"replica-{n}.log", free_port())
        script = tmp / "deploy.sh"
        self.config.write_text(command_target_config(
            database_url=db_url, port=self.port, token=TOKEN, script=script,
            engine=f'{{tick_s: 0.3, leases: "on", lease_s: 2, lease_wait_s: 20, replica_id: replica-{n}}}',
            extra=f"""
            notifications:
              poll_s: 0.2
              notifiers: {{hook: {{type: webhook, config: {{url: "{hook_url}", timeout_s: 5}}}}}}
              routes: [{{severity: info, notifiers: [hook]}}, {{severity: page, notifiers: [hook]}}]
            """,
        ))


def _calls(tmp: Path) -> list[list[str]]:
    path = tmp / "calls.log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def pg_url(pg_database_factory) -> str:  # type: ignore[no-untyped-def]
    url = pg_database_factory()
    import asyncio as aio

    aio.run(upgrade(url))
    return url


async def test_three_replicas_one_killed_mid_action_finish_the_rollout_with_each_action_once(
    tmp_path: Path, pg_url: str
) -> None:
    script = tmp_path / "deploy.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    (tmp_path / "hang-on-apply-2").touch()  # the 50% step hangs once: the kill lands inside it
    received: list[dict[str, object]] = []  # notifications, as a webhook receiver gets them

    async def receive(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({})

    hook_app = web.Application()
    hook_app.router.add_post("/hook", receive)
    hook = TestServer(hook_app)
    await hook.start_server()
    replicas = [Replica(tmp_path, n, pg_url, str(hook.make_url("/hook"))) for n in range(3)]
    traffic, rng = SyntheticTraffic(rate=400), np.random.default_rng(11)
    marker = {"service": "checkout", "environment": "production", "version": "3.0.0", "previous_version": "2.9.9",
              "commit": "c0ffee1", "change_type": "feature", "strategy": "canary", "started_at": T0,
              "adapter": {"name": "target"},
              "steps": [{"weight": 10, "min_duration_s": 60}, {"weight": 50, "min_duration_s": 60}, {"weight": 100}]}
    for r in replicas:
        r.spawn()
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as http:
            for r in replicas:
                await r.ready(http)

            def base(r: Replica) -> str:
                return f"http://127.0.0.1:{r.port}/api/v1"

            async with http.post(f"{base(replicas[0])}/deploys", json=marker) as resp:
                assert resp.status == 201, await resp.text()
                deploy_id = (await resp.json())["id"]
            async with http.post(f"{base(replicas[1])}/deploys/{deploy_id}/samples",
                                 json={"samples": [sample_json(s) for s in traffic.history(rng)]}) as resp:
                assert resp.status == 202, await resp.text()

            weights = {"1": 0.1, "2": 0.5, "3": 1.0}
            pushed_to: set[int] = set()
            killed: Replica | None = None
            state, k = "analyzing", 0
            deadline = time.monotonic() + 120
            while state != "promoted" and time.monotonic() < deadline and k < 600:
                calls = [c for c in _calls(tmp_path) if c[1] == "apply"]
                w = weights[calls[-1][2]] if calls else 0.1
                if killed is None and calls and calls[-1][2] == "2" and calls[-1][4] == "start":
                    pid = int(calls[-1][3])  # the replica running the 50% step: kill it mid-action
                    (killed,) = [r for r in replicas if r.proc is not None and r.proc.pid == pid]
                    killed.kill()
                live = [i for i, r in enumerate(replicas) if r.alive]
                i = live[k % len(live)]
                c, b = traffic.window(rng, T0 + 10 * k, weight=w)
                push = asyncio.ensure_future(http.post(
                    f"{base(replicas[i])}/deploys/{deploy_id}/samples",
                    json={"samples": [sample_json(c), sample_json(b)]},
                ))
                done, _ = await asyncio.wait({push}, timeout=3)
                if done:
                    try:
                        resp = push.result()
                        assert resp.status in (202, 503), await resp.text()
                        if resp.status == 202:
                            pushed_to.add(i)
                            state = (await resp.json())["deploy"]["state"]
                            k += 1
                        resp.release()
                    except aiohttp.ClientError:
                        pass  # the replica it went to was killed while answering
                # else: the push waits on the hanging step; the loop goes on and the kill lands
                await asyncio.sleep(0.01)
            async with http.get(f"{base(replicas[2] if replicas[2].alive else replicas[0])}/deploys/{deploy_id}/wait",
                                params={"timeout": "20"}) as resp:
                final = await resp.json()
            async with http.get(f"{base(next(r for r in replicas if r.alive))}/deploys/{deploy_id}/events") as resp:
                events = (await resp.json())["events"]

        assert killed is not None, "the 50% step never started"
        assert final["state"] == "promoted", (final, [e["message"] for e in events][-15:])
        assert len(pushed_to) >= 2  # the data really went to several replicas
        calls = _calls(tmp_path)
        done = [c for c in calls if c[4] == "done"]
        keys_done = [c[0] for c in done]
        assert len(keys_done) == len(set(keys_done)), calls  # no action completed twice
        assert [f"{c[1]} {c[2]}" for c in done] == ["apply 1", "apply 2", "apply 3", "finalize 0"], calls
        starts = [c for c in calls if c[4] == "start"]
        cut_short = [c for c in starts if c[1:3] == ["apply", "2"]]
        assert len(cut_short) == 2 and cut_short[0][0] == cut_short[1][0]  # repeated with the same key
        assert int(cut_short[0][3]) == killed.proc.pid and int(cut_short[1][3]) != killed.proc.pid  # type: ignore[union-attr]
        assert any("stopped" in e["message"] and "same action key" in e["message"] for e in events)
        # the database agrees: every action done, nothing left leased to the dead replica
        engine = create_engine(pg_url)
        try:
            async with engine.connect() as conn:
                statuses = (await conn.execute(text("SELECT status FROM actions"))).scalars().all()
                owner = (await conn.execute(text("SELECT lease_owner FROM deploys"))).scalar()
        finally:
            await engine.dispose()
        assert set(statuses) == {"done"} and len(statuses) == 4
        assert owner is None or owner != f"replica-{replicas.index(killed)}"
        # notifications once: the before and after announcements, each under one outbox delivery
        for _ in range(100):
            if {str(n["key"]).rsplit(":", 1)[-1] for n in received} >= {"before", "after"}:
                break
            await asyncio.sleep(0.1)
        by_key: dict[str, set[object]] = {}
        for n in received:
            by_key.setdefault(str(n["key"]), set()).add(n["delivery_id"])
        assert sorted(k.rsplit(":", 1)[-1] for k in by_key) == ["after", "before"], received
        assert all(len(ids) == 1 for ids in by_key.values()), by_key
    finally:
        for r in replicas:
            r.stop()
        await hook.close()
