"""Run a command of the operator's for each action: ``./deploy-production.sh --weight {weight} -- {version}``.

Templates are split with :func:`shlex.split` once, at config time, and placeholders are filled in
*inside* each argument, so a marker value such as ``1.0; rm -rf /`` stays one argument and never
reaches a shell (unless the template itself runs ``sh -c``, which is then the operator's choice).

Placeholders (plain ``{name}`` only, never in the program itself; ``{{`` and ``}}`` for
literal braces):

- everywhere: ``version previous_version service environment deploy_id commit``
- ``apply_step`` also: ``weight`` (``10``, ``12.5``; empty when the step has no weight),
  ``servers`` (a number or ``all``), ``step`` (1-based), ``total_steps``
- ``rollback`` also: ``reason``

Options: an argument that *starts* with a placeholder and comes before any ``--`` in the template
could be read as an option by the program (a version of ``--help``); when its value starts with
``-`` the action is refused (a failed result naming the placeholder) and nothing runs. Write
``-- {version}`` (end of options) or ``--tag={version}`` in the template to pass any value.

Environment: the command does **not** inherit the server's environment (which holds the database
URL, the LLM key and other secrets). It gets exactly:

- ``PATH`` (the server's, or the system default), ``HOME``, ``USER``, ``LOGNAME``, ``LANG``,
  ``LC_ALL``, ``LC_CTYPE``, ``TZ`` and ``TMPDIR`` from the server's environment, when set;
- the deploy as ``GUARDRAIL_*`` variables: ``GUARDRAIL_ACTION`` (``apply_step``, ``finalize`` or
  ``rollback``), ``GUARDRAIL_ACTION_KEY`` (the same for a repeated call), ``GUARDRAIL_DEPLOY_ID``,
  and each placeholder's value as ``GUARDRAIL_<NAME>`` (``GUARDRAIL_VERSION``,
  ``GUARDRAIL_WEIGHT``, ``GUARDRAIL_REASON``, ...);
- ``pass_env``: server variables named in the preset, passed as they are (e.g. ``KUBECONFIG``);
- ``pass_secret_env``: server variables named in the preset whose values are secrets (redacted
  from the output like ``secret_env``);
- ``env`` and ``secret_env``: variables set by the preset (``secret_env`` values are secrets).

The command runs in its own session (process group); on timeout the whole group is killed. stdout
and stderr are captured together (the tail, at most ``output_limit`` characters, secrets redacted).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import string
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar, Self

from guardrail.adapters.deploy import freeze_mappings, parse_adapter_config, step_values, target_values
from guardrail.domain.errors import ConfigError
from guardrail.domain.model import Step
from guardrail.ports import ActionResult, DeployTarget
from guardrail.secrets import redact_text, secret_field, secret_values

_COMMON = ("version", "previous_version", "service", "environment", "deploy_id", "commit")
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "apply_step": (*_COMMON, "weight", "servers", "step", "total_steps"),
    "finalize": _COMMON,
    "rollback": (*_COMMON, "reason"),
}
# from the server's environment, when set (PATH falls back to the system default)
BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
# set by guardrail for each action: the action, its key, and every placeholder's value
DEPLOY_ENV = (
    "GUARDRAIL_ACTION",
    "GUARDRAIL_ACTION_KEY",
    *sorted({f"GUARDRAIL_{name.upper()}" for names in PLACEHOLDERS.values() for name in names}),
)
_RESERVED_ENV = frozenset(DEPLOY_ENV)


def split_template(key: str, template: str) -> tuple[str, ...]:
    """The template's arguments, checked: only the placeholders available to ``key``."""
    try:
        argv = tuple(shlex.split(template))
    except ValueError as e:
        raise ConfigError(f"cannot split the command into arguments: {e}", field=key) from None
    if not argv:
        raise ConfigError("the command is empty", field=key)
    allowed = PLACEHOLDERS[key]
    if "{" in argv[0].replace("{{", ""):
        raise ConfigError(
            f"the program {argv[0]!r} may not contain placeholders (a marker value must never choose "
            "what runs); pass the value as an argument, e.g. ./deploy.sh {environment}",
            field=key,
        )
    for arg in argv:
        try:
            parts = list(string.Formatter().parse(arg))
        except ValueError as e:
            raise ConfigError(
                f"bad placeholder in argument {arg!r}: {e} (write literal braces as {{{{ and }}}})", field=key
            ) from None
        for _literal, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in allowed:
                raise ConfigError(
                    f"unknown placeholder {{{name}}} in argument {arg!r}; available in {key}: "
                    + ", ".join(f"{{{p}}}" for p in allowed),
                    field=key,
                )
            if spec or conversion:
                raise ConfigError(
                    f"placeholder in argument {arg!r} has a format spec or conversion; write plain {{{name}}}",
                    field=key,
                )
    return argv


def leading_placeholders(argv: tuple[str, ...]) -> list[tuple[int, str]]:
    """(index, placeholder) of each argument that starts with a placeholder and comes before the
    first ``--`` of the template: where a value starting with ``-`` would be read as an option."""
    out = []
    for index, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        first = next(iter(string.Formatter().parse(arg)), None)
        if first is not None and first[0] == "" and first[1] is not None:
            out.append((index, first[1]))
    return out


def _check_names(key: str, names: tuple[str, ...]) -> None:
    for name in names:
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise ConfigError(f"{name!r} is not a valid environment variable name", field=key)
        if name in _RESERVED_ENV:
            raise ConfigError(f"{name} is set by guardrail and cannot be passed through", field=key)


def _check_env(key: str, env: Mapping[str, str], *, secret: bool) -> None:
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise ConfigError(f"{name!r} is not a valid environment variable name", field=f"{key}.{name}")
        if name in _RESERVED_ENV:
            raise ConfigError(f"{name} is set by guardrail and cannot be overridden", field=f"{key}.{name}")
        if "\0" in value:
            shown = "the value" if secret else repr(value)
            raise ConfigError(f"{shown} contains a NUL byte", field=f"{key}.{name}")


@dataclass(frozen=True, slots=True)
class CommandConfig:
    apply_step: str
    rollback: str
    finalize: str | None = None  # absent: finalize is a successful no-op
    timeout_s: float = 300.0
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: Mapping[str, str] = secret_field(default_factory=dict)
    pass_env: tuple[str, ...] = ()  # names of server environment variables passed as they are
    pass_secret_env: tuple[str, ...] = ()  # ... and passed as secrets (redacted from the output)
    output_limit: int = 4000  # characters of output kept (the tail)

    def __post_init__(self) -> None:
        freeze_mappings(self, "env", "secret_env")
        for key in ("pass_env", "pass_secret_env"):
            names = getattr(self, key)
            if isinstance(names, str) or not isinstance(names, list | tuple):
                raise ConfigError("must be a list of environment variable names", field=key)
            object.__setattr__(self, key, tuple(names))
            _check_names(key, getattr(self, key))
        for key in PLACEHOLDERS:
            template = getattr(self, key)
            if template is not None:
                split_template(key, template)
        if not self.timeout_s > 0:
            raise ConfigError(f"must be a number of seconds > 0, got {self.timeout_s}", field="timeout_s")
        if self.output_limit < 0:
            raise ConfigError(f"must be >= 0 characters, got {self.output_limit}", field="output_limit")
        if self.cwd is not None and not self.cwd:
            raise ConfigError("must be a directory path (or left out)", field="cwd")
        _check_env("env", self.env, secret=False)
        _check_env("secret_env", self.secret_env, secret=True)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


_TRUNCATED = "[earlier output truncated]\n"


def _read_tail(out: IO[bytes], limit: int, secrets: list[str]) -> str:
    """The last ``limit`` characters the command wrote, secrets redacted. Redaction happens before
    truncation, and a secret cut in half at the start of the window read is dropped with it."""
    if limit <= 0:
        return ""
    longest = max((len(s) for s in secrets), default=0)
    size = os.fstat(out.fileno()).st_size
    window = 4 * (limit + longest + 1)  # bytes: up to 4 per character in UTF-8
    start = max(0, size - window)
    out.seek(start)
    text = out.read().decode("utf-8", errors="replace")
    cut = start > 0
    if cut:
        text = text[longest + 1 :]
    text = redact_text(text, secrets)
    if cut or len(text) > limit:
        if limit > 2 * len(_TRUNCATED):
            text = _TRUNCATED + text[-(limit - len(_TRUNCATED)) :]
        else:
            text = text[-limit:]
    return text


class CommandDeployAdapter:
    name = "command"
    config_type: ClassVar[type[CommandConfig]] = CommandConfig

    def __init__(self, config: CommandConfig) -> None:
        self.config = config
        self._argv = {key: split_template(key, t) for key in PLACEHOLDERS if (t := getattr(config, key))}
        self._leading = {key: leading_placeholders(argv) for key, argv in self._argv.items()}
        self._secrets = secret_values(config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(parse_adapter_config(CommandConfig, config, name="command"))

    def __repr__(self) -> str:
        return f"CommandDeployAdapter({self.config!r})"

    async def apply_step(self, target: DeployTarget, step: Step, index: int, total: int) -> ActionResult:
        return await self._run("apply_step", target, step_values(step, index, total))

    async def finalize(self, target: DeployTarget) -> ActionResult:
        if "finalize" not in self._argv:
            return ActionResult(ok=True, detail="no finalize command configured: nothing to do")
        return await self._run("finalize", target, {})

    async def rollback(self, target: DeployTarget, reason: str) -> ActionResult:
        return await self._run("rollback", target, {"reason": reason})

    async def close(self) -> None:
        return None

    async def _run(self, key: str, target: DeployTarget, extra: dict[str, str]) -> ActionResult:
        cfg = self.config
        values = {**target_values(target), **extra}
        argv = [arg.format_map(values) for arg in self._argv[key]]
        server_env = os.environ
        secrets = [*self._secrets, *(server_env[n] for n in cfg.pass_secret_env if server_env.get(n))]
        shown_argv = [redact_text(a, secrets) for a in argv]
        refused = self._option_like(key, values)
        if refused:
            return ActionResult(ok=False, detail=redact_text(refused, secrets), data={"argv": shown_argv})
        env = {name: server_env[name] for name in BASE_ENV if name in server_env}
        env.setdefault("PATH", os.defpath)
        env.update({n: server_env[n] for n in (*cfg.pass_env, *cfg.pass_secret_env) if n in server_env})
        env.update({**cfg.env, **cfg.secret_env})
        env.update({f"GUARDRAIL_{name.upper()}": value for name, value in values.items()})
        env.update(GUARDRAIL_ACTION=key, GUARDRAIL_ACTION_KEY=target.action_key)
        data: dict[str, Any] = {"argv": shown_argv}
        with tempfile.TemporaryFile() as out:
            started = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=cfg.cwd,
                    env=env,
                    start_new_session=True,  # its own process group: a timeout kills all of it
                )
            except (OSError, ValueError) as e:  # ValueError: a NUL byte in an argument or variable
                return ActionResult(
                    ok=False, detail=redact_text(self._start_error(argv[0], e), secrets), data=data
                )
            data["pid"] = proc.pid
            timed_out = False
            try:
                await asyncio.wait_for(proc.wait(), cfg.timeout_s)
            except TimeoutError:
                timed_out = True
                _kill_group(proc.pid)
                await proc.wait()
            except BaseException:  # cancelled: do not leave the command running behind us
                _kill_group(proc.pid)
                raise
            elapsed = time.monotonic() - started
            output = _read_tail(out, cfg.output_limit, secrets)
        code = proc.returncode
        data.update(exit_code=code, duration_s=round(elapsed, 3))
        if timed_out:
            data["timed_out"] = True
            detail = f"timed out after {cfg.timeout_s:g}s (process group killed)"
        elif code is not None and code < 0:
            try:
                signame = signal.Signals(-code).name
            except ValueError:
                signame = str(-code)
            detail = f"killed by {signame} in {elapsed:.2f} s"
        else:
            detail = f"exit {code} in {elapsed:.2f} s"
        return ActionResult(ok=code == 0 and not timed_out, detail=detail, output=output, data=data)

    def _option_like(self, key: str, values: Mapping[str, str]) -> str | None:
        """Why the action is refused, when a value would start an argument read as an option."""
        for index, name in self._leading[key]:
            value = values[name]
            if value.startswith("-"):
                template = self._argv[key][index]
                return (
                    f"refused to run {key}: {{{name}}} is {value!r}, which starts with '-' and would be read as an "
                    f"option in argument {index} ({template!r}); put -- before it in the template (end of "
                    f"options, e.g. ... -- {template}) or give it a prefix (e.g. --{name.replace('_', '-')}={template})"
                )
        return None

    def _start_error(self, program: str, e: OSError | ValueError) -> str:
        if isinstance(e, ValueError):
            return f"cannot run {program!r}: {e} (in an argument or GUARDRAIL_ACTION_KEY)"
        if isinstance(e, FileNotFoundError) and self.config.cwd and e.filename == self.config.cwd:
            return f"cannot run {program!r}: working directory {self.config.cwd!r} does not exist"
        if isinstance(e, FileNotFoundError):
            return f"cannot run {program!r}: no such file or command (cwd {self.config.cwd or os.getcwd()!r})"
        if isinstance(e, PermissionError):
            return f"cannot run {program!r}: permission denied (is it executable?)"
        return f"cannot run {program!r}: {e.strerror or e}"
