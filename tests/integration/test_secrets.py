"""No configured secret leaves guardrail: a real ``guardrail serve`` is seeded with an API token, a
notifier's webhook secret, an LLM key, a database password, a Prometheus bearer token and a secret
given to the deploy command; a deploy whose command prints its whole environment (and echoes the
variables the secrets might have reached it through) is rolled back, drafted by a (fake) LLM and
offline, and then every place something is stored or shown is searched for every secret value:
the server's log (every logger, the access log included), ``/metrics``, every API answer about the
deploy, the HTML pages, every row of every table, the drafts, the prompt the LLM received and what
the notifier's webhook received."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import MetaData, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from guardrail.domain.drafts import DraftKind
from tests.api.helpers import marker, window
from tests.drafts_llm.fake_openai import FakeOpenAI, Reply
from tests.integration.servers import GuardrailProcess, free_port

pytestmark = pytest.mark.integration

SECRETS = {
    "API token": "tok-api-Zq81mXv4Lr0w",
    "webhook secret": "whsec-Pn27cYq0Ht3k",
    "LLM key": "sk-llm-Jd93kWs5Fa6e",
    "database password": "pgpass-Rt64bNe8Ux2c",
    "Prometheus bearer token": "prom-bearer-Wc45hLm2Qz7a",
    "command secret_env": "deploysecret-Gk38vTy1Po5s",
}
LLM_KEY_ENV = "SECRETS_TEST_LLM_KEY"

SCRIPT = """#!/bin/sh
# prints everything it was given, and echoes where secrets might have reached it
echo "action $1"
env | sort
echo "llm=${SECRETS_TEST_LLM_KEY} db=${GUARDRAIL_DATABASE_URL}"
echo "webhook=${GUARDRAIL_NOTIFICATIONS__NOTIFIERS__HOOK__CONFIG__SECRET} given=${DEPLOY_SECRET}"
"""


class Recorder:
    """A webhook receiver that keeps every request body."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()

        async def hook(request: web.Request) -> web.Response:
            self.bodies.append(json.dumps({"headers": dict(request.headers), "body": await request.text()}))
            return web.json_response({"ok": True})

        app.router.add_post("/hook", hook)
        return app


class Server(GuardrailProcess):
    """``guardrail serve`` with the secrets: some in the config file, some in its environment (as a
    twelve-factor deployment passes them)."""

    def __init__(self, tmp: Path, port: int, env: dict[str, str]) -> None:
        super().__init__(tmp / "guardrail.yaml", tmp / "server.log", port)
        self.env = env

    def spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDRAIL_")}
        env.update(self.env)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "guardrail.cli", "serve", "--config", str(self.config)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.alive = True


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL carrying the password (PostgreSQL on trust auth accepts it and ignores it;
    for SQLite the URL has no password and the case checks the other secrets)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'guardrail.db'}"
        return
    create = request.getfixturevalue("pg_database_factory")
    url = make_url(create()).set(password=SECRETS["database password"])
    yield url.render_as_string(hide_password=False)


async def _dump_database(url: str) -> str:
    """Every row of every table, as text."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            meta = MetaData()
            await conn.run_sync(meta.reflect)
            lines = []
            for table in meta.sorted_tables:
                for row in (await conn.execute(select(table))).all():
                    lines.append(f"{table.name}: " + json.dumps(list(row), default=str))  # Row's repr cuts
        return "\n".join(lines)
    finally:
        await engine.dispose()


def _config(tmp: Path, port: int, script: Path, llm_url: str, hook_url: str) -> str:
    return textwrap.dedent(f"""
        server: {{host: 127.0.0.1, port: {port}, public_url: "http://127.0.0.1:{port}"}}
        tokens: [{{name: ci, token: {SECRETS["API token"]}, scopes: [ci, operator, read]}}]
        engine: {{tick_s: 0.5}}
        prometheus: {{bearer_token: {SECRETS["Prometheus bearer token"]}}}
        llm: {{enabled: true, base_url: "{llm_url}", model: local-model, api_key_env: {LLM_KEY_ENV},
               timeout_s: 10, max_retries: 0}}
        notifications:
          notifiers:
            hook: {{type: webhook, config: {{url: "{hook_url}"}}}}
          routes: [{{severity: page, notifiers: [hook]}}, {{severity: ticket, notifiers: [hook]}},
                   {{severity: info, notifiers: [hook]}}]
          poll_s: 0.2
        adapters:
          target:
            type: command
            config:
              apply_step: "{script} apply {{step}}"
              finalize: "{script} finalize 0"
              rollback: "{script} rollback 0"
              timeout_s: 30
              secret_env: {{DEPLOY_SECRET: {SECRETS["command secret_env"]}}}
              # passed on purpose as a plain variable: the server-wide redaction still hides it
              pass_env: [{LLM_KEY_ENV}]
    """)


async def test_no_secret_reaches_a_log_page_answer_table_draft_or_prompt(
    tmp_path: Path, database_url: str
) -> None:
    script = tmp_path / "deploy.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    fake_llm = FakeOpenAI(Reply("# Post-mortem\n\nWritten by the model."))
    llm_server = TestServer(fake_llm.app())
    recorder = Recorder()
    hook_server = TestServer(recorder.app())
    await llm_server.start_server()
    await hook_server.start_server()
    port = free_port()
    (tmp_path / "guardrail.yaml").write_text(
        _config(tmp_path, port, script, str(llm_server.make_url("/v1")), str(hook_server.make_url("/hook")))
    )
    server = Server(
        tmp_path,
        port,
        {
            LLM_KEY_ENV: SECRETS["LLM key"],
            "GUARDRAIL_DATABASE_URL": database_url,
            "GUARDRAIL_NOTIFICATIONS__NOTIFIERS__HOOK__CONFIG__SECRET": SECRETS["webhook secret"],
        },
    )
    base = f"http://127.0.0.1:{port}"
    token = SECRETS["API token"]
    answers: dict[str, str] = {}
    server.spawn()
    try:
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token}"}, timeout=aiohttp.ClientTimeout(total=60)
        ) as http:
            await server.ready(http, tries=200)

            async def get(path: str, **kw: Any) -> str:
                async with http.get(base + path, **kw) as r:
                    text = await r.text()
                answers[f"GET {path} {kw or ''}"] = text
                return text

            body = marker(
                adapter={"name": "target"}, steps=[{"weight": 10, "min_duration_s": 0}, {"weight": 100}]
            )
            async with http.post(f"{base}/api/v1/deploys", json=body) as r:
                text = await r.text()
                assert r.status == 201, text
                answers["POST /api/v1/deploys"] = text
                deploy = json.loads(text)
            did = deploy["id"]
            # the first step is applied in the background: its data starts once it is in effect
            await get(f"/api/v1/deploys/{did}/wait", params={"until": "settled", "timeout": "30"})
            for i in range(60):  # a failing canary: rolled back
                samples = window(i, 10, canary_error_rate=0.2)
                async with http.post(f"{base}/api/v1/deploys/{did}/samples", json={"samples": samples}) as r:
                    text = await r.text()
                    answers[f"POST samples {i}"] = text
                    assert r.status == 202, text
                    if json.loads(text)["deploy"]["state"] != "analyzing":
                        break
            final = json.loads(
                await get(f"/api/v1/deploys/{did}/wait", params={"until": "settled", "timeout": "30"})
            )
            assert final["state"] == "rolled_back", final
            for _ in range(100):  # the automatic post-mortem, written by the (fake) model
                async with http.get(f"{base}/api/v1/deploys/{did}/drafts/postmortem") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.1)
            for kind in DraftKind:  # every document offline too
                async with http.post(
                    f"{base}/api/v1/deploys/{did}/drafts/{kind.value}", json={"llm": False}
                ) as r:
                    answers[f"POST drafts/{kind.value}"] = await r.text()
                await get(f"/api/v1/deploys/{did}/drafts/{kind.value}")
            for path in (
                "/api/v1/deploys",
                f"/api/v1/deploys/{did}",
                f"/api/v1/deploys/{did}/events",
                f"/api/v1/deploys/{did}/drafts",
                "/api/v1/analysis?service=checkout",
                "/api/v1/dora",
                "/metrics",
                "/deploys",
                f"/deploys/{did}",
                "/api/v1/openapi.json",
            ):
                await get(path)
            # a browser or a Flagger webhook URL carrying the token in the query string
            async with (
                aiohttp.ClientSession() as anonymous,
                anonymous.get(f"{base}/deploys/{did}", params={"token": token}) as r,
            ):
                answers["GET page ?token="] = await r.text()
            for _ in range(50):  # the notices of the rollback reach the webhook
                if recorder.bodies:
                    break
                await asyncio.sleep(0.1)
    finally:
        server.stop()
        await llm_server.close()
        await hook_server.close()

    log = server.log.read_text()
    events = json.loads(answers[f"GET /api/v1/deploys/{did}/events "])["events"]
    outputs = "\n".join(str(e["details"].get("output", "")) for e in events)
    # the probe ran: the command printed its environment, the model and the webhook were called,
    # the access log has the request with the token in its query
    assert "action apply" in outputs and "PATH=" in outputs, outputs[:2000]
    assert "action rollback" in outputs
    assert "given=***" in outputs, "the command was not given its secret_env (or it was not redacted)"
    assert f"{LLM_KEY_ENV}=***" in outputs, (
        "the command was not given the pass_env variable (or it was not redacted)"
    )
    assert fake_llm.received, "the LLM drafter was not called"
    assert recorder.bodies, "the webhook notifier was not called"
    assert f"GET /deploys/{did}?token=" in log, log[-3000:]
    places = {
        "server log": log,
        "database": await _dump_database(database_url),
        "LLM prompt": "\n".join(r.raw for r in fake_llm.received),  # its headers carry the LLM key, rightly
        "webhook bodies": "\n".join(recorder.bodies),
        **{f"answer to {k}": v for k, v in answers.items()},
    }
    found = sorted(
        {(name, where) for name, value in SECRETS.items() for where, text in places.items() if value in text}
    )
    assert not found, "secrets found:\n" + "\n".join(f"  {name} in {where}" for name, where in found)
