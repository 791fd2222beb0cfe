"""The notification outbox and incidents, as records. Pure: no I/O.

A :class:`Delivery` is one notice on its way to one notifier: a row of the outbox, written in the
same transaction as the incident transition that caused it and sent afterwards (at least once; the
dispatcher retries a retryable failure with capped backoff until it goes through). An
:class:`Incident` is what ``Notice.key`` names: open from the first trigger until the resolve, so a
second trigger for an open key sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from guardrail.domain.notifications import Notice


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting to be sent (or being sent: claimed until next_attempt_at)
    SENT = "sent"
    FAILED = "failed"  # a non-retryable answer (a 4xx other than 429): given up, logged, counted


class IncidentState(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Delivery:
    notifier: str  # the configured notifier's name (``notifications.notifiers.<name>``)
    notice: Notice
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0  # sends started (counted when claimed, so a crash mid-send counts too)
    next_attempt_at: float = 0.0  # wall time it is due (while claimed: when the claim lapses)
    last_error: str | None = None  # the notifier's one-line detail of the last failure, no secrets
    created_at: float = 0.0
    sent_at: float | None = None
    id: int | None = None  # the outbox id; also the Idempotency-Key the webhook notifier sends


@dataclass(frozen=True, slots=True)
class Incident:
    key: str
    state: IncidentState
    notice: Notice  # the trigger that opened it: its resolve carries the same labels and severity
    notifiers: tuple[str, ...]  # where the trigger was routed: the resolve goes to the same ones
    opened_at: float
    resolved_at: float | None = None

    @property
    def rule(self) -> str:
        return self.notice.rule

    @property
    def deploy_id(self) -> str | None:
        return self.notice.deploy_id


@dataclass(frozen=True, slots=True)
class OutboxSummary:
    pending: int = 0
    oldest_pending_at: float | None = None  # created_at of the oldest pending delivery
    next_due_at: float | None = None  # the earliest next_attempt_at of a pending delivery


__all__ = ["Delivery", "DeliveryStatus", "Incident", "IncidentState", "OutboxSummary"]
