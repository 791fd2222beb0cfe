"""Alerting around a deploy: pages on automatic rollbacks and failed rollbacks, the lesson's
in-service alert rules on the deploy's own samples, and the before/after announcements.

Everything here only writes the notification outbox (durable; delivered by the dispatcher), and a
failure to record a notice is logged, never raised into the rollout: a rollback is never skipped
because paging failed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

from guardrail.config import Settings
from guardrail.domain import announcements
from guardrail.domain.judge import MetricSpec
from guardrail.domain.model import DeployState, Evidence, RuleCheck, Sample
from guardrail.domain.notifications import Link, Notice, NoticeAction, Severity, incident_key
from guardrail.domain.records import Deploy
from guardrail.domain.rules import RuleEvaluator, RuleTransition, attribute
from guardrail.service.notify import NotificationService

log = logging.getLogger("guardrail.alerting")

REGRESSION = "CanaryRegression"
ROLLBACK_FAILED = "RollbackFailed"


class DeployAlerts:
    def __init__(self, notifications: NotificationService | None, settings: Settings) -> None:
        self.notifications = notifications
        self.settings = settings
        self._specs = settings.rules.specs()
        self._evaluators: dict[str, RuleEvaluator] = {}

    # --- links and sending -------------------------------------------------------------------------
    def deploy_url(self, deploy: Deploy) -> str:
        """The deploy page (timeline, charts, evidence, drafts): what a person opens from a page."""
        return f"{self.settings.server.public_url.rstrip('/')}/deploys/{deploy.id}"

    def dashboard_url(self, deploy: Deploy) -> str:
        """Grafana's canary dashboard for the service when configured, else the deploy page."""
        grafana = self.settings.server.grafana_url
        if not grafana:
            return self.deploy_url(deploy)
        return f"{grafana.rstrip('/')}/d/guardrail-canary?var-service={deploy.marker.service}"

    def links(self, deploy: Deploy) -> tuple[Link, ...]:
        return (
            Link(self.deploy_url(deploy), f"{deploy.marker.service} {deploy.marker.version} deploy page"),
        )

    async def _send(self, notice: Notice) -> None:
        if self.notifications is None:
            return
        try:
            await self.notifications.notify(notice)
        except Exception:  # the outbox could not be written: say so loudly, keep rolling
            log.exception("could not record notice %s (%s)", notice.key, notice.summary)

    # --- deploy lifecycle --------------------------------------------------------------------------
    async def created(self, deploy: Deploy, now: float) -> None:
        notice = announcements.before(
            deploy,
            dashboard_url=self.dashboard_url(deploy),
            rollback_time_s=self.settings.engine.rollback_backoff_s * 4 + 60,
            deploy_url=self.deploy_url(deploy),
        )
        await self._send(_at(notice, now))

    async def state_changed(self, deploy: Deploy, before: DeployState, now: float) -> None:
        m = deploy.marker
        after = deploy.state
        key = incident_key(m.service, m.environment, deploy.id, REGRESSION)
        automatic = not deploy.rollout.reason.startswith("manual rollback")
        if after is DeployState.ROLLING_BACK and automatic:
            await self._send(
                Notice(
                    key=key,
                    action=NoticeAction.TRIGGER,
                    severity=Severity.PAGE,
                    summary=f"{m.service} {m.version} ({m.environment}) rolled back: {deploy.rollout.reason}"[
                        :1024
                    ],
                    service=m.service,
                    environment=m.environment,
                    deploy_id=deploy.id,
                    rule=REGRESSION,
                    details={"reason": deploy.rollout.reason, "verdict": deploy.verdict or {}},
                    links=self.links(deploy),
                    text=deploy.rollout.reason,
                    occurred_at=now,
                )
            )
        elif after is DeployState.ROLLBACK_FAILED:
            await self._send(
                Notice(
                    key=incident_key(m.service, m.environment, deploy.id, ROLLBACK_FAILED),
                    action=NoticeAction.TRIGGER,
                    severity=Severity.PAGE,
                    summary=f"{m.service} ({m.environment}): rollback of {m.version} to {m.previous_version} FAILED; "
                    "the bad version may still take traffic"[:1024],
                    service=m.service,
                    environment=m.environment,
                    deploy_id=deploy.id,
                    rule=ROLLBACK_FAILED,
                    links=self.links(deploy),
                    occurred_at=now,
                )
            )
        elif after is DeployState.ROLLED_BACK and self.notifications is not None:
            summary = f"{m.service} back on {m.previous_version}"
            for rule in (REGRESSION, ROLLBACK_FAILED):
                try:
                    await self.notifications.resolve(
                        incident_key(m.service, m.environment, deploy.id, rule), summary
                    )
                except Exception:
                    log.exception("could not record the resolve of %s", rule)
        if after.terminal and after is not before:
            await self._send(
                _at(
                    announcements.after(
                        deploy,
                        deploy.verdict,
                        dashboard_url=self.dashboard_url(deploy),
                        deploy_url=self.deploy_url(deploy),
                        occurred_at=now,
                    ),
                    now,
                )
            )

    # --- in-service rules --------------------------------------------------------------------------
    def watching(self, deploy: Deploy) -> bool:
        """Rules run during the canary steps and for ``rules.watch_s`` of data time after promotion."""
        if not self._specs:
            return False
        if deploy.state is DeployState.PROMOTED:
            started = deploy.rollout.step_started_at or deploy.data_time
            return deploy.data_time - started <= self.settings.rules.watch_s
        return not deploy.state.terminal and deploy.state is not DeployState.ROLLING_BACK

    def evaluate(
        self, deploy: Deploy, stored: Iterable[Sample], new: Iterable[Sample]
    ) -> list[RuleTransition]:
        """Feed the deploy's rule evaluator (rebuilt from the stored samples after a restart) and
        return the transitions up to its data time. The canary track counts from the data time the
        new version first got traffic (before it, the canary's windows are the old version's)."""
        ev = self._evaluators.get(deploy.id)
        start = deploy.rollout.traffic_started_at
        if ev is None:
            ev = self._evaluators[deploy.id] = RuleEvaluator(
                self._specs, canary_start=start, interval_s=self.settings.rules.evaluation_interval_s
            )
            ev.add_many(stored)
        else:
            ev.set_canary_start(start)
            ev.add_many(new)
        return ev.evaluate(deploy.data_time)

    def attribute(
        self, deploy: Deploy, metrics: Iterable[MetricSpec], evidence: Iterable[Evidence]
    ) -> list[RuleCheck]:
        """The deploy-failing rules firing on the canary now, each with whether the breach is the new
        version's (``domain.rules.attribute``)."""
        ev = self._evaluators.get(deploy.id)
        if ev is None:
            return []
        return attribute(ev, deploy.data_time, metrics=tuple(metrics), evidence=tuple(evidence))

    def forget(self, deploy_id: str) -> None:
        """Another replica worked on the deploy: rebuild the evaluator from the stored samples."""
        self._evaluators.pop(deploy_id, None)

    def needs_history(self, deploy: Deploy) -> bool:
        return deploy.id not in self._evaluators

    async def transition(self, deploy: Deploy, t: RuleTransition, now: float) -> None:
        m = deploy.marker
        await self._send(
            t.notice(
                service=m.service,
                environment=m.environment,
                deploy_id=deploy.id,
                occurred_at=now,
                links=self.links(deploy),
            )
        )

    async def stop_watching(self, deploy: Deploy, now: float) -> list[RuleTransition]:
        ev = self._evaluators.pop(deploy.id, None)
        if ev is None:
            return []
        closed = ev.close(deploy.data_time)
        for t in closed:
            await self.transition(deploy, t, now)
        return closed


def _at(notice: Notice, now: float) -> Notice:
    return replace(notice, occurred_at=now)
