"""POST /v1/metrics through the real app (SQLite store, engine, auth): OTLP protobuf and JSON become
canary and baseline windows of the matching deploy."""

from __future__ import annotations

import gzip
import json
from typing import Any

import numpy as np
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

from guardrail.domain.model import Sample
from tests.api.conftest import Api, auth
from tests.api.helpers import T0, marker
from tests.api.otlp_payloads import (
    BASELINE,
    BOUNDS,
    CANARY,
    DELTA,
    body,
    counter,
    gauge,
    histogram,
    hpoint,
    json_hpoint,
    json_request,
    npoint,
    resource,
)

PROTOBUF = {"Content-Type": "application/x-protobuf"}
WINDOW = 10.0


async def post(
    api: Api, data: bytes, *, as_: str | None = "ci", headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    h = {**(auth(as_) if as_ else {}), **PROTOBUF, **(headers or {})}
    resp = await api.client.post("/v1/metrics", data=data, headers=h)
    return resp.status, resp.content_type, await resp.read()


async def post_json(api: Api, payload: Any) -> tuple[int, dict[str, Any]]:
    resp = await api.client.post("/v1/metrics", json=payload, headers=auth("ci"))
    return resp.status, await resp.json()


async def mark(api: Api, **overrides: Any) -> dict[str, Any]:
    body = marker(steps=[{"weight": 50, "min_duration_s": 3600}, {"weight": 100}], **overrides)
    body.setdefault("analysis", {"interval_s": WINDOW})
    return await api.mark(body)


async def stored(api: Api, deploy_id: str) -> dict[tuple[str, float], Sample]:
    return {(s.track.value, s.start - T0): s for s in await api.store.samples(deploy_id)}


def counts(n: int, slow: int = 0) -> list[int]:
    return [n - slow, 0, 0, 0, 0, 0, 0, slow]


async def test_protobuf_cumulative_histogram_becomes_canary_and_baseline_windows(api: Api) -> None:
    d = await mark(api)
    for t, c, b, c_err in ((1, 100, 1000, 0), (10, 150, 1500, 2), (12, 200, 2100, 3)):
        status, ctype, raw = await post(
            api,
            body(
                resource(
                    histogram(
                        hpoint(T0 + t, counts(c, slow=t)),
                        hpoint(T0 + t, counts(c_err), http__response__status_code=500, start=T0 + 0.5),
                    ),
                    version=CANARY,
                ),
                resource(histogram(hpoint(T0 + t, counts(b))), version=BASELINE),
            ),
        )
        assert (status, ctype) == (200, "application/x-protobuf")
        assert raw == b""  # an empty ExportMetricsServiceResponse: everything accepted
    got = await stored(api, d["id"])
    assert set(got) == {("canary", 0.0), ("baseline", 0.0)}  # [T0+10, T0+20) is still open
    c, b = got[("canary", 0.0)], got[("baseline", 0.0)]
    assert (c.start, c.end) == (T0, T0 + WINDOW)
    assert (c.requests, c.errors) == (50 + 2, 2)
    assert (
        c.latency is not None and c.latency.bounds == BOUNDS and c.latency.counts == (43, 0, 0, 0, 0, 0, 0, 9)
    )
    assert (b.requests, b.errors) == (500, 0)
    _, events = await api.call("GET", f"/api/v1/deploys/{d['id']}")
    assert events["data_time"] == T0 + WINDOW


async def test_json_with_string_int64s_and_exemplars_is_accepted(api: Api) -> None:
    d = await mark(api)
    for t, n in ((2, 10), (10, 30), (13, 45)):
        status, out = await post_json(
            api,
            json_request(
                (
                    CANARY,
                    [
                        json_hpoint(T0 + t, counts(n)),
                        json_hpoint(T0 + t, counts(n // 10), status=503, start=T0 + 1),
                    ],
                ),
                (BASELINE, [json_hpoint(T0 + t, counts(9 * n))]),
            ),
        )
        assert (status, out) == (200, {})
    got = await stored(api, d["id"])
    # every series' first point (at T0+2) is the reference: it started before guardrail saw any point
    assert (got[("canary", 0.0)].requests, got[("canary", 0.0)].errors) == (20 + 2, 2)
    assert got[("baseline", 0.0)].requests == 180


async def test_json_with_numbers_and_proto_field_names_is_accepted(api: Api) -> None:
    d = await mark(api)
    point = {
        "attributes": [],
        "start_time_unix_nano": int(T0 * 1e9),
        "timeUnixNano": int((T0 + 3) * 1e9),
        "count": 4,
        "bucketCounts": [4, 0, 0, 0, 0, 0, 0, 0],
        "explicitBounds": list(BOUNDS),
    }
    later = {**point, "timeUnixNano": int((T0 + 15) * 1e9), "start_time_unix_nano": int((T0 + 10) * 1e9)}
    for p in (point, later):
        payload = json_request((CANARY, [p]), temporality=1)
        status, out = await post_json(api, payload)
        assert (status, out) == (200, {})
    assert (await stored(api, d["id"]))[("canary", 0.0)].requests == 4


async def test_delta_histogram_counter_and_gauge_land_in_the_same_sample(api: Api) -> None:
    d = await mark(
        api,
        metrics={
            "custom": [
                {
                    "name": "payment_failures",
                    "kind": "counter_ratio",
                    "numerator": "payments.failed",
                    "denominator": "payments.total",
                    "critical": False,
                },
            ]
        },
    )
    for i, t in enumerate((4, 8, 14)):
        canary = resource(
            histogram(hpoint(T0 + t, counts(100), start=T0 + t - 4), temporality=DELTA),
            counter("payments.total", npoint(T0 + t, 40, start=T0 + t - 4), temporality=DELTA),
            counter("payments.failed", npoint(T0 + t, 1 + i, start=T0 + t - 4), temporality=DELTA),
            gauge("db.pool.in_use", npoint(T0 + t, 3.0 + i)),
            version=CANARY,
        )
        status, _, raw = await post(api, body(canary))
        assert status == 200 and raw == b""
    s = (await stored(api, d["id"]))[("canary", 0.0)]
    assert s.requests == 200
    assert s.gauges == {"payments.total": 80, "payments.failed": 1 + 2, "db.pool.in_use": 4.0}


async def test_counter_reset_is_handled(api: Api) -> None:
    d = await mark(api)
    for t, v in ((1, 1000), (5, 1100), (8, 30), (10, 40), (15, 45)):  # restarted between 5 and 8
        status, _, _ = await post(api, body(resource(counter("orders", npoint(T0 + t, v)), version=CANARY)))
        assert status == 200
    assert (await stored(api, d["id"]))[("canary", 0.0)].gauges == {"orders": 100 + 30 + 10}


async def test_points_for_no_active_deploy_are_rejected_in_partial_success(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    await mark(api)
    h = histogram(hpoint(T0 + 1, counts(5)), hpoint(T0 + 1, counts(1), http__response__status_code=500))
    status, ctype, raw = await post(api, body(resource(h, service="search"), resource(h, version=CANARY)))
    assert (status, ctype) == (200, "application/x-protobuf")
    partial = ExportMetricsServiceResponse.FromString(raw).partial_success
    assert partial.rejected_data_points == 2
    assert (
        partial.error_message
        == "2 point(s): no active deploy for service 'search' in environment 'production'"
    )
    status, out = await post_json(api, json_request(("v7", [json_hpoint(T0 + 2, counts(1))])))
    assert status == 200
    assert out["partialSuccess"]["rejectedDataPoints"] == "1"  # int64: a string in JSON
    assert (
        "service.version 'v7' of 'checkout' in 'production' is neither"
        in out["partialSuccess"]["errorMessage"]
    )
    _, metrics = await api.call("GET", "/metrics", as_=None)
    assert 'guardrail_otlp_points_total{result="received"} 5.0' in metrics
    assert 'guardrail_otlp_points_total{result="accepted"} 2.0' in metrics
    assert 'guardrail_otlp_points_rejected_total{reason="no_deploy"} 2.0' in metrics
    assert 'guardrail_otlp_points_rejected_total{reason="version_mismatch"} 1.0' in metrics
    # and in the log, since exporters may ignore partialSuccess (the Python SDK's does)
    assert "rejected 2 data point(s): no active deploy for service 'search'" in caplog.text


async def test_a_finished_deploy_gets_no_more_points(api: Api) -> None:
    d = await mark(api)
    await api.call("POST", f"/api/v1/deploys/{d['id']}/rollback", as_="operator", json={"reason": "drill"})
    await api.settled(d["id"])
    status, _, raw = await post(api, body(resource(histogram(hpoint(T0 + 1, counts(5))))))
    assert status == 200
    assert ExportMetricsServiceResponse.FromString(raw).partial_success.rejected_data_points == 1


async def test_a_bad_body_is_400_with_a_status(api: Api) -> None:
    status, ctype, raw = await post(api, b"\xff\xff\xff\xff")
    assert (status, ctype) == (400, "application/x-protobuf")
    st = status_pb2.Status.FromString(raw)
    assert st.code == 3 and "not a protobuf ExportMetricsServiceRequest" in st.message
    resp = await api.client.post(
        "/v1/metrics", data=b"{not json", headers={**auth("ci"), "Content-Type": "application/json"}
    )
    out = await resp.json()
    assert resp.status == 400 and out["code"] == 3 and out["error"] == "invalid"
    assert out["detail"].startswith("the body is not valid JSON")
    status, out = await post_json(
        api,
        {
            "resourceMetrics": [
                {
                    "scopeMetrics": [
                        {"metrics": [{"name": "x", "gauge": {"dataPoints": [{"timeUnixNano": "soon"}]}}]}
                    ]
                }
            ]
        },
    )
    assert status == 400 and "timeUnixNano" in out["message"]
    status, out = await post_json(api, [1, 2])
    assert status == 400 and "must be a JSON object" in out["detail"]


async def test_other_media_types_are_415_and_gzip_is_accepted(api: Api) -> None:
    resp = await api.client.post(
        "/v1/metrics", data=b"x", headers={**auth("ci"), "Content-Type": "text/plain"}
    )
    assert resp.status == 415
    assert (await resp.json())["detail"].startswith(
        "send OTLP metrics as application/x-protobuf or application/json"
    )
    d = await mark(api)
    for t in (1, 12, 25):
        data = gzip.compress(
            body(resource(histogram(hpoint(T0 + t, counts(7), start=T0 + t - 1), temporality=DELTA)))
        )
        status, _, raw = await post(api, data, headers={"Content-Encoding": "gzip"})
        assert (status, raw) == (200, b"")
    assert (await stored(api, d["id"]))[("canary", 0.0)].requests == 7


async def test_a_body_over_the_limit_is_413(api: Api) -> None:
    big = body(
        *[
            resource(histogram(hpoint(T0 + 1, counts(1), route=f"/r{i}-" + "x" * 200)), version=CANARY)
            for i in range(400)
        ]
    )
    assert len(big) > api.settings.server.max_body_bytes
    status, _, raw = await post(api, big)
    assert status == 413 and b"too large" in raw
    bomb = gzip.compress(b"\x00" * (4 * api.settings.server.max_body_bytes))
    status, _, _ = await post(api, bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413


async def test_the_ci_scope_is_needed(api: Api) -> None:
    data = body(resource(histogram(hpoint(T0 + 1, counts(1)))))
    assert (await post(api, data, as_=None))[0] == 401
    assert (await post(api, data, as_="read"))[0] == 403
    assert (await post(api, data, as_="operator"))[0] == 403
    assert (await post(api, data, as_="ci"))[0] == 200


async def test_the_openapi_document_lists_the_receiver(api: Api) -> None:
    _, doc = await api.call("GET", "/api/v1/openapi.json", as_=None)
    op = doc["paths"]["/v1/metrics"]["post"]
    assert op["operationId"] == "exportMetrics" and op["x-required-scope"] == "ci"
    assert set(op["requestBody"]["content"]) == {"application/x-protobuf", "application/json"}
    assert {"200", "400", "401", "403", "413", "415"} <= set(op["responses"])
    assert "partialSuccess" in json.dumps(op["responses"]["200"])


def _window_points(rng: np.random.Generator, t: float, n: int, p_err: float, slow: float) -> list[Any]:
    errors = int(rng.binomial(n, p_err))
    fast = n - errors

    def split(k: int) -> list[int]:
        s = int(rng.binomial(k, slow))
        return [k - s, 0, 0, 0, 0, 0, s, 0]

    return [
        hpoint(t, split(fast), start=t - 2, http__response__status_code=200),
        hpoint(t, split(errors), start=t - 2, http__response__status_code=500),
    ]


async def _drive(
    api: Api, d: dict[str, Any], *, canary_err: float, canary_slow: float = 0.01
) -> dict[str, Any]:
    """Delta exports every 2 s of data time, 1000 requests per track, until the deploy leaves analyzing."""
    rng = np.random.default_rng(7)
    for i in range(1, 200):
        t = T0 + 2 * i
        status, _, raw = await post(
            api,
            body(
                resource(
                    histogram(*_window_points(rng, t, 1000, canary_err, canary_slow), temporality=DELTA),
                    version=CANARY,
                ),
                resource(
                    histogram(*_window_points(rng, t, 1000, 0.01, 0.01), temporality=DELTA), version=BASELINE
                ),
            ),
        )
        assert (status, raw) == (200, b"")
        dep = await api.settled(d["id"])
        if dep["state"] != "analyzing":
            return dep
    raise AssertionError("no decision")


async def test_otlp_pushes_promote_a_healthy_canary(api: Api) -> None:
    d = await api.mark(
        marker(steps=[{"weight": 50, "min_duration_s": 20}, {"weight": 100}], analysis={"interval_s": 10})
    )
    final = await _drive(api, d, canary_err=0.01)
    assert final["state"] == "promoted", final["verdict"]["summary"]


async def test_otlp_pushes_roll_back_a_canary_with_more_errors(api: Api) -> None:
    d = await api.mark(
        marker(steps=[{"weight": 50, "min_duration_s": 20}, {"weight": 100}], analysis={"interval_s": 10})
    )
    final = await _drive(api, d, canary_err=0.05)
    assert final["state"] == "rolled_back"
    assert "canary error rate" in final["reason"]
