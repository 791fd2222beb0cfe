"""The sample service of the real-server tests: ``python -m examples.app.service`` (an aiohttp app
instrumented with prometheus-client, optionally pushing OTLP) and ``python -m examples.app.load``
(a small bounded load generator)."""
