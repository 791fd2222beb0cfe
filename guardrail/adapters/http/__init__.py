"""The HTTP API (aiohttp): ``create_app(engine=..., settings=..., telemetry=...)``."""

from guardrail.adapters.http.app import create_app

__all__ = ["create_app"]
