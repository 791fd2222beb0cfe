"""Every configured secret is known by value and taken out of whatever guardrail stores, shows or
logs: adapter results and errors, log lines (tracebacks included) and the access log's query
strings."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from guardrail.adapters.http.access_log import access_logger
from guardrail.config import Settings
from guardrail.domain.errors import ConfigError
from guardrail.domain.model import Step
from guardrail.ports import ActionResult, DeployTarget
from guardrail.redaction import (
    RedactingDeployAdapter,
    Redactor,
    install_log_redaction,
    redact_query,
    redacting_factory,
    settings_secrets,
)

DB_PASSWORD = "db/pass:w0rd@x"  # needs percent-encoding in a URL


def full_settings(tmp_path: Path) -> Settings:
    token_file = tmp_path / "prom-token"
    token_file.write_text("prom-file-token-8812\n")
    return Settings.model_validate(
        {
            "database_url": f"postgresql+asyncpg://guardrail:{quote(DB_PASSWORD, safe='')}@db:5432/guardrail",
            "tokens": [{"name": "ci", "token": "api-token-1111", "scopes": ["ci"]}],
            "prometheus": {
                "url": "http://127.0.0.1:9090",
                "bearer_token_file": str(token_file),
                "secret_headers": {"X-Api-Key": "prom-header-2222"},
            },
            "llm": {"enabled": True, "api_key_env": "TEST_LLM_KEY"},
            "notifications": {
                "notifiers": {
                    "hook": {
                        "type": "webhook",
                        "config": {"url": "http://127.0.0.1:1/h", "secret": "whsec-3333"},
                    },
                    "pd": {"type": "pagerduty", "config": {"routing_key": "pd-routing-4444"}},
                },
            },
            "adapters": {
                "target": {
                    "type": "command",
                    "config": {
                        "apply_step": "./d.sh",
                        "rollback": "./d.sh",
                        "secret_env": {"LB_TOKEN": "lb-token-5555"},
                        "pass_secret_env": ["CLOUD_TOKEN"],
                    },
                },
                "hook": {
                    "type": "webhook",
                    "config": {"url": "http://127.0.0.1:1/d", "secret": "deploy-hmac-6666"},
                },
            },
            "annotations": {
                "grafana": {"url": "http://127.0.0.1:3000", "token_env": "TEST_GRAFANA_TOKEN"},
                "honeycomb": {"dataset": "prod", "api_key": "honey-7777"},
            },
        }
    )


def test_settings_secrets_finds_every_kind_of_configured_secret(tmp_path: Path) -> None:
    env = {
        "TEST_LLM_KEY": "sk-llm-8888",
        "TEST_GRAFANA_TOKEN": "glsa-9999",
        "CLOUD_TOKEN": "cloud-0000",
        "UNRELATED": "not-a-secret",
    }
    found = set(settings_secrets(full_settings(tmp_path), env=env))
    assert {
        "api-token-1111",
        DB_PASSWORD,
        quote(DB_PASSWORD, safe=""),
        "prom-file-token-8812",
        "prom-header-2222",
        "sk-llm-8888",
        "whsec-3333",
        "pd-routing-4444",
        "lb-token-5555",
        "cloud-0000",
        "deploy-hmac-6666",
        "glsa-9999",
        "honey-7777",
    } <= found
    assert "not-a-secret" not in found and "guardrail" not in found


def test_a_password_free_sqlite_url_and_no_secrets_give_nothing() -> None:
    assert settings_secrets(Settings(), env={}) == []


def test_redactor_takes_secrets_out_of_text_and_nested_values() -> None:
    r = Redactor(["hunter2-secret", "hunter2"])
    assert r.text("a hunter2-secret b hunter2") == "a *** b ***"
    assert r.value({"k": ["x hunter2", {"n": 1, "s": "hunter2-secret"}], "t": ("hunter2",)}) == {
        "k": ["x ***", {"n": 1, "s": "***"}],
        "t": ("***",),
    }


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("/deploys/x?token=tok-1&limit=5", "/deploys/x?token=***&limit=5"),
        ("/hooks/flagger?type=rollout&token=tok-2", "/hooks/flagger?type=rollout&token=***"),
        (
            "/a?access_token=a1&api_key=a2&apikey=a3&secret=a4&password=a5&sig=a6",
            "/a?access_token=***&api_key=***&apikey=***&secret=***&password=***&sig=***",
        ),
        ('GET /x?Token=abc HTTP/1.1" 200', 'GET /x?Token=*** HTTP/1.1" 200'),
        ("/plain?service=checkout&version=1", "/plain?service=checkout&version=1"),
    ],
)
def test_redact_query_hides_token_like_parameters(raw: str, shown: str) -> None:
    assert redact_query(raw) == shown


class Leaky:
    name = "leaky"

    def __init__(self, secret: str) -> None:
        self.secret = secret

    async def apply_step(self, target: DeployTarget, step: Step, index: int, total: int) -> ActionResult:
        s = self.secret
        return ActionResult(
            False, f"failed with {s}", output=f"env: KEY={s}\n", data={"argv": ["x", s], "n": 1}
        )

    async def finalize(self, target: DeployTarget) -> ActionResult:
        raise RuntimeError(f"connect failed: postgresql://u:{self.secret}@db")

    async def rollback(self, target: DeployTarget, reason: str) -> ActionResult:
        return ActionResult(True, "ok")


TARGET = DeployTarget(
    deploy_id="d", service="s", environment="e", version="v", previous_version="p", commit="c", action_key="k"
)


async def test_adapter_results_and_errors_are_redacted() -> None:
    secret = "leaked-secret-1234"
    adapter = RedactingDeployAdapter(Leaky(secret), Redactor([secret]))
    assert adapter.name == "leaky"
    result = await adapter.apply_step(TARGET, Step(weight=1), 0, 1)
    assert result == ActionResult(
        False, "failed with ***", output="env: KEY=***\n", data={"argv": ["x", "***"], "n": 1}
    )
    with pytest.raises(RuntimeError) as e:
        await adapter.finalize(TARGET)
    assert secret not in str(e.value) and "***" in str(e.value)
    assert (await adapter.rollback(TARGET, "r")).ok


def test_adapter_config_errors_are_redacted() -> None:
    def factory(name: str, config: dict[str, Any]) -> Any:
        raise ConfigError(f"bad url http://u:{config['pw']}@x", field="adapter.config.url")

    with pytest.raises(ConfigError) as e:
        redacting_factory(factory, Redactor(["pw-5678"]))("webhook", {"pw": "pw-5678"})
    assert "pw-5678" not in e.value.detail and e.value.field == "adapter.config.url"


def test_log_lines_and_tracebacks_are_redacted() -> None:
    secret = "log-secret-4321"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    log = logging.getLogger("guardrail.test_redaction")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    uninstall = install_log_redaction(Redactor([secret]))
    try:
        log.info("calling %s with %s", "http://x/hook?token=abc123", secret)
        try:
            raise ValueError(f"bad answer {secret}")
        except ValueError:
            log.exception("failed")
    finally:
        uninstall()
        log.removeHandler(handler)
    text = stream.getvalue()
    assert secret not in text and "abc123" not in text
    assert "calling http://x/hook?token=*** with ***" in text and "ValueError: bad answer ***" in text
    log.addHandler(handler)
    try:
        log.info("after %s", secret)  # uninstalled: records are as they were
    finally:
        log.removeHandler(handler)
    assert f"after {secret}" in stream.getvalue()


async def test_the_access_log_never_shows_a_token_from_a_query_string(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "tok-in-query-7777"

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/x", ok)
    server = TestServer(app)
    await server.start_server(access_log_class=access_logger(Redactor([secret])))
    client = TestClient(server)
    try:
        with caplog.at_level(logging.INFO, logger="aiohttp.access"):
            await client.get("/x", params={"token": secret, "service": "checkout"})
            await client.get(
                "/x",
                params={"access_token": "other-token-1"},
                headers={"Referer": f"http://a/b?token={secret}"},
            )
            await client.get("/x", headers={"User-Agent": f"curl {secret}"})
    finally:
        await client.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert len(lines) == 3, lines
    text = "\n".join(lines) + repr([r.__dict__ for r in caplog.records])
    assert secret not in text and "other-token-1" not in text
    assert "GET /x?token=***&service=checkout" in lines[0]
