"""Issue 13, case 5: the nginx adapter against the real nginx (Debian's ``nginx``, installed by
scripts/test-deps.sh): every file it renders passes ``nginx -t`` and, reloaded into a running
nginx, splits traffic as the step says; server options that break nginx are refused at
construction, and each refused one is shown to break the real ``nginx -t``."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from guardrail.adapters.deploy.nginx import NginxDeployAdapter
from guardrail.domain.errors import ConfigError
from guardrail.domain.model import Step
from tests.contract.test_deploy_adapters import target
from tests.integration.conftest import _require_or_skip, _wait_until, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if path is None:
        _require_or_skip("the `nginx` binary is not installed (Debian package `nginx`; scripts/test-deps.sh)")
    assert path
    return path


@dataclass
class Nginx:
    binary: str
    prefix: Path
    port: int

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def upstream(self) -> Path:
        return self.prefix / "conf.d" / "checkout-upstream.conf"

    def args(self) -> str:
        return f"-c {self.conf} -p {self.prefix}"

    def check(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.binary, *self.args().split(), "-t"], capture_output=True, text=True, timeout=30
        )


def main_config(prefix: Path, port: int) -> str:
    return f"""
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    include {prefix}/conf.d/*.conf;
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://checkout; }}
    }}
}}
"""


@pytest.fixture
def nginx(nginx_binary: str, tmp_path: Path) -> Nginx:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "tmp").mkdir()
    port = free_port()
    (tmp_path / "nginx.conf").write_text(main_config(tmp_path, port))
    return Nginx(nginx_binary, tmp_path, port)


class Backends:
    """Two tiny HTTP servers answering their own name: the stable and the canary version."""

    def __init__(self) -> None:
        self.servers: dict[str, TestServer] = {}

    async def start(self) -> None:
        for name in ("stable", "canary"):
            app = web.Application()
            app.router.add_get("/", self.answer(name))
            self.servers[name] = TestServer(app, host="127.0.0.1")
            await self.servers[name].start_server()

    @staticmethod
    def answer(name: str) -> Any:
        async def handler(_request: web.Request) -> web.Response:
            return web.Response(text=name)

        return handler

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.servers[name].port}"

    async def close(self) -> None:
        for s in self.servers.values():
            await s.close()


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    b = Backends()
    await b.start()
    yield b
    await b.close()


@pytest.fixture
def running(nginx: Nginx, backends: Backends) -> Iterator[subprocess.Popen[bytes]]:
    # a first upstream file so that nginx starts (the adapter rewrites it at every action)
    nginx.upstream.write_text(f"upstream checkout {{ server {backends.address('stable')}; }}\n")
    proc = subprocess.Popen(
        [nginx.binary, *nginx.args().split()], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    # the backends run on this test's event loop, which this fixture blocks: check the port only
    _wait_until(
        lambda: socket.create_connection(("127.0.0.1", nginx.port), 1).close() is None, 15, "nginx", proc
    )
    yield proc
    proc.send_signal(signal.SIGQUIT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make(nginx: Nginx, backends: Backends, **extra: Any) -> NginxDeployAdapter:
    return NginxDeployAdapter.from_config(
        {
            "path": str(nginx.upstream),
            "stable": backends.address("stable"),
            "canary": backends.address("canary"),
            "check_command": f"{nginx.binary} {nginx.args()} -t",
            "reload_command": f"{nginx.binary} {nginx.args()} -s reload",
            **extra,
        }
    )


async def split(nginx: Nginx, n: int) -> dict[str, int]:
    """Where ``n`` requests went (nginx's weighted round robin is exact over a full cycle)."""
    counts = {"stable": 0, "canary": 0}
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(f"http://127.0.0.1:{nginx.port}/") as r:
                counts[await r.text()] += 1
    return counts


async def settled(nginx: Nginx, want: dict[str, int], n: int) -> dict[str, int]:
    """The split once the reload has replaced the old workers (a reload is asynchronous)."""
    got: dict[str, int] = {}
    for _ in range(50):
        got = await split(nginx, n)
        if got == want:
            return got
        await asyncio.sleep(0.1)
    return got


async def test_every_action_renders_a_file_the_real_nginx_accepts_and_splits_traffic_by(
    nginx: Nginx, backends: Backends, running: subprocess.Popen[bytes]
) -> None:
    adapter = make(nginx, backends, server_options="max_fails=3 fail_timeout=10s max_conns=100")
    for action, want in [
        (lambda: adapter.apply_step(target(), Step(weight=10), 0, 4), {"stable": 45, "canary": 5}),
        (lambda: adapter.apply_step(target(), Step(weight=12.5), 1, 4), {"stable": 35, "canary": 5}),
        (lambda: adapter.apply_step(target(), Step(weight=0), 2, 4), {"stable": 40, "canary": 0}),
        (lambda: adapter.apply_step(target(), Step(weight=50), 3, 4), {"stable": 20, "canary": 20}),
        (lambda: adapter.finalize(target()), {"stable": 0, "canary": 40}),
        (lambda: adapter.rollback(target(), "errors"), {"stable": 40, "canary": 0}),
    ]:
        result = await action()
        assert result.ok, result
        assert "test is successful" in result.output  # the real nginx -t said so
        n = sum(want.values())
        assert await settled(nginx, want, n) == want, nginx.upstream.read_text()
    assert running.poll() is None


@pytest.mark.parametrize(
    "option",
    [
        "backup",
        "resolve",
        "slow_start=30s",
        "drain",
        "max_fails=x",
        "fail_timeout=10q",
        "max_conns=-1",
        "service=_http._tcp",
        "route=a",
        "fail_timeout=500ms",
    ],
)
def test_options_that_break_nginx_are_refused_and_do_break_the_real_nginx(
    nginx: Nginx, backends: Backends, option: str
) -> None:
    with pytest.raises(ConfigError) as e:
        make(nginx, backends, server_options=f"max_fails=3 {option}")
    assert e.value.field == "adapter.config.server_options" and option.split("=")[0] in e.value.detail
    # the same option written by hand into the file guardrail would render: nginx -t rejects it
    text = make(nginx, backends).render(target(), "apply_step", 10.0)[1]
    nginx.upstream.write_text(text.replace(";\n", f" {option};\n").replace("{ " + option, "{"))
    checked = nginx.check()
    assert checked.returncode != 0, (option, checked.stderr)


def test_accepted_options_pass_the_real_nginx_check(nginx: Nginx, backends: Backends) -> None:
    for options in ("", "max_fails=0", "max_fails=3 fail_timeout=1m30s", "max_conns=10 fail_timeout=2h"):
        adapter = make(nginx, backends, server_options=options)
        for percent in (0.0, 10.0, 33.333, 100.0):
            nginx.upstream.write_text(adapter.render(target(), "apply_step", percent)[1])
            checked = nginx.check()
            assert checked.returncode == 0, (options, percent, checked.stderr)
