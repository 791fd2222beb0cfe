"""Metric sources: where analysis data is pulled from (``guardrail.ports.MetricSource``)."""

from guardrail.adapters.sources.prometheus import PrometheusMetricSource

__all__ = ["PrometheusMetricSource"]
