"""Domain errors become the right status; unexpected errors a 500 without internals."""

from __future__ import annotations

import logging

import pytest

from guardrail.adapters.http.errors import status_of
from guardrail.domain.errors import (
    AdapterError,
    ConfigError,
    ConflictError,
    GuardrailError,
    NotFoundError,
    SourceUnavailableError,
    StoreError,
    ValidationError,
)
from tests.api.conftest import Api


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ValidationError("x"), 400),
        (ConfigError("x"), 400),
        (NotFoundError("x"), 404),
        (ConflictError("x"), 409),
        (AdapterError("x"), 502),
        (SourceUnavailableError("x"), 502),
        (StoreError("x"), 503),
        (GuardrailError("x"), 500),
    ],
)
def test_domain_errors_map_to_statuses(error: GuardrailError, status: int) -> None:
    assert status_of(error) == status


async def test_unexpected_error_is_a_500_without_internals(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(**_: object) -> list[object]:
        raise RuntimeError("connection string postgresql://admin:hunter2@db/guardrail")

    monkeypatch.setattr(api.store, "list_deploys", broken)
    with caplog.at_level(logging.ERROR, logger="guardrail.http"):
        status, err = await api.call("GET", "/api/v1/deploys")
    assert status == 500
    assert err == {"error": "internal", "detail": err["detail"], "field": None}
    assert "hunter2" not in err["detail"] and "RuntimeError" not in err["detail"]
    assert "RuntimeError" in caplog.text  # the details are in the server log


async def test_store_failure_is_503_and_its_detail_stays_in_the_log(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*_: object, **__: object) -> None:
        raise StoreError("reading deploy abc: database unreachable (10.0.0.7:5432 refused)")

    monkeypatch.setattr(api.store, "get_deploy", broken)
    with caplog.at_level(logging.ERROR, logger="guardrail.http"):
        status, err = await api.call("GET", "/api/v1/deploys/abc")
    assert status == 503 and err["error"] == "store_failed" and "10.0.0.7" not in err["detail"]
    assert "10.0.0.7" in caplog.text
