"""Deploys as Honeycomb markers, one per deploy, made when it ends.

``POST {api_url}/1/markers/{dataset}`` with ``X-Honeycomb-Team: <api key>`` and::

    {"start_time": <started_at s>, "end_time": <finished s>, "message": "<service> <version> to
     <environment>: <result>", "type": "deploy", "url": "<deploy record>"}

Times are integer unix seconds of *data time* (the marker's ``started_at``, the data time the
deploy reached its terminal state), so a replayed deploy marks the period its data covers. The
dataset ``__all__`` makes an environment-wide marker. Honeycomb answers 201 with the marker.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

import aiohttp

from guardrail.adapters.annotate import JsonHttp, check_url
from guardrail.adapters.outbound import RetryPolicy
from guardrail.ports import AnnotationRef, AnnotationResult, DeployAnnotation

__all__ = ["HoneycombAnnotator"]

MAX_MESSAGE = 500


class HoneycombAnnotator:
    name = "honeycomb"

    def __init__(
        self,
        *,
        dataset: str,
        api_key: str,
        api_url: str = "https://api.honeycomb.io",
        timeout_s: float = 5.0,
        session: aiohttp.ClientSession | None = None,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._base = check_url(api_url, "annotations.honeycomb.api_url")
        self.dataset = dataset
        self._key = api_key
        self._http = JsonHttp(
            session=session, timeout_s=timeout_s, secrets=[api_key], policy=policy, sleep=sleep
        )

    def __repr__(self) -> str:  # the key stays out
        return f"HoneycombAnnotator(api_url={str(self._base)!r}, dataset={self.dataset!r})"

    async def close(self) -> None:
        await self._http.close()

    @staticmethod
    def message(info: DeployAnnotation) -> str:
        text = f"{info.service} {info.version} to {info.environment}: {info.result or 'finished'}"
        if info.summary:
            text += f" ({info.summary})"
        return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"

    async def deploy_started(self, info: DeployAnnotation) -> AnnotationResult:
        return AnnotationResult(True, False, "honeycomb: the marker is made when the deploy ends")

    async def deploy_finished(self, info: DeployAnnotation, ref: AnnotationRef | None) -> AnnotationResult:
        end = info.finished_at if info.finished_at is not None else info.started_at
        body = {
            "start_time": math.floor(info.started_at),
            "end_time": math.ceil(max(end, info.started_at)),
            "message": self.message(info),
            "type": "deploy",
            "url": info.url,
        }
        url = self._base / "1" / "markers" / self.dataset
        answer = await self._http.send("POST", url, body, {"X-Honeycomb-Team": self._key})
        got = answer.json() if answer.ok else None
        made = AnnotationRef(self.name, str(got["id"])) if isinstance(got, dict) and got.get("id") else None
        return answer.result(
            f"honeycomb: POST {self._base.host}/1/markers/{self.dataset} ({info.deploy_id})", ref=made
        )
