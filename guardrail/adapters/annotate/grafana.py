"""Deploys as Grafana annotations: a point when a deploy starts, turned into a region when it ends.

Start: ``POST {url}/api/annotations`` with ``Authorization: Bearer <service account token>`` and::

    {"time": <started_at ms>, "tags": ["deploy", service, version, environment, *extra],
     "text": "Deploy ... <a href=...>deploy record</a>", "dashboardUID": "<uid>"}   # uid optional

Grafana answers ``{"message": "Annotation added", "id": N}``; ``N`` is the ref. End: ``PATCH
{url}/api/annotations/N`` with ``time``, ``timeEnd`` (the region), the tags plus the result
(``promoted``, ``rolled_back``, ``rollback_failed``) and the text with the verdict summary. When
there is no ref (the start mark failed, or guardrail restarted and forgot it) or Grafana answers
404 to the PATCH, the end POSTs a new region annotation instead.

Times are epoch milliseconds of *data time*: the marker's ``started_at`` and the data time the
deploy reached its terminal state, so a replayed deploy annotates the period its data covers.
Without ``dashboardUID`` the annotation is org-wide and shows through a tag query (``deploy``).
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Awaitable, Callable

import aiohttp

from guardrail.adapters.annotate import JsonHttp, check_url
from guardrail.adapters.outbound import RetryPolicy
from guardrail.ports import AnnotationRef, AnnotationResult, DeployAnnotation

__all__ = ["GrafanaAnnotator"]


def ms(t: float) -> int:
    return round(t * 1000)


class GrafanaAnnotator:
    name = "grafana"

    def __init__(
        self,
        *,
        url: str,
        token: str,
        dashboard_uid: str | None = None,
        tags: tuple[str, ...] = (),
        timeout_s: float = 5.0,
        session: aiohttp.ClientSession | None = None,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._base = check_url(url, "annotations.grafana.url")
        self._token = token
        self.dashboard_uid = dashboard_uid
        self.extra_tags = tuple(tags)
        self._http = JsonHttp(
            session=session, timeout_s=timeout_s, secrets=[token], policy=policy, sleep=sleep
        )

    def __repr__(self) -> str:  # the token stays out
        return f"GrafanaAnnotator(url={str(self._base)!r}, dashboard_uid={self.dashboard_uid!r})"

    async def close(self) -> None:
        await self._http.close()

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def tags(self, info: DeployAnnotation, *, finished: bool = False) -> list[str]:
        tags = ["deploy", info.service, info.version, info.environment, *self.extra_tags]
        if finished and info.result:
            tags.append(info.result)
        return list(dict.fromkeys(t for t in tags if t))  # no empty or repeated tags, order kept

    @staticmethod
    def text(info: DeployAnnotation, *, finished: bool = False) -> str:
        e = html.escape
        head = f"Deploy of {e(info.service)} {e(info.version)} to {e(info.environment)}"
        if finished:
            head += f": {e(info.result or 'finished')}"
            if info.summary:
                head += f". {e(info.summary)}"
        else:
            head += f" started (from {e(info.previous_version)}, commit {e(info.commit)})"
        return f'{head}<br/><a href="{e(info.url, quote=True)}">deploy record</a>'

    def _body(self, info: DeployAnnotation, *, finished: bool) -> dict[str, object]:
        body: dict[str, object] = {"time": ms(info.started_at)}
        if finished and info.finished_at is not None:
            body["timeEnd"] = ms(max(info.finished_at, info.started_at))
        body["tags"] = self.tags(info, finished=finished)
        body["text"] = self.text(info, finished=finished)
        return body

    async def _post(self, info: DeployAnnotation, *, finished: bool) -> AnnotationResult:
        body = self._body(info, finished=finished)
        if self.dashboard_uid:
            body["dashboardUID"] = self.dashboard_uid
        answer = await self._http.send("POST", self._base / "api" / "annotations", body, self._headers)
        what = f"grafana: POST {self._base.host}/api/annotations ({info.deploy_id})"
        if not answer.ok:
            return answer.result(what)
        got = answer.json()
        ident = got.get("id") if isinstance(got, dict) else None
        if isinstance(ident, bool) or not isinstance(ident, int | str) or ident == "":
            return answer.result(what + ": no annotation id in the answer")
        return answer.result(what, ref=AnnotationRef(self.name, str(ident)))

    async def deploy_started(self, info: DeployAnnotation) -> AnnotationResult:
        return await self._post(info, finished=False)

    async def deploy_finished(self, info: DeployAnnotation, ref: AnnotationRef | None) -> AnnotationResult:
        if ref is None or ref.annotator != self.name:
            return await self._post(info, finished=True)
        answer = await self._http.send(
            "PATCH",
            self._base / "api" / "annotations" / ref.id,
            self._body(info, finished=True),
            self._headers,
        )
        if answer.status == 404:  # deleted in Grafana, or another Grafana: mark the region anew
            return await self._post(info, finished=True)
        return answer.result(
            f"grafana: PATCH {self._base.host}/api/annotations/{ref.id} ({info.deploy_id})", ref=ref
        )
