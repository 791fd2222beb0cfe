"""``GET /api/v1/dora``: DORA key metrics per service and environment (see guardrail.domain.dora for
how each figure is computed). The composition root puts a :class:`DoraService` on the app under
:data:`DORA`; without one the route answers 503."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from guardrail.adapters.http.errors import NotReady
from guardrail.adapters.http.parsing import read_query
from guardrail.adapters.http.routes import API, Route
from guardrail.adapters.http.schemas import TIMESTAMP_HELP, Timestamp
from guardrail.domain.dora import DoraFigures
from guardrail.service.dora import DoraReport, DoraService

DORA = web.AppKey("guardrail.dora", DoraService)

Name = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]


class DoraQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    service: Name | None = Field(None, description="only this service")
    environment: Name | None = Field(None, description="only this environment")
    since: Timestamp | None = Field(
        None,
        description="deploys recorded at or after (default: until - dora.window_days); " + TIMESTAMP_HELP,
    )
    until: Timestamp | None = Field(
        None, description="deploys recorded before (default: now); " + TIMESTAMP_HELP
    )


class ResultCounts(BaseModel):
    model_config = ConfigDict(frozen=True)

    promoted: int
    rolled_back: int
    rollback_failed: int
    failed_after_promotion: int


class FailureOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    deploy_id: str
    version: str
    result: str
    reason: str
    detected_at: float | None
    recovered_at: float | None
    recovery_s: float | None


class DoraGroupOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    service: str
    environment: str
    finished: int = Field(description="terminal deploys recorded in the window")
    deployments: int = Field(description="deploys that reached production (promoted at some point)")
    results: ResultCounts = Field(description="finished deploys by result (disjoint)")
    deployment_frequency_per_day: float
    lead_time_median_s: float | None = Field(description="commit_time to promoted, wall time")
    lead_time_p90_s: float | None
    lead_time_measured: int
    lead_time_excluded_no_commit_time: int
    lead_time_excluded_negative: int = Field(description="commit_time after the promotion (clock skew)")
    failed: int = Field(description="rolled_back + rollback_failed + failed_after_promotion")
    change_failure_rate: float | None
    rollback_rate: float | None
    recovery_median_s: float | None = Field(
        description="detection (fail verdict, page alert, rollback start) to rollback done or alert resolved"
    )
    recovered: int
    unrecovered: int
    failures: list[FailureOut]

    @classmethod
    def of(cls, f: DoraFigures) -> DoraGroupOut:
        d = f.to_dict()
        del d["since"], d["until"]
        return cls.model_validate(d)


class DoraOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    since: float
    until: float
    watch_s: float = Field(description="post-promotion watch in which a page makes a deploy failed")
    time: str = Field("wall", description="DORA is measured on wall time, not data time")
    groups: list[DoraGroupOut]

    @classmethod
    def of(cls, r: DoraReport) -> DoraOut:
        return cls(
            since=r.since, until=r.until, watch_s=r.watch_s, groups=[DoraGroupOut.of(g) for g in r.groups]
        )


async def get_dora(request: web.Request) -> web.Response:
    q = read_query(request, DoraQuery)
    service = request.app.get(DORA)
    if service is None:
        raise NotReady("DORA metrics are not set up on this server")
    report = await service.report(service=q.service, environment=q.environment, since=q.since, until=q.until)
    return web.Response(body=DoraOut.of(report).model_dump_json().encode(), content_type="application/json")


DORA_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        f"{API}/dora",
        get_dora,
        "getDora",
        "DORA key metrics per service and environment: deployment frequency, change lead time, change "
        "failure rate, failed-deployment recovery time, rollback rate",
        "read",
        tag="dora",
        query=DoraQuery,
        response=DoraOut,
        errors=(400, 401, 503),
    ),
)
