"""Pull per-window canary and baseline aggregates from Prometheus (``MetricSource``).

What is queried
---------------
Raw counters, per series, at the window boundaries: ``query_range`` of the request counter and of
the cumulative latency buckets with ``step = interval_s`` from ``start`` to the last complete
window end, each wrapped in ``last_over_time(...[interval])``: the value at a boundary is the last
sample actually scraped in the window before it, so a boundary without a fresh scrape (target
down, Prometheus down) has no point, where Prometheus' 5-minute lookback would repeat an old value
and read as "zero requests". Each series is differenced point to point; a decrease is a counter
reset (the process restarted), and then the new value is the increase. A window whose start
boundary has no point gets nothing from that series (when in the gap its requests happened is
unknown; counting them all in one window would make a spike on one track and not the other),
unless the series was never seen before (not earlier in the range, nor in ``gap_lookback_s``
before it: one instant ``last_over_time`` query when needed): a new process counts from zero.
Increases are summed per track: requests, errors (status code matching ``error_codes``, default ``5..``) and per-bucket
latency counts (cumulative ``le`` buckets differenced, +Inf last). Gauges are evaluated at each
window end. No Prometheus-side ``rate``, ``increase`` or ``histogram_quantile``: the judge needs
counts, not extrapolated ratios. The ``requests`` and ``latency_buckets`` templates must therefore
be series selectors, and ``interval_s`` should be at least the scrape interval. As with
Prometheus' own ``increase``, a reset is only seen as a decrease: a process that restarts between
two boundaries loses what it counted after the first one and before its last scrape.

A window in which no request series of a track has a point yields no sample for that track: no
data is not zero (a stopped target or a stopped Prometheus stays visible as a hole).

Conventions (``PrometheusQueries.convention``)
----------------------------------------------
- ``classic``: ``http_requests_total{code}`` and ``http_request_duration_seconds_bucket``,
  selector ``{service="$service"}``.
- ``otel``: what OpenTelemetry exporters produce, ``http_server_request_duration_seconds_count``
  (requests) and ``_bucket`` with ``http_response_status_code``, selector ``{job="$service"}``.

The track comes from a label: ``track_label: track`` (values ``canary``/``baseline``) or a label
holding versions (named ``version`` or ``*_version``: canary = the deploy's version, baseline = the
previous one). ``auto`` (default) takes the first of ``track``, ``guardrail_track``, ``version``,
``service_version`` that has series, and remembers it per service.

Per-deploy overrides: ``SourceQuery.overrides["prometheus"]`` with any ``PrometheusQueries`` key,
e.g. ``{"prometheus": {"selector": "{job=\\"checkout\\", env=\\"$environment\\"}", "track_label": "version"}}``.

HTTP
----
Every call goes through the outbound seam (:mod:`guardrail.adapters.outbound`) with a timeout
(``timeout_s``, also sent as Prometheus' own ``timeout``). Connection errors, timeouts, 429 and 5xx
are retried ``retries`` times (capped exponential backoff with jitter, ``Retry-After`` honoured,
all within ``deadline_s``), then raise ``SourceUnavailableError``; 400 and 422 (a bad query) raise
``ValidationError`` naming the query and Prometheus' error, at once; 401 and 403 name the auth
settings. Queries longer than 1500 characters go by POST (form-encoded); ``method: POST`` sends
every query that way. Long ranges are split to stay under Prometheus' 11,000 points per series.

Auth (:class:`PrometheusAuth`, from the ``prometheus`` settings): a bearer token (inline or read
from a file at each request), basic auth, extra headers (``X-Scope-OrgID`` for a Mimir / Cortex /
Thanos tenant; ``secret_headers`` for credentials), a CA file and a client certificate. Every
secret (the token, the password, ``user:password`` in base64, secret header values) is redacted
from errors and logs.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import ssl
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pydantic

from guardrail.adapters.outbound import Outbound, RetryPolicy
from guardrail.config import PrometheusQueries
from guardrail.domain.errors import SourceUnavailableError, ValidationError
from guardrail.domain.model import Histogram, Sample, Track
from guardrail.ports import SourceQuery
from guardrail.retry import Backoff
from guardrail.secrets import redact_text

log = logging.getLogger("guardrail.sources.prometheus")

POST_ABOVE_CHARS = 1500
MAX_POINTS = 10_000  # per series and query_range call (Prometheus refuses more than 11,000)
AUTO_TRACK_LABELS = ("track", "guardrail_track", "version", "service_version")

CONVENTIONS: dict[str, dict[str, str]] = {
    "classic": {
        "selector": '{service="$service"}',
        "requests": "http_requests_total",
        "code_label": "code",
        "latency_buckets": "http_request_duration_seconds_bucket",
    },
    "otel": {
        "selector": '{job="$service"}',
        "requests": "http_server_request_duration_seconds_count",
        "code_label": "http_response_status_code",
        "latency_buckets": "http_server_request_duration_seconds_bucket",
    },
}

SeriesKey = tuple[tuple[str, str], ...]


def promql_string(value: str) -> str:
    """A PromQL double-quoted string literal of ``value``."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _num(t: float) -> str:
    return f"{t:.3f}"


def holds_versions(label: str) -> bool:
    return label == "version" or label.endswith("_version")


@dataclass(frozen=True, slots=True)
class ResolvedQueries:
    """One deploy's templates, defaults of the convention filled in."""

    selector: str
    track_label: str  # "auto" or a label name
    requests: str
    code_label: str
    error_codes: re.Pattern[str]
    latency_buckets: str | None
    gauges: Mapping[str, str]
    gap_lookback_s: float

    @classmethod
    def of(cls, q: PrometheusQueries) -> ResolvedQueries:
        d = CONVENTIONS[q.convention]
        try:
            errors = re.compile(q.error_codes)
        except re.error as e:
            raise ValidationError(
                f"prometheus.queries.error_codes {q.error_codes!r} is not a regular expression: {e}",
                field="prometheus.queries.error_codes",
            ) from None
        buckets = d["latency_buckets"] if q.latency_buckets is None else q.latency_buckets
        return cls(
            selector=q.selector if q.selector is not None else d["selector"],
            track_label=q.track_label,
            requests=q.requests or d["requests"],
            code_label=q.code_label or d["code_label"],
            error_codes=errors,
            latency_buckets=buckets or None,
            gauges=dict(q.gauges),
            gap_lookback_s=q.gap_lookback_s,
        )


@dataclass(slots=True)
class _Windows:
    """Per-track sums over the windows of one fetch."""

    requests: dict[tuple[Track, int], float] = field(default_factory=lambda: defaultdict(float))
    errors: dict[tuple[Track, int], float] = field(default_factory=lambda: defaultdict(float))
    buckets: dict[tuple[Track, int], dict[float, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )
    gauges: dict[tuple[Track, int], dict[str, float]] = field(default_factory=lambda: defaultdict(dict))


@dataclass(frozen=True, slots=True)
class PrometheusAuth:
    """How to get past what guards Prometheus. Files are read at each request (mounted secrets
    rotate); the TLS context is built once, at construction, so a bad file fails at start-up."""

    bearer_token: str | None = field(default=None, repr=False)
    bearer_token_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    secret_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False

    @classmethod
    def of(cls, cfg: Any) -> PrometheusAuth:
        """From ``guardrail.config.PrometheusConfig``."""
        basic = cfg.basic_auth
        return cls(
            bearer_token=cfg.bearer_token.get_secret_value() if cfg.bearer_token else None,
            bearer_token_file=cfg.bearer_token_file,
            username=basic.username if basic else None,
            password=basic.password.get_secret_value() if basic and basic.password else None,
            password_file=basic.password_file if basic else None,
            headers=dict(cfg.headers),
            secret_headers={k: v.get_secret_value() for k, v in cfg.secret_headers.items()},
            ca_file=cfg.ca_file,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            insecure_skip_verify=cfg.insecure_skip_verify,
        )

    @property
    def configured(self) -> str:
        """Which auth settings are in use, by key (for messages)."""
        keys = [
            k
            for k in ("bearer_token", "bearer_token_file", "headers", "secret_headers", "ca_file", "cert_file")
            if getattr(self, k)
        ]
        if self.username is not None:
            keys.insert(0, "basic_auth")
        return ", ".join(f"prometheus.{k}" for k in keys) or "none"

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.insecure_skip_verify:
            return False
        if not (self.ca_file or self.cert_file):
            return True
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ValidationError(
                f"cannot load prometheus.ca_file {self.ca_file!r}: {getattr(e, 'strerror', None) or e}",
                field="prometheus.ca_file",
            ) from None
        if self.cert_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as e:
                raise ValidationError(
                    f"cannot load prometheus.cert_file {self.cert_file!r} with key_file {self.key_file!r}: "
                    f"{getattr(e, 'strerror', None) or e}",
                    field="prometheus.cert_file",
                ) from None
        return ctx

    def read(self) -> tuple[dict[str, str], list[str]]:
        """(headers to send, secrets to redact), files read now."""
        headers = {**self.headers, **self.secret_headers}
        secrets = [v for v in self.secret_headers.values() if v]
        token = self.bearer_token or (_read_secret(self.bearer_token_file, "bearer_token_file") if self.bearer_token_file else None)
        if token:
            headers["Authorization"] = f"Bearer {token}"
            secrets.append(token)
        if self.username is not None:
            password = self.password if self.password is not None else _read_secret(self.password_file, "basic_auth.password_file")
            pair = base64.b64encode(f"{self.username}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {pair}"
            secrets += [password, pair]
        return headers, [s for s in secrets if s]


def _read_secret(path: str | None, key: str) -> str:
    try:
        value = Path(path or "").read_text().strip()
    except OSError as e:
        raise SourceUnavailableError(f"cannot read prometheus.{key} {path!r}: {e.strerror or e}") from None
    if not value:
        raise SourceUnavailableError(f"prometheus.{key} {path!r} is empty")
    return value


class PrometheusMetricSource:
    """``MetricSource`` over Prometheus' HTTP API. ``session`` is injected (one is created, and
    closed by ``close()``, when omitted)."""

    name = "prometheus"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.25,
        backoff_max_s: float = 5.0,
        deadline_s: float = 60.0,
        method: str = "auto",
        queries: PrometheusQueries | None = None,
        services: Mapping[str, PrometheusQueries] | None = None,
        session: aiohttp.ClientSession | None = None,
        auth: PrometheusAuth | None = None,
    ) -> None:
        if not (url.startswith("http://") or url.startswith("https://")):
            raise ValidationError(f"Prometheus URL must start with http:// or https://, got {url!r}", field="prometheus.url")
        if method not in ("auto", "GET", "POST"):
            raise ValidationError(f"method must be auto, GET or POST, got {method!r}", field="prometheus.method")
        if timeout_s <= 0 or retries < 0 or backoff_s <= 0:
            raise ValidationError("need timeout_s > 0, retries >= 0 and backoff_s > 0", field="prometheus.timeout_s")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.method = method
        self.queries = queries or PrometheusQueries()
        self.services = dict(services or {})
        for q in [self.queries, *self.services.values()]:
            ResolvedQueries.of(q)  # fail fast on a bad regex
        self.auth = auth or PrometheusAuth()
        self._ssl = self.auth.ssl_context()  # a bad CA or certificate file fails here, naming the key
        self._secrets: list[str] = []
        self._http = Outbound(
            session=session,
            timeout_s=timeout_s,
            secrets=lambda: self._secrets,
            policy=RetryPolicy(
                retries=retries,
                backoff=Backoff(backoff_s, max(backoff_s, backoff_max_s)),
                deadline_s=deadline_s,
                max_wait_s=deadline_s,
            ),
        )
        self._track_labels: dict[tuple[str, str, str], str] = {}  # (service, environment, selector) -> label

    @classmethod
    def from_settings(cls, cfg: Any, *, session: aiohttp.ClientSession | None = None) -> PrometheusMetricSource:
        """From ``guardrail.config.PrometheusConfig``."""
        return cls(
            cfg.url, timeout_s=cfg.timeout_s, retries=cfg.retries, backoff_s=cfg.backoff_s,
            backoff_max_s=cfg.backoff_max_s, deadline_s=cfg.deadline_s, method=cfg.method,
            queries=cfg.queries, services=cfg.services, session=session, auth=PrometheusAuth.of(cfg),
        )

    # --- HTTP ----------------------------------------------------------------------------------------
    async def close(self) -> None:
        await self._http.close()

    async def _call(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """One API call (retried by the seam); returns ``data`` of a success envelope."""
        query = params.get("query", "")
        params = {**params, "timeout": _duration(self.timeout_s)}
        body = urlencode(params)
        post = self.method == "POST" or (self.method == "auto" and len(body) > POST_ABOVE_CHARS)
        headers, self._secrets = self.auth.read()
        if post:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        got = await self._http.exchange(
            "POST" if post else "GET",
            self.url + path,
            data=body.encode() if post else None,
            params=None if post else params,
            headers=headers,
            ssl=self._ssl,
            whole=True,
        )
        status, envelope = got.status, got.json_doc if isinstance(got.json_doc, dict) else None
        error = (
            f"{envelope.get('errorType', '')}: {envelope.get('error', '')}".strip(": ")
            if envelope
            else got.body[:300].strip()
        )
        error = redact_text(error, self._secrets)
        tries = f"after {got.attempts} attempt{'s' if got.attempts > 1 else ''}"
        if status is None and got.outcome.startswith("timed out"):
            raise SourceUnavailableError(
                f"no answer from Prometheus at {self.url} within {self.timeout_s:g} s ({tries})"
            )
        if status is None:
            raise SourceUnavailableError(f"cannot reach Prometheus at {self.url}: {got.outcome} ({tries})")
        if status in (400, 422):
            raise ValidationError(
                f"Prometheus rejected the query {query!r} (HTTP {status}): {error}", field="prometheus.query"
            )
        if status in (401, 403):
            raise SourceUnavailableError(
                f"Prometheus at {self.url} answered HTTP {status} to {path}: {error[:300]} (auth in use: "
                f"{self.auth.configured}; check prometheus.bearer_token, basic_auth, headers / secret_headers)"
            )
        if got.retryable:
            raise SourceUnavailableError(f"Prometheus at {self.url} answered HTTP {status}: {error} ({tries})")
        if status != 200 or envelope is None or envelope.get("status") != "success":
            raise SourceUnavailableError(
                f"Prometheus at {self.url} answered HTTP {status} to {path}: {error[:300]} (is the URL right?)"
            )
        for w in envelope.get("warnings") or ():
            log.warning("Prometheus warning for %r: %s", query, w)
        return envelope.get("data") or {}

    async def instant(self, query: str, time: float | None = None) -> list[dict[str, Any]]:
        """``/api/v1/query``: the vector's elements ``{"metric": {...}, "value": [t, "v"]}``."""
        params = {"query": query}
        if time is not None:
            params["time"] = _num(time)
        data = await self._call("/api/v1/query", params)
        return _result(data, query, ("vector",))

    async def range(self, query: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """``/api/v1/query_range``: ``{"metric": {...}, "values": [[t, "v"], ...]}`` per series;
        split in several calls when the range has more than ``MAX_POINTS`` steps."""
        n = math.floor((end - start) / step + 1e-9)
        if n <= MAX_POINTS:
            data = await self._call(
                "/api/v1/query_range", {"query": query, "start": _num(start), "end": _num(start + n * step),
                                        "step": _step(step)},
            )
            return _result(data, query, ("matrix",))
        merged: dict[SeriesKey, dict[str, Any]] = {}
        for k0 in range(0, n + 1, MAX_POINTS + 1):
            k1 = min(n, k0 + MAX_POINTS)
            for s in await self.range(query, start + k0 * step, start + k1 * step, step):
                key = _key(s["metric"])
                if key in merged:
                    merged[key]["values"].extend(s["values"])
                else:
                    merged[key] = {"metric": s["metric"], "values": list(s["values"])}
        return list(merged.values())

    # --- fetch ---------------------------------------------------------------------------------------
    def resolve(self, query: SourceQuery) -> ResolvedQueries:
        """The templates of this service with the deploy's overrides applied."""
        base = self.services.get(query.service, self.queries)
        raw = (query.overrides or {}).get("prometheus") or {}
        if not isinstance(raw, Mapping):
            raise ValidationError("metrics.prometheus must be an object", field="metrics.prometheus")
        if raw:
            try:
                base = PrometheusQueries.model_validate({**base.model_dump(exclude_unset=True), **raw})
            except pydantic.ValidationError as e:
                first = e.errors()[0]
                where = ".".join(str(x) for x in first["loc"])
                raise ValidationError(
                    f"metrics.prometheus.{where}: {first['msg']}", field=f"metrics.prometheus.{where}"
                ) from None
        return ResolvedQueries.of(base)

    async def fetch(self, query: SourceQuery) -> list[Sample]:
        q = self.resolve(query)
        if query.interval_s <= 0:
            raise ValidationError("interval_s must be > 0", field="interval_s")
        n = math.floor((query.end - query.start) / query.interval_s + 1e-9)
        if n <= 0:
            return []
        label, series = await self._request_series(query, q, n)
        if not series:
            return []
        values = self._track_values(query, label)
        acc = _Windows()
        code_re = q.error_codes
        seen = await self._seen_before(query, q, label, series, q.requests)
        for s in series:
            track = values.get(s["metric"].get(label, ""))
            if track is None:
                continue
            is_error = bool(code_re.fullmatch(s["metric"].get(q.code_label, "")))
            for k, inc in _increases(s, query.start, query.interval_s, n, _key(s["metric"]) in seen):
                acc.requests[track, k] += inc
                if is_error:
                    acc.errors[track, k] += inc
        if q.latency_buckets:
            hq = self._counter(q.latency_buckets, query, q, label, query.interval_s)
            buckets = await self.range(hq, query.start, query.start + n * query.interval_s, query.interval_s)
            seen = await self._seen_before(query, q, label, buckets, q.latency_buckets)
            for s in buckets:
                track = values.get(s["metric"].get(label, ""))
                le = _float(s["metric"].get("le"))
                if track is None or le is None:
                    continue
                for k, inc in _increases(s, query.start, query.interval_s, n, _key(s["metric"]) in seen):
                    acc.buckets[track, k][le] += inc
        for name, template in q.gauges.items():
            gq = self._template(template, query, q, label)
            for s in await self.range(gq, query.start + query.interval_s, query.start + n * query.interval_s,
                                      query.interval_s):
                track = values.get(s["metric"].get(label, ""))
                if track is None:
                    continue
                for t, v in s["values"]:
                    k = round((float(t) - query.start) / query.interval_s) - 1
                    x = _float(v)
                    if 0 <= k < n and x is not None:
                        acc.gauges[track, k][name] = x
        return _samples(acc, query.start, query.interval_s)

    # --- helpers -------------------------------------------------------------------------------------
    def _track_values(self, query: SourceQuery, label: str) -> dict[str, Track]:
        if not holds_versions(label):
            return {"canary": Track.CANARY, "baseline": Track.BASELINE}
        if query.canary_version == query.baseline_version:
            raise ValidationError(
                f"canary and baseline are both version {query.canary_version!r}: the {label!r} label cannot tell "
                "them apart; use a track label",
                field="metrics.prometheus.track_label",
            )
        return {query.canary_version: Track.CANARY, query.baseline_version: Track.BASELINE}

    def _selector(self, query: SourceQuery, q: ResolvedQueries, label: str) -> str:
        sel = self._substitute(q.selector, query).strip()
        if not (sel.startswith("{") and sel.endswith("}")):
            raise ValidationError(
                f"selector {q.selector!r} must be label matchers in braces, e.g. {{service=\"$service\"}}",
                field="metrics.prometheus.selector",
            )
        inner = sel[1:-1].strip().rstrip(",")
        values = sorted(self._track_values(query, label))
        matcher = f"{label}=~{promql_string('|'.join(re.escape(v) for v in values))}"
        return "{" + (f"{inner}, {matcher}" if inner else matcher) + "}"

    @staticmethod
    def _substitute(template: str, query: SourceQuery, **extra: str) -> str:
        quoted = {
            "service": query.service, "environment": query.environment,
            "canary_version": query.canary_version, "baseline_version": query.baseline_version,
        }
        # values go inside the template's quotes: escape them for a PromQL string
        escaped = {k: promql_string(v)[1:-1] for k, v in quoted.items()}
        return Template(template).safe_substitute(escaped, **extra)

    def _template(self, template: str, query: SourceQuery, q: ResolvedQueries, label: str) -> str:
        if "$selector" not in template and "${selector}" not in template:
            template = template + "$selector"
        return self._substitute(
            template, query, selector=self._selector(query, q, label), track_label=label,
            interval=_duration(query.interval_s),
        )

    def _counter(self, template: str, query: SourceQuery, q: ResolvedQueries, label: str, range_s: float) -> str:
        """The last raw value of each counter series scraped within ``range_s`` before each evaluation
        time: a boundary without a fresh scrape has no point (instead of Prometheus' 5-minute lookback
        repeating an old value, which would read as zero increase while the target or Prometheus was
        down). The template must therefore be a series selector."""
        return f"last_over_time({self._template(template, query, q, label)}[{_duration(range_s)}])"

    async def _request_series(
        self, query: SourceQuery, q: ResolvedQueries, n: int
    ) -> tuple[str, list[dict[str, Any]]]:
        """The request counter series and the track label they were found with."""
        if q.track_label != "auto":
            candidates: Sequence[str] = (q.track_label,)
        else:
            cache_key = (query.service, query.environment, q.selector)
            known = self._track_labels.get(cache_key)
            candidates = (known,) if known else AUTO_TRACK_LABELS
        end = query.start + n * query.interval_s
        for label in candidates:
            if holds_versions(label) and query.canary_version == query.baseline_version and len(candidates) > 1:
                continue
            rq = self._counter(q.requests, query, q, label, query.interval_s)
            series = await self.range(rq, query.start, end, query.interval_s)
            if series:
                if q.track_label == "auto":
                    self._track_labels[(query.service, query.environment, q.selector)] = label
                return label, series
        return candidates[0], []

    async def _seen_before(
        self, query: SourceQuery, q: ResolvedQueries, label: str, series: list[dict[str, Any]], template: str,
    ) -> set[SeriesKey]:
        """Of the series without a point at ``query.start``, those that had a value in the
        ``gap_lookback_s`` before it (so they are in a gap, not new)."""
        if all(s["values"] and abs(float(s["values"][0][0]) - query.start) <= 1e-3 for s in series):
            return set()
        lq = self._counter(template, query, q, label, q.gap_lookback_s)
        return {_key(s["metric"]) for s in await self.instant(lq, query.start) if _float(s["value"][1]) is not None}


# --- pure helpers ------------------------------------------------------------------------------------


def _result(data: Mapping[str, Any], query: str, types: tuple[str, ...]) -> list[dict[str, Any]]:
    if data.get("resultType") not in types:
        raise ValidationError(
            f"the query {query!r} returned a {data.get('resultType')}, expected {' or '.join(types)} "
            "(a template must select series)",
            field="prometheus.query",
        )
    return list(data.get("result") or [])


def _step(step: float) -> str:
    return f"{step:g}" if step >= 0.001 else "0.001"


def _key(metric: Mapping[str, str]) -> SeriesKey:
    return tuple(sorted((k, v) for k, v in metric.items() if k != "__name__"))


def _float(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if not math.isnan(x) else None


def _increases(
    series: Mapping[str, Any], start: float, interval: float, n: int, seen_before: bool
) -> list[tuple[int, float]]:
    """(window index, increase) of one counter series. A window needs the series' points at both of
    its boundaries; a decrease between them is a counter reset (the new value is the increase). A
    window whose start boundary has no point (missed scrapes: the target or Prometheus was down)
    gets nothing from this series, since when in the gap those requests happened is unknown, unless
    the series was never seen before (``seen_before``: a value before ``start``): a new process, or a
    status code seen for the first time, counts from zero."""
    points: dict[int, float] = {}
    for t, v in series["values"]:
        k = round((float(t) - start) / interval)
        x = _float(v)
        if 0 <= k <= n and x is not None and math.isfinite(x):
            points[k] = x
    if not points:
        return []
    first = min(points)
    out: list[tuple[int, float]] = []
    for k in range(1, n + 1):
        v = points.get(k)
        if v is None:
            continue
        prev = points.get(k - 1)
        if prev is not None:
            out.append((k - 1, v if v < prev else v - prev))
        elif k == first and not seen_before:
            out.append((k - 1, v))
    return out


def _samples(acc: _Windows, start: float, interval: float) -> list[Sample]:
    out: list[Sample] = []
    for (track, k) in sorted(acc.requests, key=lambda tk: (tk[1], tk[0].value)):
        requests = round(acc.requests[track, k])
        errors = min(round(acc.errors.get((track, k), 0.0)), requests)
        latency = _histogram(acc.buckets.get((track, k)))
        if latency is not None and latency.total > requests:
            # the two counters come from different scrapes of a busy process: trust the larger
            requests = latency.total
        s0, s1 = round(start + k * interval, 3), round(start + (k + 1) * interval, 3)  # Prometheus has ms
        out.append(Sample(track, s0, s1, requests, errors, latency,
                          gauges=dict(acc.gauges.get((track, k), {}))))
    return out


def _histogram(cumulative: Mapping[float, float] | None) -> Histogram | None:
    """Per-bucket counts from cumulative ``le`` increases (bounds <= 0 fold into the first bucket)."""
    if not cumulative or math.inf not in cumulative:
        return None
    bounds = sorted(b for b in cumulative if 0 < b < math.inf)
    counts: list[int] = []
    prev = 0.0
    for b in [*bounds, math.inf]:
        c = max(cumulative[b], prev)  # cumulative can only grow; scrape skew must not make it negative
        counts.append(round(c) - round(prev))
        prev = c
    return Histogram(tuple(bounds), tuple(counts))
