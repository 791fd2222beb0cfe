"""Secret handling for plugin configs: mark secret fields, redact them before anything is logged.

A plugin's config is a frozen dataclass; a field declared with :func:`secret_field` carries
``metadata={"secret": True}`` and is left out of ``repr()``. :func:`redact_config` replaces the
values of those fields in a raw config mapping with ``"***"`` (keeping the keys of mapping-valued
secrets, e.g. ``secret_env``), and :func:`redact_text` scrubs secret values out of free text such as
a command's output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

REDACTED = "***"

__all__ = ["REDACTED", "is_secret", "redact_config", "redact_text", "secret_field", "secret_values"]


def secret_field(
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    metadata: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """A dataclass field holding a secret: marked in its metadata and kept out of ``repr()``."""
    meta = {**(metadata or {}), "secret": True}
    kwargs.setdefault("repr", False)
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    return dataclasses.field(metadata=meta, **kwargs)


def is_secret(f: dataclasses.Field[Any]) -> bool:
    return bool(f.metadata.get("secret", False))


def _config_fields(cls_or_instance: Any) -> dict[str, dataclasses.Field[Any]]:
    """Fields of a config dataclass, given the dataclass, an instance of it, or a plugin class or
    instance that names its config dataclass in ``config_type``."""
    target = getattr(cls_or_instance, "config_type", cls_or_instance)
    if not dataclasses.is_dataclass(target):
        raise TypeError(f"{cls_or_instance!r} is neither a config dataclass nor has a config_type")
    return {f.name: f for f in dataclasses.fields(target)}


def redact_config(cls_or_instance: Any, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``config`` safe to log: values of secret fields become ``"***"`` (for a mapping,
    each value does, the keys stay). Keys that are not fields of the config are redacted too: a
    misspelled secret key must not leak through the error that rejects it."""
    fields = _config_fields(cls_or_instance)
    out: dict[str, Any] = {}
    for key, value in (config or {}).items():
        f = fields.get(key) if isinstance(key, str) else None
        if f is not None and not is_secret(f):
            out[key] = value
        elif isinstance(value, Mapping):
            out[key] = {k: REDACTED for k in value}
        elif value is None:
            out[key] = None
        else:
            out[key] = REDACTED
    return out


def secret_values(config: Any) -> list[str]:
    """Every secret string held by a config dataclass instance (mapping values included)."""
    values: list[str] = []
    for f in dataclasses.fields(config):
        if not is_secret(f):
            continue
        v = getattr(config, f.name)
        if isinstance(v, Mapping):
            values.extend(str(x) for x in v.values())
        elif isinstance(v, str | bytes):
            values.append(v.decode() if isinstance(v, bytes) else v)
        elif isinstance(v, Iterable):
            values.extend(str(x) for x in v)
        elif v is not None:
            values.append(str(v))
    return [v for v in values if v]


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of every non-empty secret replaced by ``"***"`` (longest
    secrets first, so a secret containing another is replaced whole)."""
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(s, REDACTED)
    return text
