"""Deploys driven through the API: pushed samples to promotion or rollback, overrides, long-poll."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.api.conftest import TOKENS, Api, auth, make_settings
from tests.api.helpers import marker, window

STEPS = [{"weight": 10, "min_duration_s": 0}, {"weight": 50, "min_duration_s": 30}, {"weight": 100}]


async def drive(
    api: Api, d: dict[str, Any], *, max_windows: int = 150, **rates: float
) -> list[dict[str, Any]]:
    """Push 10-s windows, canary getting the weight of the step in effect, until the deploy leaves
    'analyzing'. Returns the deploy after each push."""
    seen = []
    for i in range(max_windows):
        weight = d["steps"][max(d["step"]["index"], 0)]["weight"]
        d = (await api.push(d["id"], window(i, weight, **rates)))["deploy"]
        seen.append(d)
        if d["state"] != "analyzing":
            break
    return seen


async def test_healthy_canary_is_promoted_step_by_step(api: Api) -> None:
    d = await api.mark(marker(steps=STEPS))
    seen = await drive(api, d)
    final = seen[-1]
    assert final["state"] == "promoted"
    assert final["verdict"]["decision"] == "pass"
    assert {e["metric"] for e in final["verdict"]["evidence"]} >= {"error_rate", "latency_p99", "throughput"}
    assert {s["step"]["index"] for s in seen} >= {0, 1}  # windows were pushed at 10% and at 50%
    _, out = await api.call("GET", f"/api/v1/deploys/{d['id']}/events")
    transitions = [e["message"] for e in out["events"] if e["kind"] == "transition"]
    assert transitions[-1].startswith("analyzing -> promoted")
    steps_applied = [
        e["details"]["step"]
        for e in out["events"]
        if e["kind"] == "action_done" and e["details"]["kind"] == "apply_step"
    ]
    assert steps_applied == [0, 1, 2]


async def test_regressed_canary_is_rolled_back(api: Api) -> None:
    d = await api.mark(marker(steps=STEPS))
    seen = await drive(api, d, canary_error_rate=0.05)
    final = seen[-1]
    assert final["state"] == "rolled_back"
    assert final["step"]["index"] == 0  # never got past 10%
    assert final["verdict"]["decision"] == "fail"
    assert "canary analysis failed" in final["reason"]
    assert len(seen) < 30
    _, out = await api.call("GET", f"/api/v1/deploys/{d['id']}/events")
    kinds = [e["details"].get("kind") for e in out["events"] if e["kind"] == "action_done"]
    assert kinds.count("rollback") == 1


async def test_duplicate_windows_are_not_double_counted(api: Api) -> None:
    d = await api.mark(marker(steps=[{"weight": 10, "min_duration_s": 3600}, {"weight": 100}]))
    first = await api.push(d["id"], window(0, 10))
    assert (first["accepted"], first["duplicates"]) == (2, 0)
    resp = await api.client.get(f"/api/v1/deploys/{d['id']}", headers=auth("read"))
    assert "Infinity" not in await resp.text()  # an unbounded confidence bound is null in JSON
    assert first["deploy"]["verdict"]["evidence"][0]["ci_high"] is None
    again = await api.push(d["id"], window(0, 10))
    assert (again["accepted"], again["duplicates"]) == (0, 2)
    assert again["deploy"]["verdict"] == first["deploy"]["verdict"]
    canary0, _ = window(0, 10)
    mixed = await api.push(d["id"], [canary0, *window(1, 10)])
    assert (mixed["accepted"], mixed["duplicates"]) == (2, 1)
    assert len(await api.store.samples(d["id"])) == 4
    evidence = {e["metric"]: e for e in mixed["deploy"]["verdict"]["evidence"]}
    assert evidence["error_rate"]["canary_n"] == 2 * 200  # two canary windows of 200 requests


async def test_manual_pause_resume_and_rollback_are_audited(api: Api) -> None:
    d = await api.mark(marker(steps=STEPS))
    path = f"/api/v1/deploys/{d['id']}"
    status, paused = await api.call(
        "POST", f"{path}/pause", as_="operator", json={"reason": "error budget meeting"}
    )
    assert status == 200 and paused["state"] == "paused" and "error budget meeting" in paused["reason"]
    status, err = await api.call("POST", f"{path}/pause", as_="operator", json={"reason": "again"})
    assert status == 409 and err["error"] == "conflict"
    status, resumed = await api.call("POST", f"{path}/resume", as_="operator", json={"reason": "budget ok"})
    assert status == 200 and resumed["state"] == "analyzing"
    status, back = await api.call(
        "POST", f"{path}/rollback", as_="operator", json={"reason": "customer report"}
    )
    assert status == 200 and back["state"] in ("rolling_back", "rolled_back")  # answered before the call
    assert (await api.settled(d["id"]))["state"] == "rolled_back"
    for action in ("rollback", "promote", "resume"):
        status, err = await api.call("POST", f"{path}/{action}", as_="operator", json={"reason": "late"})
        assert status == 409, action
    _, out = await api.call("GET", f"{path}/events")
    overrides = [
        (e["details"]["action"], e["details"]["who"], e["details"]["why"])
        for e in out["events"]
        if e["kind"] == "override"
    ]
    who = TOKENS["operator"][0]
    assert overrides == [
        ("pause", who, "error budget meeting"),
        ("resume", who, "budget ok"),
        ("rollback", who, "customer report"),
    ]


async def test_promote_full_jumps_to_the_end(api: Api) -> None:
    d = await api.mark(marker(steps=STEPS))
    status, _ = await api.call(
        "POST", f"/api/v1/deploys/{d['id']}/promote", as_="operator", json={"reason": "hotfix", "full": True}
    )
    assert status == 200
    assert (await api.settled(d["id"]))["state"] == "promoted"
    _, events = await api.call("GET", f"/api/v1/deploys/{d['id']}/events")
    (ov,) = [e for e in events["events"] if e["kind"] == "override"]
    assert ov["details"]["action"] == "promote_full"


async def test_wait_returns_when_the_deploy_finishes(api: Api) -> None:
    d = await api.mark(marker(steps=STEPS))
    waiter = asyncio.create_task(api.call("GET", f"/api/v1/deploys/{d['id']}/wait", params={"timeout": "20"}))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    seen = await drive(api, d)
    assert seen[-1]["state"] == "promoted"
    status, out = await asyncio.wait_for(waiter, 5)
    assert status == 200 and out["terminal"] is True and out["state"] == "promoted"


async def test_wait_times_out_with_terminal_false(api: Api) -> None:
    d = await api.mark(marker(steps=STEPS))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    status, out = await api.call("GET", f"/api/v1/deploys/{d['id']}/wait", params={"timeout": "0.2"})
    assert status == 200 and out["terminal"] is False and out["state"] == "analyzing"
    assert 0.15 <= loop.time() - t0 < 5


class TestWaitCap:
    @pytest.fixture
    def settings(self) -> Any:
        return make_settings(server={"wait_max_s": 0.2})

    async def test_timeout_is_capped_by_the_server(self, api: Api) -> None:
        d = await api.mark(marker(steps=STEPS))
        status, out = await asyncio.wait_for(
            api.call("GET", f"/api/v1/deploys/{d['id']}/wait", params={"timeout": "600"}), 5
        )
        assert status == 200 and out["terminal"] is False


async def test_the_marker_says_up_front_when_the_traffic_is_too_low_for_a_verdict(api: Api) -> None:
    """A service at 20 req/s: the second deploy's marker answers, from the first deploy's traffic, that
    ruling out the critical change takes longer than a step's window, and what will happen then."""
    first = await api.mark(marker(steps=STEPS))
    assert first["outlook"] is None  # nothing to estimate from yet
    d = first
    for i in range(12):
        d = (await api.push(d["id"], window(i, 10, total=200)))["deploy"]
    live = d["outlook"]
    assert live["basis"] == "this deploy's traffic so far" and live["likely_inconclusive"] is True
    assert "expect INCONCLUSIVE, then held for a human" in live["sentence"]
    await api.call("POST", f"/api/v1/deploys/{d['id']}/rollback", as_="operator", json={"reason": "drill"})
    second = await api.mark(marker(steps=STEPS, version="v2.4.2", analysis={"on_inconclusive": "rollback"}))
    o = second["outlook"]
    assert o["basis"] == "traffic of the last deploy, v2.4.1"
    assert o["total_rps"] == pytest.approx(20.0) and o["likely_inconclusive"] is True
    assert (
        o["on_inconclusive"] == "rollback" and "then rolled back (on_inconclusive: rollback)" in o["sentence"]
    )
    _, out = await api.call("GET", f"/api/v1/deploys/{second['id']}/events")
    assert any(e["kind"] == "note" and e["message"].startswith("Outlook: ") for e in out["events"])


async def test_rolling_back_a_promoted_deploy_with_a_newer_one_is_409_unless_forced(api: Api) -> None:
    old = await api.mark(marker(steps=STEPS))
    path = f"/api/v1/deploys/{old['id']}"
    status, _ = await api.call("POST", f"{path}/promote", as_="operator", json={"reason": "ship", "full": True})
    assert status == 200 and (await api.settled(old["id"]))["state"] == "promoted"
    newer = await api.mark(marker(steps=STEPS, version="9.9.9"))
    status, err = await api.call("POST", f"{path}/rollback", as_="operator", json={"reason": "regret"})
    assert status == 409 and err["error"] == "conflict" and newer["id"] in err["detail"], err
    status, out = await api.call(
        "POST", f"{path}/rollback", as_="operator", json={"reason": "both bad", "force": True}
    )
    assert status == 200, out
    assert (await api.settled(old["id"]))["state"] == "rolled_back"
