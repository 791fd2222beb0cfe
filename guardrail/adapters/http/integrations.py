"""guardrail as the analysis step of Argo Rollouts and Flagger (the other direction from the deploy
adapters: there guardrail drives the rollout, here a rollout controller asks guardrail).

``GET /api/v1/analysis?service=&environment=&version=`` (any valid token) answers the newest matching
deploy's judgement in a flat shape an Argo ``AnalysisTemplate`` reads with ``jsonPath: "{$.decision}"``.
While no deploy of the requested ``version`` is recorded yet (CI's marker is late, or never comes)
the answer is still **200**, with ``decision: none`` and ``deploy_id: null``: Argo's web provider
counts any non-2xx answer as a measurement Error, and a background analysis that errors (more than
``consecutiveErrorLimit`` in a row, 4 by default) aborts the rollout. Without a ``version`` an
unknown service is a 404. ``decision`` is the judgement of the whole deploy, not just of the latest
window:

=====================  ==============================================================================
deploy state           decision
=====================  ==============================================================================
promoted               ``pass``: every step passed (or an operator promoted it)
rolling_back,          ``fail``: the judge failed it, a step failed, or an operator rolled it back
rolled_back,
rollback_failed
paused                 ``inconclusive``: held for a human (an inconclusive analysis or a manual pause)
pending, analyzing     ``continue`` (a step that passed is not a deploy that passed: guardrail
                       promotes only after every step), ``none`` before the first verdict
=====================  ==============================================================================

``POST /hooks/flagger?type=<webhook type>`` answers Flagger's webhooks. Flagger's body
(``{"name", "namespace", "phase", "checksum", "metadata"}``) does not say which kind of webhook is
calling, so the webhook's URL carries it in ``type``. Flagger reads only the status: 200-202
advances, anything else halts (and counts as a failed check, except for ``rollback``):

- ``confirm-rollout``, ``pre-rollout``, ``rollout``, ``confirm-traffic-increase``: 200 while the
  decision is not ``fail``; 409 once it is (so Flagger stops and, past its threshold, rolls back).
- ``confirm-promotion``: 200 only once the decision is ``pass``; 409 before (Flagger keeps the canary
  where it is and keeps running its checks) and after a ``fail``.
- ``rollback``: 200 means "roll back" in Flagger, so 200 only when the decision is ``fail``; 409
  otherwise.

No matching deploy is a 404 (a failed check; no rollback). The deploy is looked up by
``metadata.service`` / ``metadata.environment`` / ``metadata.version`` when given, else by the
canary's ``name`` as the service and its ``namespace`` as the environment (newest deploy).

Flagger cannot send request headers with a webhook (fluxcd/flagger#1192), so this route accepts the
``ci`` token either as ``Authorization: Bearer <token>`` or in the webhook's URL,
``/hooks/flagger?type=rollout&token=<token>`` (guardrail's access log and logs never show it). It
does its own authentication, first: the body is not read before the caller is known (the route table
marks it open so that the auth middleware accepts the query token). A token in ``metadata.token``
(the body) is not read: a request with no other credentials is a 401 naming ``?token=``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from guardrail.adapters.http.auth import REALM
from guardrail.adapters.http.errors import ApiError, Unauthorized
from guardrail.adapters.http.parsing import read_json, read_query
from guardrail.adapters.http.routes import API, ENGINE, SETTINGS, Route
from guardrail.adapters.http.schemas import EvidenceOut, StepInfo
from guardrail.domain.errors import NotFoundError
from guardrail.domain.model import DeployState
from guardrail.domain.records import Deploy
from guardrail.service.engine import Engine

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
JudgementDecision = Literal["pass", "fail", "continue", "inconclusive", "none"]
FlaggerHookType = Literal[
    "confirm-rollout", "pre-rollout", "rollout", "confirm-traffic-increase", "confirm-promotion", "rollback"
]
SEARCH_LIMIT = 500  # deploys of one service and environment looked through for a version
SUMMARY_MAX = 400

_FAILED_STATES = (DeployState.ROLLING_BACK, DeployState.ROLLED_BACK, DeployState.ROLLBACK_FAILED)
_CHECK_HOOKS = ("confirm-rollout", "pre-rollout", "rollout", "confirm-traffic-increase")


# --- schemas ---------------------------------------------------------------------------------------


def _blank_is_none(value: object) -> object:
    """An empty parameter (an unset template argument, e.g. ``version=``) means no filter."""
    return None if isinstance(value, str) and not value.strip() else value


Filter = Annotated[Name | None, BeforeValidator(_blank_is_none)]


class AnalysisQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    service: Name = Field(description="the service of the deploy (as in its marker)")
    environment: Filter = Field(None, description="only deploys to this environment (empty: any)")
    version: Filter = Field(None, description="only deploys of this version (empty: the newest deploy)")


class FlaggerHookQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: FlaggerHookType = Field(description="the webhook's type in the Canary spec; Flagger does not send it")
    token: str | None = Field(
        None,
        description="the ci token, when the Authorization header cannot be sent (Flagger cannot); "
        "checked before the body is read, never logged",
    )


class FlaggerHookIn(BaseModel):
    """Flagger's webhook payload."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Name = Field(description="the Canary's name: the service, unless metadata.service is set")
    namespace: Name = Field(description="the Canary's namespace: the environment, unless metadata.environment")
    phase: Annotated[str, StringConstraints(max_length=100)] | None = Field(
        None, description="Flagger's canary phase, e.g. Progressing"
    )
    checksum: Annotated[str, StringConstraints(max_length=200)] | None = Field(
        None, description="hash of the canary's configuration (sent by Flagger >= 1.x; not used)"
    )
    metadata: dict[str, Annotated[str, StringConstraints(max_length=10_000)]] = Field(
        default_factory=dict,
        description="the webhook's metadata; service, environment and version select the deploy "
        "(the ci token goes in the URL, ?token=, not here)",
    )


class JudgementOut(BaseModel):
    """One deploy's judgement, flat, for rollout controllers (Argo's jsonPath, Flagger's logs).
    While no deploy of the asked version is recorded, the deploy's fields are null and the decision
    is ``none``."""

    model_config = ConfigDict(frozen=True)

    deploy_id: str | None = Field(description="null while no deploy of this version is recorded")
    service: str
    environment: str | None
    version: str
    previous_version: str | None
    state: DeployState | None
    decision: JudgementDecision = Field(
        description="the whole deploy's judgement: pass (promoted), fail (rolling back or rolled back), "
        "inconclusive (held for a human), continue while the steps go on, none before the first verdict"
    )
    verdict_decision: Literal["fail", "pass", "continue", "inconclusive"] | None = Field(
        description="the latest verdict of the judge as it is (null before the first)"
    )
    summary: str = Field(description="one line: what the judge or the rollout said last")
    step: StepInfo | None
    data_time: float | None = Field(description="latest data time seen (unix seconds)")
    evidence: list[EvidenceOut] = Field(description="per metric, from the latest verdict")
    deploy_url: str | None = Field(description="the deploy's page")
    api_url: str | None = Field(description="the deploy in the API")


class FlaggerHookOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    hook: FlaggerHookType
    answer: Literal["advance", "roll back"]
    judgement: JudgementOut


class HookRefused(ApiError):
    """The judge's answer to a Flagger webhook is no (a non-2xx status is Flagger's "no")."""

    status = 409
    code = "refused"


# --- the judgement (pure) --------------------------------------------------------------------------


def decision_of(deploy: Deploy) -> JudgementDecision:
    """The deploy-level decision (see the module docstring)."""
    state = deploy.state
    if state is DeployState.PROMOTED:
        return "pass"
    if state in _FAILED_STATES:
        return "fail"
    if state is DeployState.PAUSED:
        return "inconclusive"
    raw = (deploy.verdict or {}).get("decision")
    if raw in ("fail", "inconclusive"):  # transient: the rollout acts on it at once
        return raw
    return "continue" if raw in ("pass", "continue") else "none"


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= SUMMARY_MAX else line[: SUMMARY_MAX - 1] + "…"


def summary_of(deploy: Deploy) -> str:
    m, r = deploy.marker, deploy.rollout
    head = f"{m.service} {m.version} ({m.environment}): {deploy.state.value}"
    verdict_summary = (deploy.verdict or {}).get("summary") or ""
    if deploy.state in (*_FAILED_STATES, DeployState.PAUSED) and r.reason:
        return _one_line(f"{head}: {r.reason}")
    if verdict_summary:
        return _one_line(f"{head}: {verdict_summary}")
    return _one_line(f"{head}: no verdict yet (waiting for data)")


def judgement(deploy: Deploy, public_url: str) -> JudgementOut:
    m, r = deploy.marker, deploy.rollout
    base = public_url.rstrip("/")
    raw = (deploy.verdict or {}).get("decision")
    return JudgementOut(
        deploy_id=deploy.id,
        service=m.service,
        environment=m.environment,
        version=m.version,
        previous_version=m.previous_version,
        state=deploy.state,
        decision=decision_of(deploy),
        verdict_decision=raw if raw in ("pass", "fail", "continue", "inconclusive") else None,
        summary=summary_of(deploy),
        step=StepInfo.of(r),
        data_time=deploy.data_time,
        evidence=[EvidenceOut.model_validate(e) for e in (deploy.verdict or {}).get("evidence", [])],
        deploy_url=f"{base}/deploys/{deploy.id}",
        api_url=f"{base}{API}/deploys/{deploy.id}",
    )


def flagger_answer(hook: FlaggerHookType, decision: JudgementDecision) -> bool:
    """True: answer 2xx. See the module docstring for each webhook type."""
    if hook == "confirm-promotion":
        return decision == "pass"
    if hook == "rollback":
        return decision == "fail"
    return decision != "fail"


# --- handlers --------------------------------------------------------------------------------------


async def newest_deploy(
    engine: Engine, *, service: str, environment: str | None, version: str | None
) -> Deploy:
    deploys = await engine.list_deploys(service=service, environment=environment, limit=SEARCH_LIMIT)
    for d in deploys:  # newest first
        if version is None or d.marker.version == version:
            return d
    where = f"service {service!r}" + (f", environment {environment!r}" if environment else "")
    if version is not None:
        where += f", version {version!r}"
        if len(deploys) == SEARCH_LIMIT:
            where += f" (among its newest {SEARCH_LIMIT} deploys)"
    raise NotFoundError(f"no deploy matches {where}; CI records one with POST {API}/deploys", field="service")


def not_yet(q: AnalysisQuery, why: str) -> JudgementOut:
    """The answer while no deploy of the asked version is recorded: a 2xx "no verdict yet"."""
    return JudgementOut(
        deploy_id=None,
        service=q.service,
        environment=q.environment,
        version=q.version or "",
        previous_version=None,
        state=None,
        decision="none",
        verdict_decision=None,
        summary=_one_line(f"{q.service} {q.version}: no deploy recorded yet (waiting for CI's marker): {why}"),
        step=None,
        data_time=None,
        evidence=[],
        deploy_url=None,
        api_url=None,
    )


async def get_analysis(request: web.Request) -> web.Response:
    q = read_query(request, AnalysisQuery)
    engine: Engine = request.app[ENGINE]
    try:
        deploy = await newest_deploy(engine, service=q.service, environment=q.environment, version=q.version)
    except NotFoundError as e:
        if q.version is None:
            raise
        out = not_yet(q, e.detail)
    else:
        out = judgement(deploy, request.app[SETTINGS].server.public_url)
    return web.Response(body=out.model_dump_json().encode(), content_type="application/json")


def _authenticate_flagger(request: web.Request) -> None:
    """The ci scope, from the Authorization header or (Flagger cannot send headers) the ``token``
    query parameter; nothing of the body is read before."""
    from guardrail.adapters.http.app import AUTH  # the app module imports this one: import at call time

    auth = request.app[AUTH]
    header = request.headers.get("Authorization")
    tokens = request.query.getall("token", [])
    if header is None and tokens:
        header = f"Bearer {tokens[-1]}"
    if header is None and auth.enabled:
        raise Unauthorized(
            "missing ci token: Flagger cannot send an Authorization header, so put the token in the "
            "webhook's URL, e.g. /hooks/flagger?type=rollout&token=<token> (metadata.token in the body is "
            "not read)",
            headers={"WWW-Authenticate": REALM},
        )
    auth.authorize(auth.authenticate(header), "ci")


async def flagger_hook(request: web.Request) -> web.Response:
    _authenticate_flagger(request)  # before anything of the body is read
    hook = read_query(request, FlaggerHookQuery).type
    body = await read_json(request, FlaggerHookIn)
    meta = body.metadata
    service = (meta.get("service") or "").strip() or body.name
    environment = (meta.get("environment") or "").strip() or body.namespace
    version = (meta.get("version") or "").strip() or None
    engine: Engine = request.app[ENGINE]
    try:
        deploy = await newest_deploy(engine, service=service, environment=environment, version=version)
    except NotFoundError as e:
        field = "metadata.service" if "service" in meta else "name"
        raise NotFoundError(e.detail, field=field) from None
    out = judgement(deploy, request.app[SETTINGS].server.public_url)
    if not flagger_answer(hook, out.decision):
        wanted = {"confirm-promotion": "pass", "rollback": "fail"}.get(hook, "anything but fail")
        raise HookRefused(
            f"{hook}: no (the judge says {out.decision}, this webhook advances on {wanted}): "
            f"{out.summary} — {out.deploy_url}"
        )
    answer: Literal["advance", "roll back"] = "roll back" if hook == "rollback" else "advance"
    resp = FlaggerHookOut(hook=hook, answer=answer, judgement=out)
    return web.Response(body=resp.model_dump_json().encode(), content_type="application/json")


# open routes that check their own credentials from the request head (see app.check_credentials)
PRE_AUTH: dict[Any, Callable[[web.Request], None]] = {flagger_hook: _authenticate_flagger}

INTEGRATION_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        f"{API}/analysis",
        get_analysis,
        "getAnalysis",
        "The newest matching deploy's judgement, flat, for an Argo Rollouts AnalysisTemplate "
        '(web provider, jsonPath "{$.decision}": pass | fail | continue | inconclusive | none); '
        "200 with decision none and deploy_id null while no deploy of the version is recorded",
        "read",
        tag="integrations",
        query=AnalysisQuery,
        response=JudgementOut,
        errors=(400, 401, 404),
    ),
    Route(
        "POST",
        "/hooks/flagger",
        flagger_hook,
        "flaggerHook",
        "Flagger webhook (the type in the query): 200 advances; confirm-promotion needs a pass, rollback "
        "answers 200 on a fail (roll back), the other types 200 until a fail. Needs a ci token, as "
        "Authorization: Bearer or in the URL as ?token= (Flagger cannot send headers); checked before "
        "the body is read",
        None,
        tag="integrations",
        body=FlaggerHookIn,
        query=FlaggerHookQuery,
        response=FlaggerHookOut,
        errors=(400, 401, 403, 404, 409, 413, 415),
    ),
)
