"""Server-rendered HTML pages: ``GET /deploys`` (recent deploys, filterable) and ``GET /deploys/{id}``
(one deploy: header, charts over data time, timeline, evidence, links). No front-end build and no
CDN: inline CSS and inline SVG computed by :mod:`guardrail.adapters.http.charts`; no script at all
(the Content-Security-Policy forbids it, so injected markup could not run one either).

Everything shown comes from the marker, the timeline, the samples and the verdicts; every value is
escaped by jinja2's autoescape. Adapter configuration is never shown (it may hold secrets).

Access: open by default (``server.pages_public: true``: read-only, nothing secret). With
``pages_public: false`` the pages need a valid bearer token like the read API.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
import pydantic
from aiohttp import web
from markdown_it import MarkdownIt
from markupsafe import Markup

from guardrail.adapters.http import charts
from guardrail.adapters.http.auth import Authenticator
from guardrail.adapters.http.errors import ApiError
from guardrail.adapters.http.parsing import validation_error
from guardrail.adapters.http.routes import ENGINE, SETTINGS, Route
from guardrail.adapters.http.schemas import ListQuery
from guardrail.domain.drafts import Draft, DraftKind
from guardrail.domain.drafts.kinds import doc_spec
from guardrail.domain.errors import NotFoundError, ValidationError
from guardrail.domain.judge import explain
from guardrail.domain.model import DeployState, Sample
from guardrail.domain.records import Deploy, EventKind, TimelineEvent
from guardrail.ports import Store

TEMPLATES = Path(__file__).parent / "templates"
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
GRAFANA_DASHBOARD = "guardrail-canary"
GRAFANA_PRE_S = 600.0  # the Grafana link opens ten minutes before the deploy ...
GRAFANA_POST_S = 300.0  # ... and ends five minutes after its latest data
_KINDS = frozenset(k.value for k in DraftKind)
_RATE_KINDS = frozenset({"errors", "latency", "throughput", "counter_ratio", "histogram_threshold"})

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,  # every template, whatever its extension: marker values are user input
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


# --- formatting ------------------------------------------------------------------------------------


def utc(t: float | None) -> str:
    if t is None:
        return ""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    s = round(max(seconds, 0.0))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h {m:02d}m"
    if m:
        return f"{m}m {s:02d}s"
    return f"{s}s"


def offset(t: float | None, start: float) -> str:
    """Data time as +m:ss from the deploy's start (or -m:ss before it)."""
    if t is None:
        return ""
    d = t - start
    sign = "-" if d < 0 else "+"
    m, s = divmod(round(abs(d)), 60)
    return f"{sign}{m}:{s:02d}"


def number(v: Any, kind: str | None = None) -> str:
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return "n/a"
    if math.isinf(v):
        return "+inf" if v > 0 else "-inf"
    if kind in _RATE_KINDS:
        return explain.pct(v)
    return f"{v:.4g}"


def count(v: Any) -> str:
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        return "n/a"
    return f"{v:,.0f}"


def e_value(v: Any) -> str:
    if not isinstance(v, int | float) or isinstance(v, bool):
        return "n/a"
    if v >= 1e6 or (0 < v < 1e-3):
        return f"{v:.2e}"
    return f"{v:.3g}"


def safe_url(url: str | None) -> str | None:
    """Only http(s) URLs become links (a marker's ``javascript:`` link stays text)."""
    if not url:
        return None
    try:
        scheme = urlsplit(url.strip()).scheme.lower()
    except ValueError:
        return None
    return url.strip() if scheme in ("http", "https") else None


_env.filters.update(utc=utc, duration=duration, number=number, count=count, e_value=e_value)


def render(
    template: str, status: int = 200, headers: Mapping[str, str] | None = None, **context: Any
) -> web.Response:
    body = _env.get_template(template).render(**context)
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            **(headers or {}),
        },
    )


def error_page(
    status: int, title: str, detail: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return render("error.html.j2", status=status, headers=headers, title=title, detail=detail, code=status)


# --- access ----------------------------------------------------------------------------------------


def _check_access(request: web.Request) -> None:
    """Public pages need nothing; otherwise a valid bearer token (any scope may read)."""
    settings = request.app[SETTINGS]
    if settings.server.pages_public:
        return
    from guardrail.adapters.http.app import AUTH  # app.py imports this module: the key is read late

    auth: Authenticator = request.app[AUTH]
    auth.authorize(auth.authenticate(request.headers.get("Authorization")), "read")


def _page(handler: Any) -> Any:
    """Errors of a page are pages too (the JSON error body is for API clients)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            _check_access(request)
            return await handler(request)
        except ApiError as e:  # 401 / 403 from the token check, with WWW-Authenticate
            return error_page(e.status, "Not allowed", e.detail, e.headers)
        except NotFoundError as e:
            return error_page(404, "Not found", e.detail)
        except ValidationError as e:
            return error_page(400, "Invalid request", e.detail)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


# --- the deploy page's view ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the timeline (or a fold of several analysis snapshots)."""

    kind: str  # css class and badge
    badge: str
    data_time: str  # +m:ss from the deploy's start
    clock: str  # the data time as UTC
    message: str
    extra: str = ""  # e.g. "took 0.42 s", "by alice"
    output: str = ""  # an adapter's output
    folded: tuple[Entry, ...] = ()
    href: str = ""  # a page the entry links to (a drafted document)


@dataclass(frozen=True, slots=True)
class DraftLink:
    kind: str
    version: int
    source: str
    trigger: str  # request | rollback | cli
    created: str
    href: str  # the rendered page
    json: str  # the API's JSON document ...
    markdown: str  # ... and its Markdown


@dataclass
class DeployView:
    deploy: Deploy
    started_at: float
    state_css: str
    step_text: str
    steps_text: str
    entries: list[Entry]
    charts: list[charts.Chart]
    evidence: list[dict[str, Any]]
    verdict: dict[str, Any] | None
    grafana: str | None
    links: list[tuple[str, str]]  # (label, url) from the marker, http(s) only
    bad_links: list[tuple[str, str]]  # (label, text): links that are not http(s), shown as text
    drafts: list[DraftLink]
    decision: str | None  # e.g. "FAIL at +0:20"
    api: dict[str, str] = field(default_factory=dict)
    max_duration: str = ""  # a step's analysis window, e.g. "30m 00s"


_STATE_CSS = {
    DeployState.PENDING: "neutral",
    DeployState.ANALYZING: "running",
    DeployState.PAUSED: "held",
    DeployState.ROLLING_BACK: "bad",
    DeployState.PROMOTED: "good",
    DeployState.ROLLED_BACK: "bad",
    DeployState.ROLLBACK_FAILED: "bad",
}


def _verdict_of(e: TimelineEvent) -> dict[str, Any]:
    v = e.details.get("verdict")
    return v if isinstance(v, dict) else {}


def _decision(e: TimelineEvent) -> str:
    return str(_verdict_of(e).get("decision") or "")


def _alert(e: TimelineEvent) -> tuple[bool, str]:
    """(firing, name) of an alert event: an in-service rule's or an Alertmanager alert's."""
    a = e.details.get("alert")
    if not isinstance(a, dict):
        return False, "alert"
    state = a.get("state") or a.get("status")
    labels = a.get("labels") if isinstance(a.get("labels"), dict) else {}
    return state == "firing", str(a.get("rule") or labels.get("alertname") or "alert")


def timeline(events: Sequence[TimelineEvent], start: float, deploy_id: str = "") -> list[Entry]:
    """Timeline entries: an action's start is merged into its result (with the duration); runs of
    CONTINUE snapshots are folded into one entry listing them."""
    finished = {
        e.details.get("action_id")
        for e in events
        if e.kind in (EventKind.ACTION_DONE, EventKind.ACTION_FAILED)
    }
    out: list[Entry] = []
    run: list[Entry] = []

    def flush() -> None:
        if not run:
            return
        if len(run) == 1:
            out.append(run[0])
        else:
            last = run[-1]
            out.append(
                Entry(
                    "fold",
                    "analysis",
                    run[0].data_time,
                    run[0].clock,
                    f"{len(run)} analysis snapshots, still collecting evidence; the latest: {last.message}",
                    extra=f"{run[0].data_time} to {last.data_time}",
                    folded=tuple(run),
                )
            )
        run.clear()

    for e in events:
        when, clock = offset(e.data_time, start), utc(e.data_time)
        if e.kind is EventKind.VERDICT and _decision(e) == "continue":
            run.append(Entry("continue", "continue", when, clock, e.message))
            continue
        flush()
        if e.kind is EventKind.ACTION_STARTED and e.details.get("action_id") in finished:
            continue  # shown with its result
        entry = _entry(e, when, clock)
        draft = e.details.get("draft")
        if deploy_id and e.kind is EventKind.NOTE and isinstance(draft, dict) and draft.get("kind") in _KINDS:
            version = draft.get("version")
            query = f"?{urlencode({'version': version})}" if isinstance(version, int) else ""
            entry = replace(entry, href=f"/deploys/{deploy_id}/drafts/{draft['kind']}{query}")
        out.append(entry)
    flush()
    return out


def _entry(e: TimelineEvent, when: str, clock: str) -> Entry:
    d = e.details
    if e.kind is EventKind.VERDICT:
        decision = _decision(e) or "verdict"
        return Entry(f"verdict-{decision}", decision.upper(), when, clock, e.message)
    if e.kind in (EventKind.ACTION_DONE, EventKind.ACTION_FAILED):
        ok = e.kind is EventKind.ACTION_DONE
        secs = d.get("seconds")
        took = f"took {secs:.3g} s" if isinstance(secs, int | float) else ""
        return Entry(
            "action" if ok else "action-failed",
            "action" if ok else "action failed",
            when,
            clock,
            e.message,
            extra=took,
            output=str(d.get("output") or "")[:4000],
        )
    if e.kind is EventKind.ACTION_STARTED:
        return Entry("action", "action running", when, clock, e.message)
    if e.kind is EventKind.OVERRIDE:
        return Entry(
            "override",
            f"override: {d.get('action', '')}",
            when,
            clock,
            e.message,
            extra=f"by {d.get('who', 'unknown')}",
        )
    if e.kind is EventKind.ALERT:
        firing = _alert(e)[0]
        return Entry(
            "alert" if firing else "alert-resolved", "alert" if firing else "resolved", when, clock, e.message
        )
    if e.kind is EventKind.TRANSITION:
        after = str(d.get("after", ""))
        css = {
            "rolled_back": "bad",
            "rolling_back": "bad",
            "rollback_failed": "bad",
            "promoted": "good",
            "paused": "held",
        }.get(after, "transition")
        return Entry(f"transition {css}", after.replace("_", " ") or "transition", when, clock, e.message)
    return Entry(e.kind.value, e.kind.value, when, clock, e.message)


def chart_events(deploy: Deploy, events: Sequence[TimelineEvent]) -> tuple[list[charts.Event], str | None]:
    """Vertical marks: step changes, the first FAIL and the first PASS, alerts firing, the rollback."""
    steps = deploy.rollout.steps
    out = [
        charts.Event(
            t, f"step {i + 1}: {steps[i].describe()}" if 0 <= i < len(steps) else f"step {i + 1}", "step"
        )
        for i, t in deploy.rollout.history
    ]
    seen: set[str] = set()
    decision_text = None
    for e in events:
        if e.kind is EventKind.VERDICT and e.data_time is not None:
            dec = _decision(e)
            if dec in ("fail", "pass") and dec not in seen:
                seen.add(dec)
                at = _verdict_of(e).get("decided_at") or e.data_time
                out.append(charts.Event(float(at), dec.upper(), f"decision-{dec}"))
                if dec == "fail" or decision_text is None:
                    decision_text = (
                        f"first {dec.upper()} at {offset(float(at), deploy.marker.started_at or 0)}"
                    )
        elif e.kind is EventKind.ALERT and e.data_time is not None and _alert(e)[0]:
            out.append(charts.Event(e.data_time, _alert(e)[1][:40], "alert"))
        elif (
            e.kind is EventKind.TRANSITION
            and e.details.get("after") == "rolling_back"
            and e.data_time is not None
            and "fail" not in seen  # the FAIL mark says it already; an override or a failed step does not
        ):
            out.append(charts.Event(e.data_time, "rollback", "rollback"))
    return out, decision_text


def build_charts(
    deploy: Deploy, samples: Sequence[Sample], events: Sequence[TimelineEvent]
) -> list[charts.Chart]:
    start = deploy.marker.started_at if deploy.marker.started_at is not None else deploy.created_at
    domain = charts.time_domain(samples, start, deploy.data_time)
    marks, _ = chart_events(deploy, events)
    values = charts.window_values(samples)
    out = [
        charts.track_chart(
            "error-rate",
            "Error rate per window",
            "errors / requests of each track in each window; a gap is a "
            "window without requests (never read as zero)",
            values,
            lambda w: w.error_rate,
            domain=domain,
            unit="%",
            scale=100.0,
            label=lambda v: f"{v:.2f}%",
            events=marks,
        ),
        charts.track_chart(
            "latency-p99",
            "p99 latency per window",
            "99th percentile of each window (histogram interpolation, or the raw latencies)",
            values,
            lambda w: w.p99_s,
            domain=domain,
            unit="ms",
            scale=1000.0,
            label=lambda v: f"{v:.0f} ms",
            events=marks,
        ),
    ]
    verdicts = [
        (e.data_time, _verdict_of(e))
        for e in events
        if e.kind is EventKind.VERDICT and e.data_time is not None
    ]
    latest = deploy.verdict or {}
    if latest.get("evaluated_at") is not None and (not verdicts or latest["evaluated_at"] > verdicts[-1][0]):
        verdicts.append((float(latest["evaluated_at"]), latest))
    evidence = {ev.get("metric"): ev for ev in latest.get("evidence") or []}
    for metric, title in (
        ("error_rate", "Judge: error rate ratio"),
        ("latency_p99", "Judge: p99 latency ratio"),
    ):
        ev = evidence.get(metric) or {}
        what = (
            "canary / baseline error rate"
            if metric == "error_rate"
            else "canary / baseline share of requests slower than the p99 threshold"
        )
        out.append(
            charts.ratio_chart(
                f"judge-{metric.replace('_', '-')}",
                title,
                f"{what}, with its anytime-valid confidence sequence at each verdict; a FAIL needs the whole "
                "band above the allowed line, a PASS the whole band below the critical line",
                charts.estimate_points(verdicts, metric),
                domain=domain,
                allowed=_float(ev.get("allowed")),
                critical=_float(ev.get("critical_change")),
                events=marks,
            )
        )
    return out


def _float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def grafana_link(base: str | None, deploy: Deploy) -> str | None:
    if not base:
        return None
    start = deploy.marker.started_at if deploy.marker.started_at is not None else deploy.created_at
    query = urlencode(
        {
            "var-service": deploy.marker.service,
            "var-deploy_id": deploy.id,
            "from": int((start - GRAFANA_PRE_S) * 1000),
            "to": int((max(deploy.data_time, start) + GRAFANA_POST_S) * 1000),
        }
    )
    return f"{base.rstrip('/')}/d/{GRAFANA_DASHBOARD}?{query}"


async def _drafts(store: Store, deploy_id: str) -> list[DraftLink]:
    """The latest version of each drafted document of the deploy."""
    latest: dict[str, Draft] = {}
    for d in await store.drafts(deploy_id):
        kind = str(d.kind)
        if kind not in latest or d.version > latest[kind].version:
            latest[kind] = d
    return [
        DraftLink(
            k,
            d.version,
            d.source,
            d.trigger,
            utc(d.created_at),
            f"/deploys/{deploy_id}/drafts/{k}",
            f"/api/v1/deploys/{deploy_id}/drafts/{k}",
            f"/api/v1/deploys/{deploy_id}/drafts/{k}?format=markdown",
        )
        for k, d in sorted(latest.items())
    ]


async def deploy_page(request: web.Request) -> web.Response:
    """One deploy: header, charts, timeline, evidence, links."""
    engine = request.app[ENGINE]
    settings = request.app[SETTINGS]
    deploy = await engine.get_deploy(request.match_info["id"])
    events = await engine.events(deploy.id)
    samples = await engine.store.samples(deploy.id)
    m, r = deploy.marker, deploy.rollout
    start = m.started_at if m.started_at is not None else deploy.created_at
    links, bad = [], []
    for label, url in sorted(m.links.items()):
        ok = safe_url(url)
        if ok:
            links.append((label, ok))
        else:
            bad.append((label, url))
    _, decision = chart_events(deploy, events)
    verdict = deploy.verdict
    view = DeployView(
        deploy=deploy,
        started_at=start,
        state_css=_STATE_CSS.get(deploy.state, "neutral"),
        step_text=r.step_summary(),
        steps_text=" → ".join(s.describe() for s in r.steps),
        entries=timeline(events, start, deploy.id),
        charts=build_charts(deploy, samples, events),
        evidence=list((verdict or {}).get("evidence") or []),
        verdict=verdict,
        grafana=grafana_link(settings.server.grafana_url, deploy),
        links=links,
        bad_links=bad,
        drafts=await _drafts(engine.store, deploy.id),
        decision=decision,
        api={"deploy": f"/api/v1/deploys/{deploy.id}", "events": f"/api/v1/deploys/{deploy.id}/events"},
        max_duration=duration(m.analysis.max_duration_s),
    )
    return render("deploy.html.j2", v=view, d=deploy, m=m, title=f"{m.service} {m.version}")


# --- a drafted document, rendered ------------------------------------------------------------------

# CommonMark with tables, raw HTML off (it is shown as text: the Markdown holds marker text), links
# only to safe schemes (markdown-it refuses javascript:, vbscript:, file: and data:), no images
# (nothing is fetched from elsewhere; the CSP would block it anyway).
_markdown = MarkdownIt("js-default", {"html": False, "linkify": False, "typographer": False}).disable("image")


def markdown_html(text: str) -> Markup:
    """HTML of a Markdown document: every character of the source that is not Markdown syntax is
    escaped, so user-provided strings inside it stay text."""
    return Markup(_markdown.render(text))  # markdown-it escapes the text itself (html off)


class DraftPageQuery(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    version: int | None = pydantic.Field(None, ge=1, description="omitted: the newest version")


async def draft_page(request: web.Request) -> web.Response:
    """One drafted document (the newest version unless ?version=N) rendered from its Markdown."""
    engine = request.app[ENGINE]
    try:
        q = DraftPageQuery.model_validate(dict(request.query))
    except pydantic.ValidationError as e:
        raise validation_error(DraftPageQuery, e) from None
    deploy = await engine.get_deploy(request.match_info["id"])
    spec = doc_spec(request.match_info["kind"])
    found = await engine.store.drafts(deploy.id, spec.kind, version=q.version)
    if not found:
        which = f"no version {q.version} of the" if q.version is not None else "no"
        raise NotFoundError(
            f"deploy {deploy.id!r} has {which} {spec.kind.value} draft; drafts are made with "
            f"POST /api/v1/deploys/{deploy.id}/drafts/{spec.kind.value} (a rollback drafts the post-mortem)",
            field="kind",
        )
    draft = found[0]
    api = f"/api/v1/deploys/{deploy.id}/drafts/{spec.kind.value}?version={draft.version}"
    return render(
        "draft.html.j2",
        title=f"{spec.title}: {deploy.marker.service} {deploy.marker.version}",
        d=deploy,
        m=deploy.marker,
        draft=draft,
        spec=spec,
        created=utc(draft.created_at),
        body=markdown_html(draft.markdown),
        json_href=api,
        markdown_href=f"{api}&format=markdown",
    )


# --- the list --------------------------------------------------------------------------------------


async def deploys_page(request: web.Request) -> web.Response:
    """Recent deploys, newest first, filtered by service, environment and state."""
    raw = {k: v for k, v in request.query.items() if v.strip()}  # an empty form field is no filter
    try:
        q = ListQuery.model_validate(raw)
    except pydantic.ValidationError as e:
        raise validation_error(ListQuery, e) from None
    deploys = await request.app[ENGINE].list_deploys(
        service=q.service,
        environment=q.environment,
        state=q.state,
        since=q.since,
        until=q.until,
        limit=q.limit,
    )
    rows = []
    for d in deploys:
        start = d.marker.started_at if d.marker.started_at is not None else d.created_at
        rows.append(
            {
                "d": d,
                "state_css": _STATE_CSS.get(d.state, "neutral"),
                "verdict": (d.verdict or {}).get("decision") or "",
                "started": utc(start),
                "duration": duration(d.data_time - start),
            }
        )
    return render("deploys.html.j2", title="Deploys", rows=rows, q=q, states=[s.value for s in DeployState])


# --- the table -------------------------------------------------------------------------------------

_ACCESS = " Open unless the server sets server.pages_public: false; then any valid bearer token."

PAGE_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/deploys",
        _page(deploys_page),
        "deploysPage",
        "HTML: recent deploys with state, verdict and duration, filtered by service, environment and state."
        + _ACCESS,
        None,  # the token check, when pages are not public, is the page's own (see _check_access)
        tag="pages",
        query=ListQuery,
        response="html",  # type: ignore[arg-type]
        errors=(400, 401),
    ),
    Route(
        "GET",
        "/deploys/{id}",
        _page(deploy_page),
        "deployPage",
        "HTML: one deploy with its charts over data time, timeline, verdict evidence and links." + _ACCESS,
        None,
        tag="pages",
        response="html",  # type: ignore[arg-type]
        errors=(401, 404),
    ),
    Route(
        "GET",
        "/deploys/{id}/drafts/{kind}",
        _page(draft_page),
        "draftPage",
        "HTML: a drafted document of the deploy (the post-mortem, ...) rendered from its Markdown, the "
        "newest version unless ?version=N." + _ACCESS,
        None,
        tag="pages",
        query=DraftPageQuery,
        response="html",  # type: ignore[arg-type]
        errors=(400, 401, 404),
    ),
)
