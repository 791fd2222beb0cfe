"""Reading an outbound call's response body for the record: capped, and redacted so that no secret,
and no half of one cut at the edge, survives."""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp

from guardrail.secrets import redact_text


async def read_redacted(resp: aiohttp.ClientResponse, secrets: Sequence[str], limit_bytes: int) -> str:
    """About ``limit_bytes`` of the body, decoded and with every secret replaced. A body that ends
    early (the status is the answer) is just shorter."""
    longest = max((len(s) for s in secrets), default=0)
    wanted = limit_bytes + 4 * (longest + 1)  # up to 4 bytes per character in UTF-8
    chunks: list[bytes] = []
    size = 0
    cut = False
    try:
        async for chunk in resp.content.iter_chunked(16384):
            chunks.append(chunk)
            size += len(chunk)
            if size >= wanted:
                cut = True
                break
    except (aiohttp.ClientError, TimeoutError):
        cut = True
    text = b"".join(chunks).decode("utf-8", errors="replace")
    if cut and longest:
        text = text[: len(text) - longest - 1]  # no half of a secret survives the cut
    return redact_text(text, secrets)
