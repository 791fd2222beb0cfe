"""``guardrail demo --serve``: the demo's server keeps running on the demo database, so every link
the demo printed answers, until Ctrl-C (SIGINT) stops it with exit 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp

from guardrail.demo import OPS_TOKEN
from tests.cli.test_cli import _free_port

URL = re.compile(r"https?://[^\s)'\"]+")


async def test_demo_serve_keeps_every_printed_link_working_until_ctrl_c(tmp_path: Path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDRAIL_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "guardrail.cli",
        "demo",
        "--dir",
        str(tmp_path),
        "--serve",
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
            assert line, "the demo exited before serving:\n" + "".join(lines[-40:])
            lines.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(lines)
        assert "demo OK" in text
        urls = sorted({u.rstrip(".,;:") for u in URL.findall(text)})
        assert any("/deploys/" in u and "/api/" not in u for u in urls), text  # the deploy pages
        assert any("/drafts/postmortem" in u for u in urls), text  # the timeline's post-mortem note
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for u in urls:
                assert u.startswith(f"http://127.0.0.1:{port}"), u
                async with http.get(u, headers={"Authorization": f"Bearer {OPS_TOKEN}"}) as resp:
                    assert resp.status == 200, (u, resp.status)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
