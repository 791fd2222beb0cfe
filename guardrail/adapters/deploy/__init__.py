"""Deploy adapters (the ``DeployAdapter`` port), registered in the ``guardrail.deploy_adapters``
entry point group: ``noop``, ``command``, ``webhook``.

Shared conventions: ``{step}`` / ``"step"`` is 1-based (the engine's index + 1) so that it reads
with ``total_steps``; a weight renders without a trailing ``.0`` (``10``, ``12.5``); ``servers``
renders as the number, or ``all`` when the step puts every server on the new version.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from guardrail.domain.model import Step
from guardrail.plugins import parse_config
from guardrail.ports import DeployTarget

C = TypeVar("C")

METHODS = ("apply_step", "finalize", "rollback")


def parse_adapter_config(config_type: type[C], config: Mapping[str, Any] | None, *, name: str) -> C:
    """Validate a deploy adapter's raw config; errors name ``adapter.config.<key>``."""
    return parse_config(config_type, config, field_prefix="adapter.config", owner=f"{name} deploy adapter")


def freeze_mappings(config: Any, *names: str) -> None:
    """In a frozen config's ``__post_init__``: store the named mappings as read-only copies, so the
    config stays immutable whether it was parsed or built directly with plain dicts."""
    for name in names:
        object.__setattr__(config, name, MappingProxyType(dict(getattr(config, name))))


def format_weight(weight: float | None) -> str:
    if weight is None:
        return ""
    w = float(weight)
    return str(int(w)) if w.is_integer() else repr(w)


def format_servers(servers: int | None) -> str:
    return "all" if servers is None else str(servers)


def target_values(target: DeployTarget) -> dict[str, str]:
    return {
        "deploy_id": target.deploy_id,
        "service": target.service,
        "environment": target.environment,
        "version": target.version,
        "previous_version": target.previous_version,
        "commit": target.commit,
    }


def step_values(step: Step, index: int, total: int) -> dict[str, str]:
    return {
        "weight": format_weight(step.weight),
        "servers": format_servers(step.servers),
        "step": str(index + 1),
        "total_steps": str(total),
    }
