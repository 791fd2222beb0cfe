"""Notifications: incidents opened and resolved once, routed by severity, delivered through a durable
outbox so that a page survives a notifier outage and a guardrail restart.

The engine calls :meth:`NotificationService.trigger`, :meth:`~NotificationService.resolve` and
:meth:`~NotificationService.announce`. Those only write: the incident transition and one outbox row
per routed notifier, in one transaction, before anything is sent; then they wake the dispatcher.
The dispatcher (:meth:`~NotificationService.run`, or :meth:`~NotificationService.dispatch_once`)
claims due rows and sends them:

* delivered (2xx): the row is ``sent``;
* a retryable failure (429, 5xx, timeout, refused connection): the row stays ``pending`` and is due
  again after the shared backoff (:class:`guardrail.retry.Backoff`: ``backoff_s`` doubled per
  attempt, capped at ``backoff_max_s``, with jitter), or after the server's ``Retry-After`` when
  that is longer (at most an hour), for ever: a page is
  never dropped because a notifier is down;
* a non-retryable answer (another 4xx): the row is ``failed``, logged at ERROR and counted in
  ``guardrail_notifications_failed_total`` (alert on it).

Delivery is at least once: a process that dies between sending and recording leaves its row claimed
for ``lease_s``, after which it is sent again (PagerDuty's dedup_key and Alertmanager's labels make
a repeat harmless; the webhook carries the outbox id as Idempotency-Key). Rows of one incident key
go to one notifier in order: a resolve never overtakes its trigger. On start-up the rows a previous
process left pending are delivered first.

Dedup: one incident per key (``Notice.key``, e.g. ``incident_key(service, env, deploy, rule)``). A
trigger on an open key does nothing; a resolve of a key that is not open does nothing; a trigger
on a resolved key opens it again. A resolve goes to the notifiers the trigger went to, with the
trigger's labels and severity (so Alertmanager and PagerDuty see the same alert/incident).

Notifier secrets never reach logs, events or ``last_error``: details are redacted with every
notifier's secret config values before they are stored or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from guardrail.domain.errors import ConfigError, GuardrailError, ValidationError
from guardrail.domain.notifications import Link, Notice, NoticeAction, Severity
from guardrail.domain.outbox import Delivery, Incident, IncidentState, OutboxSummary
from guardrail.ports import Notifier, NotifyResult, Store
from guardrail.retry import Backoff
from guardrail.secrets import redact_text, secret_values
from guardrail.telemetry import Telemetry

log = logging.getLogger("guardrail.notify")

RETRY_AFTER_MAX_S = 3600.0  # the longest Retry-After honoured (a longer one is read as an hour)

#: The outbox id of the delivery being sent, set by the dispatcher around ``Notifier.send`` (None
#: outside it). A notifier that supports idempotency keys (the webhook) sends it with the request,
#: so the receiver can recognise a repeat after a crash.
DELIVERY_ID: ContextVar[int | None] = ContextVar("guardrail_notification_delivery_id", default=None)

_MAX_ROUNDS = 1000  # claim rounds per dispatch_once (each round sends what became due meanwhile)


@dataclass(frozen=True, slots=True)
class Route:
    """Notices of ``severity`` go to the notifiers named (configured names, in order)."""

    severity: Severity
    notifiers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    poll_s: float = 5.0  # longest sleep between looks at the outbox (rows queued by another process)
    backoff_s: float = 1.0  # wait after the first retryable failure; doubled per attempt
    backoff_max_s: float = 300.0  # cap of the wait between attempts
    lease_s: float = 120.0  # a claimed row is sent again after this if its sender died
    batch: int = 100  # rows claimed at once

    def __post_init__(self) -> None:
        for name in ("poll_s", "backoff_s", "backoff_max_s", "lease_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"must be a number of seconds > 0, got {getattr(self, name)}", field=name)
        if self.backoff_max_s < self.backoff_s:
            raise ConfigError(
                f"must be at least backoff_s ({self.backoff_s}), got {self.backoff_max_s}",
                field="backoff_max_s",
            )
        if self.batch < 1:
            raise ConfigError(f"must be at least 1, got {self.batch}", field="batch")

    @property
    def send_timeout_s(self) -> float:
        """A last-resort guard around one send (notifiers have their own, shorter timeouts)."""
        return self.lease_s / 2


def normalize_routes(
    routes: Sequence[Route] | Mapping[Severity | str, Sequence[str]], notifiers: Iterable[str]
) -> dict[Severity, tuple[str, ...]]:
    """Routes by severity (several routes for one severity add up, each notifier once), checked
    against the configured notifier names."""
    known = set(notifiers)
    pairs = (
        [(Severity(s), tuple(ns)) for s, ns in routes.items()]
        if isinstance(routes, Mapping)
        else [(Severity(r.severity), tuple(r.notifiers)) for r in routes]
    )
    out: dict[Severity, tuple[str, ...]] = {}
    for i, (severity, names) in enumerate(pairs):
        for name in names:
            if name not in known:
                raise ConfigError(
                    f"notifications.routes[{i}] ({severity.value}): no notifier named {name!r}; "
                    f"configured: {', '.join(sorted(known)) or 'none'}",
                    field="notifications.routes",
                )
        merged = out.get(severity, ())
        out[severity] = merged + tuple(n for n in dict.fromkeys(names) if n not in merged)
    return out


class NotificationService:
    """See the module docstring. ``notifiers`` maps configured names to notifiers; ``routes`` maps
    severities to those names (a list of :class:`Route` or a mapping). The service owns the
    notifiers: :meth:`close` closes them."""

    def __init__(
        self,
        store: Store,
        notifiers: Mapping[str, Notifier],
        routes: Sequence[Route] | Mapping[Severity | str, Sequence[str]],
        *,
        clock: Callable[[], float] = time.time,
        telemetry: Telemetry | None = None,
        settings: DispatchSettings | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.notifiers = dict(notifiers)
        self.routes = normalize_routes(routes, self.notifiers)
        self.clock = clock
        self.telemetry = telemetry or Telemetry()
        self.settings = settings or DispatchSettings()
        self._backoff = Backoff(self.settings.backoff_s, self.settings.backoff_max_s)
        self._rand = rand
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._secrets: list[str] = []
        for n in self.notifiers.values():
            config = getattr(n, "config", None)
            if dataclasses.is_dataclass(config) and not isinstance(config, type):
                self._secrets.extend(secret_values(config))
        if not self.routes.get(Severity.PAGE):
            log.warning("no notifier is routed for severity page: pages will be recorded but not sent")

    # --- the API the engine calls: writes only ------------------------------------------------------

    def route(self, severity: Severity) -> tuple[str, ...]:
        """The configured notifier names notices of ``severity`` go to."""
        return self.routes.get(Severity(severity), ())

    async def trigger(self, notice: Notice) -> bool:
        """Open the incident ``notice.key`` and queue the notice for the notifiers routed for its
        severity, in one transaction. True if the incident was opened now (and its notifications
        queued); False if it was open already (nothing is queued: one page per incident)."""
        _check(notice, NoticeAction.TRIGGER, "trigger")
        now = self.clock()
        if not notice.occurred_at:
            notice = replace(notice, occurred_at=now)
        names = self.route(notice.severity)
        incident = Incident(
            key=notice.key, state=IncidentState.OPEN, notice=notice, notifiers=names, opened_at=now
        )
        opened = await self.store.open_incident(incident, self._deliveries(notice, names, now))
        if opened:
            self.telemetry.incidents_opened.labels(notice.severity.value).inc()
            self._queued(notice, names)
            if not names:
                log.warning(
                    "incident %s opened, but no notifier is routed for %s", notice.key, notice.severity.value
                )
        return opened

    async def resolve(
        self,
        key: str,
        summary: str = "",
        *,
        text: str = "",
        details: Mapping[str, Any] | None = None,
        links: Sequence[Link] | None = None,
    ) -> bool:
        """Resolve the open incident ``key`` and queue a resolve for the notifiers its trigger went
        to, with the trigger's labels and severity. ``summary`` defaults to the trigger's summary
        (Slack shows it as "Resolved: <summary>"); ``links`` to the trigger's. True if the incident
        was open and is resolved now; False if it was not open (nothing is queued)."""
        incident = await self.store.get_incident(key)
        if incident is None or incident.state is not IncidentState.OPEN:
            return False
        now = self.clock()
        base = incident.notice
        notice = replace(
            base,
            action=NoticeAction.RESOLVE,
            summary=summary or base.summary,
            text=text,
            details=dict(details or {}),
            links=tuple(links) if links is not None else base.links,
            occurred_at=now,
        )
        names = incident.notifiers
        resolved = await self.store.resolve_incident(
            key, resolved_at=now, deliveries=self._deliveries(notice, names, now)
        )
        if resolved:
            self._queued(notice, names)
        return resolved

    async def announce(self, notice: Notice) -> None:
        """Queue an announcement (``action`` announce, usually severity info) for the notifiers routed
        for its severity. Always queued: announcements open no incident and are not de-duplicated."""
        _check(notice, NoticeAction.ANNOUNCE, "announce")
        now = self.clock()
        if not notice.occurred_at:
            notice = replace(notice, occurred_at=now)
        names = self.route(notice.severity)
        if not names:
            log.info(
                "announcement %r not sent: no notifier is routed for %s",
                notice.summary,
                notice.severity.value,
            )
            return
        await self.store.enqueue(self._deliveries(notice, names, now))
        self._queued(notice, names)

    async def notify(self, notice: Notice) -> bool:
        """Any notice, by its action: :meth:`trigger`, :meth:`resolve` (with the notice's summary,
        text, details, and its links if it has any) or :meth:`announce` (always True)."""
        if notice.action is NoticeAction.TRIGGER:
            return await self.trigger(notice)
        if notice.action is NoticeAction.RESOLVE:
            return await self.resolve(
                notice.key,
                notice.summary,
                text=notice.text,
                details=notice.details,
                links=notice.links or None,
            )
        await self.announce(notice)
        return True

    async def get_incident(self, key: str) -> Incident | None:
        return await self.store.get_incident(key)

    async def open_incidents(self, deploy_id: str | None = None) -> list[Incident]:
        """Incidents still open (of one deploy, if given): what to resolve when a watch ends."""
        return await self.store.incidents(state=IncidentState.OPEN, deploy_id=deploy_id)

    def _deliveries(self, notice: Notice, names: Sequence[str], now: float) -> list[Delivery]:
        return [Delivery(notifier=n, notice=notice, next_attempt_at=now, created_at=now) for n in names]

    def _queued(self, notice: Notice, names: Sequence[str]) -> None:
        for n in names:
            self.telemetry.notifications_queued.labels(n, notice.action.value).inc()
        if names:
            self._wake.set()

    # --- the dispatcher -----------------------------------------------------------------------------

    async def dispatch_once(self) -> int:
        """Send every delivery that is due now (and those that become due as earlier ones of their
        key go out). Returns how many were delivered."""
        delivered = 0
        for _ in range(_MAX_ROUNDS):
            claimed = await self.store.claim_deliveries(
                now=self.clock(), lease_s=self.settings.lease_s, limit=self.settings.batch
            )
            if not claimed:
                break
            results = await asyncio.gather(*(self._deliver(d) for d in claimed))
            delivered += sum(results)
            if self._stopping:
                break
        return delivered

    async def run(self) -> None:
        """Deliver until :meth:`close` (or cancellation): first what is pending from before, then
        whenever a notice is queued, a retry falls due, or every ``poll_s`` (rows of other
        processes). Database errors are logged and retried."""
        while not self._stopping:
            self._wake.clear()
            delay = self.settings.poll_s
            try:
                await self.dispatch_once()
                summary = await self.store.outbox_summary()
                self._gauges(summary)
                if summary.next_due_at is not None:
                    delay = min(delay, max(0.01, summary.next_due_at - self.clock()))
            except GuardrailError as e:
                log.warning("notification dispatch failed: %s; trying again in %g s", e.detail, delay)
            except Exception as e:
                log.error("notification dispatch failed: %s", self._redact(_traceback(e)))
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    def start(self) -> asyncio.Task[None]:
        """Run the dispatcher as a task of the running loop (stopped by :meth:`close`)."""
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self.run(), name="guardrail-notifications")
        return self._task

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop the dispatcher (sends in flight may finish within ``grace_s``), close the notifiers.
        What is still pending stays in the outbox for the next start."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), grace_s)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for n in self.notifiers.values():
            try:
                await n.close()
            except Exception as e:
                log.warning(
                    "closing notifier %s failed: %s", n.name, self._redact(f"{type(e).__name__}: {e}")
                )

    async def _deliver(self, d: Delivery) -> bool:
        assert d.id is not None
        what = f"notification {d.id} ({d.notice.action.value} {d.notice.key}) via {d.notifier}"
        notifier = self.notifiers.get(d.notifier)
        if notifier is None:
            error = f"no notifier named {d.notifier!r} is configured now ({', '.join(sorted(self.notifiers)) or 'none'})"
            await self.store.mark_delivery_failed(d.id, error=error)
            self.telemetry.notifications_failed.labels(d.notifier).inc()
            log.error("%s failed: %s", what, error)
            return False
        token = DELIVERY_ID.set(d.id)
        try:
            result = await asyncio.wait_for(notifier.send(d.notice), self.settings.send_timeout_s)
        except TimeoutError:
            result = NotifyResult(False, True, f"no result within {self.settings.send_timeout_s:g} s")
        except Exception as e:  # a notifier bug: keep the notice, retry with backoff, say why
            log.error("%s: the notifier raised: %s", what, self._redact(_traceback(e)))
            result = NotifyResult(False, True, f"the notifier raised {type(e).__name__}")
        finally:
            DELIVERY_ID.reset(token)
        detail = self._redact(result.detail)
        now = self.clock()
        if result.ok:
            await self.store.mark_delivery_sent(d.id, sent_at=now)
            self.telemetry.notifications_sent.labels(d.notifier).inc()
            log.info("%s sent (attempt %d): %s", what, d.attempts, detail)
            return True
        if result.retryable:
            wait = self._backoff.delay(max(d.attempts, 1), self._rand())
            if result.retry_after_s is not None:  # the server said how long (Retry-After)
                wait = max(wait, min(result.retry_after_s, RETRY_AFTER_MAX_S))
            await self.store.reschedule_delivery(d.id, next_attempt_at=now + wait, error=detail)
            self.telemetry.notifications_retried.labels(d.notifier).inc()
            log.warning("%s not delivered (attempt %d), retrying in %g s: %s", what, d.attempts, wait, detail)
            return False
        await self.store.mark_delivery_failed(d.id, error=detail)
        self.telemetry.notifications_failed.labels(d.notifier).inc()
        log.error("%s failed and will not be retried (attempt %d): %s", what, d.attempts, detail)
        return False

    def _gauges(self, summary: OutboxSummary) -> None:
        self.telemetry.notifications_pending.set(summary.pending)
        oldest = summary.oldest_pending_at
        self.telemetry.notifications_oldest_pending.set(
            0 if oldest is None else max(0.0, self.clock() - oldest)
        )

    def _redact(self, text: str) -> str:
        return redact_text(text, self._secrets)


def _check(notice: Notice, action: NoticeAction, method: str) -> None:
    if notice.action is not action:
        raise ValidationError(
            f"{method}() takes a notice with action {action.value!r}, got {notice.action.value!r}",
            field="action",
        )
    if not notice.key:
        raise ValidationError("a notice needs a key (see incident_key)", field="key")


def _traceback(e: BaseException) -> str:
    return "".join(traceback.format_exception(e)).rstrip()


__all__ = ["DELIVERY_ID", "DispatchSettings", "NotificationService", "Route", "normalize_routes"]
