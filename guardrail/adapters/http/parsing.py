"""Reading a request into a schema: body size and media type, JSON, and pydantic's errors turned
into one :class:`~guardrail.adapters.http.errors.InvalidFields` listing every problem, each naming
its field as a path (``steps[1].weight``) and saying what is accepted. Input values are never echoed (they may be
secrets), except the short text given for an enumerated field."""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, Union, get_args, get_origin

import pydantic
from aiohttp import hdrs, web
from pydantic import BaseModel

from guardrail.adapters.http.errors import InvalidFields, InvalidJson, PayloadTooLarge, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)

_JSON_TYPES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def field_path(loc: Sequence[int | str]) -> str | None:
    """``("steps", 1, "weight")`` -> ``"steps[1].weight"``; the empty location -> None."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _unwrap(tp: Any) -> Any:
    """The model class behind Optional[...] / Annotated[...] / list[...] / dict[str, ...], if any."""
    while True:
        origin = get_origin(tp)
        if origin is None:
            return tp
        args = [a for a in get_args(tp) if a is not type(None)]
        if origin in (Union, types.UnionType):
            models = [a for a in args if isinstance(_unwrap(a), type) and issubclass(_unwrap(a), BaseModel)]
            tp = models[0] if models else args[0]
        elif origin in (list, tuple, Sequence):
            tp = args[0]
        elif origin in (dict, Mapping):
            tp = args[-1]
        else:  # Annotated
            tp = args[0]


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue  # list index: the element type was taken with the field
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        f = current.model_fields.get(part)
        if f is None:
            return None
        current = _unwrap(f.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _describe(model: type[BaseModel], err: Mapping[str, Any]) -> tuple[str, str | None]:
    loc = tuple(err.get("loc", ()))
    path = field_path(loc)
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        accepted = f"; accepted: {', '.join(parent.model_fields)}" if parent is not None else ""
        where = f" in {field_path(loc[:-1])}" if len(loc) > 1 else ""
        return f"unknown field {loc[-1]!r}{where}{accepted}", path
    if kind == "missing":
        return f"{path} is required", path
    if kind in ("model_type", "model_attributes_type", "dict_type") and not loc:
        return f"the body must be a JSON object, got {_json_type(value)}", None
    msg = str(err.get("msg", "invalid value"))
    if kind in ("enum", "literal_error") and isinstance(value, str) and len(value) <= 40:
        msg = f"{msg}, got {value!r}"
    elif kind.endswith("_type") or kind.endswith("_parsing"):
        msg = f"{msg}, got {_json_type(value)}"
    return (f"{path}: {msg}" if path else msg), path


def validation_error(
    model: type[BaseModel], e: pydantic.ValidationError, prefix: str = ""
) -> InvalidFields | InvalidJson:
    """All of pydantic's errors as one InvalidFields (each field a dotted / indexed path)."""
    errors = e.errors(include_url=False)
    for err in errors:
        if err["type"] == "json_invalid":
            return InvalidJson(
                f"the body is not valid JSON: {err.get('ctx', {}).get('error', 'parse error')}"
            )
    problems: list[tuple[str | None, str]] = []
    for err in errors:
        detail, path = _describe(model, err)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        if (path, detail) not in problems:
            problems.append((path, detail))
    return InvalidFields(problems)


async def read_json(request: web.Request, model: type[M]) -> M:
    """The body, validated strictly against ``model``. 415 for a non-JSON media type, 413 over the
    size limit, 400 for invalid JSON or a body that does not fit the schema."""
    if hdrs.CONTENT_TYPE in request.headers:
        ct = request.content_type
        if ct != "application/json" and not ct.endswith("+json"):
            raise UnsupportedMediaType(f"send the body as application/json, not {ct}")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(
            f"request body too large: at most {request.client_max_size} bytes are accepted"
        ) from None
    if not raw.strip():
        raise InvalidJson("a JSON body is required")
    try:
        return model.model_validate_json(raw)
    except pydantic.ValidationError as e:
        raise validation_error(model, e) from None


def read_query(request: web.Request, model: type[M]) -> M:
    """The query string, validated against ``model`` (unknown parameters rejected)."""
    try:
        return model.model_validate(dict(request.query))
    except pydantic.ValidationError as e:
        raise validation_error(model, e) from None
