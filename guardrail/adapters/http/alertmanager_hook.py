"""``POST /hooks/alertmanager``: Alertmanager's webhook (payload version 4) in, :class:`ExternalAlert`
out to the alert sink the composition root provides. The handler parses, de-duplicates and hands
over; matching alerts to deploys is the sink's (the engine's) job.

Auth: the route needs a bearer token with the ``ci`` scope, checked like every other route.
Alertmanager sends one with its ``http_config``::

    receivers:
      - name: guardrail
        webhook_configs:
          - url: http://guardrail:8080/hooks/alertmanager
            send_resolved: true
            http_config:
              authorization: {type: Bearer, credentials_file: /etc/alertmanager/guardrail-token}

A dedicated token (e.g. named ``alertmanager``) keeps the audit trail readable. A shared secret in
the query string was left out on purpose: it would end up in access logs and proxies.

guardrail's own notices: the alertmanager notifier puts ``origin="guardrail"`` on every alert it
posts (the operator cannot remove it); such an alert coming back through Alertmanager (a catch-all
route sends it here) is counted as ``own`` and never handed over, so guardrail's page about one
deploy cannot fail another, or the same one again.

De-duplication: Alertmanager retries a failed delivery and re-sends a whole group when one alert of
it changes, so an alert already handed over (same groupKey, fingerprint, status and startsAt) is not
handed over again. A re-fire after a resolve has a new startsAt and goes through. The memory of what
was handed over is bounded (the most recent :data:`DEDUP_MAX` keys) and lost on restart: the sink
should not mind seeing an alert twice.

Answer quickly: the sink gets :data:`ACK_TIMEOUT_S`; if it takes longer the delivery is answered
202 and the sink carries on (shielded from the request being cancelled). If the sink fails within
that time the answer is 503 and the keys are forgotten, so Alertmanager's retry is handed over again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from guardrail.adapters.http.errors import NotReady
from guardrail.adapters.http.parsing import read_json
from guardrail.adapters.notify.alertmanager import ORIGIN, ORIGIN_LABEL
from guardrail.domain.errors import GuardrailError
from guardrail.domain.limits import INT64_MAX
from guardrail.domain.rules import AlertState, ExternalAlert

log = logging.getLogger("guardrail.http.alertmanager")

AlertSink = Callable[[list[ExternalAlert]], Awaitable[int]]
"""``async def sink(alerts) -> int``: takes new alerts, answers how many matched an active deploy."""

ACK_TIMEOUT_S = 5.0
DEDUP_MAX = 10_000

_RFC3339_HELP = "an RFC3339 timestamp with an offset, e.g. 2024-05-01T10:00:00Z"


def _timestamp(value: Any) -> float | None:
    """RFC3339 (Go's nanoseconds included) -> unix seconds; Go's zero time (year 1) -> None."""
    if not isinstance(value, str):
        raise PydanticCustomError("timestamp_type", "expected " + _RFC3339_HELP)
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise PydanticCustomError("timestamp", "not a valid timestamp: expected " + _RFC3339_HELP) from None
    if dt.tzinfo is None:
        raise PydanticCustomError("timestamp", "timestamp has no UTC offset: expected " + _RFC3339_HELP)
    if dt.year <= 1:
        return None
    return dt.timestamp()


Rfc3339 = Annotated[
    float | None, BeforeValidator(_timestamp), Field(json_schema_extra={"format": "date-time"})
]


class _Payload(BaseModel):
    # Alertmanager is the sender: fields added by a newer version are ignored, not rejected
    model_config = ConfigDict(extra="ignore", frozen=True)


class AlertmanagerAlertIn(_Payload):
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: Rfc3339
    endsAt: Rfc3339 = None
    generatorURL: str = ""
    fingerprint: Annotated[str, Field(min_length=1, max_length=200)]


class AlertmanagerWebhookIn(_Payload):
    """Alertmanager's webhook notification, version 4."""

    version: Literal["4"]
    groupKey: Annotated[str, Field(max_length=10_000)]
    truncatedAlerts: Annotated[int, Field(ge=0, le=INT64_MAX)] = 0
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupLabels: dict[str, str] = {}
    commonLabels: dict[str, str] = {}
    commonAnnotations: dict[str, str] = {}
    externalURL: str = ""
    alerts: Annotated[list[AlertmanagerAlertIn], Field(max_length=10_000)]

    def to_domain(self) -> list[ExternalAlert]:
        out = []
        for a in self.alerts:
            out.append(
                ExternalAlert(
                    fingerprint=a.fingerprint,
                    status=AlertState(a.status),
                    labels=dict(a.labels),
                    annotations=dict(a.annotations),
                    starts_at=a.startsAt if a.startsAt is not None else 0.0,
                    ends_at=a.endsAt,
                    generator_url=a.generatorURL,
                    group_key=self.groupKey,
                    receiver=self.receiver,
                )
            )
        return out


class AlertHookOut(BaseModel):
    model_config = ConfigDict(frozen=True)

    received: int = Field(description="alerts in the delivery")
    own: int = Field(description="guardrail's own alerts coming back (label origin=guardrail): ignored")
    new: int = Field(description="alerts handed to guardrail (the rest were already handed over)")
    duplicates: int
    matched: int | None = Field(
        description="alerts that matched an active deploy; null when still being processed (202)"
    )


def _key(a: ExternalAlert) -> tuple[str, str, str, float]:
    return (a.group_key, a.fingerprint, a.status.value, a.starts_at)


class AlertHook:
    """The hook's state: the sink, the keys already handed over, the sink calls still running."""

    def __init__(self, sink: AlertSink | None, *, ack_timeout_s: float = ACK_TIMEOUT_S) -> None:
        self.sink = sink
        self.ack_timeout_s = ack_timeout_s
        self._seen: OrderedDict[tuple[str, str, str, float], None] = OrderedDict()
        self.own = 0  # guardrail's own alerts that came back (ignored)
        self._tasks: set[asyncio.Task[int]] = set()

    def claim(self, alerts: list[ExternalAlert]) -> list[ExternalAlert]:
        """The alerts not handed over before (also within this delivery), now marked as handed over."""
        out = []
        for a in alerts:
            k = _key(a)
            if k in self._seen:
                self._seen.move_to_end(k)
                continue
            self._seen[k] = None
            out.append(a)
        while len(self._seen) > DEDUP_MAX:
            self._seen.popitem(last=False)
        return out

    def release(self, alerts: list[ExternalAlert]) -> None:
        for a in alerts:
            self._seen.pop(_key(a), None)

    async def deliver(self, alerts: list[ExternalAlert]) -> int | None:
        """Hand ``alerts`` to the sink; the count matched, or None if it outlasts the ack timeout."""
        assert self.sink is not None
        task = asyncio.ensure_future(self.sink(alerts))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, alerts))
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout=self.ack_timeout_s)
        except TimeoutError:
            log.warning(
                "alert sink still busy after %.1f s: answering 202, it carries on", self.ack_timeout_s
            )
            return None

    def _done(self, task: asyncio.Task[int], alerts: list[ExternalAlert]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            self.release(alerts)
            return
        exc = task.exception()
        if exc is not None:
            self.release(alerts)  # handed over again when Alertmanager retries
            log.error(
                "alert sink failed (%s): %s",
                type(exc).__name__,
                exc,
                exc_info=None if isinstance(exc, GuardrailError) else exc,
            )


ALERT_SINK = web.AppKey("guardrail.alert_sink", AlertSink)  # type: ignore[arg-type]
ALERT_HOOK = web.AppKey("guardrail.alert_hook", AlertHook)


def install_alert_hook(app: web.Application, sink: AlertSink | None) -> None:
    """Called by ``create_app``: the sink (if any) as ``app[ALERT_SINK]`` and the hook's state."""
    if sink is not None:
        app[ALERT_SINK] = sink
    app[ALERT_HOOK] = AlertHook(sink)


async def alertmanager_hook(request: web.Request) -> web.Response:
    hook = request.app[ALERT_HOOK]
    body = await read_json(request, AlertmanagerWebhookIn)
    if hook.sink is None:
        raise NotReady("this server takes no Alertmanager alerts: no alert sink is configured")
    received = body.to_domain()
    alerts = [a for a in received if a.labels.get(ORIGIN_LABEL) != ORIGIN]
    if len(alerts) < len(received):
        hook.own += len(received) - len(alerts)
        log.debug("ignored %d of guardrail's own alert(s) routed back", len(received) - len(alerts))
    new = hook.claim(alerts)
    matched: int | None = 0
    if new:
        try:
            matched = await hook.deliver(new)
        except asyncio.CancelledError:
            raise
        except Exception:
            # released by the task's callback; the retry is handed over again
            raise NotReady("could not take the alerts now; Alertmanager will retry") from None
    if body.truncatedAlerts:
        log.warning(
            "Alertmanager truncated %d alert(s) of group %s (max_alerts)", body.truncatedAlerts, body.groupKey
        )
    out = AlertHookOut(
        received=len(received),
        own=len(received) - len(alerts),
        new=len(new),
        duplicates=len(alerts) - len(new),
        matched=matched,
    )
    return web.Response(
        body=out.model_dump_json().encode(),
        status=200 if matched is not None else 202,
        content_type="application/json",
    )
