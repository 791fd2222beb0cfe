"""The API's errors: the domain's tree plus a few that only exist at the HTTP boundary, and the
one place where any of them (or an aiohttp HTTP exception) becomes a JSON error response.

Every error body is ``{"error": code, "detail": text, "field": path or null}``; a validation error
adds ``errors``, every problem found as ``{"field", "detail"}`` (``field``/``detail`` are the first). Internals (tracebacks,
exception messages of unexpected errors, secrets) never reach a client: an unexpected error is logged
and answered with a generic 500.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiohttp import web

from guardrail.domain.errors import (
    AdapterError,
    ConfigError,
    ConflictError,
    GuardrailError,
    NotFoundError,
    PolicyBlockedError,
    StoreError,
    ValidationError,
)

log = logging.getLogger("guardrail.http")


class ApiError(GuardrailError):
    """An error that only exists at the HTTP boundary; carries its own status and headers."""

    status = 400
    code = "bad_request"

    def __init__(
        self, detail: str, *, field: str | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail, field=field)
        self.headers = dict(headers or {})


class InvalidFields(ValidationError):
    """Every problem found in one request body, in order; ``field`` is the first one's."""

    def __init__(self, problems: list[tuple[str | None, str]]) -> None:
        assert problems, "InvalidFields needs at least one problem"
        detail = (
            problems[0][1]
            if len(problems) == 1
            else (f"{len(problems)} problems: " + "; ".join(d for _, d in problems))
        )
        super().__init__(detail, field=problems[0][0])
        self.problems = problems


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class InvalidJson(ApiError):
    status = 400
    code = "invalid_json"


class BadEncoding(ApiError):
    """The body does not decode with its Content-Encoding (corrupt or truncated)."""

    status = 400
    code = "bad_encoding"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(ApiError):
    status = 413
    code = "too_large"


class NotReady(ApiError):
    status = 503
    code = "not_ready"


# the most specific class wins (AdapterError covers SourceUnavailableError)
STATUS_OF: dict[type[GuardrailError], int] = {
    ValidationError: 400,
    ConfigError: 400,
    NotFoundError: 404,
    ConflictError: 409,
    AdapterError: 502,
    StoreError: 503,  # the database is down: retryable, and not the caller's fault
}

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    500: "internal",
    502: "adapter_failed",
    503: "not_ready",
}


def error_response(
    status: int,
    code: str,
    detail: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
    errors: list[tuple[str | None, str]] | None = None,
) -> web.Response:
    body: dict[str, object] = {"error": code, "detail": detail, "field": field}
    if errors is not None:
        body["errors"] = [{"field": f, "detail": d} for f, d in errors]
    return web.json_response(body, status=status, headers=dict(headers or {}))


def status_of(error: GuardrailError) -> int:
    if isinstance(error, ApiError):
        return error.status
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 500


def from_guardrail_error(error: GuardrailError) -> web.Response:
    status = status_of(error)
    if status >= 500 and not isinstance(error, ApiError | AdapterError):
        # e.g. the store failing: its text may name hosts or statements; it goes to the log only
        log.error("%s: %s", type(error).__name__, error.detail)
        detail = (
            "the database is unavailable; try again"
            if isinstance(error, StoreError)
            else "internal error; the server log has the details"
        )
        return error_response(status, error.code, detail)
    headers = error.headers if isinstance(error, ApiError) else None
    problems = None
    if isinstance(error, ValidationError):  # every problem, for a client (or the CLI) to list
        problems = error.problems if isinstance(error, InvalidFields) else [(error.field, error.detail)]
    response = error_response(status, error.code, error.detail, error.field, headers, problems)
    if isinstance(error, PolicyBlockedError):  # the marker response lists what was checked and why
        return web.json_response(
            {"error": error.code, "detail": error.detail, "field": error.field, "policy": error.policy},
            status=status,
        )
    return response


def from_http_exception(request: web.Request, exc: web.HTTPException, *, max_body_bytes: int) -> web.Response:
    """aiohttp's own 404 / 405 / 413 ... as JSON, keeping headers such as ``Allow``."""
    status = exc.status
    code = _HTTP_CODES.get(status, exc.reason.lower().replace(" ", "_") if exc.reason else "error")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        detail = f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
    elif status == 404:
        detail = f"no such resource: {request.method} {request.path}"
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        detail = f"request body too large: at most {max_body_bytes} bytes are accepted"
    else:
        detail = exc.reason
    keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate", "retry-after")}
    return error_response(status, code, detail, None, keep)


def internal_error() -> web.Response:
    return error_response(500, "internal", "internal error; the server log has the details")
