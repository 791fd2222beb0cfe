"""OTLP export requests for the tests, built with the opentelemetry-proto message classes (protobuf)
or by hand (OTLP/JSON, to pin the wire format: lowerCamelCase keys, 64-bit integers as strings)."""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from tests.api.helpers import T0

DELTA = pb.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = pb.AGGREGATION_TEMPORALITY_CUMULATIVE
BOUNDS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DURATION = "http.server.request.duration"
CANARY, BASELINE = "v2.4.1", "v2.4.0"  # tests.api.helpers.marker() versions


def ns(t: float) -> int:
    return round(t * 1e9)


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        v = AnyValue(bool_value=value)
    elif isinstance(value, int):
        v = AnyValue(int_value=value)
    elif isinstance(value, float):
        v = AnyValue(double_value=value)
    else:
        v = AnyValue(string_value=str(value))
    return KeyValue(key=key, value=v)


def attrs(d: dict[str, Any]) -> list[KeyValue]:
    return [kv(k.replace("__", "."), v) for k, v in d.items()]


def resource(
    *metrics: pb.Metric,
    version: str | None = CANARY,
    service: str = "checkout",
    environment: str | None = "production",
    **extra: Any,
) -> pb.ResourceMetrics:
    a: dict[str, Any] = {"service.name": service}
    if version is not None:
        a["service.version"] = version
    if environment is not None:
        a["deployment.environment.name"] = environment
    a.update({k.replace("__", "."): v for k, v in extra.items()})
    return pb.ResourceMetrics(
        resource=Resource(attributes=attrs(a)),
        scope_metrics=[
            pb.ScopeMetrics(scope=InstrumentationScope(name="tests", version="1"), metrics=list(metrics))
        ],
    )


def request(*resources: pb.ResourceMetrics) -> ExportMetricsServiceRequest:
    return ExportMetricsServiceRequest(resource_metrics=list(resources))


def body(*resources: pb.ResourceMetrics) -> bytes:
    return request(*resources).SerializeToString()


def hpoint(
    t: float,
    counts: list[int],
    *,
    start: float = T0 - 3600,
    bounds: tuple[float, ...] = BOUNDS,
    **attributes: Any,
) -> pb.HistogramDataPoint:
    """A histogram point at data time ``t``; attribute names with ``__`` for dots
    (``http__response__status_code=500``)."""
    a = {
        "http.request.method": "GET",
        "http.route": "/pay",
        **{k.replace("__", "."): v for k, v in attributes.items()},
    }
    return pb.HistogramDataPoint(
        attributes=attrs(a),
        start_time_unix_nano=ns(start),
        time_unix_nano=ns(t),
        count=sum(counts),
        sum=0.1 * sum(counts),
        bucket_counts=counts,
        explicit_bounds=list(bounds),
    )


def histogram(
    *points: pb.HistogramDataPoint, temporality: int = CUMULATIVE, name: str = DURATION, unit: str = "s"
) -> pb.Metric:
    return pb.Metric(
        name=name,
        unit=unit,
        histogram=pb.Histogram(data_points=list(points), aggregation_temporality=temporality),
    )


def npoint(t: float, value: float, *, start: float = T0 - 3600, **attributes: Any) -> pb.NumberDataPoint:
    p = pb.NumberDataPoint(attributes=attrs(attributes), start_time_unix_nano=ns(start), time_unix_nano=ns(t))
    if isinstance(value, int):
        p.as_int = value
    else:
        p.as_double = value
    return p


def counter(
    name: str, *points: pb.NumberDataPoint, temporality: int = CUMULATIVE, monotonic: bool = True
) -> pb.Metric:
    return pb.Metric(
        name=name,
        sum=pb.Sum(data_points=list(points), aggregation_temporality=temporality, is_monotonic=monotonic),
    )


def gauge(name: str, *points: pb.NumberDataPoint) -> pb.Metric:
    return pb.Metric(name=name, gauge=pb.Gauge(data_points=list(points)))


# --- OTLP/JSON by hand -----------------------------------------------------------------------------


def json_value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": v}


def json_attrs(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": json_value(v)} for k, v in d.items()]


def json_hpoint(
    t: float, counts: list[int], *, start: float = T0 - 3600, status: int = 200
) -> dict[str, Any]:
    return {
        "attributes": json_attrs({"http.request.method": "GET", "http.response.status_code": status}),
        "startTimeUnixNano": str(ns(start)),
        "timeUnixNano": str(ns(t)),
        "count": str(sum(counts)),
        "sum": 0.1 * sum(counts),
        "bucketCounts": [str(c) for c in counts],
        "explicitBounds": list(BOUNDS),
        "exemplars": [
            {
                "traceId": "5b8efff798038103d269b633813fc60c",
                "spanId": "eee19b7ec3c1b174",
                "asDouble": 0.2,
                "timeUnixNano": str(ns(t)),
            }
        ],
    }


def json_request(*resources: tuple[str, list[dict[str, Any]]], temporality: int = 2) -> dict[str, Any]:
    """``(service.version, histogram points)`` per resource."""
    return {
        "resourceMetrics": [
            {
                "resource": {
                    "attributes": json_attrs(
                        {
                            "service.name": "checkout",
                            "service.version": version,
                            "deployment.environment.name": "production",
                        }
                    )
                },
                "scopeMetrics": [
                    {
                        "scope": {"name": "tests"},
                        "metrics": [
                            {
                                "name": DURATION,
                                "unit": "s",
                                "histogram": {"aggregationTemporality": temporality, "dataPoints": points},
                            }
                        ],
                    }
                ],
            }
            for version, points in resources
        ]
    }
