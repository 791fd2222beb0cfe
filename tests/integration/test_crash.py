"""kill -9 the real server in the middle of a rollout, restart it, and the deploy finishes with each
adapter action carried out once (a call cut short by the crash is repeated with the same key)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from guardrail.testing import T0, SyntheticTraffic, sample_json
from tests.integration.servers import GuardrailProcess, command_target_config, free_port

pytestmark = pytest.mark.integration

TOKEN = "crash-test-token"

SCRIPT = """#!/bin/sh
# usage: deploy.sh KIND STEP  -- logs every call with its action key; optionally hangs on one step
echo "$GUARDRAIL_ACTION_KEY $1 $2" >> "$(dirname "$0")/calls.log"
if [ -f "$(dirname "$0")/hang-on-$1-$2" ]; then rm "$(dirname "$0")/hang-on-$1-$2"; sleep 30; fi
"""


class Server(GuardrailProcess):
    """One guardrail on SQLite in ``tmp``, its target adapter the logging ``deploy.sh``."""

    def __init__(self, tmp: Path, port: int) -> None:
        super().__init__(tmp / "guardrail.yaml", tmp / "server.log", port)
        script = tmp / "deploy.sh"
        script.write_text(SCRIPT)
        script.chmod(0o755)
        self.config.write_text(command_target_config(
            database_url=f"sqlite+aiosqlite:///{tmp / 'guardrail.db'}", port=port, token=TOKEN,
            engine="{tick_s: 0.5}", script=script,
        ))

    async def start(self) -> None:
        self.spawn()
        async with aiohttp.ClientSession() as s:
            await self.ready(s, tries=150)


def _calls(tmp: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split()) for line in (tmp / "calls.log").read_text().splitlines()]  # type: ignore[misc]


@pytest.mark.parametrize("crash", ["between_actions", "during_an_action"])
async def test_kill_9_mid_rollout_then_restart_finishes_with_each_action_once(tmp_path: Path, crash: str):
    port = free_port()
    server = Server(tmp_path, port)
    base = f"http://127.0.0.1:{port}/api/v1"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    traffic, rng = SyntheticTraffic(rate=400), np.random.default_rng(7)
    marker = {"service": "checkout", "environment": "production", "version": "2.0.0", "previous_version": "1.9.9",
              "commit": "f00ba47", "change_type": "feature", "strategy": "canary", "started_at": T0,
              "adapter": {"name": "target"},
              "steps": [{"weight": 10, "min_duration_s": 60}, {"weight": 50, "min_duration_s": 60}, {"weight": 100}]}
    if crash == "during_an_action":
        (tmp_path / "hang-on-apply-3").touch()  # the 100% step hangs: the kill lands inside it
    await server.start()
    try:
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as http:
            async with http.post(f"{base}/deploys", json=marker) as r:
                assert r.status == 201, await r.text()
                deploy_id = (await r.json())["id"]
            await http.post(f"{base}/deploys/{deploy_id}/samples",
                            json={"samples": [sample_json(s) for s in traffic.history(rng)]})
            weights = {"apply 1": 0.1, "apply 2": 0.5}
            k = 0
            killed = False
            state = "analyzing"
            while state != "promoted" and k < 400:
                applied = [f"{c[1]} {c[2]}" for c in _calls(tmp_path)]
                w = weights.get(applied[-1], 0.5) if applied else 0.1
                c, b = traffic.window(rng, T0 + 10 * k, weight=w)
                body = {"samples": [sample_json(c), sample_json(b)]}
                if not killed and crash == "between_actions" and "apply 2" in applied:
                    server.kill()  # mid-rollout, the 50% step live, no action in flight
                    killed = True
                    await server.start()
                push = asyncio.ensure_future(http.post(f"{base}/deploys/{deploy_id}/samples", json=body))
                done, _ = await asyncio.wait({push}, timeout=5)
                if not done:  # the push is stuck in the hanging 100% step: crash inside the action
                    now_applied = [f"{c[1]} {c[2]}" for c in _calls(tmp_path)]
                    assert crash == "during_an_action" and now_applied[-1] == "apply 3", now_applied
                    server.kill()
                    killed = True
                    with pytest.raises(aiohttp.ClientError):
                        await push
                    await server.start()
                    continue  # the same window again: a retried push
                async with push.result() as r:
                    assert r.status == 202, await r.text()
                    state = (await r.json())["deploy"]["state"]
                k += 1
            async with http.get(f"{base}/deploys/{deploy_id}/wait", params={"timeout": "20"}) as r:
                final = await r.json()
            async with http.get(f"{base}/deploys/{deploy_id}/events") as r:
                events = (await r.json())["events"]
    finally:
        server.stop()
    assert killed
    assert final["state"] == "promoted", final
    calls = _calls(tmp_path)
    # each action once, in order; the one cut short by the crash repeated under the same key
    distinct = list(dict.fromkeys((kind, step) for _, kind, step in calls))
    assert distinct == [("apply", "1"), ("apply", "2"), ("apply", "3"), ("finalize", "0")]
    keys = {(kind, step): {key for key, kk, ss in calls if (kk, ss) == (kind, step)} for kind, step in distinct}
    assert all(len(v) == 1 for v in keys.values()), keys
    repeated = [c for c in distinct if sum(1 for _, kk, ss in calls if (kk, ss) == c) > 1]
    assert repeated == ([("apply", "3")] if crash == "during_an_action" else [])
    if crash == "during_an_action":
        assert any("carrying it out again with the same action key" in e["message"] for e in events)
