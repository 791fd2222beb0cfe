"""Rejected requests: JSON errors naming the field, the right status, and nothing stored."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import MAX_BODY_BYTES, Api
from tests.api.helpers import marker, window


def _without(key: str) -> dict[str, Any]:
    body = marker()
    del body[key]
    return body


BAD_MARKERS = [
    pytest.param(marker(team="payments"), "team", "unknown field 'team'", id="unknown-field"),
    pytest.param(
        marker(steps=[{"weight": 10}, {"weight": 50, "pause": True}]),
        "steps[1].pause",
        "unknown field 'pause' in steps[1]; accepted: weight, servers, min_duration_s",
        id="unknown-nested-field",
    ),
    pytest.param(
        marker(adapter={"name": "noop", "config": {}, "secret": "x"}),
        "adapter.secret",
        "unknown field 'secret'",
        id="unknown-adapter-field",
    ),
    pytest.param(_without("service"), "service", "service is required", id="missing-required"),
    pytest.param(marker(version=3), "version", "valid string, got an integer", id="wrong-type-int"),
    pytest.param(
        marker(steps=[{"weight": "10"}]), "steps[0].weight", "valid number, got a string", id="wrong-type-str"
    ),
    pytest.param(marker(changes="one change"), "changes", "valid array, got a string", id="wrong-type-list"),
    pytest.param(marker(strategy="yolo"), "strategy", "'canary', 'blue_green', 'rolling'", id="bad-enum"),
    pytest.param(marker(change_type="refactor"), "change_type", "got 'refactor'", id="bad-enum-value-named"),
    pytest.param(
        marker(steps=[{"weight": 10}, {"weight": 150}]),
        "steps[1].weight",
        "less than or equal to 100",
        id="weight>100",
    ),
    pytest.param(
        marker(steps=[{"weight": 10, "min_duration_s": -1}]),
        "steps[0].min_duration_s",
        "greater than or equal to 0",
        id="neg-duration",
    ),
    pytest.param(
        marker(steps=[{"weight": 10, "servers": 2}]), "steps[0]", "exactly one of", id="weight+servers"
    ),
    pytest.param(marker(steps=[{"servers": 2}]), "steps[0].weight", "needs weight", id="canary-by-servers"),
    pytest.param(
        marker(strategy="rolling", steps=[{"servers": 0}]), "steps[0].servers", "integer >= 1", id="servers-0"
    ),
    pytest.param(marker(steps=[]), "steps", "at least 1 item", id="no-steps"),
    pytest.param(marker(commit_time="yesterday"), "commit_time", "RFC3339", id="bad-timestamp"),
    pytest.param(
        marker(started_at="2024-05-01T12:00:00"), "started_at", "no UTC offset", id="naive-timestamp"
    ),
    pytest.param(marker(analysis={"alpha": 0.7}), "analysis.alpha", "less than 0.5", id="alpha"),
    pytest.param(
        marker(analysis={"on_inconclusive": "panic"}),
        "analysis.on_inconclusive",
        "'hold' or 'rollback'",
        id="literal",
    ),
    pytest.param(marker(db_migrations="yes"), "db_migrations", "", id="db-migrations-type"),
    pytest.param(
        marker(metrics={"source": "push", "overrides": {"latency_p42": {"enabled": False}}}),
        "metrics.overrides.latency_p42",
        "no such built-in metric",
        id="unknown-metric-override",
    ),
    pytest.param(
        marker(adapter={"name": "teleport", "config": {}}),
        "adapter.name",
        "unknown deploy adapter preset 'teleport'",
        id="unknown-adapter",
    ),
    pytest.param(
        marker(adapter={"name": "noop", "config": {"fail_on": ["explode"]}}),
        "adapter.config.fail_on",
        "expected",
        id="bad-adapter-config",
    ),
]


async def _deploy_ids(api: Api) -> list[str]:
    status, out = await api.call("GET", "/api/v1/deploys")
    assert status == 200
    return [d["id"] for d in out["deploys"]]


@pytest.mark.parametrize(("body", "field", "detail"), BAD_MARKERS)
async def test_bad_marker_is_rejected_naming_the_field(api: Api, body: Any, field: str, detail: str) -> None:
    status, err = await api.call("POST", "/api/v1/deploys", as_="ci", json=body)
    assert status == 400, err
    assert err["error"] in ("invalid", "config_invalid")
    assert err["field"] == field
    assert detail in err["detail"]
    assert await _deploy_ids(api) == []


async def test_body_that_is_not_json_is_rejected(api: Api) -> None:
    headers = {"Content-Type": "application/json"}
    for raw in (b'{"service": "checkout",', b"", b"[1, 2]", b"null"):
        status, err = await api.call("POST", "/api/v1/deploys", as_="ci", data=raw, headers=headers)
        assert status == 400 and err["error"] in ("invalid_json", "invalid"), (raw, err)
        assert {"error", "detail", "field"} <= set(err) <= {"error", "detail", "field", "errors"}
    status, err = await api.call(
        "POST", "/api/v1/deploys", as_="ci", data=b"service=checkout", headers={"Content-Type": "text/plain"}
    )
    assert status == 415 and err["error"] == "unsupported_media_type"
    assert await _deploy_ids(api) == []


async def test_body_over_the_limit_is_413_json(api: Api) -> None:
    body = marker(description="x" * 9000, changes=["y" * 1000] * (MAX_BODY_BYTES // 1000 + 1))
    status, err = await api.call("POST", "/api/v1/deploys", as_="ci", json=body)
    assert status == 413 and err["error"] == "too_large"
    assert str(MAX_BODY_BYTES) in err["detail"]
    assert await _deploy_ids(api) == []


async def test_unknown_route_and_method_are_json_errors(api: Api) -> None:
    status, err = await api.call("GET", "/api/v1/nope")
    assert status == 404 and err == {"error": "not_found", "detail": err["detail"], "field": None}
    resp = await api.client.request("DELETE", "/api/v1/deploys")
    err = await resp.json()
    assert resp.status == 405 and err["error"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"] and "POST" in resp.headers["Allow"]


async def test_unknown_deploy_is_404(api: Api) -> None:
    for method, path, scope, body in (
        ("GET", "/api/v1/deploys/nope", "read", None),
        ("GET", "/api/v1/deploys/nope/events", "read", None),
        ("GET", "/api/v1/deploys/nope/wait?timeout=0", "read", None),
        ("POST", "/api/v1/deploys/nope/pause", "operator", {"reason": "x"}),
        ("POST", "/api/v1/deploys/nope/samples", "ci", {"samples": window(0, 10)}),
    ):
        status, err = await api.call(method, path, as_=scope, json=body)
        assert status == 404 and err["error"] == "not_found", (path, err)


BAD_SAMPLES = [
    pytest.param(
        {"latency_histogram": {"bounds": [0.1, 0.5], "counts": [1, 2]}},
        "samples[1].latency_histogram.counts",
        "len(bounds) + 1",
        id="histogram-counts",
    ),
    pytest.param(
        {"latency_histogram": {"bounds": [0.5, 0.1], "counts": [1, 2, 3]}},
        "samples[1].latency_histogram.bounds",
        "increasing",
        id="histogram-bounds",
    ),
    pytest.param({"errors": 5000}, "samples[1].errors", "between 0 and requests", id="errors>requests"),
    pytest.param({"requests": -1}, "samples[1].requests", "greater than or equal to 0", id="negative"),
    pytest.param({"requests": 1.5}, "samples[1].requests", "valid integer", id="float-requests"),
    pytest.param({"start": "soon"}, "samples[1].start", "RFC3339", id="bad-timestamp"),
    pytest.param({"end": 1_600_000_000}, "samples[1].end", "must be after start", id="end-before-start"),
    pytest.param({"track": "green"}, "samples[1].track", "'canary' or 'baseline'", id="bad-track"),
    pytest.param({"p99": 0.3}, "samples[1].p99", "unknown field 'p99'", id="unknown-field"),
    pytest.param({"gauges": {"cpu": "high"}}, "samples[1].gauges.cpu", "valid number", id="gauge-type"),
]


@pytest.mark.parametrize(("change", "field", "detail"), BAD_SAMPLES)
async def test_bad_sample_rejects_the_whole_push(
    api: Api, change: dict[str, Any], field: str, detail: str
) -> None:
    d = await api.mark(marker())
    good, bad = window(0, 10)
    status, err = await api.call(
        "POST", f"/api/v1/deploys/{d['id']}/samples", as_="ci", json={"samples": [good, {**bad, **change}]}
    )
    assert status == 400, err
    assert err["field"] == field and detail in err["detail"], err
    assert await api.store.samples(d["id"]) == []


async def test_empty_push_is_rejected(api: Api) -> None:
    d = await api.mark(marker())
    status, err = await api.call("POST", f"/api/v1/deploys/{d['id']}/samples", as_="ci", json={"samples": []})
    assert status == 400 and err["field"] == "samples"


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/api/v1/deploys", {"limit": "0"}, "limit"),
        ("/api/v1/deploys", {"limit": "501"}, "limit"),
        ("/api/v1/deploys", {"limit": "ten"}, "limit"),
        ("/api/v1/deploys", {"state": "exploded"}, "state"),
        ("/api/v1/deploys", {"since": "last tuesday"}, "since"),
        ("/api/v1/deploys", {"colour": "blue"}, "colour"),
        ("/api/v1/deploys/{id}/events", {"after": "-1"}, "after"),
        ("/api/v1/deploys/{id}/wait", {"timeout": "soon"}, "timeout"),
        ("/api/v1/deploys/{id}/wait", {"timeout": "-5"}, "timeout"),
        ("/api/v1/deploys/{id}/wait", {"timeout": "nan"}, "timeout"),
    ],
)
async def test_bad_query_parameter_is_400(api: Api, path: str, params: dict[str, str], field: str) -> None:
    d = await api.mark(marker())
    status, err = await api.call("GET", path.format(id=d["id"]), params=params)
    assert status == 400 and err["field"] == field, err


async def test_override_needs_a_reason(api: Api) -> None:
    d = await api.mark(marker())
    for body in ({}, {"reason": "   "}, {"reason": "ok", "full": True}):
        status, err = await api.call("POST", f"/api/v1/deploys/{d['id']}/pause", as_="operator", json=body)
        assert status == 400, (body, err)
    status, err = await api.call(
        "POST", f"/api/v1/deploys/{d['id']}/promote", as_="operator", json={"full": 1}
    )
    assert status == 400 and err["field"] in ("full", "reason")
    _, again = await api.call("GET", f"/api/v1/deploys/{d['id']}")
    assert again["state"] == "analyzing"


async def test_bad_idempotency_key_is_400(api: Api) -> None:
    for key in ("x" * 300, "   "):
        status, err = await api.call(
            "POST", "/api/v1/deploys", as_="ci", json=marker(), headers={"Idempotency-Key": key}
        )
        assert status == 400 and err["field"] == "Idempotency-Key"
    assert await _deploy_ids(api) == []
