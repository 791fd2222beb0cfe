"""Drafted documents: ``POST /api/v1/deploys/{id}/drafts/{kind}`` drafts and stores a new version,
``GET`` reads them back (JSON, or the Markdown itself with ``Accept: text/markdown`` or
``?format=markdown``)."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from guardrail.adapters.http.errors import NotReady
from guardrail.adapters.http.parsing import read_body, read_json, read_query
from guardrail.adapters.http.routes import API, Route
from guardrail.domain.drafts import Draft, DraftKind
from guardrail.domain.limits import INT64_MAX
from guardrail.service.drafts import DraftService

DRAFTS = web.AppKey("guardrail.drafts", DraftService)

_KINDS = ", ".join(k.value for k in DraftKind)


class DraftIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    llm: bool | None = Field(
        None,
        description="true: ask the configured LLM (falls back to the offline templates); "
        "false: offline templates; omitted: the LLM when one is configured",
    )


class DraftQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int | None = Field(None, ge=1, le=INT64_MAX, description="omitted: the newest version")
    format: Literal["json", "markdown"] = "json"


class DraftOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    deploy_id: str
    kind: str
    version: int
    source: str = Field(description="offline, or llm:<model>")
    note: str = Field(description="why an LLM answer was not used, when it was not")
    trigger: str = Field(description="request, rollback (drafted automatically) or cli")
    created_at: float
    url: str
    markdown: str | None = None

    @classmethod
    def of(cls, d: Draft, url: str, *, with_text: bool = True) -> DraftOut:
        return cls(
            deploy_id=d.deploy_id,
            kind=d.kind.value,
            version=d.version,
            source=d.source,
            note=d.note,
            trigger=d.trigger,
            created_at=d.created_at,
            url=url,
            markdown=d.markdown if with_text else None,
        )


class DraftList(BaseModel):
    model_config = ConfigDict(frozen=True)

    drafts: list[DraftOut] = Field(description="newest first, without the text")


def _service(request: web.Request) -> DraftService:
    svc = request.app.get(DRAFTS)
    if svc is None:
        raise NotReady("drafting is not set up in this server (the composition root did not wire it)")
    return svc


def _markdown_wanted(request: web.Request, fmt: str) -> bool:
    return fmt == "markdown" or "text/markdown" in request.headers.get("Accept", "")


def _respond(request: web.Request, draft: Draft, status: int, fmt: str = "json") -> web.Response:
    svc = _service(request)
    if _markdown_wanted(request, fmt):
        return web.Response(text=draft.markdown, status=status, content_type="text/markdown", charset="utf-8")
    out = DraftOut.of(draft, svc.url(draft))
    return web.Response(
        body=out.model_dump_json().encode(),
        status=status,
        content_type="application/json",
        headers={"Location": out.url} if status == 201 else None,
    )


async def create_draft(request: web.Request) -> web.Response:
    body = DraftIn() if not (await read_body(request)).strip() else await read_json(request, DraftIn)
    draft = await _service(request).draft(
        request.match_info["id"], request.match_info["kind"], use_llm=body.llm, trigger="request"
    )
    return _respond(request, draft, 201)


async def get_draft(request: web.Request) -> web.Response:
    q = read_query(request, DraftQuery)
    draft = await _service(request).get(request.match_info["id"], request.match_info["kind"], q.version)
    return _respond(request, draft, 200, q.format)


async def list_drafts(request: web.Request) -> web.Response:
    svc = _service(request)
    drafts = await svc.list(request.match_info["id"])
    out = DraftList(drafts=[DraftOut.of(d, svc.url(d), with_text=False) for d in drafts])
    return web.Response(body=out.model_dump_json().encode(), content_type="application/json")


def document(openapi: dict[str, Any]) -> None:
    """``getDraft`` answers the Markdown itself (``text/markdown``) with ``?format=markdown`` or
    ``Accept: text/markdown``: say so in the OpenAPI document built from the route table."""
    op = openapi["paths"][f"{API}/deploys/{{id}}/drafts/{{kind}}"]["get"]
    ok = op["responses"]["200"]
    ok["description"] = (
        "The draft as JSON; the Markdown itself (text/markdown) with ?format=markdown or Accept: text/markdown"
    )
    ok["content"]["text/markdown"] = {"schema": {"type": "string", "description": "the draft's Markdown"}}


DRAFT_ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        f"{API}/deploys/{{id}}/drafts/{{kind}}",
        create_draft,
        "createDraft",
        f"Draft a document from the deploy's record and store it as a new version. kind: {_KINDS}",
        "operator",
        tag="drafts",
        body=DraftIn,
        status=201,
        response=DraftOut,
        errors=(400, 401, 403, 404, 413, 415, 503),
    ),
    Route(
        "GET",
        f"{API}/deploys/{{id}}/drafts",
        list_drafts,
        "listDrafts",
        "The deploy's stored drafts, newest first (without their text)",
        "read",
        tag="drafts",
        response=DraftList,
        errors=(401, 404, 503),
    ),
    Route(
        "GET",
        f"{API}/deploys/{{id}}/drafts/{{kind}}",
        get_draft,
        "getDraft",
        "A stored draft (newest version unless ?version=N); Markdown with Accept: text/markdown or "
        "?format=markdown",
        "read",
        tag="drafts",
        query=DraftQuery,
        response=DraftOut,
        errors=(400, 401, 404, 503),
    ),
)
