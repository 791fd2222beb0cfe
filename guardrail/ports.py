"""The ports: what the service needs from the outside world, as Protocols.

Adapters live in ``guardrail.adapters`` and are wired in ``guardrail.main`` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from guardrail.domain.drafts import Draft, DraftKind, DraftText
from guardrail.domain.model import DeployState, Sample, Step
from guardrail.domain.notifications import Notice
from guardrail.domain.outbox import Delivery, DeliveryStatus, Incident, IncidentState, OutboxSummary
from guardrail.domain.records import Action, ActionStatus, Deploy, Lease, Marker, TimelineEvent
from guardrail.domain.rollout import Rollout


class Clock(Protocol):
    def __call__(self) -> float:
        """Wall time, unix seconds. Used for records and timeouts only, never for analysis."""
        ...


@dataclass(frozen=True, slots=True)
class ActionResult:
    ok: bool
    detail: str  # one line for the timeline
    output: str = ""  # captured output (truncated by the adapter), secrets redacted
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeployTarget:
    """What an adapter is told about the deploy (no secrets beyond its own config)."""

    deploy_id: str
    service: str
    environment: str
    version: str
    previous_version: str
    commit: str
    action_key: str  # stable per action: lets the target ignore a repeated call after a crash


@runtime_checkable
class DeployAdapter(Protocol):
    """Moves traffic and versions. Every method has its own timeout and never raises for a failed
    action: it returns ``ActionResult(ok=False, ...)`` (exceptions are reserved for bugs)."""

    name: str

    async def apply_step(self, target: DeployTarget, step: Step, index: int, total: int) -> ActionResult:
        """Put ``step`` in effect: canary weight in percent, or servers on the new version."""
        ...

    async def finalize(self, target: DeployTarget) -> ActionResult:
        """Complete the rollout: all traffic on the new version, the old one retired."""
        ...

    async def rollback(self, target: DeployTarget, reason: str) -> ActionResult:
        """Send all traffic back to ``previous_version``. Must be safe to repeat."""
        ...


@dataclass(frozen=True, slots=True)
class SourceQuery:
    """Which data a metric source should turn into per-window samples."""

    service: str
    environment: str
    canary_version: str
    baseline_version: str
    start: float  # data time, unix seconds; windows are [start + k*interval_s, start + (k+1)*interval_s)
    end: float
    interval_s: float
    overrides: dict[str, Any] = field(default_factory=dict)  # per-deploy query overrides (marker.metrics)


class MetricSource(Protocol):
    """Where analysis data comes from when it is pulled (Prometheus) rather than pushed."""

    name: str

    async def fetch(self, query: SourceQuery) -> list[Sample]:
        """Per-window samples of both tracks for every complete window in [start, end). A window
        with no data for a track yields no sample for it (no data is not zero). Raises
        ``SourceUnavailableError`` when the source cannot be reached, ``ValidationError`` naming
        the query when the source rejects it."""
        ...


@dataclass(frozen=True, slots=True)
class NotifyResult:
    ok: bool
    retryable: bool  # a 429, a 5xx, a timeout or a refused connection: try again later
    detail: str  # one line for the record (never a secret)
    retry_after_s: float | None = None  # the server asked to wait this long (Retry-After)


@runtime_checkable
class Notifier(Protocol):
    """Delivers a notice to one system (Alertmanager, PagerDuty, Slack, a webhook). Never raises for
    a failed delivery: returns ``NotifyResult(ok=False, retryable=...)``. Each call has a timeout."""

    name: str

    async def send(self, notice: Notice) -> NotifyResult: ...

    async def close(self) -> None: ...


@runtime_checkable
class Drafter(Protocol):
    """Writes one document from the facts object (``guardrail.domain.drafts.facts``). The offline
    drafter always answers; an LLM drafter falls back to it (``DraftText.note`` says why) when the
    provider errors, times out or gives an answer that fails the checks. Never raises for that."""

    name: str

    async def draft(self, kind: DraftKind, facts: Mapping[str, Any]) -> DraftText: ...


class Store(Protocol):
    """Durable records. Each method is one transaction."""

    async def create_deploy(
        self, deploy: Deploy, event: TimelineEvent, idempotency_key: str | None
    ) -> tuple[Deploy, bool]:
        """Insert, or return the deploy already recorded under ``idempotency_key`` (created=False)."""
        ...

    async def get_deploy(self, deploy_id: str) -> Deploy | None: ...

    async def deploy_by_key(self, idempotency_key: str) -> Deploy | None:
        """The deploy recorded under an idempotency key, if any."""
        ...

    async def list_deploys(
        self,
        *,
        service: str | None = None,
        environment: str | None = None,
        state: DeployState | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[Deploy]:
        """Newest first; since/until filter on created_at."""
        ...

    async def active_deploys(self) -> list[Deploy]:
        """Deploys whose state is not terminal."""
        ...

    async def save(
        self,
        deploy_id: str,
        *,
        rollout: Rollout | None = None,
        data_time: float | None = None,
        verdict: dict[str, Any] | None = None,
        events: Sequence[TimelineEvent] = (),
        new_actions: Sequence[Action] = (),
        lease: Lease | None = None,
    ) -> list[Action]:
        """Atomically update the deploy, append timeline events and record new actions (intent log).
        Returns the new actions with their ids. With ``lease``: only while that lease is held (else
        ``LeaseLostError`` and nothing written)."""
        ...

    # --- leases: several replicas share one database (guardrail.service.engine) ---

    async def acquire_lease(self, deploy_id: str, owner: str, *, ttl_s: float) -> Lease | None:
        """Take the deploy's lease for ``ttl_s`` seconds of the database's clock if free, expired or
        already ``owner``'s (a new token when it changes hands); None when another replica holds it."""
        ...

    async def renew_lease(self, lease: Lease, *, ttl_s: float) -> bool:
        """Extend a lease still held (same owner and token); False once another replica took it."""
        ...

    async def release_lease(self, lease: Lease) -> None: ...

    async def claim_deploys(
        self, owner: str, *, ttl_s: float, limit: int = 100, ids: Sequence[str] | None = None
    ) -> list[Lease]:
        """Lease active deploys (optionally only ``ids``) that are free or expired (skipping rows
        other replicas lock)."""
        ...

    async def data_arrivals(self) -> dict[str, float]:
        """Analysing deploys: when data last arrived (wall time; creation time before any)."""
        ...

    async def state_counts(self) -> dict[DeployState, int]:
        """Deploys per non-terminal state."""
        ...

    async def add_samples(self, deploy_id: str, samples: Sequence[Sample]) -> list[Sample]:
        """Store samples; a (track, start, end) window already stored is ignored. Returns the new ones.
        New ones set the deploy's ``last_data_at`` (wall time) in the same transaction."""
        ...

    async def samples(self, deploy_id: str) -> list[Sample]:
        """Every stored sample of the deploy, ordered by (end, track)."""
        ...

    async def events(self, deploy_id: str, *, after_seq: int = 0) -> list[TimelineEvent]: ...

    async def actions(
        self, deploy_id: str | None = None, *, statuses: Sequence[ActionStatus] = ()
    ) -> list[Action]:
        """Actions in id order, optionally only those with the given statuses."""
        ...

    async def update_action(
        self,
        action_id: int,
        *,
        status: ActionStatus,
        attempts: int,
        result: dict[str, Any],
        event: TimelineEvent | None = None,
        lease: Lease | None = None,
    ) -> None: ...

    # --- drafted documents (guardrail.service.drafts) ---

    async def add_draft(self, draft: Draft) -> Draft:
        """Store the next version of the draft's (deploy, kind); returns it with its version."""
        ...

    async def drafts(
        self, deploy_id: str, kind: DraftKind | None = None, *, version: int | None = None
    ) -> list[Draft]:
        """Newest first."""
        ...

    # --- notifications: incidents and the outbox (guardrail.service.notify) ---

    async def get_incident(self, key: str) -> Incident | None: ...

    async def incidents(
        self, *, state: IncidentState | None = None, deploy_id: str | None = None
    ) -> list[Incident]:
        """Oldest opened first."""
        ...

    async def open_incident(self, incident: Incident, deliveries: Sequence[Delivery]) -> bool:
        """Open ``incident.key`` (new, or resolved before) and queue ``deliveries``, atomically. A key
        already open: nothing changes, nothing is queued, False."""
        ...

    async def resolve_incident(self, key: str, *, resolved_at: float, deliveries: Sequence[Delivery]) -> bool:
        """Resolve ``key`` and queue ``deliveries``, atomically. A key not open: nothing, False."""
        ...

    async def enqueue(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        """Queue deliveries with no incident (announcements), atomically; returned with their ids."""
        ...

    async def claim_deliveries(self, *, now: float, lease_s: float, limit: int = 100) -> list[Delivery]:
        """Due pending deliveries, oldest first, claimed until ``now + lease_s`` (attempts + 1). One
        waits while an earlier delivery of its key to its notifier is pending."""
        ...

    async def mark_delivery_sent(self, delivery_id: int, *, sent_at: float) -> None: ...

    async def mark_delivery_failed(self, delivery_id: int, *, error: str) -> None: ...

    async def reschedule_delivery(self, delivery_id: int, *, next_attempt_at: float, error: str) -> None: ...

    async def deliveries(
        self,
        *,
        statuses: Sequence[DeliveryStatus] = (),
        key: str | None = None,
        notifier: str | None = None,
        limit: int = 1000,
    ) -> list[Delivery]:
        """Outbox rows in id order."""
        ...

    async def outbox_summary(self) -> OutboxSummary: ...

    async def close(self) -> None: ...


__all__ = [
    "ActionResult",
    "AnnotationRef",
    "AnnotationResult",
    "Annotator",
    "Clock",
    "DeployAdapter",
    "DeployAnnotation",
    "DeployTarget",
    "Drafter",
    "Marker",
    "MetricSource",
    "Notifier",
    "NotifyResult",
    "SourceQuery",
    "Store",
]


# --- deploy markers in observability tools (guardrail.service.annotations) ---------------------------


@dataclass(frozen=True, slots=True)
class AnnotationRef:
    """What an annotator needs to find its annotation again (e.g. Grafana's annotation id)."""

    annotator: str
    id: str


@dataclass(frozen=True, slots=True)
class DeployAnnotation:
    """What an annotator is told about a deploy. Times are *data time* (unix seconds): the deploy's
    ``started_at`` and the data time it reached its terminal state, so that a replayed deploy marks
    the period its data covers."""

    deploy_id: str
    service: str
    environment: str
    version: str
    previous_version: str
    commit: str
    url: str  # the deploy's page
    started_at: float
    finished_at: float | None = None  # set once the deploy is terminal
    result: str | None = None  # promoted | rolled_back | rollback_failed, once terminal
    summary: str = ""  # one line: the verdict summary or the rollback reason


@dataclass(frozen=True, slots=True)
class AnnotationResult:
    ok: bool
    retryable: bool  # a 429, a 5xx, a timeout or a refused connection: worth another attempt
    detail: str  # one line for the log (never a secret)
    ref: AnnotationRef | None = None  # the annotation made, when there is one to update later
    retry_after_s: float | None = None  # the server asked to wait this long (Retry-After)


@runtime_checkable
class Annotator(Protocol):
    """Marks deploys in an observability tool (Grafana annotations, Honeycomb markers). Each call has
    its own timeout and never raises for a failed call: it returns ``AnnotationResult(ok=False,
    retryable=...)``. An annotator with nothing to do at a point (Honeycomb at the start) answers ok."""

    name: str

    async def deploy_started(self, info: DeployAnnotation) -> AnnotationResult:
        """Mark the start; ``result.ref`` identifies the mark for :meth:`deploy_finished`."""
        ...

    async def deploy_finished(self, info: DeployAnnotation, ref: AnnotationRef | None) -> AnnotationResult:
        """Mark the end (``info.finished_at``, ``info.result``): update the start mark ``ref``, or,
        without one (never made, or forgotten by a restart), make a mark covering the whole deploy."""
        ...

    async def close(self) -> None: ...
