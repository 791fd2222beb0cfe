"""Typed settings, read once: ``guardrail.yaml`` (or ``--config``), then ``GUARDRAIL_*`` environment
overrides (nested keys with ``__``, e.g. ``GUARDRAIL_SERVER__PORT=9090``). Errors name the key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
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


class PrometheusConfig(_Strict):
    """Pulling analysis data from Prometheus (deploys whose marker says ``metrics.source: prometheus``)."""

    url: str | None = None  # unset: no pulling
    timeout_s: float = Field(10, gt=0)  # per HTTP call
    retries: int = Field(3, ge=0, le=10)  # on 5xx, timeouts and connection errors, backoff doubling
    backoff_s: float = Field(0.25, gt=0)
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


class Settings(_Strict):
    database_url: str = "sqlite+aiosqlite:///guardrail.db"
    server: ServerConfig = ServerConfig()
    tokens: list[TokenConfig] = []  # empty: no auth (only for local use; the server warns)
    analysis: AnalysisDefaults = AnalysisDefaults()
    engine: EngineConfig = EngineConfig()
    adapters: dict[str, AdapterPreset] = {}  # deploy adapter presets markers refer to by name
    allow_marker_adapters: bool = False  # let markers configure any adapter themselves (local use only)
    prometheus: PrometheusConfig = PrometheusConfig()  # metric source for deploys that pull
    notifications: NotificationsConfig = NotificationsConfig()  # pages, tickets, announcements
    rules: RulesConfig = RulesConfig()  # in-service alert rules (guardrail.domain.rules)

    @field_validator("database_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not (v.startswith("sqlite+aiosqlite://") or v.startswith("postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return v


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
    "GUARDRAIL_ACTION_KEY",
    "GUARDRAIL_DEPLOY_ID",
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
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"config key {where}: {first['msg']}", field=where) from None
