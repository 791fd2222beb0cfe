"""Issue 12: schemathesis against the served OpenAPI document, with a token holding every scope and
with each single-scope token: no server error, and every answer's status, content type, headers and
body as the document says.

The app as ``guardrail.main.build_app`` wires it (SQLite store) runs on a loopback port in a thread
of its own; each
operation gets a bounded number of positive and negative examples (``FUZZ_EXAMPLES`` each), the
deploy-scoped paths on a real deploy as well as on random ids. Every failing request is collected
and the test fails listing them all (operation, check, status), not at the first one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from guardrail.config import Settings
from guardrail.main import build_app
from tests.api.helpers import marker

FUZZ_EXAMPLES = int(os.environ.get("GUARDRAIL_FUZZ_EXAMPLES", "6"))  # per operation, mode and token
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
TOKENS = {
    "all": ["ci", "operator", "read"],
    "ci": ["ci"],
    "operator": ["operator"],
    "read": ["read"],
}


def token(name: str) -> str:
    return f"tok-fuzz-{name}-5d1c0a"


@dataclass
class Served:
    base_url: str
    deploy_id: str
    openapi: dict[str, Any]


@dataclass
class Tally:
    requests: int = 0
    server_errors: int = 0
    unsatisfiable: int = 0
    failures: Counter[tuple[str, str, int]] = field(default_factory=Counter)  # (operation, check, status)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, migrated_db: Path) -> Iterator[Served]:
    """The app on a loopback port, in a thread with its own event loop (schemathesis calls it with
    blocking ``requests``)."""
    path = tmp_path_factory.mktemp("fuzz") / "guardrail.db"
    shutil.copyfile(migrated_db, path)
    settings = Settings.model_validate(
        {
            "tokens": [{"name": f"fuzz-{n}", "token": token(n), "scopes": s} for n, s in TOKENS.items()],
            "server": {"public_url": "http://127.0.0.1", "max_body_bytes": 64 * 1024, "wait_max_s": 0.05},
            "database_url": f"sqlite+aiosqlite:///{path}",
        }
    )
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def start() -> None:
        app = await build_app(settings)  # the composition root: everything wired as in production
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state.update(runner=runner, port=runner.addresses[0][1])
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30), "the app did not start"
    base = f"http://127.0.0.1:{state['port']}"
    doc = requests.get(f"{base}/api/v1/openapi.json", timeout=10).json()
    created = requests.post(
        f"{base}/api/v1/deploys", json=marker(), headers={"Authorization": f"Bearer {token('all')}"}, timeout=10
    )
    assert created.status_code == 201, created.text
    yield Served(base, created.json()["id"], doc)

    async def stop() -> None:
        await state["runner"].cleanup()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def fuzz(served: Served, scope: str) -> Tally:
    doc = {**served.openapi, "servers": [{"url": served.base_url}]}
    schema = schemathesis.openapi.from_dict(doc)
    headers = {"Authorization": f"Bearer {token(scope)}"}
    session = requests.Session()
    tally = Tally()
    for result in schema.get_all_operations():
        op = result.ok()
        pinned: list[dict[str, Any] | None] = [None]
        if "{id}" in op.path:
            pinned.append({"id": served.deploy_id})
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path_parameters in pinned:
                strategy = op.as_strategy(generation_mode=mode, path_parameters=path_parameters)
                try:
                    _examples(strategy, op.label, served.base_url, session, headers, tally)()
                except Unsatisfiable:  # no negative example exists (an operation without inputs)
                    tally.unsatisfiable += 1
    return tally


def _examples(
    strategy: Any, label: str, base_url: str, session: requests.Session, headers: dict[str, str], tally: Tally
) -> Any:
    @given(case=strategy)
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def one(case: Any) -> None:
        tally.requests += 1
        try:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=10)
        except requests.RequestException as e:  # a dropped connection is a server failure too
            tally.server_errors += 1
            tally.failures[(label, f"transport: {type(e).__name__}", 0)] += 1
            return
        if response.status_code >= 500:
            tally.server_errors += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except BaseExceptionGroup as e:  # schemathesis' FailureGroup: one entry per failed check
            for f in e.exceptions:
                title = getattr(f, "title", type(f).__name__)
                tally.failures[(label, str(title), response.status_code)] += 1

    return one


@pytest.mark.parametrize("scope", list(TOKENS))
def test_schemathesis_finds_no_server_error_and_no_violation(served: Served, scope: str) -> None:
    tally = fuzz(served, scope)
    print(
        f"\nschemathesis, token with scope(s) {','.join(TOKENS[scope])}: {tally.requests} requests, "
        f"{tally.server_errors} server error(s), {sum(tally.failures.values())} failed check(s)"
    )
    assert tally.requests >= 100
    problems = "\n".join(f"{n} x {op}: {check} (status {status})" for (op, check, status), n in tally.failures.items())
    assert not tally.failures, problems
    assert tally.server_errors == 0
