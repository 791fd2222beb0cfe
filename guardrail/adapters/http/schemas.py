"""Request and response schemas of the HTTP API (pydantic v2), and their conversion to and from the
domain records.

Request bodies are strict (``extra="forbid"``, no type coercion: ``"5"`` is not an integer) and are
validated straight from the JSON bytes. Query strings are validated in lax mode (every value arrives
as text). Times are accepted as RFC3339 (with an offset) or unix seconds and returned as unix seconds.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from guardrail.config import AnalysisDefaults
from guardrail.domain.errors import ValidationError
from guardrail.domain.limits import CONTROL_HELP, INT64_MAX, MAX_TIMESTAMP, identifier_problem
from guardrail.domain.model import ChangeType, DeployState, Histogram, Sample, Step, Strategy, Track
from guardrail.domain.records import AdapterRef, AnalysisSettings, Deploy, Marker, TimelineEvent
from guardrail.domain.rollout import Rollout

# --- shared types ----------------------------------------------------------------------------------

TIMESTAMP_HELP = "RFC3339 with an offset (e.g. 2024-05-01T12:00:00Z) or unix seconds"
_OFFSET_AFTER_SPACE = re.compile(r"^(.*\d)\s(\d\d:?\d\d)$")


def parse_timestamp(value: Any) -> float:
    """RFC3339 (offset required) or unix seconds (a number, or a numeric string in a query) -> float."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PydanticCustomError("timestamp_type", "expected " + TIMESTAMP_HELP)
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            # a "+" in an unencoded query string arrives as a space: 2024-05-01T12:00:00 00:00
            m = _OFFSET_AFTER_SPACE.match(text)
            if m and "T" in text:
                text = f"{m.group(1)}+{m.group(2)}"
            try:
                dt = datetime.fromisoformat(text)
            except ValueError:
                raise PydanticCustomError(
                    "timestamp", "not a valid timestamp: expected " + TIMESTAMP_HELP
                ) from None
            if dt.tzinfo is None:
                raise PydanticCustomError(
                    "timestamp", "timestamp has no UTC offset: expected " + TIMESTAMP_HELP
                ) from None
            try:
                value = dt.timestamp()
            except (OverflowError, ValueError):  # out of the platform's range
                value = -1.0
    try:
        value = float(value)
    except OverflowError:  # an integer beyond a double
        value = math.inf
    if not math.isfinite(value) or value < 0:
        raise PydanticCustomError(
            "timestamp", "timestamp must be finite unix seconds >= 0 or " + TIMESTAMP_HELP
        )
    return _in_range(value)


def _in_range(value: float) -> float:
    if value > MAX_TIMESTAMP:
        raise PydanticCustomError(
            "timestamp",
            f"timestamp must be before the year 10000 (unix seconds <= {MAX_TIMESTAMP:.0f}): "
            "expected " + TIMESTAMP_HELP,
        )
    return value


Timestamp = Annotated[
    float,
    BeforeValidator(parse_timestamp),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "number", "minimum": 0, "maximum": MAX_TIMESTAMP},
            ],
            "description": TIMESTAMP_HELP,
        },
        mode="validation",
    ),
]
UnixTime = Annotated[float, Field(description="unix seconds")]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


def _identifier(value: Any) -> Any:
    """Before stripping: a trailing newline is refused, not quietly removed."""
    if isinstance(value, str):
        problem = identifier_problem(value)
        if problem is not None:
            raise PydanticCustomError("identifier", problem)
    return value


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        problem = identifier_problem(value, dash=False)
        if problem is not None:
            raise PydanticCustomError("printable", problem)
    return value


def _printable_keys(value: Any) -> Any:
    """Every key of a mapping printable (checked on the whole mapping: the key is not echoed in the
    error's field path)."""
    if isinstance(value, dict) and any(
        isinstance(k, str) and identifier_problem(k, dash=False) for k in value
    ):
        raise PydanticCustomError("printable", "keys " + CONTROL_HELP)
    return value


# service, environment, version, commit ...: printable, no leading '-' (they reach log lines, label
# values, pages and a deploy command's arguments)
Identifier = Annotated[
    Name,
    BeforeValidator(_identifier),
    Field(description="1-200 printable characters (no control characters), not starting with '-'"),
]
PrintableName = Annotated[str, StringConstraints(max_length=200), BeforeValidator(_printable)]
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]  # what a BIGINT holds
Text = Annotated[str, StringConstraints(max_length=10_000)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _In(BaseModel):
    """Base of request schemas: unknown fields rejected, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Query(BaseModel):
    """Base of query-string schemas: unknown parameters rejected, text converted."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


# --- the marker ------------------------------------------------------------------------------------


def _servers(value: Any) -> Any:
    if value is None or value == "all":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PydanticCustomError(
            "servers", 'servers must be an integer >= 1 (cumulative servers on the new version) or "all"'
        )
    return value


class StepIn(_In):
    """One rollout step: ``weight`` (percent of traffic on the new version; canary, blue-green) or
    ``servers`` (cumulative servers on the new version, or "all"; rolling), not both."""

    weight: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] | None = None
    servers: Annotated[
        Annotated[int, Field(ge=1, le=INT64_MAX)] | Literal["all"] | None, BeforeValidator(_servers)
    ] = None
    min_duration_s: Seconds = 0.0

    @model_validator(mode="after")
    def _one_of(self) -> StepIn:
        if (self.weight is None) == (self.servers is None):
            raise PydanticCustomError(
                "step_kind",
                'a step needs exactly one of weight (0-100, percent of traffic) or servers (>= 1 or "all")',
            )
        return self

    def to_domain(self) -> Step:
        if self.weight is not None:
            return Step(weight=self.weight, min_duration_s=self.min_duration_s)
        servers = None if self.servers == "all" else self.servers
        return Step(servers=servers, min_duration_s=self.min_duration_s)  # type: ignore[arg-type]


def _db_migrations(value: Any) -> Any:
    return {"applied": value} if isinstance(value, bool) else value


class DbMigrationsIn(_In):
    applied: bool = False
    description: Text = ""


class MetricsIn(_In):
    source: Literal["push", "prometheus"] = "push"
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per built-in metric: {enabled: false} or tuned settings, e.g. "
        "{error_rate: {critical_change: 0.3}}",
    )
    custom: list[dict[str, Any]] = Field(
        default_factory=list, description="extra metrics: [{name, kind, ...}]"
    )


class AdapterIn(_In):
    name: Identifier = "noop"
    config: dict[str, Any] = Field(
        default_factory=dict, description="the adapter's settings; may hold secrets, never returned"
    )


class AnalysisIn(_In):
    """Omitted values take the server's configured defaults."""

    alpha: Annotated[float, Field(gt=0, lt=0.5)] | None = None
    interval_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    max_duration_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    warmup_s: Seconds | None = None
    on_inconclusive: Literal["hold", "rollback"] | None = None

    def to_domain(self, defaults: AnalysisDefaults) -> AnalysisSettings:
        return AnalysisSettings(
            alpha=self.alpha if self.alpha is not None else defaults.alpha,
            interval_s=self.interval_s if self.interval_s is not None else defaults.interval_s,
            max_duration_s=self.max_duration_s
            if self.max_duration_s is not None
            else defaults.max_duration_s,
            warmup_s=self.warmup_s if self.warmup_s is not None else defaults.warmup_s,
            on_inconclusive=self.on_inconclusive or defaults.on_inconclusive,
        )


_WEIGHT_STRATEGIES = (Strategy.CANARY, Strategy.BLUE_GREEN)


class MarkerIn(_In):
    """The deploy marker CI posts when it starts a deploy."""

    service: Identifier
    environment: Identifier
    version: Identifier
    previous_version: Identifier
    commit: Identifier
    commit_time: Timestamp | None = None
    author: PrintableName = ""
    change_type: ChangeType
    strategy: Strategy
    description: Text = ""
    changes: Annotated[list[Annotated[str, StringConstraints(max_length=2000)]], Field(max_length=1000)] = []
    db_migrations: Annotated[DbMigrationsIn, BeforeValidator(_db_migrations)] = Field(
        default_factory=DbMigrationsIn, description="{applied, description}, or just true / false"
    )
    metrics: MetricsIn = Field(default_factory=MetricsIn)
    adapter: AdapterIn = Field(default_factory=AdapterIn)
    analysis: AnalysisIn = Field(default_factory=AnalysisIn)
    steps: Annotated[list[StepIn], Field(min_length=1, max_length=100)] | None = Field(
        None, description="omitted: the strategy's defaults (canary 10% -> 50% -> 100%)"
    )
    started_at: Timestamp | None = Field(
        None, description="data time of the deploy (default: when it is recorded). " + TIMESTAMP_HELP
    )
    checklist: Annotated[
        dict[Annotated[str, StringConstraints(max_length=100)], bool],
        Field(max_length=50),
        BeforeValidator(_printable_keys),
    ] = Field(
        default_factory=dict,
        description="the pre-deployment checklist as CI answers it: tests_passed, review_approved, "
        "migrations_tested_on_staging, rollback_plan_documented, monitoring_configured, oncall_available",
    )
    fast_track: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] = Field(
        "",
        description="a reason to fast-track a security patch or emergency bug fix past blocking policy "
        "checks; recorded in the timeline",
    )
    links: Annotated[
        dict[
            Annotated[str, StringConstraints(max_length=50)],
            Annotated[str, StringConstraints(max_length=2000)],
        ],
        Field(max_length=20),
        BeforeValidator(_printable_keys),
    ] = Field(default_factory=dict, description='e.g. {"pr": url, "ci_run": url, "issue": url}')

    def check_steps(self) -> None:
        """Weight steps for strategies that move traffic, server steps for rolling."""
        by_weight = self.strategy in _WEIGHT_STRATEGIES
        for i, s in enumerate(self.steps or ()):
            if by_weight and s.weight is None:
                raise ValidationError(
                    f"steps[{i}]: a {self.strategy.value} deploy moves traffic: every step needs "
                    "weight (0-100, percent of traffic), not servers",
                    field=f"steps[{i}].weight",
                )
            if self.strategy is Strategy.ROLLING and s.servers is None:
                raise ValidationError(
                    f'steps[{i}]: a rolling deploy moves servers: every step needs servers (>= 1 or "all"), '
                    "not weight",
                    field=f"steps[{i}].servers",
                )

    def to_domain(self, defaults: AnalysisDefaults) -> Marker:
        self.check_steps()
        return Marker(
            service=self.service,
            environment=self.environment,
            version=self.version,
            previous_version=self.previous_version,
            commit=self.commit,
            strategy=self.strategy,
            change_type=self.change_type,
            author=self.author,
            commit_time=self.commit_time,
            description=self.description,
            changes=tuple(self.changes),
            db_migrations=self.db_migrations.applied,
            db_migrations_description=self.db_migrations.description,
            metrics_source=self.metrics.source,
            metrics_overrides={"overrides": self.metrics.overrides, "custom": self.metrics.custom},
            adapter=AdapterRef(self.adapter.name, dict(self.adapter.config)),
            analysis=self.analysis.to_domain(defaults),
            steps=tuple(s.to_domain() for s in self.steps or ()),
            started_at=self.started_at,
            checklist=dict(self.checklist),
            fast_track=self.fast_track,
            links=dict(self.links),
        )


class OverrideIn(_In):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)] = Field(
        description="why: recorded in the timeline with who did it"
    )


class PromoteIn(OverrideIn):
    full: bool = Field(False, description="jump straight to the last step instead of the next one")


class RollbackIn(OverrideIn):
    force: bool = Field(
        False,
        description="roll back a promoted deploy even though a newer deploy of the service exists (else 409, "
        "naming it: the previous version would go back over the newer one)",
    )


# --- samples ---------------------------------------------------------------------------------------


class HistogramIn(_In):
    bounds: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(
        description="finite bucket upper bounds in seconds, increasing"
    )
    counts: list[Count] = Field(
        description="per-bucket counts (not cumulative), len(bounds) + 1 entries, +Inf bucket last"
    )


class SampleIn(_In):
    """Aggregates of one track over one data-time window [start, end)."""

    track: Track
    start: Timestamp
    end: Timestamp
    requests: Count
    errors: Count = 0
    latency_histogram: HistogramIn | None = None
    latencies: Annotated[
        list[Annotated[float, Field(ge=0, allow_inf_nan=False)]], Field(max_length=100_000)
    ] = []
    gauges: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = {}

    def to_domain(self) -> Sample:
        h = self.latency_histogram
        return Sample(
            track=self.track,
            start=self.start,
            end=self.end,
            requests=self.requests,
            errors=self.errors,
            latency=Histogram(tuple(h.bounds), tuple(h.counts)) if h is not None else None,
            latencies=tuple(self.latencies),
            gauges=dict(self.gauges),
        )


class SamplesIn(_In):
    samples: Annotated[list[SampleIn], Field(min_length=1, max_length=10_000)]


# --- query strings ---------------------------------------------------------------------------------


class ListQuery(_Query):
    service: str | None = None
    environment: str | None = None
    state: DeployState | None = None
    since: Timestamp | None = Field(None, description="created at or after; " + TIMESTAMP_HELP)
    until: Timestamp | None = Field(None, description="created at or before; " + TIMESTAMP_HELP)
    limit: int = Field(50, ge=1, le=500)


class EventsQuery(_Query):
    after: int = Field(0, ge=0, le=INT64_MAX, description="only events with a larger seq (for polling)")


class WaitQuery(_Query):
    timeout: float = Field(
        600, ge=0, allow_inf_nan=False, description="seconds; capped at the server's wait_max_s"
    )
    until: Literal["terminal", "settled"] = Field(
        "terminal",
        description="terminal: until promoted, rolled_back or rollback_failed; settled: until no adapter "
        "action of the deploy is pending or running (actions run in the background)",
    )


# --- responses -------------------------------------------------------------------------------------


class FieldErrorOut(_Out):
    field: str | None
    detail: str


class ErrorOut(_Out):
    error: str = Field(description="machine-readable code, e.g. invalid, not_found, conflict")
    detail: str = Field(description="what went wrong and what would be accepted")
    field: str | None = Field(description="the offending field as a path, e.g. steps[1].weight")
    errors: list[FieldErrorOut] | None = Field(
        None, description="validation errors: every problem found, in order (field and detail are the first)"
    )


class StepOut(_Out):
    weight: float | None = Field(None, exclude_if=lambda v: v is None)
    servers: int | Literal["all"] | None = Field(None, exclude_if=lambda v: v is None)
    min_duration_s: float

    @classmethod
    def of(cls, s: Step) -> StepOut:
        if s.weight is not None:
            return cls(weight=s.weight, min_duration_s=s.min_duration_s)
        return cls(servers=s.servers if s.servers is not None else "all", min_duration_s=s.min_duration_s)


class StepInfo(_Out):
    index: int = Field(description="0-based index of the step in effect; -1 before the first")
    total: int
    description: str | None = Field(description="e.g. '10% of traffic'; null before the first step")
    summary: str = Field(
        description="the step in words, live ('step 1/3: 10% of traffic') or how it ended "
        "('rolled back at step 1/3 (10% of traffic)')"
    )

    @classmethod
    def of(cls, r: Rollout) -> StepInfo:
        return cls(
            index=r.step,
            total=len(r.steps),
            description=r.steps[r.step].describe() if 0 <= r.step < len(r.steps) else None,
            summary=r.step_summary(),
        )


class DbMigrationsOut(_Out):
    applied: bool
    description: str


class AdapterOut(_Out):
    name: str


class AnalysisOut(_Out):
    alpha: float
    interval_s: float
    max_duration_s: float
    warmup_s: float
    on_inconclusive: Literal["hold", "rollback"]


class EvidenceOut(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    metric: str | None = None
    kind: str | None = None
    status: str | None = None
    critical: bool | None = None
    estimate: float | None = None
    ci_low: float | None = Field(None, description="null when unbounded")
    ci_high: float | None = Field(None, description="null when unbounded")
    detail: str | None = None


class VerdictOut(BaseModel):
    """The latest verdict of the judge, with the evidence of every metric."""

    model_config = ConfigDict(extra="allow", frozen=True)

    decision: Literal["fail", "pass", "continue", "inconclusive"] | None = None
    decided_at: float | None = None
    evaluated_at: float | None = None
    summary: str | None = None
    evidence: list[EvidenceOut] = []


class OutlookOut(BaseModel):
    """How long the analysis needs at the observed traffic to rule out the critical change on every
    metric, and what happens if a step's window ends first (``on_inconclusive``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    basis: str = Field(
        description="where the traffic figures come from (the last deploy, or this one so far)"
    )
    total_rps: float
    canary_share: float
    error_rate: float | None
    metric: str | None = Field(description="the metric that needs the longest")
    needs_s: float | None = Field(description="seconds of analysis needed from the canary's first window")
    window_s: float = Field(description="each step's analysis window (max_duration_s)")
    likely_inconclusive: bool
    on_inconclusive: str
    sentence: str


class Links(_Out):
    self: str
    events: str
    wait: str
    page: str = Field(description="the deploy page (HTML)")
    drafts: str = Field(description="drafted documents (post-mortem, plans, checklists)")


class PolicyCheckOut(_Out):
    name: str
    status: Literal["pass", "warn", "block", "overridden", "skipped"]
    detail: str


class PolicyOut(_Out):
    blocked: bool
    fast_tracked: bool
    summary: str
    checks: list[PolicyCheckOut]


class DeployOut(_Out):
    id: str
    service: str
    environment: str
    version: str
    previous_version: str
    commit: str
    commit_time: UnixTime | None
    author: str
    change_type: ChangeType
    strategy: Strategy
    description: str
    changes: list[str]
    db_migrations: DbMigrationsOut
    metrics_source: str
    adapter: AdapterOut
    analysis: AnalysisOut
    steps: list[StepOut]
    state: DeployState
    step: StepInfo
    reason: str = Field(description="why paused or rolled back")
    created_at: UnixTime
    updated_at: UnixTime
    data_time: UnixTime = Field(description="latest data time seen (unix seconds)")
    verdict: VerdictOut | None
    checklist: dict[str, bool]
    fast_track: str
    policy: PolicyOut | None = Field(description="the deploy policy's checks when the marker was recorded")
    outlook: OutlookOut | None = Field(
        description="whether the analysis can decide at the observed traffic: from the deploy's own traffic "
        "while it is analysed, else from the last deploy's traffic at marker time (null: nothing to estimate from)"
    )
    links: Links
    marker_links: dict[str, str]

    @classmethod
    def of(cls, d: Deploy, public_url: str, **extra: Any) -> DeployOut:
        m, r = d.marker, d.rollout
        base = f"{public_url.rstrip('/')}/api/v1/deploys/{d.id}"
        a = m.analysis
        return cls(
            id=d.id,
            service=m.service,
            environment=m.environment,
            version=m.version,
            previous_version=m.previous_version,
            commit=m.commit,
            commit_time=m.commit_time,
            author=m.author,
            change_type=m.change_type,
            strategy=m.strategy,
            description=m.description,
            changes=list(m.changes),
            db_migrations=DbMigrationsOut(applied=m.db_migrations, description=m.db_migrations_description),
            metrics_source=m.metrics_source,
            adapter=AdapterOut(name=m.adapter.name),  # never the config: it may hold secrets
            analysis=AnalysisOut(
                alpha=a.alpha,
                interval_s=a.interval_s,
                max_duration_s=a.max_duration_s,
                warmup_s=a.warmup_s,
                on_inconclusive=a.on_inconclusive,  # type: ignore[arg-type]
            ),
            steps=[StepOut.of(s) for s in r.steps],
            state=d.state,
            step=StepInfo.of(r),
            reason=r.reason,
            created_at=d.created_at,
            updated_at=d.updated_at,
            data_time=d.data_time,
            verdict=VerdictOut.model_validate(d.verdict) if d.verdict is not None else None,
            checklist=dict(m.checklist),
            fast_track=m.fast_track,
            policy=PolicyOut.model_validate(m.policy) if m.policy else None,
            outlook=_outlook(d),
            links=Links(
                self=base,
                events=f"{base}/events",
                wait=f"{base}/wait",
                page=f"{public_url.rstrip('/')}/deploys/{d.id}",
                drafts=f"{base}/drafts",
            ),
            marker_links=dict(m.links),
            **extra,
        )


def _outlook(d: Deploy) -> OutlookOut | None:
    live = (d.verdict or {}).get("outlook") if not d.state.terminal else None
    raw = live or d.marker.outlook
    return OutlookOut.model_validate(raw) if raw else None


class WaitOut(DeployOut):
    terminal: bool = Field(
        description="true when the deploy reached promoted, rolled_back or rollback_failed"
    )
    actions_pending: int = Field(
        0, description="adapter actions of the deploy still pending or running (0: settled)"
    )


class DeployList(_Out):
    deploys: list[DeployOut]


class EventOut(_Out):
    seq: int
    kind: str
    message: str
    data_time: UnixTime | None
    wall_time: UnixTime
    details: dict[str, Any]

    @classmethod
    def of(cls, e: TimelineEvent) -> EventOut:
        return cls(
            seq=e.seq,
            kind=str(e.kind),
            message=e.message,
            data_time=e.data_time,
            wall_time=e.wall_time,
            details=dict(e.details),
        )


class EventList(_Out):
    events: list[EventOut]


class IngestOut(_Out):
    accepted: int = Field(description="new windows stored")
    duplicates: int = Field(description="windows already stored (same track, start and end): ignored")
    deploy: DeployOut


class Health(_Out):
    status: Literal["ok"] = "ok"
