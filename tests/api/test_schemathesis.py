"""Issue 12: schemathesis against the served OpenAPI document, with a token holding every scope and
with each single-scope token: no server error, and every answer's status, content type, headers and
body as the document says.

``guardrail serve`` (SQLite store) runs on a loopback port in a process of its own; each
operation gets a bounded number of positive and negative examples (``FUZZ_EXAMPLES`` each), the
deploy-scoped paths on a real deploy as well as on random ids. Every failing request is collected
and the test fails listing them all (operation, check, status), not at the first one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
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

from tests.api.helpers import marker

# examples per operation and generation mode (positive, negative), and per deploy id (a random one,
# the real deploy's): more with the all-scopes token, fewer with each single scope (whose requests to
# the other scopes' operations are all 403s)
FUZZ_EXAMPLES = int(os.environ.get("GUARDRAIL_FUZZ_EXAMPLES", "4"))
FUZZ_EXAMPLES_SINGLE_SCOPE = int(os.environ.get("GUARDRAIL_FUZZ_EXAMPLES_SINGLE_SCOPE", "2"))
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
    log: Path
    pid: int

    def cpu_s(self) -> float:
        """CPU seconds the server process has used (Linux /proc; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Tally:
    requests: int = 0
    server_errors: int = 0
    unsatisfiable: int = 0
    failures: Counter[tuple[str, str, int]] = field(default_factory=Counter)  # (operation, check, status)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``guardrail serve`` in a process of its own on a loopback port (a thread of this process would
    share its GIL with the example generation), on a fresh SQLite file."""
    tmp = tmp_path_factory.mktemp("fuzz")
    port = _free_port()
    config = {
        "database_url": f"sqlite+aiosqlite:///{tmp / 'guardrail.db'}",
        "tokens": [{"name": f"fuzz-{n}", "token": token(n), "scopes": s} for n, s in TOKENS.items()],
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "max_body_bytes": 64 * 1024,
            "wait_max_s": 0.05,  # the long-poll answers at once: the probe is about answers, not waiting
        },
    }
    (tmp / "guardrail.yaml").write_text(json.dumps(config))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDRAIL_")}
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "guardrail.cli", "serve", "--config", str(tmp / "guardrail.yaml")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a loaded 2-core machine is slow to import it all
        while True:
            assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
            try:
                if requests.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "guardrail serve did not become ready in 180 s"
            time.sleep(0.2)
        doc = requests.get(f"{base}/api/v1/openapi.json", timeout=10).json()
        created = requests.post(
            f"{base}/api/v1/deploys",
            json=marker(),
            headers={"Authorization": f"Bearer {token('all')}"},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        yield Served(base, created.json()["id"], doc, tmp / "server.log", proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def fuzz(served: Served, scope: str, examples: int) -> Tally:
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
                    _examples(strategy, op.label, served.base_url, session, headers, tally, examples)()
                except Unsatisfiable:  # no negative example exists (an operation without inputs)
                    tally.unsatisfiable += 1
    return tally


def _examples(
    strategy: Any,
    label: str,
    base_url: str,
    session: requests.Session,
    headers: dict[str, str],
    tally: Tally,
    examples: int,
) -> Any:
    @given(case=strategy)
    @settings(
        max_examples=examples,
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
    cpu, server_cpu = time.process_time(), served.cpu_s()
    tally = fuzz(served, scope, FUZZ_EXAMPLES if scope == "all" else FUZZ_EXAMPLES_SINGLE_SCOPE)
    cpu, server_cpu = time.process_time() - cpu, served.cpu_s() - server_cpu
    print(
        f"\nschemathesis, token with scope(s) {','.join(TOKENS[scope])}: {tally.requests} requests, "
        f"{tally.server_errors} server error(s), {sum(tally.failures.values())} failed check(s); "
        f"CPU {cpu:.1f} s here, {server_cpu:.1f} s in the server"
    )
    assert tally.requests >= 100
    problems = "\n".join(
        f"{n} x {op}: {check} (status {status})" for (op, check, status), n in tally.failures.items()
    )
    assert not tally.failures, f"{problems}\n--- server log (tail) ---\n{served.log.read_text()[-4000:]}"
    assert tally.server_errors == 0


def test_schemathesis_coverage_phase_finds_no_server_error_and_no_violation(
    served: Served, tmp_path: Path
) -> None:
    """``st run`` itself, with its deterministic coverage phase (boundary values, values just outside
    each constraint, wrong types, missing required fields) and the documented examples, with the
    all-scopes token; the figures come from schemathesis' own JSON report."""
    report = tmp_path / "schemathesis.json"
    st = Path(sys.executable).with_name("st")
    cmd = [
        str(st),
        "run",
        f"{served.base_url}/api/v1/openapi.json",
        "--url",
        served.base_url,
        "-H",
        f"Authorization: Bearer {token('all')}",
        "--checks",
        ",".join(c.__name__ for c in CHECKS),
        "--phases",
        "examples,coverage",
        "--generation-deterministic",
        "--continue-on-failure",
        "--request-timeout",
        "10",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
    ]
    server_cpu = served.cpu_s()
    run = subprocess.run(  # in tmp_path: st keeps a cache directory (.schemathesis/) where it runs
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"}, cwd=tmp_path
    )
    server_cpu = served.cpu_s() - server_cpu
    out = json.loads(report.read_text())
    cases = out["test_cases"]
    print(
        f"\nschemathesis run (examples, coverage), token with every scope: {cases['generated']} test cases, "
        f"{cases['with_failures']} with failures, {cases['unique_failures']} unique failure(s) "
        f"({', '.join(f['code'] + ' ' + f['title'] for f in out['failures']) or 'none'}); "
        f"{out['operations']['tested']} operations; {out['running_time']:.0f} s, {server_cpu:.1f} s CPU in the server"
    )
    assert out["operations"]["tested"] == out["operations"]["total"] >= 20
    assert cases["generated"] >= 500
    assert not out["failures"] and not out["errors"], (
        f"{run.stdout[-6000:]}\n{served.log.read_text()[-3000:]}"
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
