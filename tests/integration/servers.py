"""A real ``guardrail serve`` process for the crash and replica tests: started from a config file,
waited on until ready, killed with -9 or stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command_target_config(
    *, database_url: str, port: int, token: str, engine: str, script: Path, extra: str = ""
) -> str:
    """A guardrail config: one token with every scope, ``engine`` (a YAML flow mapping), and the
    ``target`` command adapter calling ``script`` as ``apply STEP``, ``finalize 0``, ``rollback 0``.
    ``extra`` is more top-level YAML."""
    return textwrap.dedent(f"""
        database_url: {database_url}
        server: {{host: 127.0.0.1, port: {port}, public_url: "http://127.0.0.1:{port}"}}
        tokens: [{{name: ci, token: {token}, scopes: [ci, operator, read]}}]
        engine: {engine}
        adapters:
          target:
            type: command
            config:
              apply_step: "{script} apply {{step}}"
              finalize: "{script} finalize 0"
              rollback: "{script} rollback 0"
              timeout_s: 60
    """) + textwrap.dedent(extra)


class GuardrailProcess:
    """``python -m guardrail.cli serve --config <config>`` on ``port``, stderr appended to ``log``.
    The child gets this environment without the ``GUARDRAIL_*`` variables (the config is all)."""

    what = "server"  # named in the error when it does not become ready

    def __init__(self, config: Path, log: Path, port: int) -> None:
        self.config, self.log, self.port = config, log, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.alive = False

    def spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDRAIL_")}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "guardrail.cli", "serve", "--config", str(self.config)],
                env=env, stdout=subprocess.DEVNULL, stderr=log,
            )
        self.alive = True

    async def ready(self, http: aiohttp.ClientSession, *, tries: int = 600) -> None:
        """Poll ``/readyz`` every 0.1 s until it answers 200 (at most ``tries`` times: a loaded machine is slow)."""
        for _ in range(tries):
            try:
                async with http.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.what} did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.alive = False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
