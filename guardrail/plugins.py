"""Plugins by entry points, one group per port, loaded by name from config at start-up.

A plugin is a class registered under an entry point group (``guardrail.deploy_adapters``, later
``guardrail.notifiers``, ...). It has a ``config_type`` class attribute (a frozen dataclass whose
secret fields are declared with :func:`guardrail.secrets.secret_field`) and a
``from_config(config: dict)`` classmethod that validates a raw mapping into that dataclass with
:func:`parse_config` and builds the plugin without any I/O. Listing or loading plugins imports
only the one plugin asked for and never touches the network.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from guardrail.domain.errors import ConfigError
from guardrail.ports import DeployAdapter
from guardrail.secrets import REDACTED, is_secret, redact_config

__all__ = [
    "DEPLOY_ADAPTERS",
    "known_deploy_adapters",
    "known_plugins",
    "load_deploy_adapter",
    "load_plugin",
    "parse_config",
    "plugin_class",
    "redact_deploy_adapter_config",
    "redact_plugin_config",
]

DEPLOY_ADAPTERS = "guardrail.deploy_adapters"

# group -> (what one plugin is called in messages, config key the plugin is chosen by)
_GROUPS: dict[str, tuple[str, str]] = {
    DEPLOY_ADAPTERS: ("deploy adapter", "adapter"),
    "guardrail.notifiers": ("notifier", "notifier"),
    "guardrail.metric_sources": ("metric source", "source"),
}

C = TypeVar("C")


def _group_labels(group: str) -> tuple[str, str]:
    return _GROUPS.get(group, (f"{group} plugin", "plugin"))


def _entry_points(group: str) -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=group):
        found.setdefault(ep.name, [])
        if all(ep.value != other.value for other in found[ep.name]):
            found[ep.name].append(ep)
    return found


def known_plugins(group: str) -> list[str]:
    """Names registered under ``group``, sorted. Imports nothing."""
    return sorted(_entry_points(group))


def known_deploy_adapters() -> list[str]:
    return known_plugins(DEPLOY_ADAPTERS)


def plugin_class(group: str, name: str) -> Any:
    """The class registered as ``name`` in ``group``, imported but not built.

    Raises :class:`ConfigError` for an unknown name (listing the known ones, field ``<key>.name``)
    or a plugin that fails to import.
    """
    kind, key = _group_labels(group)
    registered = _entry_points(group)
    eps = registered.get(name) if isinstance(name, str) else None
    if not eps:
        known = ", ".join(sorted(registered)) or "none installed"
        raise ConfigError(f"{key}.name: unknown {kind} {name!r}; known: {known}", field=f"{key}.name")
    if len(eps) > 1:
        values = ", ".join(ep.value for ep in eps)
        raise ConfigError(
            f"{key}.name: {kind} {name!r} is registered more than once ({values}); uninstall one",
            field=f"{key}.name",
        )
    try:
        cls = eps[0].load()
    except Exception as e:  # a broken plugin package: say which one and why
        raise ConfigError(
            f"{key}.name: {kind} {name!r} ({eps[0].value}) could not be imported: {type(e).__name__}: {e}",
            field=f"{key}.name",
        ) from e
    if not callable(getattr(cls, "from_config", None)) or getattr(cls, "config_type", None) is None:
        raise ConfigError(
            f"{key}.name: {kind} {name!r} ({eps[0].value}) lacks a from_config(config) classmethod "
            "or a config_type",
            field=f"{key}.name",
        )
    return cls


def load_plugin(group: str, name: str, config: Mapping[str, Any] | None = None) -> Any:
    """Import the plugin registered as ``name`` in ``group`` and build it with ``from_config``.

    Raises :class:`ConfigError` as :func:`plugin_class` does, or for a config the plugin rejects
    (field ``<key>.config.<config key>``).
    """
    kind, key = _group_labels(group)
    cls = plugin_class(group, name)
    if config is not None and not isinstance(config, Mapping):
        raise ConfigError(
            f"{key}.config: expected a mapping of settings for {kind} {name!r}, got {type(config).__name__}",
            field=f"{key}.config",
        )
    return cls.from_config(dict(config or {}))


def redact_plugin_config(group: str, name: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``config`` of plugin ``name`` safe to log or return: secret values replaced by ``"***"``.
    When the plugin cannot be found, every value is redacted."""
    try:
        cls = plugin_class(group, name)
    except ConfigError:
        return {k: (None if v is None else REDACTED) for k, v in (config or {}).items()}
    return redact_config(cls, config)


def load_deploy_adapter(name: str, config: Mapping[str, Any] | None = None) -> DeployAdapter:
    """The deploy adapter registered as ``name`` (``noop``, ``command``, ``webhook``, ...)."""
    adapter = load_plugin(DEPLOY_ADAPTERS, name, config)
    if not isinstance(adapter, DeployAdapter):
        raise ConfigError(
            f"adapter.name: plugin {name!r} does not implement DeployAdapter "
            "(name, apply_step, finalize, rollback)",
            field="adapter.name",
        )
    return adapter


def redact_deploy_adapter_config(name: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
    return redact_plugin_config(DEPLOY_ADAPTERS, name, config)


# --- typed configs -----------------------------------------------------------------------------


class _Mismatch(Exception):
    def __init__(self, expected: str, value: Any, path: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.value = value  # the offending value (an element, for a bad element of a list/mapping)
        self.path = path


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if tp is type(None):
        return "null"
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (dict, Mapping):
        return f"a mapping of {_describe(args[0])} to {_describe(args[1])}" if args else "a mapping"
    if origin in (tuple, list):
        return f"a list of {_describe(args[0])}" if args else "a list"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any) -> Any:
    """``value`` checked against annotation ``tp`` (ints accepted as floats, lists stored as tuples,
    mappings as read-only mappings); raises _Mismatch naming what is accepted."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value)
            except _Mismatch as e:
                if e.path:  # the right container type, a bad element: report that
                    raise
        raise _Mismatch(_describe(tp), value)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch(_describe(tp), value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch(_describe(tp), value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch(_describe(tp), value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise _Mismatch("a finite number" if isinstance(value, float) else _describe(tp), value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch(_describe(tp), value)
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch(_describe(tp), value)
        kt, vt = args or (Any, Any)
        out: dict[Any, Any] = {}
        for k, v in value.items():
            try:
                ck = _coerce(kt, k)
            except _Mismatch as e:
                raise _Mismatch(f"keys that are {e.expected}", k, f"[{k!r}]") from None
            try:
                out[ck] = _coerce(vt, v)
            except _Mismatch as e:
                raise _Mismatch(e.expected, e.value, f".{k}{e.path}") from None
        return types.MappingProxyType(out)
    if origin in (tuple, list):
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise _Mismatch(_describe(tp), value)
        et = args[0] if args else Any
        items = []
        for i, v in enumerate(value):
            try:
                items.append(_coerce(et, v))
            except _Mismatch as e:
                raise _Mismatch(e.expected, e.value, f"[{i}]{e.path}") from None
        return tuple(items)
    raise TypeError(f"parse_config does not support the annotation {tp!r}")


def _shown(value: Any) -> str:
    r = repr(value)
    return f"{type(value).__name__} {r}" if len(r) <= 60 else type(value).__name__


def parse_config(
    config_type: type[C], config: Mapping[str, Any] | None, *, field_prefix: str, owner: str
) -> C:
    """Validate a raw mapping into the frozen dataclass ``config_type``.

    Unknown keys, missing required keys and values of the wrong type raise :class:`ConfigError`
    with ``field=f"{field_prefix}.{key}"`` and a message naming the key and what it accepts. The
    value itself is quoted only for non-secret fields. ``config_type.__post_init__`` may raise
    ``ConfigError(detail, field=key)`` with a bare key (or ``key.entry``); it is re-raised with the
    prefix added. ``field`` is always ``<field_prefix>.<key>``; the message may name the entry.
    """
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"{field_prefix}: expected a mapping of settings for the {owner}, got {type(config).__name__}",
            field=field_prefix,
        )
    fields = {f.name: f for f in dataclasses.fields(config_type) if f.init}  # type: ignore[arg-type]
    hints = get_type_hints(config_type)
    accepted = ", ".join(fields)
    for key in config:
        if key not in fields:
            raise ConfigError(
                f"{field_prefix}.{key}: unknown key for the {owner}; accepted: {accepted}",
                field=f"{field_prefix}.{key}",
            )
    missing = [
        n
        for n, f in fields.items()
        if n not in config and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(
            f"{field_prefix}.{missing[0]}: required by the {owner} ({_describe(hints[missing[0]])})",
            field=f"{field_prefix}.{missing[0]}",
        )
    values: dict[str, Any] = {}
    for key, value in config.items():
        try:
            values[key] = _coerce(hints[key], value)
        except _Mismatch as e:
            got = type(e.value).__name__ if is_secret(fields[key]) else _shown(e.value)
            raise ConfigError(
                f"{field_prefix}.{key}{e.path}: expected {e.expected}, got {got}",
                field=f"{field_prefix}.{key}",
            ) from None
    try:
        return config_type(**values)
    except ConfigError as e:
        if e.field is None or e.field.startswith(field_prefix):
            raise
        where = f"{field_prefix}.{e.field}"  # may name an entry, e.g. adapter.config.env.NAME
        top = f"{field_prefix}.{e.field.split('.', 1)[0]}"
        raise ConfigError(f"{where}: {e.detail}", field=top) from None
