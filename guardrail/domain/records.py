"""What guardrail records about a deploy: the marker CI posted, the timeline, the intent log."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from guardrail.domain.model import ChangeType, DeployState, Step, Strategy
from guardrail.domain.rollout import Command, Rollout


@dataclass(frozen=True, slots=True)
class AdapterRef:
    name: str = "noop"
    config: dict[str, Any] = field(default_factory=dict)  # may hold secrets: never logged or returned


@dataclass(frozen=True, slots=True)
class AnalysisSettings:
    alpha: float = 0.01
    interval_s: float = 60.0
    max_duration_s: float = 1800.0
    warmup_s: float = 0.0
    on_inconclusive: str = "hold"  # hold | rollback


@dataclass(frozen=True, slots=True)
class Marker:
    """The deploy marker CI posts (validated at the edge)."""

    service: str
    environment: str
    version: str
    previous_version: str
    commit: str
    strategy: Strategy
    change_type: ChangeType
    author: str = ""
    commit_time: float | None = None
    description: str = ""
    changes: tuple[str, ...] = ()
    db_migrations: bool = False
    db_migrations_description: str = ""
    metrics_source: str = "push"  # push | prometheus
    metrics_overrides: dict[str, Any] = field(default_factory=dict)
    adapter: AdapterRef = field(default_factory=AdapterRef)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    steps: tuple[Step, ...] = ()
    started_at: float | None = None  # data time of the deploy; default: when it was recorded
    # the pre-deployment checklist as CI answers it, e.g. {"tests_passed": True, "review_approved": True}
    checklist: dict[str, bool] = field(default_factory=dict)
    fast_track: str = ""  # a recorded reason to skip blocking policy checks (security patches, emergency fixes)
    links: dict[str, str] = field(default_factory=dict)  # e.g. {"pr": url, "ci_run": url, "issue": url}
    policy: dict[str, Any] = field(default_factory=dict)  # the policy checks made when it was recorded
    outlook: dict[str, Any] = field(default_factory=dict)  # judge.planning.Outlook at marker time ({}: none)


@dataclass(frozen=True, slots=True)
class Deploy:
    id: str
    marker: Marker
    rollout: Rollout
    created_at: float  # wall time
    updated_at: float
    data_time: float  # latest data time seen for this deploy (marker time before any data)
    verdict: dict[str, Any] | None = None  # latest Verdict.to_dict()

    @property
    def state(self) -> DeployState:
        return self.rollout.state


class EventKind(StrEnum):
    CREATED = "created"
    TRANSITION = "transition"
    VERDICT = "verdict"
    ACTION_STARTED = "action_started"
    ACTION_DONE = "action_done"
    ACTION_FAILED = "action_failed"
    OVERRIDE = "override"
    INGEST = "ingest"
    ALERT = "alert"  # an in-service rule or an Alertmanager alert firing or resolving
    NOTE = "note"


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    kind: EventKind
    message: str
    data_time: float | None
    wall_time: float
    details: dict[str, Any] = field(default_factory=dict)
    seq: int = 0  # assigned by the store, increasing per deploy


class ActionStatus(StrEnum):
    PENDING = "pending"  # recorded, not started
    RUNNING = "running"  # handed to the adapter
    DONE = "done"
    FAILED = "failed"  # this attempt failed (a rollback is retried as a new attempt)


@dataclass(frozen=True, slots=True)
class Action:
    """One adapter action in the intent log: recorded before it is carried out."""

    deploy_id: str
    command: Command
    status: ActionStatus = ActionStatus.PENDING
    attempts: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    id: int = 0  # assigned by the store
    updated_at: float = field(default=0.0, compare=False)  # wall time of the last change (set by the store)


@dataclass(frozen=True, slots=True)
class Lease:
    """A replica's hold on a deploy (several replicas on one database). ``token`` grows by one each
    time the deploy changes hands; writes made under the lease carry it and are refused once another
    replica took over (fencing). Expiry is kept by the database, on its own clock."""

    deploy_id: str
    owner: str
    token: int
    last_owner: str | None = None  # the replica that held it before this acquisition
