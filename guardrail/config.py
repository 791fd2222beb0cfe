"""Typed settings, read once: ``guardrail.yaml`` (or ``--config``), then ``GUARDRAIL_*`` environment
overrides (nested keys with ``__``, e.g. ``GUARDRAIL_SERVER__PORT=9090``). Errors name the key."""

from __future__ import annotations

import os
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from guardrail.domain.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenConfig(_Strict):
    name: str  # who: recorded in the audit trail of overrides
    token: SecretStr
    scopes: list[Literal["ci", "operator", "read"]]


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str = "http://127.0.0.1:8080"  # used in links (pages, Slack, GitHub statuses)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    wait_max_s: float = Field(3600, gt=0)  # longest long-poll a client may ask for
    grafana_url: str | None = None  # set: deploy pages link to the guardrail-canary dashboard there
    pages_public: bool = True  # the HTML pages (/deploys) need no token; False: a token as for reads


class AnalysisDefaults(_Strict):
    alpha: float = Field(0.01, gt=0, lt=0.5)
    pass_alpha: float = Field(0.02, gt=0, lt=0.5)
    interval_s: float = Field(60, gt=0)
    max_duration_s: float = Field(1800, gt=0)
    warmup_s: float = Field(0, ge=0)
    min_canary_requests: int = Field(50, ge=0)
    on_inconclusive: Literal["hold", "rollback"] = "hold"
    watch_s: float = Field(1800, ge=0)  # post-deploy watch of blue-green, rolling and all-at-once
    stall_after_s: float = Field(600, gt=0)  # wall seconds without data before "analysis stalled"


class EngineConfig(_Strict):
    rollback_backoff_s: float = Field(2.0, gt=0)  # doubled per failed attempt
    rollback_backoff_max_s: float = Field(60.0, gt=0)
    tick_s: float = Field(5.0, gt=0)  # how often timers (stalls, retries) are checked
    # Several replicas on one PostgreSQL: a replica works on a deploy only while it holds the deploy's
    # row lease (renewed while it works; a dead replica's lease expires after lease_s and another
    # replica takes over). auto: on for PostgreSQL, off for SQLite (one process).
    leases: Literal["auto", "on", "off"] = "auto"
    lease_s: float = Field(15.0, gt=0)
    lease_wait_s: float = Field(30.0, gt=0)  # how long a request waits for another replica to let go
    replica_id: str | None = None  # default: host-pid-random, unique per process


class AdapterPreset(_Strict):
    """A deploy adapter set up by the operator. Markers refer to it by name; a marker may only set
    the keys listed in ``marker_keys`` (so a CI token can never choose a command to run or a URL
    to call)."""

    type: str  # entry-point name: command, webhook, noop, ...
    config: dict[str, Any] = {}
    marker_keys: list[str] = []


class PrometheusQueries(_Strict):
    """Where a service's canary and baseline series are (see guardrail.adapters.sources.prometheus).
    Templates are PromQL; ``$service``, ``$environment``, ``$canary_version`` and
    ``$baseline_version`` are substituted quoted; in ``requests``, ``latency_buckets`` and ``gauges``
    ``$selector`` becomes the selector plus the track matcher (a bare metric name gets it appended),
    ``$track_label`` the track label and ``$interval`` the window (e.g. ``60s``). Unset templates take
    the defaults of ``convention``."""

    convention: Literal["classic", "otel"] = "classic"
    selector: str | None = None  # classic: {service="$service"}; otel: {job="$service"}
    track_label: str = "auto"  # auto: the first of track, guardrail_track, version, service_version with series
    requests: str | None = None  # request counter with a status-code label
    code_label: str | None = None  # classic: code; otel: http_response_status_code
    error_codes: str = "5.."  # RE2 regex over the code label
    latency_buckets: str | None = None  # cumulative `le` buckets in seconds; "" disables latency
    gauges: dict[str, str] = {}  # name -> PromQL with one series per track, e.g. max by ($track_label)(...)
    gap_lookback_s: float = Field(600, gt=0)  # how far back a counter's last value is looked up over a gap


_HEADER_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SET_BY_GUARDRAIL = ("authorization", "content-type", "content-length", "host")


def _check_header_map(headers: dict[str, Any], *, secret: bool) -> None:
    for name, value in headers.items():
        if not name or not set(name) <= _HEADER_TOKEN:
            raise ValueError(f"{name!r} is not a valid HTTP header name")
        if name.lower() in _SET_BY_GUARDRAIL:
            raise ValueError(
                f"header {name} is set by guardrail (use bearer_token or basic_auth for Authorization)"
            )
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if any(c in text for c in "\r\n\0"):
            raise ValueError(f"the value of {name} {'' if secret else repr(text) + ' '}contains a line break or NUL")


class PrometheusBasicAuth(_Strict):
    """HTTP basic auth (Prometheus' ``--web.config.file`` ``basic_auth_users``, or a proxy)."""

    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: str | None = None  # read at each request (a mounted secret may rotate)

    @model_validator(mode="after")
    def _one_password(self) -> PrometheusBasicAuth:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("set exactly one of password or password_file")
        return self


class PrometheusConfig(_Strict):
    """Pulling analysis data from Prometheus (deploys whose marker says ``metrics.source: prometheus``).

    Behind auth: ``bearer_token`` (or ``bearer_token_file``, read at each request) or ``basic_auth``;
    ``headers`` for plain ones such as ``X-Scope-OrgID`` (Mimir, Cortex, Thanos tenants) and
    ``secret_headers`` for credentials in other headers; ``ca_file`` to verify the server,
    ``cert_file`` + ``key_file`` for a client certificate. Secrets are never shown."""

    url: str | None = None  # unset: no pulling
    timeout_s: float = Field(10, gt=0)  # per HTTP call
    retries: int = Field(3, ge=0, le=10)  # on 429, 5xx, timeouts and connection errors
    backoff_s: float = Field(0.25, gt=0)  # capped exponential backoff with jitter
    backoff_max_s: float = Field(5.0, gt=0)
    deadline_s: float = Field(60.0, gt=0)  # one query with its retries and waits (Retry-After)
    bearer_token: SecretStr | None = None
    bearer_token_file: str | None = None
    basic_auth: PrometheusBasicAuth | None = None
    headers: dict[str, str] = {}  # e.g. {X-Scope-OrgID: tenant-a}
    secret_headers: dict[str, SecretStr] = {}  # headers whose values are credentials
    ca_file: str | None = None  # PEM CA bundle to verify an https:// url (default: system CAs)
    cert_file: str | None = None  # client certificate (PEM), with key_file
    key_file: str | None = None
    insecure_skip_verify: bool = False  # do not verify the server's certificate (tests only)
    method: Literal["auto", "GET", "POST"] = "auto"  # auto: POST for long queries
    scrape_delay_s: float = Field(15, ge=0)  # a window is pulled once now - scrape_delay_s is past its end
    history_s: float = Field(600, ge=0)  # pre-deploy baseline history pulled before marker.started_at
    poll_s: float = Field(1.0, gt=0)  # how often the poller looks for complete windows
    queries: PrometheusQueries = PrometheusQueries()
    services: dict[str, PrometheusQueries] = {}  # per-service templates, instead of ``queries``

    @field_validator("url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. http://127.0.0.1:9090")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        _check_header_map(v, secret=False)
        return v

    @field_validator("secret_headers")
    @classmethod
    def _secret_headers(cls, v: dict[str, SecretStr]) -> dict[str, SecretStr]:
        _check_header_map(v, secret=True)
        return v

    @model_validator(mode="after")
    def _auth(self) -> PrometheusConfig:
        def fail(key: str, why: str) -> None:
            raise ValueError(f"prometheus.{key}: {why}")

        if self.bearer_token is not None and self.bearer_token_file is not None:
            fail("bearer_token_file", "set bearer_token or bearer_token_file, not both")
        if self.basic_auth is not None and (self.bearer_token is not None or self.bearer_token_file):
            fail("bearer_token", "set a bearer token or basic_auth, not both (both use Authorization)")
        both = {h.lower() for h in self.headers} & {h.lower() for h in self.secret_headers}
        if both:
            fail("secret_headers", f"header(s) {', '.join(sorted(both))} also set in headers")
        if (self.cert_file is None) != (self.key_file is None):
            fail("key_file", "a client certificate needs both cert_file and key_file")
        https = (self.url or "").startswith("https://")
        for key in ("ca_file", "cert_file", "insecure_skip_verify"):
            if getattr(self, key) and self.url is not None and not https:
                fail(key, "applies to an https:// url only")
        if self.ca_file and self.insecure_skip_verify:
            fail("insecure_skip_verify", "set ca_file or insecure_skip_verify, not both")
        if self.backoff_max_s < self.backoff_s:
            fail("backoff_max_s", f"must be at least backoff_s ({self.backoff_s})")
        return self


class NotifierPreset(_Strict):
    """A notifier set up by the operator; routes refer to it by its name in ``notifiers``."""

    type: str  # entry-point name: alertmanager, pagerduty, slack, webhook
    config: dict[str, Any] = {}  # the notifier's settings (secrets: routing_key, url of slack, secret)


class NotificationRoute(_Strict):
    severity: Literal["page", "ticket", "info"]
    notifiers: list[str]  # names in notifications.notifiers


class NotificationsConfig(_Strict):
    """Who is told what: notifiers by name, routes by severity, and the outbox dispatcher. A page is
    retried until delivered (backoff doubling from backoff_s up to backoff_max_s); a non-retryable
    answer (a 4xx other than 429) marks it failed."""

    notifiers: dict[str, NotifierPreset] = {}
    routes: list[NotificationRoute] = []
    poll_s: float = Field(5.0, gt=0)  # longest sleep between looks at the outbox
    backoff_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    lease_s: float = Field(120.0, gt=0)  # a claimed notification is sent again after this if its sender died
    batch: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> NotificationsConfig:
        for i, route in enumerate(self.routes):
            for name in route.notifiers:
                if name not in self.notifiers:
                    known = ", ".join(sorted(self.notifiers)) or "none"
                    raise ValueError(
                        f"routes[{i}] ({route.severity}) names notifier {name!r}, which is not under "
                        f"notifications.notifiers (configured: {known})"
                    )
        if self.backoff_max_s < self.backoff_s:
            raise ValueError(f"backoff_max_s ({self.backoff_max_s}) is below backoff_s ({self.backoff_s})")
        return self


class RuleOverride(_Strict):
    """One in-service alert rule's settings (see guardrail.domain.rules); unset keys keep the default."""

    enabled: bool = True
    severity: Literal["page", "ticket"] | None = None
    threshold: float | None = Field(None, allow_inf_nan=False)
    for_s: float | None = Field(None, ge=0)
    window_s: float | None = Field(None, gt=0)  # rate window, gauge staleness, or memory lookback
    tracks: list[Literal["canary", "baseline"]] | None = None
    gauges: list[str] | None = None  # names in the samples' gauges, per rule kind
    quantile: float | None = Field(None, gt=0, lt=1)  # HighLatencyP99
    horizon_s: float | None = Field(None, gt=0)  # MemoryLeakSuspected: how far ahead to project
    min_requests: int | None = Field(None, ge=0)  # fewer requests in the window count as no data
    fails_deploy: bool | None = None  # unset: page rules fail the deploy, ticket rules only notify


class RulesConfig(_Strict):
    """The lesson's alert rules, evaluated by guardrail on each deploy's samples during its canary
    steps and its post-promotion watch. ``overrides`` by rule name: HighErrorRate, HighLatencyP99,
    DBConnectionPoolExhausted, DiskSpaceLow, MemoryLeakSuspected."""

    enabled: bool = True
    # one point every interval of data time, like Prometheus's evaluation_interval (default 1m): keep
    # the two equal for the in-service rules to fire and resolve when Prometheus's do
    evaluation_interval_s: float = Field(60, gt=0)
    watch_s: float = Field(1800, ge=0)  # after promotion: rules keep running, Alertmanager alerts still count
    fails_deploy: bool = True  # False: firing rules only notify, never roll a canary back
    overrides: dict[str, RuleOverride] = {}

    @field_validator("overrides")
    @classmethod
    def _valid(cls, v: dict[str, RuleOverride]) -> dict[str, RuleOverride]:
        # lazy imports: keep `import guardrail.config` light
        from guardrail.domain.errors import ValidationError as RuleError
        from guardrail.domain.rules import configure_rules, default_rules

        known = [r.name for r in default_rules()]
        for name in v:
            if name not in known:
                raise ValueError(f"no rule named {name!r}; known: {', '.join(known)}")
        try:
            configure_rules({name: o.model_dump(exclude_none=True) for name, o in v.items()})
        except RuleError as e:  # e.g. the wrong number of gauge names for a rule
            raise ValueError(e.detail) from None
        return v

    def specs(self) -> tuple[Any, ...]:
        """The ``RuleSpec``s to evaluate (empty when disabled)."""
        from guardrail.domain.rules import configure_rules

        if not self.enabled:
            return ()
        return configure_rules(
            {name: o.model_dump(exclude_none=True) for name, o in self.overrides.items()},
            fails_deploy=self.fails_deploy,
        )


class DoraConfig(_Strict):
    """DORA key metrics (guardrail.domain.dora): the trailing window the Prometheus gauges cover and
    how often they are recomputed from the database."""

    window_days: float = Field(30, gt=0, le=366)
    refresh_s: float = Field(300, gt=0)


class GrafanaAnnotationsConfig(_Strict):
    """Deploy markers as Grafana annotations (``POST /api/annotations``, a service-account token)."""

    url: str  # e.g. https://grafana.example.com
    token: SecretStr | None = None  # a service-account token; or token_env
    token_env: str | None = None  # name of the environment variable holding the token
    dashboard_uid: str | None = None  # unset: an org-wide annotation, shown through a tag query
    tags: list[str] = []  # added to ["deploy", service, version, environment]
    timeout_s: float = Field(5, gt=0)  # per HTTP call

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. https://grafana.example.com")
        return v

    @model_validator(mode="after")
    def _one_token(self) -> GrafanaAnnotationsConfig:
        if (self.token is None) == (self.token_env is None):
            raise ValueError("set exactly one of token and token_env")
        return self


class HoneycombAnnotationsConfig(_Strict):
    """Deploy markers in Honeycomb (``POST {api_url}/1/markers/{dataset}``), sent when a deploy ends."""

    api_url: str = "https://api.honeycomb.io"
    dataset: str = Field(min_length=1)  # a dataset slug, or __all__ for an environment-wide marker
    api_key: SecretStr | None = None  # or api_key_env
    api_key_env: str | None = None
    timeout_s: float = Field(5, gt=0)

    @field_validator("api_url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. https://api.honeycomb.io")
        return v

    @model_validator(mode="after")
    def _one_key(self) -> HoneycombAnnotationsConfig:
        if (self.api_key is None) == (self.api_key_env is None):
            raise ValueError("set exactly one of api_key and api_key_env")
        return self


class AnnotationsConfig(_Strict):
    """Deploy markers fanned out to Grafana and Honeycomb, in the background with bounded retries
    (backoff doubling from backoff_s up to backoff_max_s); a rollback never waits on them."""

    grafana: GrafanaAnnotationsConfig | None = None
    honeycomb: HoneycombAnnotationsConfig | None = None
    retries: int = Field(4, ge=0, le=10)  # after the first attempt, on 429, 5xx, timeouts, refused connections
    backoff_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _action_text(value: Any) -> Any:
    if value is False:  # YAML 1.1 reads an unquoted off as false
        return "off"
    if value is True:
        raise ValueError("got true: write the action as off, warn or block")
    return value


_PolicyAction = Annotated[Literal["off", "warn", "block"], BeforeValidator(_action_text)]
_ChangeTypeName = Literal["feature", "bugfix", "infrastructure", "security"]
_WINDOW_CHECKS = ("freeze", "friday_afternoon", "peak_hours", "team_hours")
_CHECKLIST_ITEMS = (
    "tests_passed",
    "review_approved",
    "migrations_tested_on_staging",
    "rollback_plan_documented",
    "rollback_configured",
    "monitoring_configured",
    "oncall_available",
)


def _clock_seconds(value: str, *, end: bool = False) -> int:
    """``HH:MM`` or ``HH:MM:SS`` -> seconds after midnight (``24:00`` only as an end)."""
    parts = value.split(":")
    widths_ok = 2 <= len(parts) <= 3 and len(parts[0]) in (1, 2) and all(len(p) == 2 for p in parts[1:])
    ok = widths_ok and all(p.isascii() and p.isdigit() for p in parts)
    nums = [int(p) for p in parts] if ok else []
    if ok and nums[0] == 24 and end and all(n == 0 for n in nums[1:]):
        return 86_400
    if not ok or nums[0] > 23 or any(n > 59 for n in nums[1:]):
        upper = "23:59, or 24:00 as an end" if end else "23:59"
        raise ValueError(f"{value!r} is not a time of day; write HH:MM from 00:00 to {upper}, e.g. \"12:00\"")
    return nums[0] * 3600 + nums[1] * 60 + (nums[2] if len(nums) == 3 else 0)


def _time_text(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):  # YAML 1.1 reads 12:00 as 720
        raise ValueError(
            f"got the number {value}: write the time in quotes, e.g. \"12:00\" (unquoted, YAML reads 12:00 as 720)"
        )
    return value


def _clock_field(value: str, info: ValidationInfo) -> str:
    _clock_seconds(value, end=info.field_name == "end")
    return value


def _zone_name(value: str) -> str:
    from guardrail.domain.policy import zone_or_error  # lazy: keep `import guardrail.config` light

    zone_or_error(value)
    return value


def _known_keys(value: Any, known: tuple[str, ...], what: str) -> Any:
    if isinstance(value, dict):
        unknown = [k for k in value if k not in known]
        if unknown:
            raise ValueError(f"unknown {what} {unknown[0]!r}; known: {', '.join(known)}")
    return value


def _check_hours(days: list[str], start: str, end: str) -> None:
    if not days:
        raise ValueError(f"days is empty; list some of {', '.join(_DAYS)}")
    if _clock_seconds(start) == _clock_seconds(end, end=True) % 86_400:
        raise ValueError(f"start and end are the same time ({start}): the range would be empty or a whole day")


def _weekly(days: list[str], start: str, end: str, zone: str) -> Any:
    from guardrail.domain.policy import WeeklyRange, zone_or_error

    return WeeklyRange(
        zone=zone_or_error(zone),
        days=frozenset(_DAYS.index(d) for d in days),
        start_s=_clock_seconds(start),
        end_s=_clock_seconds(end, end=True) % 86_400,
    )


class PolicyTeam(_Strict):
    """A team or on-call rotation, with its working hours in its own time zone."""

    name: str
    zone: str
    days: list[_Day] = ["mon", "tue", "wed", "thu", "fri"]
    start: str = "09:00"
    end: str = "18:00"

    _zone = field_validator("zone")(_zone_name)
    _times = field_validator("start", "end", mode="before")(_time_text)
    _clock = field_validator("start", "end")(_clock_field)

    @model_validator(mode="after")
    def _range(self) -> PolicyTeam:
        _check_hours(self.days, self.start, self.end)
        return self


class PolicyPeakHours(_Strict):
    """Peak traffic: local times on some weekdays, in ``zone``."""

    name: str = "peak hours"
    zone: str
    days: list[_Day] = ["mon", "tue", "wed", "thu", "fri"]
    start: str
    end: str

    _zone = field_validator("zone")(_zone_name)
    _times = field_validator("start", "end", mode="before")(_time_text)
    _clock = field_validator("start", "end")(_clock_field)

    @model_validator(mode="after")
    def _range(self) -> PolicyPeakHours:
        _check_hours(self.days, self.start, self.end)
        return self


class PolicyFreeze(_Strict):
    """No deploys from ``start`` (inclusive) until ``end`` (exclusive). ISO datetimes with an offset
    (2024-12-20T00:00:00+01:00), or without one (or a bare date) when ``zone`` is set."""

    start: datetime
    end: datetime
    reason: str
    zone: str | None = None

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        return v if v is None else _zone_name(v)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _dates(cls, v: Any) -> Any:
        if isinstance(v, date) and not isinstance(v, datetime):  # a bare YAML date: midnight
            return datetime(v.year, v.month, v.day)
        return v

    def _aware(self, key: str) -> datetime:
        from guardrail.domain.policy import zone_or_error

        value: datetime = getattr(self, key)
        if value.tzinfo is not None:
            return value
        if self.zone is None:
            raise ValueError(
                f"{key} {value.isoformat()} has no UTC offset; add one (e.g. {value.isoformat()}+01:00) "
                "or set zone (e.g. zone: Europe/Berlin)"
            )
        return value.replace(tzinfo=zone_or_error(self.zone))

    @model_validator(mode="after")
    def _order(self) -> PolicyFreeze:
        start, end = self._aware("start"), self._aware("end")
        if end <= start:
            raise ValueError(f"end ({end.isoformat()}) must be after start ({start.isoformat()})")
        if not self.reason.strip():
            raise ValueError("reason is empty: say why deploys are frozen (it is shown on blocked deploys)")
        return self


class PolicyWindowActions(_Strict):
    """What a deploy inside a window gets: off (not checked), warn or block."""

    freeze: _PolicyAction = "warn"
    friday_afternoon: _PolicyAction = "warn"
    peak_hours: _PolicyAction = "warn"
    team_hours: _PolicyAction = "warn"

    @model_validator(mode="before")
    @classmethod
    def _known(cls, v: Any) -> Any:
        return _known_keys(v, _WINDOW_CHECKS, "window check")


class PolicyChecklist(_Strict):
    """What a missing or false checklist answer gets: off (not checked), warn or block."""

    tests_passed: _PolicyAction = "warn"
    review_approved: _PolicyAction = "warn"
    migrations_tested_on_staging: _PolicyAction = "warn"  # only for markers with db_migrations
    rollback_plan_documented: _PolicyAction = "warn"
    rollback_configured: _PolicyAction = "warn"  # verified by guardrail: the adapter is not noop
    monitoring_configured: _PolicyAction = "warn"  # verified by guardrail: a metric source exists
    oncall_available: _PolicyAction = "warn"

    @model_validator(mode="before")
    @classmethod
    def _known(cls, v: Any) -> Any:
        return _known_keys(v, _CHECKLIST_ITEMS, "checklist item")


class PolicyRuleConfig(_Strict):
    """Actions for some environments and change types; unset checks keep what less specific rules say."""

    environments: list[str] = ["*"]  # shell-style globs: production, prod*, *
    change_types: list[_ChangeTypeName] = []  # empty: every change type
    actions: dict[str, _PolicyAction] = {}  # window check -> action
    checklist: dict[str, _PolicyAction] = {}  # checklist item -> action

    @field_validator("actions", mode="before")
    @classmethod
    def _windows(cls, v: Any) -> Any:
        return _known_keys(v, _WINDOW_CHECKS, "window check")

    @field_validator("checklist", mode="before")
    @classmethod
    def _items(cls, v: Any) -> Any:
        return _known_keys(v, _CHECKLIST_ITEMS, "checklist item")

    @field_validator("environments")
    @classmethod
    def _globs(cls, v: list[str]) -> list[str]:
        if not v or any(not g.strip() for g in v):
            raise ValueError("list environment names or globs, e.g. [production] or [\"prod*\"] (\"*\": all)")
        return v


class PolicyConfig(_Strict):
    """Deploy policy checked when a marker is recorded (guardrail.domain.policy): deployment windows
    and the pre-deployment checklist. ``actions`` and ``checklist`` apply to ``environments``;
    ``rules`` refine them per environment and change type (more specific wins, then the later)."""

    enabled: bool = True
    environments: list[str] = ["prod*"]
    zone: str = "UTC"  # Friday afternoon is judged here when no teams are listed
    friday_afternoon_start: str = "12:00"
    fast_track_change_types: list[_ChangeTypeName] = ["security", "bugfix"]
    actions: PolicyWindowActions = PolicyWindowActions()
    checklist: PolicyChecklist = PolicyChecklist()
    teams: list[PolicyTeam] = []
    peak_hours: list[PolicyPeakHours] = []
    freezes: list[PolicyFreeze] = []
    rules: list[PolicyRuleConfig] = []

    _zone = field_validator("zone")(_zone_name)
    _start_text = field_validator("friday_afternoon_start", mode="before")(_time_text)

    @field_validator("friday_afternoon_start")
    @classmethod
    def _start(cls, v: str) -> str:
        _clock_seconds(v)
        return v

    def to_policy(self) -> Any:
        """The domain :class:`guardrail.domain.policy.Policy` these settings describe."""
        from guardrail.domain.model import ChangeType
        from guardrail.domain.policy import Freeze, PeakHours, Policy, PolicyRule, Team, zone_or_error

        def hours(h: PolicyTeam | PolicyPeakHours) -> Any:
            return _weekly(h.days, h.start, h.end, h.zone)

        return Policy(
            enabled=self.enabled,
            environments=tuple(self.environments),
            base={**self.actions.model_dump(), **self.checklist.model_dump()},
            rules=tuple(
                PolicyRule(
                    actions={**r.actions, **r.checklist},
                    environments=tuple(r.environments),
                    change_types=frozenset(ChangeType(t) for t in r.change_types),
                )
                for r in self.rules
            ),
            zone=zone_or_error(self.zone),
            friday_start_s=_clock_seconds(self.friday_afternoon_start),
            teams=tuple(Team(t.name, hours(t)) for t in self.teams),
            peak_hours=tuple(PeakHours(p.name, hours(p)) for p in self.peak_hours),
            freezes=tuple(
                Freeze(
                    start=f._aware("start").timestamp(),
                    end=f._aware("end").timestamp(),
                    reason=f.reason,
                    zone=zone_or_error(f.zone) if f.zone else f._aware("start").tzinfo,  # type: ignore[arg-type]
                )
                for f in self.freezes
            ),
            fast_track_change_types=frozenset(ChangeType(t) for t in self.fast_track_change_types),
        )


class LLMConfig(_Strict):
    """Drafting documents with an LLM (guardrail.adapters.llm) through any OpenAI-compatible API.
    Off by default: drafts are then rendered offline. The API key is never in this file: it is read
    at start-up from the environment variable named by ``api_key_env``."""

    enabled: bool = False
    base_url: str | None = None  # unset: the openai client's default (https://api.openai.com/v1)
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(30, gt=0)  # per request
    max_retries: int = Field(1, ge=0, le=10)  # on connection errors, 408, 409, 429 and 5xx
    temperature: float = Field(0, ge=0, le=2)
    redact_fields: list[str] = []  # field names whose values are never sent (any depth), e.g. author
    max_facts_chars: int = Field(60_000, ge=1000)  # cap on the facts JSON sent; long lists are thinned

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError(
                "must be an http:// or https:// URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1"
            )
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a model, e.g. gpt-4o-mini")
        return v

    @field_validator("api_key_env")
    @classmethod
    def _key_env(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c == "_" for c in v) or v[0].isdigit():
            raise ValueError(f"must be an environment variable name like OPENAI_API_KEY, got {v!r}")
        return v

    def api_key(self, env: dict[str, str] | None = None) -> str:
        """The API key from the environment (``os.environ`` when ``env`` is None). Raises
        :class:`ConfigError` naming the variable when it is unset or empty."""
        value = (os.environ if env is None else env).get(self.api_key_env, "")
        if not value.strip():
            raise ConfigError(
                f"llm.enabled is true but the environment variable {self.api_key_env} (llm.api_key_env) "
                "is not set: set it to the provider's API key (a local OpenAI-compatible server accepts "
                "any non-empty value), or set llm.enabled to false",
                field="llm.api_key_env",
            )
        return value


# --- database URLs: the one place their spellings are normalised ------------------------------------

_DB_SCHEMES = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}
DATABASE_URL_EXAMPLES = (
    "sqlite+aiosqlite:// or postgresql+asyncpg:// (sqlite://, postgresql:// and postgres:// are read as "
    "those), e.g. sqlite+aiosqlite:///path/to/guardrail.db or postgresql+asyncpg://user:password@host:5432/dbname"
)


def normalize_database_url(url: str) -> str:
    """The spelling guardrail uses everywhere: ``postgresql://`` and ``postgres://`` become
    ``postgresql+asyncpg://``, ``sqlite://`` becomes ``sqlite+aiosqlite://``. Raises
    :class:`ConfigError` (field ``database_url``) for anything else."""
    scheme, sep, rest = url.strip().partition("://")
    target = _DB_SCHEMES.get(scheme.lower()) if sep else None
    if target is None:
        shown = f"scheme {scheme!r}" if sep else "a URL without a scheme"
        raise ConfigError(
            f"database_url: {shown} is not supported; expected {DATABASE_URL_EXAMPLES}", field="database_url"
        )
    return f"{target}://{rest}"


def describe_database_url(url: str) -> str:
    """``url`` normalised, safe to print: the password replaced by ``***`` and a relative SQLite path
    made absolute (so a reader knows which file is meant)."""
    url = normalize_database_url(url)
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite+aiosqlite":
        path, q, query = rest.removeprefix("/").partition("?")
        if path and path != ":memory:":
            path = str(Path(path).resolve())
        return f"{scheme}:///{path}{q}{query}" if path else f"{scheme}://{rest}"
    netloc, slash, tail = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return f"{scheme}://{netloc}{slash}{tail}"


class Settings(_Strict):
    database_url: str = "sqlite+aiosqlite:///guardrail.db"
    server: ServerConfig = ServerConfig()
    tokens: list[TokenConfig] = []  # empty: serve refuses to start unless given --insecure-no-auth
    analysis: AnalysisDefaults = AnalysisDefaults()
    engine: EngineConfig = EngineConfig()
    adapters: dict[str, AdapterPreset] = {}  # deploy adapter presets markers refer to by name
    allow_marker_adapters: bool = False  # let markers configure any adapter themselves (local use only)
    prometheus: PrometheusConfig = PrometheusConfig()  # metric source for deploys that pull
    notifications: NotificationsConfig = NotificationsConfig()  # pages, tickets, announcements
    rules: RulesConfig = RulesConfig()  # in-service alert rules (guardrail.domain.rules)
    policy: PolicyConfig = PolicyConfig()  # deploy windows and the pre-deployment checklist
    dora: DoraConfig = DoraConfig()  # DORA key metrics (GET /api/v1/dora, guardrail_dora_* gauges)
    annotations: AnnotationsConfig = AnnotationsConfig()  # deploy markers in Grafana and Honeycomb
    llm: LLMConfig = LLMConfig()  # drafting documents with an LLM (off: offline templates)

    @field_validator("database_url")
    @classmethod
    def _url(cls, v: str) -> str:
        try:
            return normalize_database_url(v)
        except ConfigError as e:
            raise ValueError(e.detail.removeprefix("database_url: ")) from None


class ConfigProblems(ConfigError):
    """Every problem found in the configuration at once: ``problems`` holds ``(config path,
    message)`` pairs; ``field`` is the first path. One problem reads as before, several one a line."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        assert problems, "ConfigProblems needs at least one problem"
        text = (
            problems[0][1]
            if len(problems) == 1
            else f"{len(problems)} configuration problems:\n" + "\n".join(f"  - {m}" for _, m in problems)
        )
        super().__init__(text, field=problems[0][0])
        self.problems = problems


def _set_path(d: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        d = d.setdefault(key, {})
        if not isinstance(d, dict):
            raise ConfigError(f"cannot set {'.'.join(path)}: {key} is not a mapping", field=".".join(path))
    d[path[-1]] = value


# GUARDRAIL_* variables that are not settings: the CLI client's (a shell that exports them for
# `guardrail mark` must still be able to run `guardrail serve`), the demo's, and the ones the command
# adapter sets for its scripts.
NOT_SETTINGS = frozenset({
    "GUARDRAIL_CONFIG",
    "GUARDRAIL_URL",
    "GUARDRAIL_TOKEN",
    "GUARDRAIL_DEMO_DIR",
    # the command adapter's deploy variables (guardrail.adapters.deploy.command.DEPLOY_ENV)
    "GUARDRAIL_ACTION",
    "GUARDRAIL_ACTION_KEY",
    "GUARDRAIL_DEPLOY_ID",
    "GUARDRAIL_SERVICE",
    "GUARDRAIL_ENVIRONMENT",
    "GUARDRAIL_VERSION",
    "GUARDRAIL_PREVIOUS_VERSION",
    "GUARDRAIL_COMMIT",
    "GUARDRAIL_WEIGHT",
    "GUARDRAIL_SERVERS",
    "GUARDRAIL_STEP",
    "GUARDRAIL_TOTAL_STEPS",
    "GUARDRAIL_REASON",
})


def load_settings(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read the YAML file (if any) and apply GUARDRAIL_* overrides (values parsed as YAML scalars)."""
    env = dict(os.environ if env is None else env)
    data: dict[str, Any] = {}
    file = path or env.get("GUARDRAIL_CONFIG")
    if file:
        p = Path(file)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist", field="config")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}", field="config") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level", field="config")
        data = loaded
    for key, raw in env.items():
        if (
            not key.startswith("GUARDRAIL_")
            or key in NOT_SETTINGS
            or key.startswith("GUARDRAIL_TEST_")
        ):
            continue
        if key.startswith("GUARDRAIL_REQUIRE_"):
            continue
        parts = key[len("GUARDRAIL_") :].lower().split("__")
        try:
            value = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            value = raw
        _set_path(data, parts, value)
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"])
            problems.append((where, f"config key {where}: {err['msg']}"))
        raise ConfigProblems(problems) from None
