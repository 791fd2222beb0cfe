"""Deploy markers: recording, idempotent retries, reading back, listing and the timeline."""

from __future__ import annotations

from tests.api.conftest import PUBLIC_URL, Api
from tests.api.helpers import T0, marker


async def test_marker_is_recorded_and_its_first_step_applied(api: Api) -> None:
    d = await api.mark(marker())
    assert d["service"] == "checkout" and d["version"] == "v2.4.1" and d["previous_version"] == "v2.4.0"
    assert d["strategy"] == "canary" and d["change_type"] == "feature"
    assert d["commit_time"] == 1_699_999_200  # 2023-11-14T22:00:00Z
    assert d["state"] == "analyzing"
    assert d["step"] == {
        "index": 0, "total": 3, "description": "10% of traffic", "summary": "step 1/3: 10% of traffic"
    }
    assert d["steps"] == [
        {"weight": 10, "min_duration_s": 0},
        {"weight": 50, "min_duration_s": 0},
        {"weight": 100, "min_duration_s": 0},
    ]
    assert d["data_time"] == T0
    assert d["adapter"] == {"name": "noop"}
    assert d["db_migrations"] == {"applied": False, "description": ""}
    assert d["links"] == {
        "self": f"{PUBLIC_URL}/api/v1/deploys/{d['id']}",
        "events": f"{PUBLIC_URL}/api/v1/deploys/{d['id']}/events",
        "wait": f"{PUBLIC_URL}/api/v1/deploys/{d['id']}/wait",
        "page": f"{PUBLIC_URL}/deploys/{d['id']}",
        "drafts": f"{PUBLIC_URL}/api/v1/deploys/{d['id']}/drafts",
    }
    # the default policy only warns: the unanswered checklist is listed, nothing blocks
    assert d["policy"]["blocked"] is False
    assert {c["name"]: c["status"] for c in d["policy"]["checks"]}["tests_passed"] == "warn"
    status, again = await api.call("GET", f"/api/v1/deploys/{d['id']}")
    assert status == 200 and again["id"] == d["id"] and again["state"] == "analyzing"


async def test_omitted_options_take_the_defaults(api: Api) -> None:
    body = marker(strategy="canary", db_migrations=True, commit_time=1_699_990_000)
    del body["steps"], body["started_at"]
    d = await api.mark(body)
    assert [s["weight"] for s in d["steps"]] == [10, 50, 100]
    assert d["db_migrations"] == {"applied": True, "description": ""}
    assert d["commit_time"] == 1_699_990_000
    defaults = api.settings.analysis
    assert d["analysis"] == {
        "alpha": defaults.alpha,
        "interval_s": defaults.interval_s,
        "max_duration_s": defaults.max_duration_s,
        "warmup_s": defaults.warmup_s,
        "on_inconclusive": defaults.on_inconclusive,
    }


async def test_rolling_steps_by_servers(api: Api) -> None:
    d = await api.mark(
        marker(
            strategy="rolling",
            steps=[{"servers": 1, "min_duration_s": 60}, {"servers": "all", "min_duration_s": 60}],
        )
    )
    assert d["steps"] == [{"servers": 1, "min_duration_s": 60}, {"servers": "all", "min_duration_s": 60}]
    assert d["step"]["description"] == "1 server(s)"


async def test_retried_marker_with_the_same_idempotency_key_creates_one_deploy(api: Api) -> None:
    headers = {"Idempotency-Key": "ci-run-4711-attempt-1"}
    s1, first = await api.call("POST", "/api/v1/deploys", as_="ci", json=marker(), headers=headers)
    s2, second = await api.call("POST", "/api/v1/deploys", as_="ci", json=marker(), headers=headers)
    assert (s1, s2) == (201, 200)
    assert second == first
    _, listed = await api.call("GET", "/api/v1/deploys")
    assert [d["id"] for d in listed["deploys"]] == [first["id"]]


async def test_idempotency_key_reused_for_another_deploy_is_a_conflict(api: Api) -> None:
    headers = {"Idempotency-Key": "ci-run-9"}
    first = await api.mark(marker(), headers=headers)
    status, err = await api.call(
        "POST", "/api/v1/deploys", as_="ci", json=marker(version="v9.9.9"), headers=headers
    )
    assert status == 409 and err["error"] == "conflict" and err["field"] == "Idempotency-Key"
    _, listed = await api.call("GET", "/api/v1/deploys")
    assert [d["id"] for d in listed["deploys"]] == [first["id"]]


async def test_list_filters(api: Api) -> None:
    a = await api.mark(marker(service="checkout"))
    b = await api.mark(marker(service="search", environment="staging"))
    _, all_ = await api.call("GET", "/api/v1/deploys")
    assert [d["id"] for d in all_["deploys"]] == [b["id"], a["id"]]  # newest first
    _, only = await api.call("GET", "/api/v1/deploys", params={"service": "search"})
    assert [d["id"] for d in only["deploys"]] == [b["id"]]
    _, env = await api.call("GET", "/api/v1/deploys", params={"environment": "production"})
    assert [d["id"] for d in env["deploys"]] == [a["id"]]
    _, state = await api.call("GET", "/api/v1/deploys", params={"state": "promoted"})
    assert state["deploys"] == []
    _, one = await api.call("GET", "/api/v1/deploys", params={"limit": "1"})
    assert [d["id"] for d in one["deploys"]] == [b["id"]]
    created = a["created_at"]
    _, since = await api.call("GET", "/api/v1/deploys", params={"since": str(created + 3600)})
    assert since["deploys"] == []
    _, until = await api.call(
        "GET",
        "/api/v1/deploys",
        params={"until": "2100-01-01T00:00:00+00:00", "since": "2001-01-01T00:00:00Z"},
    )
    assert len(until["deploys"]) == 2


async def test_timeline_lists_events_in_order_and_after_a_seq(api: Api) -> None:
    d = await api.mark(marker())
    status, out = await api.call("GET", f"/api/v1/deploys/{d['id']}/events")
    assert status == 200
    events = out["events"]
    assert events[0]["kind"] == "created" and "v2.4.1" in events[0]["message"]
    kinds = [e["kind"] for e in events]
    assert "action_started" in kinds and "action_done" in kinds
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for e in events:
        assert set(e) == {"seq", "kind", "message", "data_time", "wall_time", "details"}
    _, later = await api.call("GET", f"/api/v1/deploys/{d['id']}/events", params={"after": str(seqs[0])})
    assert [e["seq"] for e in later["events"]] == seqs[1:]
