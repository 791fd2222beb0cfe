"""Issue 12 (part A): input that is out of range, badly encoded or forges text is a 4xx naming the
field and what is accepted, in the endpoint's error format, and nothing is stored before it is
checked."""

from __future__ import annotations

import gzip
import json
import time
import zlib
from typing import Any

import pytest
from google.rpc import status_pb2

from tests.api.conftest import MAX_BODY_BYTES, Api, auth
from tests.api.helpers import T0, marker, window
from tests.api.otlp_payloads import body, histogram, hpoint, json_hpoint, json_request, resource
from tests.api.test_otlp import mark

INT64_MAX = 2**63 - 1
DAY = 86_400.0
PROTOBUF = "application/x-protobuf"


async def _deploy_ids(api: Api) -> list[str]:
    status, out = await api.call("GET", "/api/v1/deploys")
    assert status == 200
    return [d["id"] for d in out["deploys"]]


async def _push(api: Api, deploy_id: str, samples: list[dict[str, Any]]) -> tuple[int, Any]:
    return await api.call("POST", f"/api/v1/deploys/{deploy_id}/samples", as_="ci", json={"samples": samples})


# --- item 3: numbers out of range -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"requests": 2**63, "errors": 0, "latency_histogram": None}, "requests", id="requests"),
        pytest.param({"requests": 10, "errors": 2**64}, "errors", id="errors"),
        pytest.param(
            {"latency_histogram": {"bounds": [0.1], "counts": [2**63, 0]}},
            "latency_histogram.counts[0]",
            id="histogram-count",
        ),
    ],
)
async def test_a_count_beyond_int64_is_rejected_before_anything_is_stored(
    api: Api, change: dict[str, Any], field: str
) -> None:
    d = await api.mark(marker())
    good, bad = window(0, 10)
    bad = {k: v for k, v in {**bad, **change}.items() if v is not None}
    status, err = await _push(api, d["id"], [good, bad])
    assert status == 400, err
    assert err["field"] == f"samples[1].{field}"
    assert str(INT64_MAX) in err["detail"]
    assert await api.store.samples(d["id"]) == []
    status, out = await _push(api, d["id"], window(1, 10))  # the deploy still takes pushes
    assert status == 202, out


async def test_the_largest_int64_count_is_accepted_and_the_judge_survives_it(api: Api) -> None:
    d = await api.mark(marker())
    big = [{**s, "requests": INT64_MAX, "errors": 0} for s in window(0, 10)]
    for s in big:
        s.pop("latency_histogram")
    status, out = await _push(api, d["id"], big)
    assert status == 202, out
    for i in range(1, 4):
        status, out = await _push(api, d["id"], window(i, 10))
        assert status == 202, out


@pytest.mark.parametrize(
    ("path", "param", "scope"),
    [
        ("/api/v1/deploys/{id}/events", "after", "read"),
        ("/api/v1/deploys/{id}/drafts/postmortem", "version", "read"),
    ],
)
async def test_an_integer_query_parameter_beyond_int64_is_400(
    api: Api, path: str, param: str, scope: str
) -> None:
    d = await api.mark(marker())
    status, err = await api.call("GET", path.format(id=d["id"]), as_=scope, params={param: str(2**70)})
    assert status == 400, err
    assert err["field"] == param and str(INT64_MAX) in err["detail"], err


@pytest.mark.parametrize("field", ["started_at", "commit_time"])
@pytest.mark.parametrize("value", [1e12, "3000-01-01T00:00:00Z", 4e10])
async def test_a_marker_time_far_in_the_future_is_rejected(api: Api, field: str, value: Any) -> None:
    status, err = await api.call("POST", "/api/v1/deploys", as_="ci", json=marker(**{field: value}))
    assert status == 400, err
    assert err["field"] == field, err
    assert "after the server's clock" in err["detail"] or "before the year" in err["detail"], err
    assert await _deploy_ids(api) == []
    status, _ = await api.call("GET", "/deploys")  # the page still renders
    assert status == 200


async def test_a_marker_time_a_little_ahead_of_the_clock_is_accepted(api: Api) -> None:
    await api.mark(marker(started_at=time.time() + 300))


@pytest.mark.parametrize(
    ("offset", "field", "words"),
    [
        pytest.param(31 * DAY, "start", "30 days after", id="a-month-after"),
        pytest.param(32_503_680_000 - T0, "start", "30 days after", id="year-3000"),
        pytest.param(-8 * DAY, "start", "7 days before", id="8-days-before"),
    ],
)
async def test_a_window_far_from_the_deploy_is_rejected_naming_the_limit(
    api: Api, offset: float, field: str, words: str
) -> None:
    d = await api.mark(marker())
    good, bad = window(0, 10)
    bad = {**bad, "start": T0 + offset, "end": T0 + offset + 10}
    status, err = await _push(api, d["id"], [good, bad])
    assert status == 400, err
    assert err["field"] == f"samples[1].{field}" and words in err["detail"], err
    assert await api.store.samples(d["id"]) == []
    status, _ = await api.call("GET", f"/deploys/{d['id']}")
    assert status == 200


async def test_a_window_longer_than_a_day_is_rejected(api: Api) -> None:
    d = await api.mark(marker())
    good, bad = window(0, 10)
    status, err = await _push(api, d["id"], [good, {**bad, "end": T0 + 2 * DAY}])
    assert status == 400 and err["field"] == "samples[1].end", err
    assert "at most" in err["detail"]
    assert await api.store.samples(d["id"]) == []


async def test_otlp_points_beyond_int64_or_far_from_the_deploy_are_rejected_points(api: Api) -> None:
    d = await mark(api)
    huge = hpoint(T0 + 2, [2**63, 0, 0, 0, 0, 0, 0, 0], start=T0 + 1)
    old = hpoint(T0 - 8 * DAY, [5, 0, 0, 0, 0, 0, 0, 0], start=T0 - 8 * DAY - 5)
    data = body(resource(histogram(huge, old, temporality=1)))
    resp = await api.client.post("/v1/metrics", data=data, headers={**auth("ci"), "Content-Type": PROTOBUF})
    assert resp.status == 200
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

    out = ExportMetricsServiceResponse.FromString(await resp.read())
    assert out.partial_success.rejected_data_points == 2
    assert str(INT64_MAX) in out.partial_success.error_message
    assert "7 days before" in out.partial_success.error_message
    # OTLP/JSON: a count over int64 as a decimal string
    point = json_hpoint(T0 + 3, [1, 0, 0, 0, 0, 0, 0, 0], start=T0 + 2)
    point["count"] = str(2**63 + 1)
    point["bucketCounts"] = [str(2**63 + 1), *["0"] * 7]
    resp = await api.client.post(
        "/v1/metrics", json=json_request(("v2.4.1", [point]), temporality=1), headers=auth("ci")
    )
    assert resp.status == 200
    assert (await resp.json())["partialSuccess"]["rejectedDataPoints"] == "1"
    await api.client.post(  # a later point closes every window: nothing out of range reached the store
        "/v1/metrics",
        data=body(
            resource(histogram(hpoint(T0 + 60, [1, 0, 0, 0, 0, 0, 0, 0], start=T0 + 59), temporality=1))
        ),
        headers={**auth("ci"), "Content-Type": PROTOBUF},
    )
    for s in await api.store.samples(d["id"]):
        assert s.requests <= INT64_MAX and s.start >= T0 - 7 * DAY


# --- item 4: encodings ---------------------------------------------------------------------------------

CORRUPT_GZIP = b"\x1f\x8b\x08\x00garbage-that-is-not-deflate"


def _body_endpoints(deploy_id: str) -> list[tuple[str, str, str]]:
    return [
        ("/api/v1/deploys", "ci", "application/json"),
        (f"/api/v1/deploys/{deploy_id}/samples", "ci", "application/json"),
        (f"/api/v1/deploys/{deploy_id}/pause", "operator", "application/json"),
        ("/hooks/alertmanager", "ci", "application/json"),
    ]


async def test_a_corrupt_gzip_body_is_400_naming_the_encoding_everywhere(api: Api) -> None:
    d = await api.mark(marker())
    for path, scope, ctype in _body_endpoints(d["id"]):
        for data in (CORRUPT_GZIP, gzip.compress(json.dumps(marker()).encode())[:-12]):
            status, err = await api.call(
                "POST",
                path,
                as_=scope,
                data=data,
                headers={"Content-Type": ctype, "Content-Encoding": "gzip"},
            )
            assert status == 400, (path, err)
            assert err["error"] == "bad_encoding" and "gzip" in err["detail"], (path, err)
            assert err["field"] == "Content-Encoding"
    assert await _deploy_ids(api) == [d["id"]]
    assert await api.store.samples(d["id"]) == []


@pytest.mark.parametrize("ctype", [PROTOBUF, "application/json"])
async def test_a_corrupt_or_truncated_gzip_otlp_body_is_a_400_status(api: Api, ctype: str) -> None:
    await mark(api)
    if ctype == PROTOBUF:
        payload = body(resource(histogram(hpoint(T0 + 1, [1, 0, 0, 0, 0, 0, 0, 0]))))
    else:
        payload = json.dumps(
            json_request(("v2.4.1", [json_hpoint(T0 + 1, [1, 0, 0, 0, 0, 0, 0, 0])]))
        ).encode()
    for data in (CORRUPT_GZIP, gzip.compress(payload)[:-12], gzip.compress(payload)[: len(payload) // 3]):
        resp = await api.client.post(
            "/v1/metrics",
            data=data,
            headers={**auth("ci"), "Content-Type": ctype, "Content-Encoding": "gzip"},
        )
        raw = await resp.read()
        assert (resp.status, resp.content_type) == (400, ctype), raw[:300]
        message = (
            status_pb2.Status.FromString(raw).message if ctype == PROTOBUF else json.loads(raw)["message"]
        )
        assert "gzip" in message


async def test_a_gzip_or_deflate_body_still_works(api: Api) -> None:
    raw = json.dumps(marker()).encode()
    for enc, data in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw)), ("identity", raw)):
        status, out = await api.call(
            "POST",
            "/api/v1/deploys",
            as_="ci",
            data=data,
            headers={"Content-Type": "application/json", "Content-Encoding": enc, "Idempotency-Key": enc},
        )
        assert status == 201, (enc, out)


async def test_an_unsupported_encoding_is_415_naming_the_accepted_ones(api: Api) -> None:
    for enc in ("compress", "gzip, gzip", "x-unknown"):
        status, err = await api.call(
            "POST",
            "/api/v1/deploys",
            as_="ci",
            data=b"{}",
            headers={"Content-Type": "application/json", "Content-Encoding": enc},
        )
        assert status == 415 and err["field"] == "Content-Encoding", (enc, err)
        assert "gzip" in err["detail"] and "deflate" in err["detail"]
    resp = await api.client.post(
        "/v1/metrics",
        data=b"x",
        headers={**auth("ci"), "Content-Type": PROTOBUF, "Content-Encoding": "compress"},
    )
    assert resp.status == 415
    assert "gzip" in status_pb2.Status.FromString(await resp.read()).message


async def test_a_decompression_bomb_is_413_without_inflating_it_whole(api: Api) -> None:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\x00" * (1 << 20)
    bomb = b"".join(z.compress(chunk) for _ in range(256)) + z.flush()  # 256 MiB inflated
    assert len(bomb) < MAX_BODY_BYTES * 5
    for path, ctype in (("/api/v1/deploys", "application/json"), ("/v1/metrics", PROTOBUF)):
        t0 = time.perf_counter()
        resp = await api.client.post(
            path,
            data=bomb,
            headers={**auth("ci"), "Content-Type": ctype, "Content-Encoding": "gzip"},
        )
        assert resp.status == 413, await resp.text()
        assert time.perf_counter() - t0 < 2.0  # inflating 256 MiB would take longer


@pytest.mark.parametrize("depth", [1_000, 30_000])
async def test_deeply_nested_json_is_400_not_a_recursion_error(api: Api, depth: int) -> None:
    headers = {**auth("ci"), "Content-Type": "application/json"}
    nested = b'{"resourceMetrics": ' + b"[" * depth + b"]" * depth + b"}"
    # an attribute value nested in key-value lists: valid OTLP/JSON, each level one more recursion
    level = b'{"key": "k", "value": {"kvlistValue": {"values": ['
    attr = level * (depth // 60) + b'{"key": "k", "value": {"stringValue": "v"}}' + b"]}}}" * (depth // 60)
    deep_attr = b'{"resourceMetrics": [{"resource": {"attributes": [' + attr + b"]}}]}"
    for raw, want in ((nested, 400), (deep_attr, 400 if depth // 60 > 100 else 200)):
        assert len(raw) < MAX_BODY_BYTES
        resp = await api.client.post("/v1/metrics", data=raw, headers=headers)
        out = await resp.json()
        assert resp.status == want, out
        if want == 400:
            assert out["field"] == "body", out
    status, err = await api.call(
        "POST", "/api/v1/deploys", as_="ci", data=b"[" * depth, headers={"Content-Type": "application/json"}
    )
    assert status == 400, err


# --- item 5 (and 11): identifiers that forge log lines or read as options ----------------------------

FORGED = "checkout\n2026-01-01 INFO guardrail: deploy promoted"


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"service": FORGED}, "service", "control character"),
        ({"environment": "prod\r\nx"}, "environment", "control character"),
        ({"version": "v1\x1b[31m"}, "version", "control character"),
        ({"previous_version": "v0\u2028"}, "previous_version", "control character"),
        ({"commit": "abc\x00"}, "commit", "control character"),
        ({"author": "dana\nroot"}, "author", "control character"),
        ({"adapter": {"name": "noop\n", "config": {}}}, "adapter.name", "control character"),
        ({"checklist": {"tests_passed\n": True}}, "checklist", "control character"),
        ({"links": {"pr\t": "https://x"}}, "links", "control character"),
        ({"version": "--upload-pack=touch /tmp/pwned"}, "version", "must not start with '-'"),
        ({"previous_version": "-v"}, "previous_version", "must not start with '-'"),
        ({"commit": "-rf"}, "commit", "must not start with '-'"),
        ({"service": "-checkout"}, "service", "must not start with '-'"),
        ({"environment": "--prod"}, "environment", "must not start with '-'"),
    ],
)
async def test_identifier_fields_reject_control_characters_and_a_leading_dash(
    api: Api, overrides: dict[str, Any], field: str, words: str
) -> None:
    status, err = await api.call("POST", "/api/v1/deploys", as_="ci", json=marker(**overrides))
    assert status == 400, err
    assert err["field"].startswith(field), err
    assert words in err["detail"], err
    assert await _deploy_ids(api) == []
    status, metrics = await api.call("GET", "/metrics", as_=None)
    assert "\n2026-01-01 INFO" not in metrics


async def test_ordinary_identifiers_are_still_accepted(api: Api) -> None:
    out = await api.mark(
        marker(service="checkout-api", version="v2.4.1-rc.1+build.7", commit="9f1c2ab", author="Dana O'Neil")
    )
    assert out["version"] == "v2.4.1-rc.1+build.7"


# --- item 7: the OpenAPI document ----------------------------------------------------------------------


async def test_the_openapi_document_says_a_draft_can_be_markdown(api: Api) -> None:
    status, doc = await api.call("GET", "/api/v1/openapi.json", as_=None)
    assert status == 200
    content = doc["paths"]["/api/v1/deploys/{id}/drafts/{kind}"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/markdown"}
    assert content["text/markdown"]["schema"]["type"] == "string"
