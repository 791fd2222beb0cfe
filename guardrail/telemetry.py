"""Prometheus metrics of guardrail itself, on an injected CollectorRegistry."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from guardrail.domain.dora import DoraFigures
from guardrail.domain.dora import Result as DoraResult
from guardrail.domain.model import DeployState


class Telemetry:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.deploys = Gauge("guardrail_deploys", "Deploys by state.", ["state"], registry=r)
        self.deploys_finished = Counter(
            "guardrail_deploys_finished_total",
            "Deploys that reached a terminal state, by result.",
            ["service", "environment", "result"],
            registry=r,
        )
        self.deploys_created = Counter(
            "guardrail_deploys_created_total",
            "Deploy markers recorded.",
            ["service", "environment", "strategy"],
            registry=r,
        )
        self.verdicts = Counter(
            "guardrail_verdicts_total", "Judge evaluations by decision.", ["decision"], registry=r
        )
        self.analysis_seconds = Histogram(
            "guardrail_analysis_seconds",
            "Wall time of one analysis (ingest to verdict).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.adapter_actions = Counter(
            "guardrail_adapter_actions_total",
            "Deploy adapter actions by adapter, kind and result.",
            ["adapter", "kind", "result"],
            registry=r,
        )
        self.samples = Counter(
            "guardrail_samples_total", "Sample windows ingested (new, not duplicates).", ["track"], registry=r
        )
        self.evidence_ratio = Gauge(
            "guardrail_evidence_ratio",
            "Judge estimate and confidence bounds of canary/baseline, active deploys.",
            ["deploy", "service", "metric", "bound"],
            registry=r,
        )
        self.evidence_e_value = Gauge(
            "guardrail_evidence_e_value",
            "Judge e-value against the canary (FAIL test), active deploys.",
            ["deploy", "service", "metric"],
            registry=r,
        )
        self.stalled = Gauge(
            "guardrail_analysis_stalled",
            "1 while an active deploy receives no data.",
            ["deploy", "service"],
            registry=r,
        )
        self.step_started = Gauge(
            "guardrail_deploy_step_started_timestamp_seconds",
            "Wall time the current step of an active deploy took effect (for 'deploy stuck' alerts).",
            ["deploy", "service"], registry=r,
        )
        self.rollback_failed = Gauge(
            "guardrail_rollback_failed",
            "1 for a deploy whose rollback failed.",
            ["deploy", "service"],
            registry=r,
        )
        self.otlp_points = Counter(
            "guardrail_otlp_points_total",
            "OTLP data points received on /v1/metrics, accepted, and accepted late (counted in a later "
            "window).",
            ["result"],
            registry=r,
        )
        self.otlp_rejected = Counter(
            "guardrail_otlp_points_rejected_total",
            "OTLP data points rejected (reported in partialSuccess), by reason.",
            ["reason"],
            registry=r,
        )
        self.otlp_series = Gauge(
            "guardrail_otlp_series", "Series kept for OTLP differencing, all active deploys.", registry=r
        )
        self.otlp_open_windows = Gauge(
            "guardrail_otlp_open_windows", "OTLP sample windows still open, all active deploys.", registry=r
        )
        self.source_up = Gauge(
            "guardrail_source_up",
            "1 while the last fetch from a metric source succeeded, 0 while it fails.",
            ["source"],
            registry=r,
        )
        self.source_errors = Counter(
            "guardrail_source_errors_total",
            "Failed metric source fetches: unavailable (down, 5xx, timeout) or rejected (bad query).",
            ["source", "kind"],
            registry=r,
        )
        self.source_fetch_seconds = Histogram(
            "guardrail_source_fetch_seconds",
            "Wall time of one fetch from a metric source (all queries of one deploy).",
            ["source"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.incidents_opened = Counter(
            "guardrail_incidents_opened_total",
            "Incidents opened (a trigger on a key that was not open), by severity.",
            ["severity"],
            registry=r,
        )
        self.notifications_queued = Counter(
            "guardrail_notifications_queued_total",
            "Notifications written to the outbox, by notifier and action.",
            ["notifier", "action"],
            registry=r,
        )
        self.notifications_sent = Counter(
            "guardrail_notifications_sent_total", "Notifications delivered, by notifier.", ["notifier"], registry=r
        )
        self.notifications_retried = Counter(
            "guardrail_notifications_retries_total",
            "Retryable delivery failures (429, 5xx, timeout, refused connection); the notification stays queued.",
            ["notifier"],
            registry=r,
        )
        self.notifications_failed = Counter(
            "guardrail_notifications_failed_total",
            "Notifications given up on (a non-retryable answer, or the notifier is no longer configured).",
            ["notifier"],
            registry=r,
        )
        self.notifications_pending = Gauge(
            "guardrail_notifications_pending", "Notifications waiting in the outbox.", registry=r
        )
        self.notifications_oldest_pending = Gauge(
            "guardrail_notifications_oldest_pending_seconds",
            "Age of the oldest notification waiting in the outbox (0 when none).",
            registry=r,
        )
        # DORA key metrics over the trailing window (guardrail.service.dora): computed from the
        # database, so every replica reports the same figures
        dora = ["service", "environment"]
        self.dora_frequency = Gauge(
            "guardrail_dora_deployment_frequency_per_day",
            "Deploys that reached production per day over the DORA window.",
            dora,
            registry=r,
        )
        self.dora_lead_time = Gauge(
            "guardrail_dora_lead_time_seconds",
            "Median change lead time (commit to promoted, wall time) over the DORA window.",
            dora,
            registry=r,
        )
        self.dora_failure_rate = Gauge(
            "guardrail_dora_change_failure_rate",
            "Failed deploys / finished deploys over the DORA window.",
            dora,
            registry=r,
        )
        self.dora_recovery_time = Gauge(
            "guardrail_dora_recovery_time_seconds",
            "Median failed-deployment recovery time (detection to rollback done or alert resolved).",
            dora,
            registry=r,
        )
        self.dora_rollback_rate = Gauge(
            "guardrail_dora_rollback_rate",
            "Rolled back (or rollback failed) deploys / finished deploys over the DORA window.",
            dora,
            registry=r,
        )
        self.dora_deployments = Gauge(
            "guardrail_dora_deployments",
            "Finished deploys over the DORA window by result (promoted, rolled_back, rollback_failed, "
            "failed_after_promotion; disjoint).",
            [*dora, "result"],
            registry=r,
        )
        self._dora_groups: set[tuple[str, str]] = set()
        for s in DeployState:
            self.deploys.labels(s.value).set(0)
        for result in ("received", "accepted", "late"):
            self.otlp_points.labels(result)

    def set_dora(self, figures: list[DoraFigures]) -> None:
        """Set the DORA gauges to ``figures`` (one per service and environment). A figure that cannot
        be computed (no lead times, nothing finished) and a group gone from the window are removed,
        not set to zero: no data is not zero."""
        per_group = (
            (self.dora_lead_time, "lead_time_median_s"),
            (self.dora_failure_rate, "change_failure_rate"),
            (self.dora_recovery_time, "recovery_median_s"),
            (self.dora_rollback_rate, "rollback_rate"),
        )
        seen: set[tuple[str, str]] = set()
        for f in figures:
            key = (f.service, f.environment)
            seen.add(key)
            self.dora_frequency.labels(*key).set(f.deployment_frequency_per_day)
            for gauge, attr in per_group:
                value = getattr(f, attr)
                if value is None:
                    with contextlib.suppress(KeyError):
                        gauge.remove(*key)
                else:
                    gauge.labels(*key).set(value)
            for result, n in f.results.items():
                self.dora_deployments.labels(*key, result.value).set(n)
        for key in self._dora_groups - seen:
            for gauge in (self.dora_frequency, *(g for g, _ in per_group)):
                with contextlib.suppress(KeyError):
                    gauge.remove(*key)
            for result in DoraResult:
                with contextlib.suppress(KeyError):
                    self.dora_deployments.remove(*key, result.value)
        self._dora_groups = seen

    def set_states(self, counts: dict[DeployState, int]) -> None:
        for s in DeployState:
            self.deploys.labels(s.value).set(counts.get(s, 0))

    def set_evidence(self, deploy_id: str, service: str, evidence: list[dict]) -> None:
        for e in evidence:
            for bound in ("estimate", "ci_low", "ci_high"):
                v = e.get(bound)
                if v is not None:
                    self.evidence_ratio.labels(deploy_id, service, e["metric"], bound).set(v)
            self.evidence_e_value.labels(deploy_id, service, e["metric"]).set(e["e_value_fail"])

    def clear_deploy(self, deploy_id: str, service: str, metrics: list[str]) -> None:
        for m in metrics:
            for bound in ("estimate", "ci_low", "ci_high"):
                with contextlib.suppress(KeyError):
                    self.evidence_ratio.remove(deploy_id, service, m, bound)
            with contextlib.suppress(KeyError):
                self.evidence_e_value.remove(deploy_id, service, m)
        with contextlib.suppress(KeyError):
            self.stalled.remove(deploy_id, service)
        with contextlib.suppress(KeyError):
            self.step_started.remove(deploy_id, service)
