"""Read-only window onto the sample services' metrics, for Prometheus in the docker-compose stack.

The sample service (``examples/app/service.py``) and its load generator bind and target loopback
only, on purpose: the service's ``/admin/regression`` has no authentication. In the stack, the
baseline, the canary, the load generator and this proxy share one network namespace (like a
Kubernetes pod), and this proxy is the only thing listening on the network: it forwards ``GET
/metrics`` and ``GET /healthz`` to one loopback upstream per listening port, and nothing else.

    python deploy/sample/metrics_proxy.py --listen 0.0.0.0 \\
        --route 9111=127.0.0.1:9101 --route 9112=127.0.0.1:9102
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import sys
from dataclasses import dataclass

import aiohttp
from aiohttp import web

FORWARDED = ("/metrics", "/healthz")
UPSTREAM_KEY = web.AppKey("upstream", str)
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Route:
    listen_port: int
    upstream: str  # http://127.0.0.1:PORT


def parse_route(text: str) -> Route:
    """``9111=127.0.0.1:9101`` -> Route(9111, "http://127.0.0.1:9101"); loopback upstreams only."""
    port, sep, target = text.partition("=")
    host, _, upstream_port = target.rpartition(":")
    try:
        listen, up = int(port), int(upstream_port)
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--route {text!r}: expected LISTEN_PORT=HOST:PORT, e.g. 9111=127.0.0.1:9101"
        ) from None
    if not sep or not loopback:
        raise argparse.ArgumentTypeError(f"--route {text!r}: the upstream must be a loopback address")
    if not (0 < listen < 65536 and 0 < up < 65536):
        raise argparse.ArgumentTypeError(f"--route {text!r}: ports are 1-65535")
    return Route(listen, f"http://{host}:{up}")


async def forward(request: web.Request) -> web.Response:
    url = request.app[UPSTREAM_KEY] + request.path
    try:
        async with request.app[SESSION_KEY].get(
            url, headers={k: v for k, v in request.headers.items() if k.lower() == "accept"}
        ) as r:
            body = await r.read()
            return web.Response(
                body=body, status=r.status, headers={"Content-Type": r.headers.get("Content-Type", "text/plain")}
            )
    except (aiohttp.ClientError, TimeoutError) as e:
        return web.Response(status=502, text=f"upstream {request.app[UPSTREAM_KEY]} unavailable ({type(e).__name__})\n")


def proxy_app(upstream: str, session: aiohttp.ClientSession) -> web.Application:
    """GET /metrics and GET /healthz forwarded to ``upstream``; any other path or method: 404 / 405."""
    app = web.Application()
    app[UPSTREAM_KEY] = upstream
    app[SESSION_KEY] = session
    for path in FORWARDED:
        app.router.add_get(path, forward, allow_head=False)
    return app


async def serve(host: str, routes: list[Route]) -> None:
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
    runners = []
    try:
        for route in routes:
            runner = web.AppRunner(proxy_app(route.upstream, session), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host, route.listen_port).start()
            runners.append(runner)
            print(f"http://{host}:{route.listen_port}{{/metrics,/healthz}} -> {route.upstream}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()
        await session.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="metrics_proxy", description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True, help="address to listen on, e.g. 0.0.0.0")
    p.add_argument("--route", action="append", type=parse_route, required=True,
                   help="LISTEN_PORT=HOST:PORT with a loopback HOST; repeat for several")
    args = p.parse_args(argv)
    asyncio.run(serve(args.listen, args.route))
    return 0


if __name__ == "__main__":
    sys.exit(main())
