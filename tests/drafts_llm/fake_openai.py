"""A local OpenAI-compatible chat-completions server for the LLM drafter's tests.

It answers ``POST /v1/chat/completions`` with the documented response shape, from a script of
replies (one per request, the last one repeated), and records every request it receives (the JSON
body and the headers) so tests can assert on what guardrail sent.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Reply:
    """One scripted reply: an answer text (``content``; None for a null content), or an HTTP error
    ``status`` with optional headers, after sleeping ``delay_s``."""

    content: str | None = ""
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    finish_reason: str = "stop"


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def user_message(self) -> str:
        return next(m["content"] for m in self.body["messages"] if m["role"] == "user")

    @property
    def raw(self) -> str:
        return json.dumps(self.body, ensure_ascii=False)


class FakeOpenAI:
    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies) or [Reply("# Empty")]
        self.received: list[Received] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        return app

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append(Received(body, dict(request.headers)))
        reply = self.replies[min(len(self.received), len(self.replies)) - 1]
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            error = {"error": {"message": f"scripted {reply.status}", "type": "server_error", "code": None}}
            return web.json_response(error, status=reply.status, headers=reply.headers)
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.received)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.content},
                        "finish_reason": reply.finish_reason,
                    }
                ],
                "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
            }
        )
