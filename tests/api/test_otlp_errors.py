"""Issue 13, case 7: OTLP/HTTP error answers as the specification wants them.

open-telemetry/opentelemetry-proto ``docs/specification.md`` at
ac2c4b5d1f3a6079de62f9afec860158ecc8af09, "OTLP/HTTP Response" and "Failures": "The response body
for all HTTP 4xx and HTTP 5xx responses MUST be a Protobuf-encoded Status message"; "The server MUST
use the same Content-Type in the response as it received in the request"; and "OTLP/HTTP Request"
on JSON: "64-bit integer numbers in JSON-encoded payloads are encoded as decimal strings"
(``rejected_data_points`` is an int64 in ``metrics_service.proto``)."""

from __future__ import annotations

import gzip
import json

from google.rpc import status_pb2

from tests.api.conftest import Api, auth
from tests.api.helpers import T0
from tests.api.otlp_payloads import body, histogram, hpoint, json_hpoint, json_request, resource
from tests.api.test_otlp import counts, mark

PROTOBUF = "application/x-protobuf"


async def send(
    api: Api, data: bytes, ctype: str, as_: str | None = "ci", **headers: str
) -> tuple[int, str, bytes]:
    h = {**(auth(as_) if as_ else {}), "Content-Type": ctype, **headers}
    resp = await api.client.post("/v1/metrics", data=data, headers=h)
    return resp.status, resp.content_type, await resp.read()


async def test_auth_errors_to_a_protobuf_client_are_a_protobuf_status(api: Api) -> None:
    data = body(resource(histogram(hpoint(T0 + 1, counts(1)))))
    for as_, want in ((None, 401), ("read", 403)):
        status, ctype, raw = await send(api, data, PROTOBUF, as_=as_)
        assert (status, ctype) == (want, PROTOBUF), raw[:200]
        st = status_pb2.Status.FromString(raw)
        assert st.message and ("token" in st.message or "scope" in st.message)
    status, ctype, raw = await send(api, data, "application/json", as_=None)
    assert (status, ctype) == (401, "application/json")
    out = json.loads(raw)
    assert out["message"] and out["error"] == "unauthorized"  # a JSON Status, with our usual fields


async def test_a_body_over_the_limit_is_a_protobuf_status_too(api: Api) -> None:
    bomb = gzip.compress(b"\x00" * (4 * api.settings.server.max_body_bytes))
    status, ctype, raw = await send(api, bomb, PROTOBUF, **{"Content-Encoding": "gzip"})
    assert (status, ctype) == (413, PROTOBUF)
    assert "too large" in status_pb2.Status.FromString(raw).message


async def test_partial_success_counts_are_int64_strings_in_json(api: Api) -> None:
    await mark(api)
    resp = await api.client.post(
        "/v1/metrics", json=json_request(("v7", [json_hpoint(T0 + 2, counts(1))])), headers=auth("ci")
    )
    assert resp.status == 200
    out = await resp.json()
    assert out["partialSuccess"]["rejectedDataPoints"] == "1"
