"""``POST /v1/metrics``: the OTLP/HTTP metrics receiver. Parses the body, calls the OTLP ingest use
case, answers with an ``ExportMetricsServiceResponse`` in the request's encoding.

- ``application/x-protobuf`` (what the OpenTelemetry SDKs and the Collector send) or
  ``application/json`` (OTLP/JSON); a gzip (or deflate) ``Content-Encoding`` is decompressed by
  :func:`~guardrail.adapters.http.parsing.read_body`, and the body size limit applies to the
  compressed and to the decompressed body (a corrupt or truncated one is a 400, another encoding 415).
- 200 with an empty response, or with ``partialSuccess`` counting the rejected points and why.
- Every 4xx and 5xx (a body that cannot be decoded, auth, size, an internal error) carries a
  ``google.rpc.Status`` in the request's encoding, as the OTLP specification requires: protobuf for
  a protobuf request, JSON (also carrying guardrail's usual error fields) otherwise; a 415 for an
  unknown media type answers JSON. In JSON, ``rejectedDataPoints`` (an int64) is a decimal string.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from guardrail.adapters.http.errors import PayloadTooLarge, UnsupportedMediaType
from guardrail.adapters.http.parsing import read_body
from guardrail.adapters.otlp import (
    JSON,
    PROTOBUF,
    decode_json,
    decode_protobuf,
    encode_response,
    encode_status,
)
from guardrail.domain.errors import ValidationError
from guardrail.service.otlp_ingest import OtlpIngest

OTLP = web.AppKey("guardrail.otlp", OtlpIngest)
PATH = "/v1/metrics"

_MEDIA_TYPES = {
    "application/x-protobuf": PROTOBUF,
    "application/protobuf": PROTOBUF,
    "application/json": JSON,
}
_CONTENT_TYPE = {PROTOBUF: "application/x-protobuf", JSON: "application/json"}
# google.rpc.Code of an HTTP error status (the spec says clients need not read it)
_RPC_CODE = {400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 413: 8, 415: 3, 429: 8, 500: 13, 502: 14, 503: 14}
_KEPT_HEADERS = ("www-authenticate", "retry-after", "allow")


def otlp_status_for(request: web.Request, response: web.Response) -> web.Response:
    """An error answer of the API, re-encoded as a ``google.rpc.Status`` in the request's encoding
    when it answers the OTLP receiver (any other path, or a success, is returned as it is)."""
    if request.path != PATH or response.status < 400:
        return response
    fmt = _MEDIA_TYPES.get(request.content_type)
    if fmt is None:
        return response  # a media type we do not speak (415): the usual JSON error
    try:
        fields = json.loads(response.body) if isinstance(response.body, bytes) else {}
    except ValueError:
        fields = {}
    message = str(fields.get("detail") or response.reason or "error")
    code = _RPC_CODE.get(response.status, 2)
    headers = {k: v for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS}
    return web.Response(
        status=response.status,
        body=encode_status(message, fmt, code=code, extra=fields if fmt == JSON else None),
        content_type=_CONTENT_TYPE[fmt],
        headers=headers,
    )


async def export_metrics(request: web.Request) -> web.Response:
    fmt = _MEDIA_TYPES.get(request.content_type)
    if fmt is None:
        raise UnsupportedMediaType(
            f"send OTLP metrics as application/x-protobuf or application/json, not {request.content_type}"
        )
    try:
        body = await read_body(request)
    except PayloadTooLarge as e:
        raise PayloadTooLarge(f"{e.detail}; lower the exporter's batch size") from None
    try:
        resources = decode_protobuf(body) if fmt == PROTOBUF else decode_json(body)
    except ValidationError as e:
        extra = {"error": e.code, "detail": e.detail, "field": e.field}
        return web.Response(
            status=400, body=encode_status(e.detail, fmt, extra=extra), content_type=_CONTENT_TYPE[fmt]
        )
    result = await request.app[OTLP].receive(resources)
    return web.Response(
        body=encode_response(result.rejected, result.error_message, fmt), content_type=_CONTENT_TYPE[fmt]
    )


def document(openapi: dict[str, Any]) -> None:
    """Describe the request and response bodies (protobuf or JSON, not a pydantic schema) in the
    OpenAPI document built from the route table."""
    op = openapi["paths"][PATH]["post"]
    ref = "https://github.com/open-telemetry/opentelemetry-proto/blob/main/opentelemetry/proto/collector/metrics/v1/metrics_service.proto"
    op["description"] = (
        f"{op.get('description', '')} OTLP/HTTP metrics ({ref}): point an OpenTelemetry SDK's or "
        "Collector's OTLP/HTTP metric exporter here with an `Authorization: Bearer` header. Data points map "
        "to the active deploy of their resource's `service.name` and `deployment.environment.name`; "
        "`service.version` (or a `guardrail.track` attribute) picks canary or baseline."
    ).strip()
    op["requestBody"] = {
        "required": True,
        "content": {
            "application/x-protobuf": {
                "schema": {"type": "string", "format": "binary", "description": "ExportMetricsServiceRequest"}
            },
            "application/json": {
                "schema": {"type": "object", "description": "ExportMetricsServiceRequest in OTLP/JSON"}
            },
        },
    }
    response = {
        "type": "object",
        "properties": {
            "partialSuccess": {
                "type": "object",
                "properties": {
                    "rejectedDataPoints": {"type": "string", "format": "int64"},
                    "errorMessage": {"type": "string"},
                },
            }
        },
    }
    op["responses"]["200"] = {
        "description": "ExportMetricsServiceResponse: empty, or partialSuccess with the rejected points and why",
        "content": {
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": response},
        },
    }
    status = {"type": "object", "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}}
    op["responses"]["400"] = {
        "description": "The body is not an ExportMetricsServiceRequest: a google.rpc.Status (protobuf, or "
        "JSON with the usual error fields too)",
        "content": {
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": status},
        },
    }
    if "415" in op["responses"]:
        op["responses"]["415"]["description"] = (
            "The body is neither application/x-protobuf nor application/json, or its Content-Encoding is "
            "not gzip, deflate or identity"
        )
