"""The sample service: one process is one track (baseline or canary) of one version of a service.

``GET /work`` does no work: it draws a synthetic latency from lognormal(median, sigma), RECORDS it
(no sleep, so load tests are fast) and answers 500 with probability ``error_rate``, else 200.
``POST /admin/regression`` with ``{"error_rate": x, "latency_median": y, "latency_sigma": z}`` (any
subset) changes that behaviour at run time; ``GET /admin/regression`` shows it.

Metrics on ``GET /metrics`` (prometheus-client, a registry of its own):

- ``http_requests_total{service, track, version, code}``
- ``http_request_duration_seconds{service, track, version}`` histogram (``BUCKETS_S``)
- ``db_pool_in_use{service, track, version}`` gauge (synthetic: grows with latency)
- ``process_*`` (CPU seconds, resident memory) of this process
- with ``--otel-names``, also what an OpenTelemetry Prometheus exporter would show for the same
  requests: ``http_server_request_duration_seconds{http_request_method, http_response_status_code,
  http_route, guardrail_track}`` (the scrape's ``job`` names the service)

With ``--otlp-endpoint`` the same requests are also recorded through the OpenTelemetry SDK and
pushed with the OTLP/HTTP exporter: histogram ``http.server.request.duration`` (unit s, the same
buckets) with ``http.response.status_code``, ``http.request.method``, ``http.route`` and
``guardrail.track``; resource ``service.name``, ``service.version``, ``deployment.environment.name``.

Run from the repository root::

    python -m examples.app.service --port 9101 --track canary --version 1.4.2 --service checkout

It listens on loopback only and prints ``listening on http://127.0.0.1:PORT`` once it accepts
connections (``--port 0`` picks a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import math
import random
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5)
TRACKS = ("canary", "baseline")


@dataclass
class Behaviour:
    """What ``/work`` does; changed at run time by ``POST /admin/regression``."""

    error_rate: float = 0.005
    latency_median: float = 0.1  # seconds
    latency_sigma: float = 0.5

    def update(self, raw: Any) -> None:
        if not isinstance(raw, dict) or not raw:
            raise ValueError("send a JSON object with error_rate, latency_median and/or latency_sigma")
        unknown = set(raw) - {"error_rate", "latency_median", "latency_sigma"}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)}; accepted: error_rate, latency_median, latency_sigma")
        new = {k: raw[k] for k in raw}
        for k, v in new.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"{k} must be a number, got {v!r}")
        if not 0 <= new.get("error_rate", self.error_rate) <= 1:
            raise ValueError("error_rate must be between 0 and 1")
        if new.get("latency_median", self.latency_median) <= 0:
            raise ValueError("latency_median must be > 0 seconds")
        if new.get("latency_sigma", self.latency_sigma) < 0:
            raise ValueError("latency_sigma must be >= 0")
        for k, v in new.items():
            setattr(self, k, float(v))

    def as_dict(self) -> dict[str, float]:
        return {"error_rate": self.error_rate, "latency_median": self.latency_median,
                "latency_sigma": self.latency_sigma}


@dataclass
class ServiceConfig:
    service: str
    track: str
    version: str
    environment: str = "production"
    behaviour: Behaviour = field(default_factory=Behaviour)
    seed: int | None = None
    otel_names: bool = False  # also expose the OpenTelemetry-style histogram on /metrics
    otlp_endpoint: str | None = None
    otlp_interval_s: float = 1.0


class _Otlp:
    """The OpenTelemetry SDK side: a MeterProvider pushing over OTLP/HTTP."""

    def __init__(self, cfg: ServiceConfig) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource

        assert cfg.otlp_endpoint is not None
        resource = Resource.create({
            "service.name": cfg.service,
            "service.version": cfg.version,
            "deployment.environment.name": cfg.environment,
        })
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=cfg.otlp_endpoint, timeout=5),
            export_interval_millis=max(100, int(cfg.otlp_interval_s * 1000)),
        )
        self.provider = MeterProvider(resource=resource, metric_readers=[reader])
        self.histogram = self.provider.get_meter("examples.app").create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=list(BUCKETS_S),
        )
        self.track = cfg.track

    def record(self, latency: float, code: int) -> None:
        self.histogram.record(latency, {
            "http.response.status_code": code,
            "http.request.method": "GET",
            "http.route": "/work",
            "guardrail.track": self.track,
        })

    def shutdown(self) -> None:
        self.provider.shutdown()  # exports what is left


class SampleService:
    """The app and its metrics. ``registry`` is injected (a fresh one by default)."""

    def __init__(self, cfg: ServiceConfig, registry: CollectorRegistry | None = None) -> None:
        if cfg.track not in TRACKS:
            raise ValueError(f"track must be one of {TRACKS}, got {cfg.track!r}")
        self.cfg = cfg
        self.behaviour = cfg.behaviour
        self.rng = random.Random(cfg.seed)
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        labels = ("service", "track", "version")
        self.requests = Counter("http_requests_total", "Total HTTP requests.", [*labels, "code"], registry=r)
        self.duration = Histogram(
            "http_request_duration_seconds", "HTTP request latency.", labels, buckets=BUCKETS_S, registry=r
        )
        self.db_pool = Gauge("db_pool_in_use", "Database connections in use (synthetic).", labels, registry=r)
        ProcessCollector(registry=r)
        self.otel_duration = (
            Histogram(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests.",
                ["http_request_method", "http_response_status_code", "http_route", "guardrail_track"],
                buckets=BUCKETS_S,
                registry=r,
            )
            if cfg.otel_names
            else None
        )
        self.otlp = _Otlp(cfg) if cfg.otlp_endpoint else None
        self._lv = (cfg.service, cfg.track, cfg.version)
        self.db_pool.labels(*self._lv).set(0)
        self._pool = 0.0

    def handle_one(self) -> int:
        """Draw and record one request; returns its status code."""
        b = self.behaviour
        latency = b.latency_median * math.exp(b.latency_sigma * self.rng.gauss(0.0, 1.0))
        code = 500 if self.rng.random() < b.error_rate else 200
        self.requests.labels(*self._lv, str(code)).inc()
        self.duration.labels(*self._lv).observe(latency)
        self._pool = 0.98 * self._pool + 0.02 * min(latency * 50, 100)  # slow requests hold connections
        self.db_pool.labels(*self._lv).set(round(self._pool, 3))
        if self.otel_duration is not None:
            self.otel_duration.labels("GET", str(code), "/work", self.cfg.track).observe(latency)
        if self.otlp is not None:
            self.otlp.record(latency, code)
        return code

    # --- handlers ----------------------------------------------------------------------------------
    async def work(self, request: web.Request) -> web.Response:
        code = self.handle_one()
        return web.json_response({"ok": code < 500}, status=code)

    async def metrics(self, request: web.Request) -> web.Response:
        resp = web.Response(body=generate_latest(self.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def get_regression(self, request: web.Request) -> web.Response:
        return web.json_response(self.behaviour.as_dict())

    async def set_regression(self, request: web.Request) -> web.Response:
        try:
            raw = await request.json()
            self.behaviour.update(raw)
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            return web.json_response({"detail": str(e)}, status=400)
        return web.json_response(self.behaviour.as_dict())

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"service": self.cfg.service, "track": self.cfg.track, "version": self.cfg.version})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/work", self.work)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/admin/regression", self.get_regression)
        app.router.add_post("/admin/regression", self.set_regression)
        app.router.add_get("/healthz", self.health)

        async def flush_otlp(app: web.Application) -> None:
            if self.otlp is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.otlp.shutdown)

        app.on_cleanup.append(flush_otlp)
        return app


def _loopback(host: str) -> str:
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise SystemExit(f"--host must be a loopback address (127.0.0.1, ::1, localhost), got {host!r}")
    return host


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m examples.app.service", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", type=_loopback, help="loopback only (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    p.add_argument("--service", default="checkout")
    p.add_argument("--track", choices=TRACKS, required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--environment", default="production")
    p.add_argument("--error-rate", type=float, default=0.005)
    p.add_argument("--latency-median", type=float, default=0.1, help="seconds")
    p.add_argument("--latency-sigma", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--otel-names", action="store_true",
                   help="also expose http_server_request_duration_seconds (OpenTelemetry names) on /metrics")
    p.add_argument("--otlp-endpoint", default=None, help="e.g. http://127.0.0.1:8080/v1/metrics")
    p.add_argument("--otlp-interval", type=float, default=1.0, help="export interval, seconds")
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> ServiceConfig:
    behaviour = Behaviour()
    try:
        behaviour.update({"error_rate": args.error_rate, "latency_median": args.latency_median,
                          "latency_sigma": args.latency_sigma})
    except ValueError as e:
        raise SystemExit(str(e)) from None
    return ServiceConfig(
        service=args.service, track=args.track, version=args.version, environment=args.environment,
        behaviour=behaviour, seed=args.seed, otel_names=args.otel_names,
        otlp_endpoint=args.otlp_endpoint, otlp_interval_s=args.otlp_interval,
    )


async def serve(cfg: ServiceConfig, host: str, port: int) -> None:
    runner = web.AppRunner(SampleService(cfg).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    asyncio.run(serve(config_from(args), args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
