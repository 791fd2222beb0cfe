"""Bearer tokens with scopes; secrets (tokens, adapter config) never in output or logs."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web

from guardrail.config import Settings
from tests.api.conftest import TOKENS, Api, make_settings
from tests.api.helpers import marker, window


async def test_missing_or_invalid_token_is_401_with_www_authenticate(api: Api) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": f"Basic {TOKENS['ci'][1]}"},
        {"Authorization": "Bearer"},
    ):
        resp = await api.client.get("/api/v1/deploys", headers=headers)
        err = await resp.json()
        assert resp.status == 401, headers
        assert err["error"] == "unauthorized" and err["field"] is None
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_wrong_scope_is_403_naming_the_scope(api: Api) -> None:
    status, err = await api.call("POST", "/api/v1/deploys", as_="read", json=marker())
    assert status == 403 and err["error"] == "forbidden" and "'ci'" in err["detail"]
    status, err = await api.call("POST", "/api/v1/deploys", as_="operator", json=marker())
    assert status == 403 and "'ci'" in err["detail"]
    d = await api.mark(marker())
    status, err = await api.call(
        "POST", f"/api/v1/deploys/{d['id']}/rollback", as_="ci", json={"reason": "x"}
    )
    assert status == 403 and "'operator'" in err["detail"]
    status, err = await api.call(
        "POST", f"/api/v1/deploys/{d['id']}/samples", as_="read", json={"samples": window(0, 10)}
    )
    assert status == 403 and "'ci'" in err["detail"]
    assert await api.store.samples(d["id"]) == []
    _, listed = await api.call("GET", "/api/v1/deploys")
    assert [x["id"] for x in listed["deploys"]] == [d["id"]]


async def test_every_scope_may_read(api: Api) -> None:
    d = await api.mark(marker())
    for scope in ("ci", "operator", "read"):
        status, _ = await api.call("GET", f"/api/v1/deploys/{d['id']}", as_=scope)
        assert status == 200, scope


async def test_operations_endpoints_are_open(api: Api) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"):
        resp = await api.client.get(path)
        assert resp.status == 200, path


async def test_override_records_the_token_name_as_who(api: Api) -> None:
    d = await api.mark(marker())
    status, _ = await api.call(
        "POST", f"/api/v1/deploys/{d['id']}/pause", as_="operator", json={"reason": "checking dashboards"}
    )
    assert status == 200
    _, out = await api.call("GET", f"/api/v1/deploys/{d['id']}/events")
    (ev,) = [e for e in out["events"] if e["kind"] == "override"]
    assert ev["details"]["who"] == TOKENS["operator"][0] and ev["details"]["why"] == "checking dashboards"


class TestWithoutTokens:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(tokens=[])

    async def test_auth_is_off_and_who_is_anonymous(self, api: Api) -> None:
        status, d = await api.call("POST", "/api/v1/deploys", as_=None, json=marker())
        assert status == 201
        status, _ = await api.call(
            "POST", f"/api/v1/deploys/{d['id']}/pause", as_=None, json={"reason": "local test"}
        )
        assert status == 200
        _, out = await api.call("GET", f"/api/v1/deploys/{d['id']}/events", as_=None)
        (ev,) = [e for e in out["events"] if e["kind"] == "override"]
        assert ev["details"]["who"] == "anonymous"


HMAC_SECRET = "hmac-5ecret-9d2e1f"
HOOK_TOKEN = "hook-bearer-77c0aa31"
MISSPELT_SECRET = "misspelt-5ecret-4b4b"
BAD_TOKEN = "stolen-guess-0e0e0e"


class TestSecrets:
    """A webhook adapter preset holding an HMAC secret; markers may add secret headers."""

    @pytest.fixture
    async def hook(self, aiohttp_server: Any) -> tuple[str, list[dict[str, Any]]]:
        received: list[dict[str, Any]] = []

        async def hook(request: web.Request) -> web.Response:
            received.append(await request.json())
            return web.json_response({"ok": True})

        target = web.Application()
        target.router.add_post("/hook", hook)
        server = await aiohttp_server(target)
        return str(server.make_url("/hook")), received

    @pytest.fixture
    def settings(self, hook: tuple[str, list[dict[str, Any]]]) -> Settings:
        url, _ = hook
        preset = {
            "type": "webhook",
            "config": {"url": url, "secret": HMAC_SECRET, "retries": 0},
            "marker_keys": ["secret_headers"],
        }
        return make_settings(adapters={"hook": preset})

    async def test_tokens_and_adapter_secrets_never_appear_in_output_or_logs(
        self, api: Api, hook: tuple[str, list[dict[str, Any]]], caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        # aiosqlite's DEBUG log prints every statement with its parameters, the stored marker (adapter
        # config included) among them: a driver trace, kept at INFO here (and in production)
        caplog.set_level(logging.INFO, logger="aiosqlite")
        _, received = hook
        adapter = {"name": "hook", "config": {"secret_headers": {"Authorization": f"Bearer {HOOK_TOKEN}"}}}
        bodies: list[str] = []

        async def call(method: str, path: str, scope: str, **kw: Any) -> int:
            token = BAD_TOKEN if scope == "bad" else TOKENS[scope][1]
            resp = await api.client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)
            bodies.append(await resp.text())
            return resp.status

        assert await call("POST", "/api/v1/deploys", "ci", json=marker(adapter=adapter)) == 201
        (d,) = await api.store.list_deploys()
        assert (
            await call("POST", f"/api/v1/deploys/{d.id}/rollback", "operator", json={"reason": "drill"})
            == 200
        )
        await api.settled(d.id)  # the rollback runs in the background
        assert [r["metadata"]["guardrail_hook"] for r in received] == ["rollout", "rollback"]  # it really ran
        misspelt = {"name": "hook", "config": {"secrett": MISSPELT_SECRET}}
        assert await call("POST", "/api/v1/deploys", "ci", json=marker(adapter=misspelt)) == 400
        assert "secrett" in bodies[-1]  # the misspelt key is named, its value is not
        assert await call("GET", "/api/v1/deploys", "bad") == 401
        for path in (
            "/api/v1/deploys",
            f"/api/v1/deploys/{d.id}",
            f"/api/v1/deploys/{d.id}/events",
            f"/api/v1/deploys/{d.id}/wait?timeout=0",
            "/metrics",
            "/api/v1/openapi.json",
        ):
            assert await call("GET", path, "read") == 200, path
        events = await api.store.events(d.id)
        assert {e.kind for e in events} >= {"action_done", "override"}
        seen = "\n".join([*bodies, caplog.text, *(f"{e.message} {e.details}" for e in events)])
        for secret in (HMAC_SECRET, HOOK_TOKEN, MISSPELT_SECRET, BAD_TOKEN, *(t for _, t in TOKENS.values())):
            assert secret not in seen, secret

    async def test_marker_may_set_only_the_keys_the_preset_allows(self, api: Api) -> None:
        body = marker(adapter={"name": "hook", "config": {"url": "http://attacker.example/"}})
        status, err = await api.call("POST", "/api/v1/deploys", as_="ci", json=body)
        assert status == 400 and err["field"] == "adapter.config.url"
        assert "attacker" not in err["detail"]
        assert await api.store.list_deploys() == []
