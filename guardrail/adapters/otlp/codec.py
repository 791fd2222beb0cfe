"""OTLP/HTTP metrics: ``ExportMetricsServiceRequest`` bytes (binary protobuf or OTLP/JSON) into the
service's :class:`~guardrail.service.otlp_ingest.OtlpResource` lists, and the response and error
bodies back (``ExportMetricsServiceResponse``, ``google.rpc.Status``).

Decoding only reads the wire format; what the points mean (deploy, track, errors) is decided in
:mod:`guardrail.service.otlp_ingest`. Malformed input raises
:class:`~guardrail.domain.errors.ValidationError` naming what is wrong.

OTLP/JSON (the OTLP specification's JSON encoding): lowerCamelCase keys (the proto names are
accepted too), 64-bit integers as strings or numbers, enums as integers, unknown fields ignored.
Exemplars are dropped before parsing: their ``traceId``/``spanId`` are hex, not base64, in OTLP/JSON,
and guardrail does not use them.
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from guardrail.domain.errors import ValidationError
from guardrail.service.otlp_ingest import OtlpMetric, OtlpPoint, OtlpResource

PROTOBUF = "protobuf"
JSON = "json"

INVALID_ARGUMENT = 3  # google.rpc.Code

_KINDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")
_EMPTY_POINT = OtlpPoint((), 0, 0)


# --- requests --------------------------------------------------------------------------------------


TOO_DEEP = (
    "the body nests too deeply (attribute values in arrays or key-value lists within arrays ...): "
    "send flat attribute values"
)


def decode_protobuf(body: bytes) -> list[OtlpResource]:
    """A binary protobuf ``ExportMetricsServiceRequest``."""
    try:
        request = ExportMetricsServiceRequest.FromString(body)
        return _resources(request)
    except DecodeError as e:
        raise ValidationError(
            f"the body is not a protobuf ExportMetricsServiceRequest ({e})", field="body"
        ) from None
    except RecursionError:
        raise ValidationError(TOO_DEEP, field="body") from None


def decode_json(body: bytes) -> list[OtlpResource]:
    """An OTLP/JSON ``ExportMetricsServiceRequest``."""
    try:
        return _decode_json(body)
    except RecursionError:  # json.loads, ParseDict and _value recurse on nested arrays and lists
        raise ValidationError(TOO_DEEP, field="body") from None


def _decode_json(body: bytes) -> list[OtlpResource]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValidationError(f"the body is not valid JSON: {e}", field="body") from None
    if not isinstance(data, dict):
        raise ValidationError(
            f"the body must be a JSON object (an ExportMetricsServiceRequest), got {type(data).__name__}",
            field="body",
        )
    _drop_exemplars(data)
    request = ExportMetricsServiceRequest()
    try:
        json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise ValidationError(f"not an OTLP/JSON ExportMetricsServiceRequest: {e}", field="body") from None
    return _resources(request)


def _drop_exemplars(data: dict[str, Any]) -> None:
    for rm in _list(data, "resourceMetrics", "resource_metrics"):
        for sm in _list(rm, "scopeMetrics", "scope_metrics"):
            for m in _list(sm, "metrics"):
                if not isinstance(m, dict):
                    continue
                for kind in ("gauge", "sum", "histogram", "exponentialHistogram", "exponential_histogram"):
                    data_of_kind = m.get(kind)
                    if isinstance(data_of_kind, dict):
                        for p in _list(data_of_kind, "dataPoints", "data_points"):
                            if isinstance(p, dict):
                                p.pop("exemplars", None)


def _list(obj: Any, *keys: str) -> list[Any]:
    if not isinstance(obj, dict):
        return []
    for k in keys:
        v = obj.get(k)
        if isinstance(v, list):
            return v
    return []


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "double_value":
        return v.double_value
    if kind == "bytes_value":
        return v.bytes_value.hex()
    if kind == "array_value":
        return repr([_value(x) for x in v.array_value.values])
    return repr({kv.key: _value(kv.value) for kv in v.kvlist_value.values})


def _attributes(kvs: Any) -> tuple[tuple[str, Any], ...]:
    if not kvs:
        return ()
    out = [(kv.key, _value(kv.value)) for kv in kvs]
    if len(out) > 1:
        out.sort(key=_first)
    return tuple(out)


def _first(pair: tuple[str, Any]) -> str:
    return pair[0]


def _resources(request: ExportMetricsServiceRequest) -> list[OtlpResource]:
    resources = []
    for rm in request.resource_metrics:
        attrs: dict[str, Any] = {kv.key: _value(kv.value) for kv in rm.resource.attributes}
        metrics: list[OtlpMetric] = []
        for sm in rm.scope_metrics:
            scope = f"{sm.scope.name}@{sm.scope.version}" if sm.scope.version else sm.scope.name
            for m in sm.metrics:
                metrics.append(_metric(m, scope))
        resources.append(OtlpResource(attrs, metrics))
    return resources


def _metric(m: Any, scope: str) -> OtlpMetric:
    kind = m.WhichOneof("data") or ""
    out = OtlpMetric(m.name, m.unit, kind, scope=scope)
    if kind == "histogram":
        h = m.histogram
        out.temporality = h.aggregation_temporality
        out.points = [
            OtlpPoint(
                _attributes(p.attributes),
                p.start_time_unix_nano,
                p.time_unix_nano,
                p.count,
                tuple(p.explicit_bounds),
                tuple(p.bucket_counts),
            )
            for p in h.data_points
        ]
    elif kind in ("sum", "gauge"):
        data = m.sum if kind == "sum" else m.gauge
        if kind == "sum":
            out.temporality = data.aggregation_temporality
            out.monotonic = data.is_monotonic
        out.points = [
            OtlpPoint(
                _attributes(p.attributes),
                p.start_time_unix_nano,
                p.time_unix_nano,
                p.as_double if p.WhichOneof("value") == "as_double" else p.as_int,
            )
            for p in data.data_points
        ]
    elif kind in _KINDS:  # exponential histograms, summaries: counted, then rejected by the service
        out.points = [_EMPTY_POINT] * len(getattr(m, kind).data_points)
    return out


# --- responses -------------------------------------------------------------------------------------


def encode_response(rejected: int, error_message: str, fmt: str) -> bytes:
    """An ``ExportMetricsServiceResponse``: empty when everything was accepted, else with
    ``partial_success`` (rejected points and why)."""
    if fmt == JSON:
        if not rejected and not error_message:
            return b"{}"
        # int64 in proto3's JSON mapping: a decimal string (OTLP/HTTP, "JSON Protobuf Encoding")
        body = {"partialSuccess": {"rejectedDataPoints": str(rejected), "errorMessage": error_message}}
        return json.dumps(body).encode()
    response = ExportMetricsServiceResponse()
    if rejected or error_message:
        response.partial_success.rejected_data_points = rejected
        response.partial_success.error_message = error_message
    return response.SerializeToString()


def encode_status(
    message: str, fmt: str, *, code: int = INVALID_ARGUMENT, extra: dict[str, Any] | None = None
) -> bytes:
    """A ``google.rpc.Status`` (what OTLP/HTTP servers answer 4xx/5xx with). The JSON form also
    carries guardrail's usual error fields (``extra``)."""
    if fmt == JSON:
        return json.dumps({"code": code, "message": message, **(extra or {})}).encode()
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text  # fields 1 (code), 2 (message)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


__all__ = ["JSON", "PROTOBUF", "decode_json", "decode_protobuf", "encode_response", "encode_status"]
