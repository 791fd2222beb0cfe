"""Health, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from guardrail.adapters.db import SqlStore
from guardrail.adapters.http import create_app
from guardrail.plugins import load_deploy_adapter
from guardrail.service.engine import Engine
from guardrail.telemetry import Telemetry
from tests.api.conftest import Api
from tests.api.helpers import marker, window


async def test_healthz_and_readyz(api: Api) -> None:
    assert await api.call("GET", "/healthz", as_=None) == (200, {"status": "ok"})
    assert await api.call("GET", "/readyz", as_=None) == (200, {"status": "ok"})


async def test_readyz_is_503_when_the_database_is_unreachable(
    aiohttp_client: Any, settings: Any, tmp_path: Any
) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path}/missing-dir/guardrail.db")
    telemetry = Telemetry()
    engine = Engine(store=store, settings=settings, adapter_factory=load_deploy_adapter, telemetry=telemetry)
    client = await aiohttp_client(create_app(engine=engine, settings=settings, telemetry=telemetry))
    try:
        resp = await client.get("/readyz")
        err = await resp.json()
        assert resp.status == 503 and err["error"] == "not_ready" and err["field"] is None
        assert str(tmp_path) not in err["detail"]
        resp = await client.get("/healthz")
        assert resp.status == 200
    finally:
        await store.close()


async def test_metrics_exposition(api: Api) -> None:
    d = await api.mark(marker())
    await api.push(d["id"], window(0, 10))
    resp = await api.client.get("/metrics")
    text = await resp.text()
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert 'guardrail_deploys{state="analyzing"} 1.0' in text
    assert "guardrail_verdicts_total{decision=" in text
    assert "guardrail_deploys_created_total" in text and "guardrail_samples_total" in text


def _app_operations(api: Api) -> set[tuple[str, str]]:
    ops = set()
    for route in api.client.app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        ops.add((route.resource.canonical, route.method.lower()))
    return ops


async def test_openapi_documents_exactly_the_routes(api: Api) -> None:
    status, doc = await api.call("GET", "/api/v1/openapi.json", as_=None)
    assert status == 200
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert documented == _app_operations(api)
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    schemas = doc["components"]["schemas"]
    assert {"MarkerIn", "SamplesIn", "DeployOut", "ErrorOut"} <= set(schemas)
    assert schemas["MarkerIn"]["additionalProperties"] is False

    def resolve(ref: str) -> None:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[-1] in schemas, ref

    def refs(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    resolve(v)
                else:
                    refs(v)
        elif isinstance(node, list):
            for v in node:
                refs(v)

    refs(doc)
    for path, item in doc["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            assert any(code.startswith("2") for code in responses), (path, method)
            assert responses["500"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorOut"
            }
            if op.get("security") != []:
                assert "401" in responses, (path, method)
            if "requestBody" in op:
                assert {"400", "413", "415"} <= set(responses), (path, method)
            if "{id}" in path:
                assert "404" in responses and op["parameters"][0]["in"] == "path", (path, method)
    create = doc["paths"]["/api/v1/deploys"]["post"]
    assert {"200", "201", "403", "409"} <= set(create["responses"])
    assert doc["paths"]["/healthz"]["get"]["security"] == []
