"""nginx: split traffic between a stable and a canary server with a weighted upstream file.

Each action rewrites ``path`` (include it from the nginx config) with one block::

    upstream checkout {
        server stable:8080 weight=9;
        server canary:8080 weight=1;
    }

- ``apply_step``: the step's weight is the canary's share (10% -> weights 9 and 1, 12.5% -> 7 and
  1, reduced to the smallest integers, at most 3 decimals of a percent). nginx rejects
  ``weight=0``, so 0% marks the canary ``down`` and 100% marks the stable server ``down``. A step
  with no weight and no server count means everything on the new version (100%); a step that counts
  servers (rolling) cannot be expressed as a split and fails.
- ``finalize``: 100% canary (the new version takes all traffic).
- ``rollback``: 100% stable. Repeating any action writes the same file and reloads again.

``server_options`` (added to both server lines) accepts only ``max_fails``, ``max_conns`` and
``fail_timeout`` (seconds' units): what the open-source nginx takes there without breaking this
upstream, checked against the real ``nginx -t`` (tests/integration/test_nginx_real.py).

The file is written atomically (a temp file in the same directory, fsync, rename), then the
``check_command`` (default ``nginx -t``) and ``reload_command`` (default ``nginx -s reload``) run,
each split with :func:`shlex.split`, without a shell, in its own process group killed after
``timeout_s``, with ``GUARDRAIL_UPSTREAM_FILE`` and ``GUARDRAIL_ACTION_KEY`` in its environment.
When the check or the reload fails, the previous file (or none) is put back and the action fails.
Actions on the same file are serialised within this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from math import gcd
from pathlib import Path
from typing import Any, ClassVar, Self

from guardrail.adapters.deploy import format_weight, parse_adapter_config
from guardrail.adapters.deploy.rest import check_name_template, one_line, render_name
from guardrail.domain.errors import ConfigError
from guardrail.domain.model import Step
from guardrail.ports import ActionResult, DeployTarget

OUTPUT_LIMIT = 2000  # characters kept of each command's output (the tail)
_SERVER = re.compile(r"^[A-Za-z0-9_.:\[\]/-]+$")  # host:port, [::1]:8080, unix:/path
# Server parameters the open-source nginx takes on both lines of a two-server weighted upstream
# (checked against the real `nginx -t` in tests/integration/test_nginx_real.py): max_fails and
# max_conns take a count, fail_timeout a time in seconds' units (ms is refused). Refused, because
# they break nginx or this upstream: backup (on both servers leaves no primary: "no servers in
# upstream"; and weights do not apply to it), resolve (needs a shared-memory zone, and nginx
# >= 1.27.3 or NGINX Plus), slow_start, drain, service, route (NGINX Plus), weight and down
# (guardrail's own).
_OPTIONS = {
    "max_fails": re.compile(r"^\d+$"),
    "max_conns": re.compile(r"^\d+$"),
    "fail_timeout": re.compile(r"^(\d+[smhdwMy]?)+$"),
}
_UPSTREAM = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_LOCKS: dict[str, asyncio.Lock] = {}


def _lock(path: str) -> asyncio.Lock:
    return _LOCKS.setdefault(os.path.realpath(path), asyncio.Lock())


def _split(key: str, command: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(command))
    except ValueError as e:
        raise ConfigError(f"cannot split the command into arguments: {e}", field=key) from None
    if not argv:
        raise ConfigError("the command is empty", field=key)
    return argv


@dataclass(frozen=True, slots=True)
class NginxConfig:
    path: str  # the upstream file guardrail owns, e.g. /etc/nginx/conf.d/checkout-upstream.conf
    stable: str  # server address of the old version, e.g. stable:8080
    canary: str  # server address of the new version
    upstream: str = "{service}"  # template: {service}, {environment}
    server_options: str = ""  # appended to both server lines, e.g. "max_fails=3 fail_timeout=10s"
    check_command: str = "nginx -t"
    reload_command: str = "nginx -s reload"
    timeout_s: float = 30.0  # per command

    def __post_init__(self) -> None:
        if not self.path or self.path.endswith("/"):
            raise ConfigError(f"must be a file path, got {self.path!r}", field="path")
        for key in ("stable", "canary"):
            if not _SERVER.match(getattr(self, key)):
                raise ConfigError(
                    f"must be a server address such as app-v1:8080 or unix:/run/app.sock, got "
                    f"{getattr(self, key)!r}",
                    field=key,
                )
        if self.stable == self.canary:
            raise ConfigError("must differ from stable", field="canary")
        check_name_template("upstream", self.upstream)
        if "{" not in self.upstream and not _UPSTREAM.match(self.upstream):
            raise ConfigError(f"not a valid upstream name: {self.upstream!r}", field="upstream")
        for option in self.server_options.split():
            name, eq, value = option.partition("=")
            check = _OPTIONS.get(name)
            if check is None or not eq or not check.match(value):
                why = {
                    "backup": "a backup server takes no weight, and on both lines leaves no primary server",
                    "resolve": "it needs a shared-memory zone and nginx >= 1.27.3 or NGINX Plus",
                    "weight": "guardrail sets the weights",
                    "down": "guardrail marks a server down at 0% and 100%",
                }.get(name, "")
                accepted = "max_fails=<count>, max_conns=<count>, fail_timeout=<time, e.g. 10s or 1m30s>"
                raise ConfigError(
                    f"{option!r} is not accepted{': ' + why if why else ''}; accepted: {accepted}",
                    field="server_options",
                )
        _split("check_command", self.check_command)
        _split("reload_command", self.reload_command)
        if not self.timeout_s > 0:
            raise ConfigError(f"must be a number of seconds > 0, got {self.timeout_s}", field="timeout_s")


def split_weights(percent: float) -> tuple[int, int]:
    """(stable, canary) integer weights for ``percent`` of traffic on the canary; 0 means down."""
    p = Fraction(percent).limit_denominator(1000)
    if p <= 0:
        return 1, 0
    if p >= 100:
        return 0, 1
    canary = p / 100
    stable = 1 - canary
    scale = canary.denominator * stable.denominator // gcd(canary.denominator, stable.denominator)
    c, s = int(canary * scale), int(stable * scale)
    g = gcd(c, s)
    return s // g, c // g


def _plain(value: str) -> str:
    """A marker value made safe for an nginx comment line."""
    return re.sub(r"[^A-Za-z0-9_.+:@/-]", "?", value)[:100]


class NginxDeployAdapter:
    name = "nginx"
    config_type: ClassVar[type[NginxConfig]] = NginxConfig

    def __init__(self, config: NginxConfig) -> None:
        self.config = config
        self._check = _split("check_command", config.check_command)
        self._reload = _split("reload_command", config.reload_command)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(parse_adapter_config(NginxConfig, config, name="nginx"))

    def __repr__(self) -> str:
        return f"NginxDeployAdapter({self.config!r})"

    async def close(self) -> None:
        return None

    async def apply_step(self, target: DeployTarget, step: Step, index: int, total: int) -> ActionResult:
        if step.weight is None and step.servers is not None:
            return ActionResult(
                ok=False,
                detail=f"nginx splits traffic by weight; step {index + 1} counts servers "
                f"({step.describe()}): use a canary strategy with weights",
            )
        percent = 100.0 if step.weight is None else float(step.weight)
        return await self._write(target, "apply_step", percent)

    async def finalize(self, target: DeployTarget) -> ActionResult:
        return await self._write(target, "finalize", 100.0)

    async def rollback(self, target: DeployTarget, reason: str) -> ActionResult:
        return await self._write(target, "rollback", 0.0)

    def render(self, target: DeployTarget, method: str, percent: float) -> tuple[str, str, int, int]:
        """(upstream name, file text, stable weight, canary weight)."""
        cfg = self.config
        name = render_name(cfg.upstream, target.service, target.environment)
        stable_w, canary_w = split_weights(percent)
        options = f" {cfg.server_options.strip()}" if cfg.server_options.strip() else ""

        def server(address: str, weight: int) -> str:
            return f"    server {address} {'down' if weight == 0 else f'weight={weight}'}{options};"

        text = "\n".join(
            [
                f"# Written by guardrail ({method}) for deploy {_plain(target.deploy_id)}: "
                f"{_plain(target.service)} {_plain(target.previous_version)} -> {_plain(target.version)}, "
                f"canary {format_weight(min(max(percent, 0.0), 100.0))}%.",
                "# Do not edit: guardrail rewrites this file at each step.",
                f"upstream {name} {{",
                server(cfg.stable, stable_w),
                server(cfg.canary, canary_w),
                "}",
                "",
            ]
        )
        return name, text, stable_w, canary_w

    async def _write(self, target: DeployTarget, method: str, percent: float) -> ActionResult:
        cfg = self.config
        name, text, stable_w, canary_w = self.render(target, method, percent)
        if not _UPSTREAM.match(name):
            return ActionResult(
                ok=False, detail=f"upstream name {name!r} (from {cfg.upstream!r}) is not valid"
            )
        shown = format_weight(min(max(percent, 0.0), 100.0))
        data: dict[str, Any] = {
            "path": cfg.path,
            "upstream": name,
            "canary_percent": shown,
            "stable_weight": stable_w,
            "canary_weight": canary_w,
        }
        env = {**os.environ, "GUARDRAIL_UPSTREAM_FILE": cfg.path, "GUARDRAIL_ACTION_KEY": target.action_key}
        async with _lock(cfg.path):
            try:
                previous = await asyncio.to_thread(_read, cfg.path)
                await asyncio.to_thread(_write_atomically, cfg.path, text.encode())
            except OSError as e:
                return ActionResult(ok=False, detail=f"cannot write {cfg.path}: {e.strerror or e}", data=data)
            outputs: list[str] = []
            try:
                for label, argv in (("check", self._check), ("reload", self._reload)):
                    ok, summary, output = await _run(argv, env, cfg.timeout_s)
                    outputs.append(f"$ {shlex.join(argv)}\n{output}")
                    if not ok:
                        restored = await asyncio.to_thread(_restore, cfg.path, previous)
                        return ActionResult(
                            ok=False,
                            detail=f"{label} command {summary}; {restored}",
                            output="\n".join(outputs),
                            data={**data, "failed": label},
                        )
            except BaseException:  # cancelled mid-way: do not leave an unchecked file behind
                _restore(cfg.path, previous)
                raise
        return ActionResult(
            ok=True,
            detail=f"upstream {name}: canary {shown}% (weights stable {stable_w or 'down'}, canary "
            f"{canary_w or 'down'}) written to {cfg.path}, checked and reloaded",
            output="\n".join(outputs),
            data=data,
        )


def _read(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


def _write_atomically(path: str, content: bytes) -> None:
    target = Path(path)
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename durable
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _restore(path: str, previous: bytes | None) -> str:
    """Put the previous file back (or remove the new one); says what happened."""
    try:
        if previous is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return "the new file was removed (there was none before)"
        _write_atomically(path, previous)
        return "the previous file was restored"
    except OSError as e:
        return f"restoring the previous file FAILED: {e.strerror or e}"


async def _run(argv: tuple[str, ...], env: dict[str, str], timeout_s: float) -> tuple[bool, str, str]:
    """(ok, one-line summary, output tail)."""
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    except OSError as e:
        return False, f"{argv[0]!r} could not start: {e.strerror or e}", ""
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        return False, f"{argv[0]!r} timed out after {timeout_s:g}s (process group killed)", ""
    except BaseException:
        _kill_group(proc.pid)
        raise
    output = out.decode("utf-8", errors="replace")[-OUTPUT_LIMIT:]
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        last = one_line(output.strip().splitlines()[-1] if output.strip() else "", 200)
        return (
            False,
            f"{argv[0]!r} exited {proc.returncode} in {elapsed:.2f} s" + (f": {last}" if last else ""),
            output,
        )
    return True, f"exit 0 in {elapsed:.2f} s", output


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
