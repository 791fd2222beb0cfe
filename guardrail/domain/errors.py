"""One exception tree for guardrail. Adapters translate library errors into these."""

from __future__ import annotations


class GuardrailError(Exception):
    """Base of every error guardrail raises on purpose."""

    code = "error"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class ValidationError(GuardrailError):
    """Input that does not fit: names the field, the value and what is accepted."""

    code = "invalid"


class NotFoundError(GuardrailError):
    code = "not_found"


class ConflictError(GuardrailError):
    """The request is valid but the current state forbids it (e.g. promoting a rolled-back deploy)."""

    code = "conflict"


class PolicyBlockedError(ConflictError):
    """The deploy policy blocks this deploy (a window or a checklist item); ``policy`` lists every check."""

    code = "policy_blocked"

    def __init__(self, detail: str, *, policy: dict[str, object], field: str | None = "policy") -> None:
        super().__init__(detail, field=field)
        self.policy = policy


class AdapterError(GuardrailError):
    """A deploy adapter, metric source or notifier failed talking to the outside world."""

    code = "adapter_failed"


class SourceUnavailableError(AdapterError):
    code = "source_unavailable"


class StoreError(GuardrailError):
    """The database failed or could not be reached (not the caller's fault)."""

    code = "store_failed"


class BusyError(StoreError):
    """Another replica is working on the deploy and did not let go in time: retry shortly."""

    code = "busy"


class ConfigError(GuardrailError):
    code = "config_invalid"


class LeaseLostError(BusyError):
    """This replica's lease on the deploy was taken over by another replica: nothing was written."""

    code = "lease_lost"
