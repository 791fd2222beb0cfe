"""Records <-> JSON-able dicts, exactly round-tripping. Pure: no SQLAlchemy here.

Each record class has a spec: one (encode, decode) pair per dataclass field, so the tests can check
that no field is forgotten when the domain grows one (``SPECS``). Enums are stored by value, tuples
as lists, floats as JSON numbers (``repr`` round-trips a float exactly). Free-form dicts (adapter
config, metrics overrides, details, results, verdicts) are stored as given: whatever JSON holds
comes back equal, except that tuples inside them come back as lists. Adapter config is stored
whole, secrets included: the API redacts on output, storage must keep it.

Decoding passes only the keys present, so a row written before a field with a default existed
still decodes (the field takes its default); a missing required field raises TypeError.

JSON has no NaN or infinity and PostgreSQL refuses them, but verdicts hold unbounded confidence
intervals (``inf``). :func:`dumps` therefore writes a non-finite float as ``{"__float__": "inf"}``
(``"-inf"``, ``"nan"``) and :func:`loads` turns it back into the float; the engine uses both for
every JSON column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

from guardrail.domain.model import ChangeType, DeployState, Histogram, Sample, Step, Strategy, Track
from guardrail.domain.notifications import Link, Notice, NoticeAction, Severity
from guardrail.domain.records import (
    Action,
    ActionStatus,
    AdapterRef,
    AnalysisSettings,
    EventKind,
    Marker,
    TimelineEvent,
)
from guardrail.domain.rollout import Command, CommandKind, Rollout

T = TypeVar("T")
Field = tuple[Callable[[Any], Any], Callable[[Any], Any]]  # (encode, decode)
Spec = dict[str, Field]

_FLOAT_TAG = "__float__"

# --- JSON text -------------------------------------------------------------------------------------


def _tag_nonfinite(o: Any) -> Any:
    if isinstance(o, float):
        if math.isfinite(o):
            return o
        return {_FLOAT_TAG: "nan" if math.isnan(o) else ("inf" if o > 0 else "-inf")}
    if isinstance(o, Mapping):
        return {k: _tag_nonfinite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_tag_nonfinite(v) for v in o]
    return o


def _untag(d: dict[str, Any]) -> Any:
    if len(d) == 1 and isinstance(d.get(_FLOAT_TAG), str):
        return float(d[_FLOAT_TAG])
    return d


def dumps(o: Any) -> str:
    """Strict JSON text (no NaN/Infinity literals); raises TypeError for what JSON cannot hold."""
    return json.dumps(_tag_nonfinite(o), allow_nan=False, separators=(",", ":"))


def loads(s: str | bytes) -> Any:
    return json.loads(s, object_hook=_untag)


# --- field codecs ----------------------------------------------------------------------------------


def _same(v: Any) -> Any:
    return v


PLAIN: Field = (_same, _same)
DICT: Field = (dict, dict)  # a fresh dict both ways (gauges may be any Mapping)
STRS: Field = (list, tuple)
PAIRS: Field = (lambda ps: [list(p) for p in ps], lambda ps: tuple(tuple(p) for p in ps))


def _enum(cls: type[StrEnum]) -> Field:
    return (lambda e: cls(e).value, cls)


def _record(cls: type[T], spec: Spec) -> Field:
    return (lambda o: encode(o, spec), lambda d: decode(cls, d, spec))


def _optional(f: Field) -> Field:
    enc, dec = f
    return (lambda v: None if v is None else enc(v), lambda v: None if v is None else dec(v))


def _many(f: Field) -> Field:
    enc, dec = f
    return (lambda vs: [enc(v) for v in vs], lambda vs: tuple(dec(v) for v in vs))


def encode(obj: Any, spec: Spec) -> dict[str, Any]:
    return {name: enc(getattr(obj, name)) for name, (enc, _) in spec.items()}


def decode(cls: type[T], d: Mapping[str, Any], spec: Spec) -> T:
    return cls(**{name: dec(d[name]) for name, (_, dec) in spec.items() if name in d})


# --- specs, one per record class -------------------------------------------------------------------

STEP: Spec = {"weight": PLAIN, "servers": PLAIN, "min_duration_s": PLAIN}
ROLLOUT: Spec = {
    "steps": _many(_record(Step, STEP)),
    "concurrent": PLAIN,
    "on_inconclusive": PLAIN,
    "state": _enum(DeployState),
    "step": PLAIN,
    "step_started_at": PLAIN,
    "traffic_started_at": PLAIN,
    "pending_step": PLAIN,
    "rollback_attempts": PLAIN,
    "reason": PLAIN,
    "history": PAIRS,
}
ADAPTER: Spec = {"name": PLAIN, "config": DICT}
ANALYSIS: Spec = {
    "alpha": PLAIN,
    "interval_s": PLAIN,
    "max_duration_s": PLAIN,
    "warmup_s": PLAIN,
    "on_inconclusive": PLAIN,
}
MARKER: Spec = {
    "service": PLAIN,
    "environment": PLAIN,
    "version": PLAIN,
    "previous_version": PLAIN,
    "commit": PLAIN,
    "strategy": _enum(Strategy),
    "change_type": _enum(ChangeType),
    "author": PLAIN,
    "commit_time": PLAIN,
    "description": PLAIN,
    "changes": STRS,
    "db_migrations": PLAIN,
    "db_migrations_description": PLAIN,
    "metrics_source": PLAIN,
    "metrics_overrides": DICT,
    "adapter": _record(AdapterRef, ADAPTER),
    "analysis": _record(AnalysisSettings, ANALYSIS),
    "steps": _many(_record(Step, STEP)),
    "started_at": PLAIN,
    "checklist": DICT,
    "fast_track": PLAIN,
    "links": DICT,
    "policy": DICT,
    "outlook": DICT,
}
HISTOGRAM: Spec = {"bounds": (list, tuple), "counts": (list, tuple)}
SAMPLE: Spec = {
    "track": _enum(Track),
    "start": PLAIN,
    "end": PLAIN,
    "requests": PLAIN,
    "errors": PLAIN,
    "latency": _optional(_record(Histogram, HISTOGRAM)),
    "latencies": (list, tuple),
    "gauges": DICT,
}
EVENT: Spec = {
    "kind": _enum(EventKind),
    "message": PLAIN,
    "data_time": PLAIN,
    "wall_time": PLAIN,
    "details": DICT,
    "seq": PLAIN,
}
COMMAND: Spec = {"kind": _enum(CommandKind), "step": PLAIN, "reason": PLAIN}
ACTION: Spec = {
    "deploy_id": PLAIN,
    "command": _record(Command, COMMAND),
    "status": _enum(ActionStatus),
    "attempts": PLAIN,
    "result": DICT,
    "id": PLAIN,
    "updated_at": PLAIN,
}

LINK: Spec = {"href": PLAIN, "text": PLAIN}
NOTICE: Spec = {
    "key": PLAIN,
    "action": _enum(NoticeAction),
    "severity": _enum(Severity),
    "summary": PLAIN,
    "service": PLAIN,
    "environment": PLAIN,
    "deploy_id": PLAIN,
    "rule": PLAIN,
    "details": DICT,
    "links": _many(_record(Link, LINK)),
    "text": PLAIN,
    "occurred_at": PLAIN,
}

SPECS: dict[type, Spec] = {
    Step: STEP,
    Rollout: ROLLOUT,
    AdapterRef: ADAPTER,
    AnalysisSettings: ANALYSIS,
    Marker: MARKER,
    Histogram: HISTOGRAM,
    Sample: SAMPLE,
    TimelineEvent: EVENT,
    Command: COMMAND,
    Action: ACTION,
    Link: LINK,
    Notice: NOTICE,
}

# --- public functions ------------------------------------------------------------------------------


def rollout_to_dict(r: Rollout) -> dict[str, Any]:
    return encode(r, ROLLOUT)


def rollout_from_dict(d: Mapping[str, Any]) -> Rollout:
    return decode(Rollout, d, ROLLOUT)


def marker_to_dict(m: Marker) -> dict[str, Any]:
    return encode(m, MARKER)


def marker_from_dict(d: Mapping[str, Any]) -> Marker:
    return decode(Marker, d, MARKER)


def sample_to_dict(s: Sample) -> dict[str, Any]:
    return encode(s, SAMPLE)


def sample_from_dict(d: Mapping[str, Any]) -> Sample:
    return decode(Sample, d, SAMPLE)


def event_to_dict(e: TimelineEvent) -> dict[str, Any]:
    return encode(e, EVENT)


def event_from_dict(d: Mapping[str, Any]) -> TimelineEvent:
    return decode(TimelineEvent, d, EVENT)


def command_to_dict(c: Command) -> dict[str, Any]:
    return encode(c, COMMAND)


def command_from_dict(d: Mapping[str, Any]) -> Command:
    return decode(Command, d, COMMAND)


def action_to_dict(a: Action) -> dict[str, Any]:
    return encode(a, ACTION)


def action_from_dict(d: Mapping[str, Any]) -> Action:
    return decode(Action, d, ACTION)


def notice_to_dict(n: Notice) -> dict[str, Any]:
    return encode(n, NOTICE)


def notice_from_dict(d: Mapping[str, Any]) -> Notice:
    return decode(Notice, d, NOTICE)


__all__ = [
    "SPECS",
    "action_from_dict",
    "action_to_dict",
    "command_from_dict",
    "command_to_dict",
    "dumps",
    "event_from_dict",
    "event_to_dict",
    "loads",
    "marker_from_dict",
    "marker_to_dict",
    "notice_from_dict",
    "notice_to_dict",
    "rollout_from_dict",
    "rollout_to_dict",
    "sample_from_dict",
    "sample_to_dict",
]
