"""A real app for the API tests: SqlStore on a temporary SQLite file, the engine with the
entry-point deploy adapters, and the aiohttp test server."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from guardrail.adapters.db import SqlStore, upgrade
from guardrail.adapters.http import create_app
from guardrail.config import Settings
from guardrail.plugins import load_deploy_adapter
from guardrail.service.engine import Engine
from guardrail.telemetry import Telemetry

TOKENS = {
    "ci": ("ci-bot", "tok-ci-7b1f0c9e4d"),
    "operator": ("alice", "tok-operator-52aa81c3"),
    "read": ("dashboard", "tok-read-e0d94b"),
}
PUBLIC_URL = "https://guardrail.example.test"
MAX_BODY_BYTES = 64 * 1024


def auth(scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[scope][1]}"}


@dataclass
class Api:
    """The test client plus the engine and store behind it."""

    client: TestClient
    engine: Engine
    store: SqlStore
    settings: Settings

    async def call(
        self, method: str, path: str, *, as_: str | None = "read", json: Any = None, **kw: Any
    ) -> tuple[int, Any]:
        headers = {**(auth(as_) if as_ else {}), **kw.pop("headers", {})}
        resp = await self.client.request(method, path, json=json, headers=headers, **kw)
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body

    async def mark(self, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        """Post a marker, then wait for the actions it started (they run in the background)."""
        status, out = await self.call("POST", "/api/v1/deploys", as_="ci", json=body, **kw)
        assert status == 201, out
        return {**out, **await self.settled(out["id"])}

    async def push(self, deploy_id: str, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Push samples, then wait for the actions they started: ``deploy`` is the settled deploy."""
        status, out = await self.call(
            "POST", f"/api/v1/deploys/{deploy_id}/samples", as_="ci", json={"samples": samples}
        )
        assert status == 202, out
        return {**out, "deploy": {**out["deploy"], **await self.settled(deploy_id)}}

    async def settled(self, deploy_id: str) -> dict[str, Any]:
        """The deploy once none of its adapter actions is pending or running (``?until=settled``)."""
        status, out = await self.call("GET", f"/api/v1/deploys/{deploy_id}/wait?until=settled&timeout=20")
        assert status == 200 and out["actions_pending"] == 0, out
        return {k: v for k, v in out.items() if k not in ("terminal", "actions_pending")}


def make_settings(**overrides: Any) -> Settings:
    data: dict[str, Any] = {
        "tokens": [{"name": n, "token": t, "scopes": [scope]} for scope, (n, t) in TOKENS.items()],
        "server": {"public_url": PUBLIC_URL, "max_body_bytes": MAX_BODY_BYTES, "wait_max_s": 30},
    }
    data.update(overrides)
    return Settings.model_validate(data)


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty database at the newest schema, migrated once; each test gets a copy."""
    path = tmp_path_factory.mktemp("template") / "guardrail.db"
    asyncio.run(upgrade(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture
async def store(tmp_path: Path, migrated_db: Path) -> AsyncIterator[SqlStore]:
    path = tmp_path / "guardrail.db"
    shutil.copyfile(migrated_db, path)
    s = SqlStore(f"sqlite+aiosqlite:///{path}")
    yield s
    await s.close()


@pytest.fixture
async def api(aiohttp_client: Any, store: SqlStore, settings: Settings) -> AsyncIterator[Api]:
    telemetry = Telemetry()
    engine = Engine(
        store=store, settings=settings, adapter_factory=load_deploy_adapter, telemetry=telemetry
    )
    app = create_app(engine=engine, settings=settings, telemetry=telemetry)
    client = await aiohttp_client(app)
    yield Api(client, engine, store, settings)
    await engine.close()
