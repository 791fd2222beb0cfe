"""A deploy adapter that changes nothing: it records each call and answers ok (or, for drills,
fails the methods listed in ``fail_on``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, Self

from guardrail.adapters.deploy import format_weight, parse_adapter_config
from guardrail.domain.model import Step
from guardrail.ports import ActionResult, DeployTarget

Method = Literal["apply_step", "finalize", "rollback"]


@dataclass(frozen=True, slots=True)
class NoopConfig:
    fail_on: tuple[Method, ...] = ()  # methods that return ok=False (failure drills)


class NoopCall(NamedTuple):
    method: str
    action_key: str
    step: Step | None  # the step applied (None for finalize and rollback)


class NoopDeployAdapter:
    name = "noop"
    config_type: ClassVar[type[NoopConfig]] = NoopConfig

    def __init__(self, config: NoopConfig | None = None) -> None:
        self.config = config or NoopConfig()
        self.calls: list[NoopCall] = []

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(parse_adapter_config(NoopConfig, config, name="noop"))

    def _result(self, method: Method, detail: str) -> ActionResult:
        if method in self.config.fail_on:
            return ActionResult(ok=False, detail=f"noop: {method} failed on purpose (fail_on drill)")
        return ActionResult(ok=True, detail=f"noop: {detail} (nothing changed)")

    async def apply_step(self, target: DeployTarget, step: Step, index: int, total: int) -> ActionResult:
        self.calls.append(NoopCall("apply_step", target.action_key, step))
        what = f"weight {format_weight(step.weight)}%" if step.weight is not None else step.describe()
        return self._result("apply_step", f"step {index + 1}/{total} of {target.version}: {what}")

    async def finalize(self, target: DeployTarget) -> ActionResult:
        self.calls.append(NoopCall("finalize", target.action_key, None))
        return self._result("finalize", f"promoted {target.version}")

    async def rollback(self, target: DeployTarget, reason: str) -> ActionResult:
        self.calls.append(NoopCall("rollback", target.action_key, None))
        return self._result("rollback", f"rolled back to {target.previous_version}")

    async def close(self) -> None:
        return None
