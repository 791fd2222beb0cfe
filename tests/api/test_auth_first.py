"""Authenticate first, everywhere: a request without valid credentials gets 401 (or 403 for a token
without the scope) before its body is read or parsed, on every route that takes a body. A body that
is malformed, over the size limit or not even decodable makes no difference."""

from __future__ import annotations

import gzip
from typing import Any

import pytest

from guardrail.adapters.http.app import ALL_ROUTES
from tests.api.conftest import MAX_BODY_BYTES, TOKENS, Api

BODY_ROUTES = [r for r in ALL_ROUTES if r.method in ("POST", "PUT", "PATCH")]
JSON = {"Content-Type": "application/json"}
BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "malformed": (b'{"service": "checkout", "steps": [', JSON),
    "huge": (b'{"pad": "' + b"x" * (4 * MAX_BODY_BYTES) + b'"}', JSON),
    "not gzip": (b"this is not gzip at all" * 10, {**JSON, "Content-Encoding": "gzip"}),
    "gzip bomb": (gzip.compress(b" " * (8 * MAX_BODY_BYTES)), {**JSON, "Content-Encoding": "gzip"}),
    "protobuf garbage": (b"\xff\xfe\x00garbage", {"Content-Type": "application/x-protobuf"}),
}
CREDENTIALS: dict[str, dict[str, str]] = {
    "none": {},
    "wrong token": {"Authorization": "Bearer not-a-token"},
    "not bearer": {"Authorization": "Basic Y2k6c2VjcmV0"},
}


def path_of(route: Any) -> str:
    path = route.path.replace("{id}", "0123456789abcdef").replace("{kind}", "postmortem")
    return path + ("?type=rollout" if path == "/hooks/flagger" else "")


def test_every_route_that_takes_a_body_is_covered() -> None:
    paths = {r.path for r in BODY_ROUTES}
    assert {
        "/api/v1/deploys",
        "/api/v1/deploys/{id}/samples",
        "/v1/metrics",
        "/hooks/alertmanager",
        "/hooks/flagger",
        "/api/v1/deploys/{id}/rollback",
        "/api/v1/deploys/{id}/drafts/{kind}",
    } <= paths


@pytest.mark.parametrize("credentials", list(CREDENTIALS))
@pytest.mark.parametrize("body", list(BODIES))
@pytest.mark.parametrize("route", BODY_ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_a_request_without_valid_credentials_is_401_whatever_its_body(
    api: Api, route: Any, body: str, credentials: str
) -> None:
    data, headers = BODIES[body]
    resp = await api.client.request(
        route.method, path_of(route), data=data, headers={**headers, **CREDENTIALS[credentials]}
    )
    assert resp.status == 401, (resp.status, await resp.text())
    assert "Bearer" in resp.headers.get("WWW-Authenticate", "")


@pytest.mark.parametrize("body", ["malformed", "huge"])
@pytest.mark.parametrize(
    "route",
    [r for r in BODY_ROUTES if r.scope in ("ci", "operator") or r.path == "/hooks/flagger"],
    ids=lambda r: f"{r.method} {r.path}",
)
async def test_a_token_without_the_scope_is_403_whatever_its_body(api: Api, route: Any, body: str) -> None:
    data, headers = BODIES[body]
    resp = await api.client.request(
        route.method,
        path_of(route),
        data=data,
        headers={**headers, "Authorization": f"Bearer {TOKENS['read'][1]}"},
    )
    assert resp.status == 403, (resp.status, await resp.text())


async def test_a_token_in_the_flagger_body_is_not_read_before_authentication(api: Api) -> None:
    """Flagger cannot send headers: its token travels in the webhook URL (?token=), never in the
    body, which is not read before the caller is known."""
    body = {"name": "checkout", "namespace": "production", "metadata": {"token": TOKENS["ci"][1]}}
    status, err = await api.call("POST", "/hooks/flagger?type=rollout", as_=None, json=body)
    assert status == 401 and "token=" in err["detail"]
    status, err = await api.call(
        "POST", f"/hooks/flagger?type=rollout&token={TOKENS['ci'][1]}", as_=None, json=body
    )
    assert status == 404, err  # authenticated: now the body is read (no deploy of checkout yet)
    status, err = await api.call(
        "POST", "/hooks/flagger?type=rollout&token=wrong", as_=None, data=BODIES["huge"][0], headers=JSON
    )
    assert status == 401, err


async def _first_answer(api: Api, method: str, path: str, headers: dict[str, str]) -> bytes:
    """The first bytes the server answers to a request head sent without its body."""
    import asyncio

    reader, writer = await asyncio.open_connection(api.client.host, api.client.port)
    head = f"{method} {path} HTTP/1.1\r\nHost: test\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    writer.write(head.encode() + b"\r\n")
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    finally:
        writer.close()


@pytest.mark.parametrize("route", BODY_ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_expect_100_continue_without_credentials_is_answered_401_not_continue(
    api: Api, route: Any
) -> None:
    """A client that asks before sending its body (Expect: 100-continue) is told 401 and never sends
    it; with a valid token it is told to go on."""
    headers = {**JSON, "Content-Length": str(4 * MAX_BODY_BYTES), "Expect": "100-continue"}
    answer = await _first_answer(api, route.method, path_of(route), headers)
    assert answer.startswith(b"HTTP/1.1 401"), answer
    scope = route.scope or "ci"
    token = TOKENS[scope][1]
    path = path_of(route) + (f"&token={token}" if route.path == "/hooks/flagger" else "")
    ok = {**headers} if route.path == "/hooks/flagger" else {**headers, "Authorization": f"Bearer {token}"}
    answer = await _first_answer(api, route.method, path, ok)
    assert answer.startswith(b"HTTP/1.1 100"), answer
