"""The README's "Run it for real" section, followed as written (issue 14: a new user gets from the
README alone to a real ``guardrail serve`` judging pushed metrics).

The config, the ``mark`` command, the push example and ``status`` are taken from the README's own code
blocks, not copied here: only the placeholders a reader fills in (tokens, host and port, the deploy
script's directory) are replaced. If the README drifts from what the server accepts, this fails."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import aiohttp
import yaml

from tests.cli.test_cli import CLEAN_ENV, _free_port, finish, start

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text()
    begin = text.index("## Run it for real")
    return text[begin : text.index("\n## ", begin + 3)]


def _blocks(section: str, lang: str) -> list[str]:
    """Fenced blocks of one language, indentation of list items removed."""
    out = []
    for m in re.finditer(rf"^( *)```{lang}\n(.*?)^\1```", section, re.S | re.M):
        indent = len(m.group(1))
        out.append("\n".join(line[indent:] for line in m.group(2).splitlines()))
    return out


def _shell(lines: str) -> str:
    """Shell lines without the reader's own `export GUARDRAIL_URL=...` (the test sets those)."""
    return "\n".join(ln for ln in lines.splitlines() if not ln.startswith("export GUARDRAIL_URL"))


async def _bash(script: str, cwd: Path) -> tuple[int, str, str]:
    """bash in the tests' clean environment (no GUARDRAIL_*): the script exports what it needs."""
    r = await finish(await start(["bash", "-c", script], cwd), timeout=120)
    return r.code, r.out, r.err


async def test_the_readme_run_it_for_real_path_works_as_written(tmp_path: Path):
    section = _section()
    (config_text,) = _blocks(section, "yaml")
    sh = _blocks(section, "sh")
    install, check_and_serve, mark, push, wait_status = sh
    assert "pip install" in install and "guardrail config check" in check_and_serve

    port = _free_port()
    srv = tmp_path / "srv"
    srv.mkdir()
    (srv / "deploy.sh").write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/deploy.log"\n')
    (srv / "deploy.sh").chmod(0o755)
    config = (
        config_text.replace("<random ci token>", "readme-ci-token")
        .replace("<random operator token>", "readme-operator-token")
        .replace("port: 8080", f"port: {port}")
        .replace("host: 0.0.0.0", "host: 127.0.0.1")
        .replace("http://guardrail.internal:8080", f"http://127.0.0.1:{port}")
        .replace("/srv/deploy", str(srv))
    )
    data = yaml.safe_load(config)
    assert data["adapters"]["my-deploy"]["config"]["cwd"] == str(srv)  # the reader's script directory
    (tmp_path / "guardrail.yaml").write_text(config)

    bin_dir = str(Path(sys.executable).parent)  # where `pip install` put the guardrail script
    exports = (
        f"export PATH={bin_dir}:$PATH GUARDRAIL_URL=http://127.0.0.1:{port} "
        "GUARDRAIL_TOKEN=readme-ci-token GIT_SHA=0123abc\n"
    )
    check_line = next(ln for ln in check_and_serve.splitlines() if "config check" in ln)
    code, out, err = await _bash(exports + check_line, tmp_path)
    assert code == 0, err
    assert "config OK" in out + err and f"127.0.0.1:{port}" in out + err

    serve_argv = (
        next(ln for ln in check_and_serve.splitlines() if "guardrail serve" in ln).split("#")[0].split()
    )
    server = await asyncio.create_subprocess_exec(
        os.path.join(bin_dir, "guardrail"),
        *serve_argv[1:],
        cwd=tmp_path,
        env=CLEAN_ENV,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            for _ in range(600):
                assert server.returncode is None, "serve exited"
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        status_line = next(ln for ln in wait_status.splitlines() if ln.startswith("guardrail status"))
        script = (
            exports
            + _shell(mark)
            + '\necho "DEPLOY_ID=$DEPLOY_ID"\n'
            + push
            + "\necho\n"
            + f"GUARDRAIL_TOKEN=readme-operator-token {status_line.split('#')[0]}\n"
        )
        code, out, err = await _bash("set -euo pipefail\n" + script, tmp_path)
        assert code == 0, (out, err)
        deploy_id = re.search(r"^DEPLOY_ID=([0-9a-f]{16})$", out, re.M)
        assert deploy_id, out
        pushed = json.loads(next(ln for ln in out.splitlines() if ln.startswith('{"accepted"')))
        assert pushed["accepted"] == 2 and pushed["deploy"]["id"] == deploy_id.group(1)
        assert "policy warning: tests_passed" in err  # mark shows what the policy warned about
        status = out.splitlines()[-6:]
        assert any(f"{deploy_id.group(1)}  checkout 1.4.2 (production): analyzing" in ln for ln in status), (
            out
        )
        assert any("error_rate" in ln and "after 212 canary requests" in ln for ln in status), out
        assert any(ln.strip().startswith("outlook") for ln in status), out  # from the deploy's own traffic
        assert (srv / "deploy.log").read_text().split() == ["--weight", "10", "--", "1.4.2"]  # the preset ran
    finally:
        server.terminate()
        await asyncio.wait_for(server.communicate(), 60)
