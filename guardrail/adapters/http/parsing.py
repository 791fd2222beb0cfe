"""Reading a request into a schema: body size and media type, JSON, and pydantic's errors turned
into one :class:`~guardrail.adapters.http.errors.InvalidFields` listing every problem, each naming
its field as a path (``steps[1].weight``) and saying what is accepted. Input values are never echoed (they may be
secrets), except the short text given for an enumerated field."""

from __future__ import annotations

import types
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, Union, get_args, get_origin

import pydantic
from aiohttp import hdrs, web
from pydantic import BaseModel

from guardrail.adapters.http.errors import (
    BadEncoding,
    InvalidFields,
    InvalidJson,
    PayloadTooLarge,
    UnsupportedMediaType,
)

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


# Content-Encoding -> zlib's wbits (gzip: the gzip container; deflate: the zlib container, as RFC 9110
# says, or a raw stream as some clients send)
ENCODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
ACCEPTED_ENCODINGS = "gzip, deflate or identity (none)"
MAX_GZIP_MEMBERS = 64


def _too_large(limit: int, after: str = "") -> PayloadTooLarge:
    return PayloadTooLarge(f"request body too large: at most {limit} bytes are accepted{after}")


async def read_body(request: web.Request) -> bytes:
    """The body, decoded: ``Content-Encoding`` gzip or deflate is inflated here (the app turns off
    aiohttp's own decompression, which let a truncated gzip body through), and the size limit
    (``client_max_size``) applies to the compressed body and to the inflated one, inflating no more
    than the limit: a decompression bomb costs at most the limit in memory. 415 for an encoding
    other than gzip, deflate or identity; 400 for a corrupt or truncated body; 413 over the limit."""
    limit = request.client_max_size
    encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
    if encoding not in ("", "identity") and encoding not in ENCODINGS:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding[:40]!r} is not supported: send {ACCEPTED_ENCODINGS}",
            field="Content-Encoding",
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    if encoding in ("", "identity") or not raw:
        return raw
    return inflate(raw, encoding, limit)


def inflate(raw: bytes, encoding: str, limit: int) -> bytes:
    """``raw`` decoded from ``encoding`` (gzip or deflate), at most ``limit`` bytes of it."""
    wbits = ENCODINGS[encoding]
    name = "gzip" if wbits == 31 else "deflate"
    out = bytearray()
    data = raw
    for _ in range(MAX_GZIP_MEMBERS):  # gzip allows several members, one after the other
        d = zlib.decompressobj(wbits)
        try:
            try:
                chunk = d.decompress(data, limit + 1 - len(out))
            except zlib.error:
                if wbits != 15:
                    raise
                d = zlib.decompressobj(-15)  # a raw deflate stream without the zlib header
                chunk = d.decompress(data, limit + 1 - len(out))
            out += chunk
            if len(out) > limit:
                raise _too_large(limit, " after decompression")
            if not d.eof:
                raise BadEncoding(
                    f"the body is truncated: its {name} stream ends early", field="Content-Encoding"
                )
        except zlib.error as e:
            raise BadEncoding(f"the body is not valid {name} data ({e})", field="Content-Encoding") from None
        data = d.unused_data
        if wbits != 31 or not data:
            if data:
                raise BadEncoding(f"unexpected bytes after the {name} stream", field="Content-Encoding")
            return bytes(out)
    raise BadEncoding(f"more than {MAX_GZIP_MEMBERS} gzip members in one body", field="Content-Encoding")


async def read_json(request: web.Request, model: type[M]) -> M:
    """The body, validated strictly against ``model``. 415 for a non-JSON media type or an unknown
    encoding, 413 over the size limit, 400 for a body that does not decode, invalid JSON or a body that
    does not fit the schema."""
    if hdrs.CONTENT_TYPE in request.headers:
        ct = request.content_type
        if ct != "application/json" and not ct.endswith("+json"):
            raise UnsupportedMediaType(f"send the body as application/json, not {ct}")
    raw = await read_body(request)
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
