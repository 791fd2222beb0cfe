"""The OpenAPI 3.1 document, generated from the route table and the schemas' JSON schemas."""

from __future__ import annotations

import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from guardrail.adapters.http.routes import Route
from guardrail.adapters.http.schemas import ErrorOut

REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"{(\w+)}")

ERROR_HELP = {
    400: "Invalid input: the field is named, with what is accepted",
    401: "Missing or invalid bearer token",
    403: "The token lacks the scope this operation needs",
    404: "No such deploy",
    409: "The deploy's state forbids this (or the Idempotency-Key was used for another deploy)",
    413: "Request body over the configured limit",
    415: "The body is not application/json, or its Content-Encoding is not gzip, deflate or identity",
    500: "Internal error (details in the server log only)",
    502: "A deploy adapter failed",
    503: "Not ready: the database is unreachable",
}
_SCOPE_HELP = {
    "ci": "Needs a token with the `ci` scope.",
    "operator": "Needs a token with the `operator` scope.",
    "read": "Needs any valid token.",
}


def _models(routes: Sequence[Route]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    seen: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(ErrorOut, "serialization"): None}
    for r in routes:
        if r.body is not None:
            seen[(r.body, "validation")] = None
        if r.query is not None:
            seen[(r.query, "validation")] = None
        if isinstance(r.response, type):
            seen[(r.response, "serialization")] = None
    return list(seen)


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def build_openapi(routes: Sequence[Route], *, version: str, server_url: str) -> dict[str, Any]:
    models = _models(routes)
    refs, top = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    error_ref = refs[(ErrorOut, "serialization")]

    query_defs: dict[str, Any] = {}  # a query model may serve several routes (the API and a page)

    def query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
        name = refs[(model, "validation")]["$ref"].rsplit("/", 1)[-1]
        if name not in query_defs:  # parameters, not a body: not a component of its own
            query_defs[name] = schemas.pop(name)
        definition = query_defs[name]
        required = set(definition.get("required", []))
        return [
            {
                "name": pname,
                "in": "query",
                "required": pname in required,
                "schema": {k: v for k, v in prop.items() if k != "description"},
                **({"description": prop["description"]} if "description" in prop else {}),
            }
            for pname, prop in definition.get("properties", {}).items()
        ]

    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {
            "operationId": r.operation_id,
            "summary": r.summary,
            "tags": [r.tag],
        }
        if r.scope is None:
            op["security"] = []
        else:
            op["description"] = _SCOPE_HELP[r.scope]
            op["x-required-scope"] = r.scope
        params: list[dict[str, Any]] = [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in _PATH_PARAM.findall(r.path)
        ]
        params += [
            {"name": h, "in": "header", "required": False, "schema": {"type": "string"}, "description": d}
            for h, d in r.headers
        ]
        if r.query is not None:
            params += query_params(r.query)
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": _json_content(refs[(r.body, "validation")])}
        responses: dict[str, Any] = {}
        if r.response == "text":
            responses[str(r.status)] = {
                "description": "Prometheus text exposition (OpenMetrics if asked for in Accept)",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        elif r.response == "html":
            responses[str(r.status)] = {
                "description": "An HTML page (inline CSS and SVG, no scripts)",
                "content": {"text/html": {"schema": {"type": "string"}}},
            }
        elif r.response == "openapi":
            responses[str(r.status)] = {
                "description": "An OpenAPI 3.1 document",
                "content": _json_content({"type": "object"}),
            }
        elif r.response is not None:
            responses[str(r.status)] = {
                "description": HTTPStatus(r.status).phrase,
                "content": _json_content(refs[(r.response, "serialization")]),
            }
        if r.operation_id == "createDeploy":
            responses["200"] = {
                "description": "Replayed: the deploy recorded earlier under the same Idempotency-Key",
                "content": _json_content(refs[(r.response, "serialization")]),  # type: ignore[index]
            }
        for status in sorted({*r.errors, 500}):
            # a page answers its own errors with a page; a 500 is JSON everywhere
            html = r.response == "html" and status != 500
            content = {"text/html": {"schema": {"type": "string"}}} if html else _json_content(error_ref)
            responses[str(status)] = {"description": ERROR_HELP[status], "content": content}
        op["responses"] = dict(sorted(responses.items()))
        paths.setdefault(r.path, {})[r.method.lower()] = op

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "guardrail",
            "version": version,
            "description": "Post-deployment guardrail: deploy markers, pushed samples, anytime-valid "
            "canary analysis, promotion and rollback. Every error body is "
            '{"error": code, "detail": text, "field": path or null}.',
        },
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
