"""Every configured secret, by value, kept out of what guardrail stores, shows and logs.

:func:`settings_secrets` lists the secret values of a :class:`~guardrail.config.Settings` (and of
the environment variables it names): API tokens, the database URL's password, every ``SecretStr``
setting (Prometheus credentials, annotation keys, ...), the files and variables secrets are read
from (Prometheus ``*_file``, ``llm.api_key_env``, annotations ``*_env``), and the secret fields of
the deploy adapter and notifier presets (those marked with :func:`guardrail.secrets.secret_field`,
and a command preset's ``pass_secret_env``).

A :class:`Redactor` replaces them with ``***``; :class:`RedactingDeployAdapter` applies it to every
adapter result (detail, output, data) and error before the engine stores or publishes it;
:func:`install_log_redaction` applies it, and :func:`redact_query` (token-like query parameters), to
every log record the process creates (message and traceback). The composition root wires all three.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from pydantic import BaseModel, SecretStr

from guardrail.domain.errors import GuardrailError
from guardrail.domain.model import Step
from guardrail.ports import ActionResult, DeployAdapter, DeployTarget
from guardrail.secrets import REDACTED, redact_text

__all__ = [
    "MIN_SECRET_LENGTH",
    "RedactingDeployAdapter",
    "Redactor",
    "install_log_redaction",
    "redact_query",
    "redacting_factory",
    "settings_secrets",
]

MIN_SECRET_LENGTH = 4  # shorter values are not redacted (they would garble every text)

# query parameters whose values are credentials, whatever the route
_QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:[\w.-]*token|[\w.-]*secret|password|passwd|pwd|api[_-]?key|apikey|key|sig|signature|"
    r"auth|authorization|credentials?|session)=)[^&;\s\"'#]*"
)


def redact_query(text: str) -> str:
    """``text`` (a URL, a request line, a log message) with the value of every token-like query
    parameter (``token``, ``access_token``, ``api_key``, ``secret``, ``password``, ``sig``, ...)
    replaced by ``***``."""
    return _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, text)


class Redactor:
    """Replaces known secret values (longest first) with ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted(
            {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True
        )

    def text(self, text: str) -> str:
        return redact_text(text, self.secrets) if self.secrets else text

    def line(self, text: str) -> str:
        """For logs: the secrets and token-like query parameters."""
        return redact_query(self.text(text))

    def value(self, value: Any) -> Any:
        """A copy of a JSON-like value with every string redacted (keys too)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.value(v) for v in value)
        return value


# --- what the settings hold ------------------------------------------------------------------------


def _url_password(url: str) -> list[str]:
    from sqlalchemy.engine import make_url  # lazy: keep this module light
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        return []
    if not password:
        return []
    password = str(password)
    return [password, quote(password, safe=""), quote_plus(password, safe=""), quote(password)]


def _secret_strs(model: Any) -> list[str]:
    """Every ``SecretStr`` value in a settings model, at any depth."""
    out: list[str] = []
    if isinstance(model, SecretStr):
        out.append(model.get_secret_value())
    elif isinstance(model, BaseModel):
        for name in type(model).model_fields:
            out.extend(_secret_strs(getattr(model, name)))
    elif isinstance(model, Mapping):
        for v in model.values():
            out.extend(_secret_strs(v))
    elif isinstance(model, list | tuple):
        for v in model:
            out.extend(_secret_strs(v))
    return out


def _read(path: str | None) -> list[str]:
    if not path:
        return []
    try:
        return [Path(path).read_text(errors="replace").strip()]
    except OSError:  # not readable now: the source reports it when it reads the file
        return []


def _preset_secrets(group: str, name: str, config: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """The secret values of a plugin preset's config (every value when the plugin is unknown)."""
    from guardrail.plugins import redact_plugin_config  # lazy: plugins import adapters

    out: list[str] = []
    redacted = redact_plugin_config(group, name, config)
    for key, value in config.items():
        if redacted.get(key) != value:  # a secret field (or an unknown key): all of its values
            items = value.values() if isinstance(value, Mapping) else [value]
            out.extend(str(v) for v in items if isinstance(v, str | int) and not isinstance(v, bool))
    passed = config.get("pass_secret_env") if name == "command" else None
    for var in passed if isinstance(passed, list | tuple) else ():
        if isinstance(var, str) and env.get(var):
            out.append(env[var])
    return out


def settings_secrets(settings: Any, env: Mapping[str, str] | None = None) -> list[str]:
    """Every secret value the settings hold or name (see the module docstring), longest first."""
    import os

    from guardrail.plugins import DEPLOY_ADAPTERS

    notifiers = "guardrail.notifiers"

    env = os.environ if env is None else env
    values: list[str] = []
    values.extend(t.token.get_secret_value() for t in settings.tokens)
    values.extend(_url_password(settings.database_url))
    values.extend(_secret_strs(settings))
    prom = settings.prometheus
    values.extend(_read(prom.bearer_token_file))
    if prom.basic_auth is not None:
        values.extend(_read(prom.basic_auth.password_file))
    named = [settings.llm.api_key_env]
    for a in (settings.annotations.grafana, settings.annotations.honeycomb):
        named.append(getattr(a, "token_env", None) or getattr(a, "api_key_env", None))
    values.extend(env.get(n, "") for n in named if n)
    for p in settings.notifications.notifiers.values():
        values.extend(_preset_secrets(notifiers, p.type, p.config, env))
    for p in settings.adapters.values():
        values.extend(_preset_secrets(DEPLOY_ADAPTERS, p.type, p.config, env))
    unique = {v.strip() if isinstance(v, str) else str(v) for v in values}
    return sorted((v for v in unique if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


# --- deploy adapters -------------------------------------------------------------------------------


class RedactingDeployAdapter:
    """A deploy adapter whose results and errors carry no configured secret."""

    def __init__(self, inner: DeployAdapter, redactor: Redactor) -> None:
        self.inner = inner
        self.redactor = redactor
        self.name = inner.name

    def __repr__(self) -> str:
        return f"RedactingDeployAdapter({self.inner!r})"

    def __getattr__(self, name: str) -> Any:  # other attributes of the adapter (e.g. config)
        return getattr(self.inner, name)

    def _result(self, r: ActionResult) -> ActionResult:
        red = self.redactor
        return ActionResult(
            ok=r.ok, detail=red.text(r.detail), output=red.text(r.output), data=red.value(r.data)
        )

    async def _call(self, call: Any) -> ActionResult:
        try:
            return self._result(await call)
        except GuardrailError as e:
            e.detail = self.redactor.text(e.detail)
            e.args = (e.detail,)
            raise
        except Exception as e:
            text = self.redactor.text(str(e))
            if text != str(e):
                e.args = (text,)
            raise

    async def apply_step(self, target: DeployTarget, step: Step, index: int, total: int) -> ActionResult:
        return await self._call(self.inner.apply_step(target, step, index, total))

    async def finalize(self, target: DeployTarget) -> ActionResult:
        return await self._call(self.inner.finalize(target))

    async def rollback(self, target: DeployTarget, reason: str) -> ActionResult:
        return await self._call(self.inner.rollback(target, reason))

    async def close(self) -> None:
        closer = getattr(self.inner, "close", None)
        if closer is not None:
            await closer()


def redacting_factory(
    factory: Callable[[str, dict[str, Any]], DeployAdapter], redactor: Redactor
) -> Callable[[str, dict[str, Any]], DeployAdapter]:
    """``factory`` whose adapters are wrapped in :class:`RedactingDeployAdapter` and whose errors
    (a rejected config) are redacted."""

    def make(name: str, config: dict[str, Any]) -> DeployAdapter:
        try:
            return RedactingDeployAdapter(factory(name, config), redactor)
        except GuardrailError as e:
            e.detail = redactor.text(e.detail)
            e.args = (e.detail,)
            raise

    return make


# --- logs ------------------------------------------------------------------------------------------


def install_log_redaction(redactor: Redactor) -> Callable[[], None]:
    """From now on, every log record of the process is created redacted: its message (arguments
    merged in) and its traceback. Returns the function that puts the previous record factory back."""
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to logging's own error report
            return record
        record.msg, record.args = redactor.line(message), None
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redactor.line(text)
        if record.stack_info:
            record.stack_info = redactor.line(record.stack_info)
        return record

    logging.setLogRecordFactory(factory)

    def uninstall() -> None:
        if logging.getLogRecordFactory() is factory:
            logging.setLogRecordFactory(previous)

    return uninstall
