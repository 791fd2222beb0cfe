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

    def __init__(
        self, tmp: Path, port: int, *, database_url: str | None = None, engine: str = "{tick_s: 0.5}",
        script_text: str = SCRIPT,
    ) -> None:
        super().__init__(tmp / "guardrail.yaml", tmp / "server.log", port)
        script = tmp / "deploy.sh"
        script.write_text(script_text)
        script.chmod(0o755)
        self.config.write_text(command_target_config(
            database_url=database_url or f"sqlite+aiosqlite:///{tmp / 'guardrail.db'}", port=port, token=TOKEN,
            engine=engine, script=script,
        ))

    async def start(self) -> None:
        self.spawn()
        async with aiohttp.ClientSession() as s:
            await self.ready(s, tries=600)  # a loaded machine can take a while to import everything


def _calls(tmp: Path) -> list[tuple[str, str, str]]:
    if not (tmp / "calls.log").exists():
        return []
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
                    async with http.get(f"{base}/deploys/{deploy_id}/wait", params={"until": "settled"}) as r:
                        assert (await r.json())["actions_pending"] == 0
                    server.kill()  # mid-rollout, the 50% step live, no action in flight
                    killed = True
                    await server.start()
                if not killed and crash == "during_an_action" and "apply 3" in applied:
                    server.kill()  # the 100% step's call is hanging (actions run in the background)
                    killed = True
                    await server.start()
                push = asyncio.ensure_future(http.post(f"{base}/deploys/{deploy_id}/samples", json=body))
                done, _ = await asyncio.wait({push}, timeout=15)
                assert done, "a push must be answered while an adapter call hangs"
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


# --- many trials, pushes back to back, on SQLite and PostgreSQL ------------------------------------
#
# A trial is one deploy rolled out by pushes sent back to back (each the moment the last is answered)
# through a kill -9 of the server and an immediate restart. It passes when a push answered during the
# replay reports the deploy promoted, with each action carried out once (the one the kill cut short
# repeated once, with the same key). Ten trials share a server (a round), so 20 trials start it only
# 4 times: six of a round hang in an adapter call (apply 2, apply 3 or the finalize) when the kill
# lands, four are between steps with their pushes in flight.

ROUNDS, PER_ROUND = 2, 10
HANGS = ("apply 2", "apply 3", "finalize 0", None, None) * 2
PUSHERS = 2  # per deploy, so the next push arrives while the last is being handled
REPLAY = 150  # windows per deploy (25 minutes of data): an uninterrupted rollout needs about 20-60
WEIGHTS = {"apply 1": 0.1, "apply 2": 0.5, "apply 3": 1.0}
ROUND_SCRIPT = """#!/bin/sh
# usage: deploy.sh KIND STEP  -- logs every call with its action key; hangs where a file says so
echo "$GUARDRAIL_ACTION_KEY $1 $2" >> "$(dirname "$0")/calls.log"
f="$(dirname "$0")/hang-on-$GUARDRAIL_DEPLOY_ID-$1-$2"
if [ -f "$f" ]; then rm "$f"; sleep 600; fi
"""
FINAL = ("promoted", "rolled_back", "rollback_failed")


def _deploy_calls(tmp: Path, deploy_id: str) -> list[str]:
    """``kind step`` of each call made for the deploy, in order (the action key starts with its id)."""
    return [f"{kind} {step}" for key, kind, step in _calls(tmp) if key.startswith(f"{deploy_id}:")]


def _judge_trial(tmp: Path, deploy_id: str, state: str, hang: str | None) -> str:
    """Why the trial failed, or '' when it passed."""
    if state != "promoted":
        return f"ended {state}"
    calls = [(key, kind, step) for key, kind, step in _calls(tmp) if key.startswith(f"{deploy_id}:")]
    distinct = list(dict.fromkeys(f"{kind} {step}" for _, kind, step in calls))
    if distinct != ["apply 1", "apply 2", "apply 3", "finalize 0"]:
        return f"calls {distinct}"
    for what in distinct:
        keys = [key for key, kind, step in calls if f"{kind} {step}" == what]
        if len(set(keys)) != 1 or len(keys) > 2 or (what == hang and len(keys) != 2):
            return f"{what} called {len(keys)} time(s) with keys {sorted(set(keys))}"
    return ""


async def _round(tmp: Path, database_url: str, r: int) -> tuple[list[str], float]:
    """One round of PER_ROUND trials. Returns each trial's failure ('' when it passed), and seconds."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    port = free_port()
    # leases longer than a restart takes on a loaded machine: the dead process still holds its deploys
    server = Server(tmp, port, database_url=database_url, script_text=ROUND_SCRIPT,
                    engine="{tick_s: 0.5, lease_s: 20, lease_wait_s: 40}")
    base = f"http://127.0.0.1:{port}/api/v1"
    traffic = SyntheticTraffic(rate=400)
    await server.start()
    killed = asyncio.Event()
    up = asyncio.Event()
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"},
                                         timeout=aiohttp.ClientTimeout(total=60)) as http:
            ids = []
            for j in range(PER_ROUND):
                rng = np.random.default_rng(1000 * r + j)
                marker = {"service": f"checkout-{r}-{j}", "environment": "production", "version": "2.0.0",
                          "previous_version": "1.9.9", "commit": "f00ba47", "change_type": "feature",
                          "strategy": "canary", "started_at": T0, "adapter": {"name": "target"},
                          # the trials between steps have long steps: mid-rollout when the kill lands
                          "steps": [{"weight": 10, "min_duration_s": 30 if HANGS[j] else 100},
                                    {"weight": 50, "min_duration_s": 30 if HANGS[j] else 100}, {"weight": 100}]}
                async with http.post(f"{base}/deploys", json=marker) as resp:
                    assert resp.status == 201, await resp.text()
                    deploy_id = (await resp.json())["id"]
                ids.append(deploy_id)
                if HANGS[j]:
                    (tmp / f"hang-on-{deploy_id}-{HANGS[j].replace(' ', '-')}").touch()
                async with http.post(f"{base}/deploys/{deploy_id}/samples",
                                     json={"samples": [sample_json(s) for s in traffic.history(rng)]}) as resp:
                    assert resp.status == 202, await resp.text()
            up.set()

            windows = [0] * PER_ROUND
            states = ["analyzing"] * PER_ROUND

            async def push(j: int, rng: np.random.Generator) -> None:
                while states[j] not in FINAL and windows[j] < REPLAY:
                    if not up.is_set():
                        await up.wait()
                    applied = _deploy_calls(tmp, ids[j])
                    k = windows[j]
                    windows[j] += 1
                    c, b = traffic.window(rng, T0 + 10 * k, weight=WEIGHTS.get(applied[-1], 1.0) if applied else 0.1)
                    body = {"samples": [sample_json(c), sample_json(b)]}
                    while True:
                        try:
                            async with http.post(f"{base}/deploys/{ids[j]}/samples", json=body,
                                                 timeout=aiohttp.ClientTimeout(total=15)) as resp:
                                if resp.status == 202:
                                    state = (await resp.json())["deploy"]["state"]
                                    if states[j] not in FINAL:
                                        states[j] = state
                                    break
                        except (aiohttp.ClientError, TimeoutError):  # the server is down
                            pass
                        await asyncio.sleep(0.05)  # the same window again (or a 503 while a lease runs out)
                        if not up.is_set():
                            await up.wait()

            async def killer() -> None:
                hangs = [(i, h) for i, h in zip(ids, HANGS, strict=True) if h]
                while not all(h in _deploy_calls(tmp, i) for i, h in hangs):  # each hangs until killed
                    await asyncio.sleep(0.01)
                up.clear()
                print(f"round {r}: kill at {loop.time() - t0:.1f} s")
                server.kill()
                killed.set()
                await server.start()
                print(f"round {r}: up at {loop.time() - t0:.1f} s")
                up.set()

            kill_task = asyncio.ensure_future(killer())
            await asyncio.gather(*(push(j, np.random.default_rng(1000 * r + 100 * p + j))
                                   for j in range(PER_ROUND) for p in range(PUSHERS)))
            for j in range(PER_ROUND):
                print(f"round {r} deploy {j} hang {HANGS[j]}: {states[j]} after {windows[j]} windows")
                if states[j] in FINAL:  # actions may still be settling after the push that ended it
                    async with http.get(f"{base}/deploys/{ids[j]}/wait", params={"timeout": "15"}) as resp:
                        states[j] = (await resp.json())["state"]
                else:
                    states[j] = f"{states[j]} at the end of the replay ({REPLAY} windows)"
            if not killed.is_set():
                kill_task.cancel()
            await asyncio.gather(kill_task, return_exceptions=True)
    finally:
        server.stop()
    if not killed.is_set():
        return [f"ended {s} before the kill" for s in states], loop.time() - t0
    print(f"round {r}: {loop.time() - t0:.1f} s")
    return [_judge_trial(tmp, i, s, h) for i, s, h in zip(ids, states, HANGS, strict=True)], loop.time() - t0


async def test_kill_9_trials_with_pushes_back_to_back_each_reach_the_final_state(
    tmp_path: Path, store_url: str
) -> None:
    """20 trials on each database: each deploy is promoted and each action carried out once (the one
    a kill cut short repeated once, with the same key), however the pushes keep coming."""
    failures, seconds = [], 0.0
    for r in range(ROUNDS):
        trial = tmp_path / f"round-{r}"
        trial.mkdir()
        whys, secs = await _round(trial, store_url, r)
        seconds += secs
        failures += [(f"{r}.{j}", why) for j, why in enumerate(whys) if why]
    n = ROUNDS * PER_ROUND
    print(f"kill -9 trials: {n - len(failures)}/{n} passed in {seconds:.0f} s")
    assert not failures, f"{len(failures)}/{n} trials failed: {failures}"
