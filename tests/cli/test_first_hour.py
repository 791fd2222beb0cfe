"""Issue 14 part D: the newcomer's first hour with the ``guardrail`` command.

What a new user runs in order: ``config check``, ``serve`` (its start-up line, refusing to run without
tokens), ``db upgrade``, ``mark`` (every problem at once, policy warnings, the checklist and metrics
source as flags), ``status`` with the flags after the subcommand, ``draft`` (reads what is stored).
Each test runs the real command in a subprocess, against the real server where it needs one."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from guardrail.adapters.db.migrate import head_revision
from guardrail.config import Settings
from guardrail.main import build_app
from tests.cli.test_cli import (
    CLEAN_ENV,
    TOKENS,
    Guardrail,
    Result,
    _free_port,
    finish,
    settings_for,
    start,
)


@pytest.fixture
async def g(tmp_path: Path) -> AsyncIterator[Guardrail]:
    """The server of tests/cli/test_cli.py: SQLite in tmp_path, the checkout-deploy command preset."""
    port = _free_port()
    app = await build_app(Settings.model_validate(settings_for(tmp_path, port)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            yield Guardrail(f"http://127.0.0.1:{port}", tmp_path, http)
    finally:
        await runner.cleanup()


REQUIRED = ("service", "environment", "version", "previous_version", "commit", "change_type")


async def _cli(*args: str, cwd: Path) -> Result:
    """The CLI with no --url/--token in front (they come after the subcommand, or not at all). The
    timeout is generous: a loaded CI machine takes seconds just to import."""
    return await finish(await start([sys.executable, "-m", "guardrail.cli", *args], cwd), timeout=120)


async def run(*args: str) -> Result:
    """A local command (serve, db, config, draft) run from the current directory."""
    return await _cli(*args, cwd=Path.cwd())


# --- item 10: --url and --token before or after the subcommand ------------------------------------------


async def test_url_and_token_work_after_the_subcommand(g: Guardrail):
    d = await g.create("1.4.2", "1.4.1")
    r = await _cli("status", d["id"], "--url", g.url, "--token", TOKENS["read"], cwd=g.tmp)
    assert r.code == 0, r.err
    assert r.out.startswith(f"{d['id']}  checkout 1.4.2 (production): analyzing")


async def test_flags_after_the_subcommand_win_over_the_environment(g: Guardrail):
    d = await g.create("1.4.2", "1.4.1")
    env = {**CLEAN_ENV, "GUARDRAIL_URL": "http://127.0.0.1:9", "GUARDRAIL_TOKEN": "wrong"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "guardrail.cli",
        "rollback",
        d["id"],
        "--reason",
        "test",
        "--token",
        TOKENS["operator"],
        "--url",
        g.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert (await g.settled(d["id"]))["state"] == "rolled_back"  # the rollback runs in the background


# --- item 5: every marker problem at once; required flags in --help; --strategy defaults to canary ------


async def test_mark_reports_every_missing_field_at_once(g: Guardrail):
    r = await g.cli("mark", "--service", "checkout")
    assert r.code == 2
    for key in REQUIRED[1:]:
        assert key in r.err, (key, r.err)
    assert "more problem" not in r.err
    assert "Traceback" not in r.err


async def test_mark_help_names_the_required_flags_and_the_strategy_default():
    r = await _cli("mark", "--help", cwd=Path.cwd())
    assert r.code == 0
    text = " ".join(r.out.split())
    assert "required" in text.lower()
    for key in REQUIRED:
        assert f"--{key.replace('_', '-')}" in text
    assert "default: canary" in text


async def test_mark_without_strategy_records_a_canary(g: Guardrail):
    r = await g.cli(
        "mark",
        "--service",
        "checkout",
        "--environment",
        "production",
        "--version",
        "1.4.2",
        "--previous-version",
        "1.4.1",
        "--commit",
        "abc1234",
        "--change-type",
        "bugfix",
        "--adapter",
        "checkout-deploy",
    )
    assert r.code == 0, r.err
    assert (await g.get(r.out.strip()))["strategy"] == "canary"


# --- item 6: policy warnings printed; --checklist and --metrics-source ---------------------------------

MARK = (
    "mark",
    "--service",
    "checkout",
    "--environment",
    "production",
    "--version",
    "1.4.2",
    "--previous-version",
    "1.4.1",
    "--commit",
    "abc1234",
    "--change-type",
    "feature",
    "--adapter",
    "checkout-deploy",
)


async def test_mark_prints_the_policy_warnings(g: Guardrail):
    r = await g.cli(*MARK)
    assert r.code == 0, r.err
    d = await g.get(r.out.strip())
    warned = [c for c in d["policy"]["checks"] if c["status"] == "warn"]
    assert any(c["name"] == "tests_passed" for c in warned), d["policy"]
    for c in warned:
        assert c["detail"] in r.err, (c, r.err)
    assert "policy" in r.err.lower()


async def test_mark_takes_the_checklist_and_the_metrics_source_as_flags(g: Guardrail):
    r = await g.cli(
        *MARK,
        "--checklist",
        "tests_passed",
        "--checklist",
        "review_approved=yes",
        "--checklist",
        "oncall_available=false",
        "--metrics-source",
        "push",
    )
    assert r.code == 0, r.err
    d = await g.get(r.out.strip())
    assert d["checklist"] == {"tests_passed": True, "review_approved": True, "oncall_available": False}
    assert d["metrics_source"] == "push"
    checks = {c["name"]: c["status"] for c in d["policy"]["checks"]}
    assert checks["tests_passed"] == "pass" and checks["review_approved"] == "pass"
    bad = await g.cli(*MARK, "--checklist", "tests_passed=maybe")
    assert bad.code == 2 and "tests_passed" in bad.err and "maybe" in bad.err
    pull = await g.cli(*MARK, "--metrics-source", "prometheus")  # this server has no Prometheus: a warning
    assert pull.code == 0, pull.err
    assert (await g.get(pull.out.strip()))["metrics_source"] == "prometheus"
    assert "policy warning: monitoring_configured" in pull.err and "prometheus.url is not set" in pull.err


# --- item 9: after a rollback the step reads as ended ---------------------------------------------------


async def test_status_after_a_rollback_shows_the_step_as_ended(g: Guardrail):
    d = await g.create("2.1.0", "2.0.0")
    rolled = await g.cli("rollback", d["id"], "--reason", "customer reports", token="operator")
    assert rolled.code == 0, rolled.err
    await g.settled(d["id"])  # the rollback was answered at once and runs in the background
    status = await g.cli("status", d["id"], token="read")
    for text in (status.out,):
        assert "rolled back at step 1/3 (10% of traffic)" in text, text
        assert "step 1/3 10% of traffic" not in text


# --- item 7: draft and db upgrade say which database; draft never creates one, and reads ----------------


async def test_draft_without_a_database_refuses_and_creates_nothing(tmp_path: Path):
    r = await _cli("draft", "postmortem", "0123456789abcdef", cwd=tmp_path)
    assert r.code == 2
    assert str(tmp_path / "guardrail.db") in r.err, r.err
    assert "--config" in r.err or "--database-url" in r.err
    assert not (tmp_path / "guardrail.db").exists()


async def test_db_upgrade_without_config_names_the_database_and_the_revisions_applied(tmp_path: Path):
    first = await _cli("db", "upgrade", cwd=tmp_path)
    assert first.code == 0, first.err
    both = first.out + first.err
    assert str(tmp_path / "guardrail.db") in both
    assert head_revision() in both and "applied" in both
    assert "is up to date" not in both
    again = await _cli("db", "upgrade", cwd=tmp_path)
    assert again.code == 0, again.err
    assert "nothing to apply" in again.out + again.err


# --- item 8: one normalisation of database URLs ---------------------------------------------------------


async def test_plain_sqlite_urls_work_for_serve_db_upgrade_and_draft(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    up = await run("db", "upgrade", "--database-url", url)
    assert up.code == 0, up.err
    with sqlite3.connect(tmp_path / "plain.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision(),)
    drafted = await run("draft", "postmortem", "0123456789abcdef", "--database-url", url)
    assert drafted.code == 2 and "0123456789abcdef" in drafted.err, drafted.err  # the database opened
    port = _free_port()
    cfg = tmp_path / "guardrail.yaml"
    cfg.write_text(yaml.safe_dump({**settings_for(tmp_path, port), "database_url": url}))
    checked = await run("config", "check", "--config", str(cfg))
    assert checked.code == 0, checked.err
    assert "sqlite+aiosqlite:///" in checked.out


# --- items 3 and 4: serve's start-up line, no tokens refused, config check -----------------------------


async def _serve(cfg: Path, *flags: str) -> tuple[int | None, str]:
    """Start ``serve``; return (exit code or None if it came up, its stderr so far)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "guardrail.cli",
        "serve",
        "--config",
        str(cfg),
        *flags,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=CLEAN_ENV,
    )
    port = yaml.safe_load(cfg.read_text())["server"]["port"]
    up = False
    deadline = asyncio.get_running_loop().time() + 120
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while asyncio.get_running_loop().time() < deadline:
            if proc.returncode is not None:
                break
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    up = resp.status == 200
                    break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
    if up:
        proc.terminate()
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return (None if up else proc.returncode), err.decode()


async def test_serve_logs_one_start_up_line(tmp_path: Path):
    port = _free_port()
    cfg = tmp_path / "guardrail.yaml"
    cfg.write_text(yaml.safe_dump(settings_for(tmp_path, port)))
    code, err = await _serve(cfg)
    assert code is None, err
    lines = [line for line in err.splitlines() if f"http://127.0.0.1:{port}" in line]
    assert len(lines) == 1, err
    line = lines[0]
    assert str(tmp_path / "guardrail.db") in line
    assert "3 tokens" in line and "ci-bot" in line
    assert "checkout-deploy (command)" in line
    assert "push" in line and "notifiers: none" in line
    for secret in TOKENS.values():
        assert secret not in err


async def test_serve_refuses_to_run_without_tokens_unless_told(tmp_path: Path):
    port = _free_port()
    cfg = tmp_path / "guardrail.yaml"
    cfg.write_text(yaml.safe_dump({**settings_for(tmp_path, port), "tokens": []}))
    code, err = await _serve(cfg)
    assert code == 2, err
    assert "--insecure-no-auth" in err and "tokens" in err
    assert "Traceback" not in err
    code, err = await _serve(cfg, "--insecure-no-auth")
    assert code is None, err
    assert "auth: OFF" in err


def _broken_config(tmp: Path, port: int) -> Path:
    cfg = settings_for(tmp, port)
    cfg["adapters"]["prod"] = {"type": "kubernets"}
    cfg["adapters"]["legacy"] = {"type": "command", "config": {"apply_step": "deploy.sh {version} {weight}"}}
    cfg["notifications"] = {"notifiers": {"pager": {"type": "pagerdutyy"}}}
    path = tmp / "guardrail.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def test_config_check_lists_every_problem_with_its_config_path(tmp_path: Path):
    cfg = _broken_config(tmp_path, _free_port())
    r = await run("config", "check", "--config", str(cfg))
    assert r.code == 2, r.out + r.err
    text = r.out + r.err
    assert "adapters.prod.type: unknown deploy adapter 'kubernets'" in text
    assert "command" in text.split("adapters.prod.type", 1)[1].splitlines()[0]  # the known ones are listed
    assert "adapters.legacy.config.rollback" in text
    assert "notifications.notifiers.pager.type" in text and "pagerdutyy" in text
    assert "Traceback" not in text


async def test_config_check_lists_every_settings_problem_at_once(tmp_path: Path):
    cfg = tmp_path / "guardrail.yaml"
    cfg.write_text("server: {port: -1}\nanalysis: {alpha: 2}\n")
    r = await run("config", "check", "--config", str(cfg))
    assert r.code == 2
    assert "server.port" in r.err and "analysis.alpha" in r.err, r.err


async def test_config_check_passes_a_good_config_and_redacts_the_database_password(tmp_path: Path):
    cfg = tmp_path / "guardrail.yaml"
    data = settings_for(tmp_path, _free_port(), "postgresql://guardrail:s3cret-pw@db.internal:5432/guardrail")
    cfg.write_text(yaml.safe_dump(data))
    r = await run("config", "check", "--config", str(cfg))
    assert r.code == 0, r.err
    assert "postgresql+asyncpg://guardrail:***@db.internal:5432/guardrail" in r.out
    assert "s3cret-pw" not in r.out + r.err


async def test_serve_fails_fast_on_a_broken_preset_naming_every_problem(tmp_path: Path):
    cfg = _broken_config(tmp_path, _free_port())
    code, err = await _serve(cfg)
    assert code == 2, err
    assert "adapters.prod.type" in err and "adapters.legacy.config.rollback" in err
    assert "notifications.notifiers.pager.type" in err
