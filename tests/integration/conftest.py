"""Fixtures for tests against real servers on loopback. One section per kind of server."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from guardrail.adapters.db.engine import execute_autocommit
from guardrail.adapters.db.migrate import upgrade
from guardrail.adapters.db.store import SqlStore

# ===================================================================================================
# Databases: SQLite (a temp file, always) and PostgreSQL (when GUARDRAIL_TEST_DATABASE_URL is set)
# ===================================================================================================
#
# GUARDRAIL_TEST_DATABASE_URL names a database on a PostgreSQL server the tests may create databases
# on, e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test. The session creates one fresh database
# (guardrail_test_<random>), migrates it, empties its tables before each test and drops it at the
# end; tests of the migrations themselves get a second one, wiped before each (``empty_db_url``).
# Unset: the PostgreSQL cases skip, unless GUARDRAIL_REQUIRE_INTEGRATION=1, where they fail.

PG_URL_ENV = "GUARDRAIL_TEST_DATABASE_URL"
REQUIRE_ENV = "GUARDRAIL_REQUIRE_INTEGRATION"
DB_BACKENDS = ["sqlite", "postgresql"]
_TABLES = ("drafts", "notifications", "incidents", "actions", "samples", "events", "deploys")  # children first


def _pg_server_url_or_skip() -> str:
    url = os.environ.get(PG_URL_ENV, "").strip()
    if url:
        return url
    why = (
        f"{PG_URL_ENV} is not set, so the PostgreSQL cases cannot run; set it to a database on a "
        f"server that allows CREATE DATABASE, e.g. {PG_URL_ENV}=postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def pg_database_factory() -> Iterator[Callable[[], str]]:
    """Creates fresh, empty PostgreSQL databases (URLs returned); drops them all at session end."""
    server_url = _pg_server_url_or_skip()
    created: list[str] = []

    def create() -> str:
        name = f"guardrail_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(execute_autocommit(server_url, f'CREATE DATABASE "{name}"'))
        created.append(name)
        return make_url(server_url).set(database=name).render_as_string(hide_password=False)

    yield create
    if created:
        asyncio.run(execute_autocommit(server_url, *(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in created)))


@pytest.fixture(scope="session")
def pg_database_url(pg_database_factory: Callable[[], str]) -> str:
    """One migrated PostgreSQL database for the session (emptied before each test by ``store_url``)."""
    url = pg_database_factory()
    asyncio.run(upgrade(url))
    return url


@pytest.fixture(scope="session")
def pg_scratch_database_url(pg_database_factory: Callable[[], str]) -> str:
    """A second database for tests of the migrations, wiped to nothing before each of them (a new
    database per test would be slower: every DROP DATABASE forces a checkpoint)."""
    return pg_database_factory()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, made once; each test gets a copy (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("db-template") / "guardrail.db"
    asyncio.run(upgrade(f"sqlite+aiosqlite:///{path}"))
    assert not path.with_name(path.name + "-wal").exists()  # checkpointed on close: one file to copy
    return path


@pytest.fixture(params=DB_BACKENDS)
def db_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(backend name, URL of a migrated database). Sync on purpose: the session fixtures behind it
    run their own event loop."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("db") / "guardrail.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return "sqlite", f"sqlite+aiosqlite:///{path}"
    return "postgresql", request.getfixturevalue("pg_database_url")


@pytest.fixture
async def store_url(db_backend: tuple[str, str]) -> str:
    """URL of a migrated database with no records in it (parametrized: sqlite, postgresql)."""
    backend, url = db_backend
    if backend == "postgresql":
        await execute_autocommit(url, *(f"DELETE FROM {t}" for t in _TABLES))  # much faster than TRUNCATE here
    return url


@pytest.fixture(params=DB_BACKENDS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """URL of a database that was never migrated (no tables at all)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'empty.db'}"
    url = request.getfixturevalue("pg_scratch_database_url")
    asyncio.run(execute_autocommit(url, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public"))
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlStore]:
    """An open ``SqlStore`` on ``store_url``; closed after the test."""
    s = await SqlStore.open(store_url)
    try:
        yield s
    finally:
        await s.close()


# ===================================================================================================
# (other servers: add a section below)
# ===================================================================================================


# ===================================================================================================
# Prometheus: the real `prometheus` binary (Debian package `prometheus`) scraping real sample
# service processes (examples/app), all on free loopback ports with temp data dirs
# ===================================================================================================
#
# Missing binary: the Prometheus tests skip with the reason, except when CI=true or
# GUARDRAIL_REQUIRE_INTEGRATION=1, where they fail (scripts/test-deps.sh installs the package).
# Everything is synchronous on purpose (subprocesses and blocking polls): the fixtures can have any
# scope and do not depend on the test's event loop.

import json as _json  # noqa: E402
import signal as _signal  # noqa: E402
import socket as _socket  # noqa: E402
import subprocess as _subprocess  # noqa: E402
import sys as _sys  # noqa: E402
import time as _time  # noqa: E402
import urllib.error as _urlerror  # noqa: E402
import urllib.request as _urlrequest  # noqa: E402
from dataclasses import dataclass as _dataclass  # noqa: E402
from dataclasses import field as _field  # noqa: E402
from urllib.parse import urlencode as _urlencode  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRAPE_INTERVAL_S = 1.0


def _require_or_skip(why: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1" or os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why} (required here: CI=true or {REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(f"SKIPPED LOUDLY: {why}")


def free_port() -> int:
    with _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with _urlrequest.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except _urlerror.HTTPError as e:
        return e.code, e.read()


def _wait_until(ok: Callable[[], bool], timeout: float, what: str, proc: _subprocess.Popen | None = None) -> None:
    deadline = _time.monotonic() + timeout
    while _time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        try:
            if ok():
                return
        except OSError:
            pass
        _time.sleep(0.05)
    raise TimeoutError(f"{what}: not ready within {timeout} s")


@pytest.fixture(scope="session")
def prometheus_binaries() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``."""
    prom, tool = shutil.which("prometheus"), shutil.which("promtool")
    if not prom or not tool:
        _require_or_skip(
            "the `prometheus`/`promtool` binaries are not installed (Debian package `prometheus`; "
            "`make test` installs it via scripts/test-deps.sh)"
        )
    assert prom and tool
    return prom, tool


@_dataclass
class SampleApp:
    """One process of the sample service (examples/app/service.py) on a fixed loopback port."""

    track: str
    version: str
    port: int = _field(default_factory=free_port)
    service: str = "checkout"
    args: tuple[str, ...] = ()
    proc: _subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def work_url(self) -> str:
        return self.base_url + "/work"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> SampleApp:
        cmd = [_sys.executable, "-m", "examples.app.service", "--port", str(self.port), "--track", self.track,
               "--version", self.version, "--service", self.service, *self.args]
        self.proc = _subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=_subprocess.DEVNULL, stderr=_subprocess.PIPE)
        _wait_until(lambda: http_get(self.base_url + "/healthz")[0] == 200, 15, f"sample app {self.track}", self.proc)
        return self

    def stop(self, sig: int = _signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except _subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """A crash and a restart on the same port: its counters start again from zero."""
        self.stop(_signal.SIGKILL)
        self.start()

    def regress(self, **behaviour: float) -> dict:
        req = _urlrequest.Request(self.base_url + "/admin/regression", data=_json.dumps(behaviour).encode(),
                                  headers={"Content-Type": "application/json"}, method="POST")
        with _urlrequest.urlopen(req, timeout=5) as r:
            return _json.loads(r.read())


@_dataclass
class PrometheusServer:
    """A real Prometheus on a free loopback port, scraping ``targets`` every second (job ``checkout``)."""

    binary: str
    data_dir: Path
    targets: list[str]
    port: int = _field(default_factory=free_port)
    job: str = "checkout"
    proc: _subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> Path:
        cfg = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S:g}s", "scrape_timeout": "900ms",
                       "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": self.job, "static_configs": [{"targets": self.targets}]}
            ] if self.targets else [],
        }
        path = self.data_dir.parent / f"prometheus-{self.port}.yml"
        path.write_text(_json.dumps(cfg))  # JSON is YAML
        return path

    def start(self) -> PrometheusServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"prometheus-{self.port}.log"
        log = self.log_path.open("ab")
        self.proc = _subprocess.Popen(
            [self.binary, f"--config.file={self._config()}", f"--storage.tsdb.path={self.data_dir}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=100y",
             "--log.level=warn"],
            stdout=log, stderr=log,
        )
        log.close()
        _wait_until(lambda: http_get(self.url + "/-/ready")[0] == 200, 30, "prometheus", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(_signal.SIGTERM)
            try:
                self.proc.wait(15)
            except _subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def query(self, promql: str) -> list[dict]:
        status, body = http_get(self.url + "/api/v1/query?" + _urlencode({"query": promql}))
        assert status == 200, body
        return _json.loads(body)["data"]["result"]

    def wait_for(self, promql: str, want: float, timeout: float = 10.0) -> None:
        """Until the instant value of ``promql`` (one series) equals ``want``."""
        def ok() -> bool:
            r = self.query(promql)
            return bool(r) and float(r[0]["value"][1]) == want

        _wait_until(ok, timeout, f"prometheus: {promql} == {want}", self.proc)

    def wait_scraped(self, targets: int, after: float | None = None, timeout: float = 20.0) -> None:
        """Until each of ``targets`` targets of the job has been scraped at or after ``after`` (default
        now). Prometheus scrapes its first targets ~5 s after it is ready (the service discovery's
        update tick), also after a restart; until then queries see the old values (5-min lookback)."""
        after = _time.time() if after is None else after
        promql = f'count(timestamp(up{{job="{self.job}"}}) >= {after:.3f})'
        self.wait_for(promql, targets, timeout=timeout)


@_dataclass
class ScrapedPair:
    baseline: SampleApp
    canary: SampleApp
    prometheus: PrometheusServer


def start_scraped_pair(binary: str, tmp: Path, *, app_args: tuple[str, ...] = ()) -> ScrapedPair:
    baseline = SampleApp("baseline", "1.4.1", args=("--seed", "1", *app_args))
    canary = SampleApp("canary", "1.4.2", args=("--seed", "2", *app_args))
    started: list[SampleApp | PrometheusServer] = []
    try:
        for app in (baseline, canary):
            app.start()
            started.append(app)
        prom = PrometheusServer(binary, tmp / "tsdb", [baseline.target, canary.target]).start()
        started.append(prom)
        prom.wait_scraped(2)
    except Exception:
        for app in started:
            app.stop()
        raise
    return ScrapedPair(baseline, canary, prom)


def stop_scraped_pair(pair: ScrapedPair) -> None:
    pair.prometheus.stop()
    pair.baseline.stop()
    pair.canary.stop()


SAMPLE_ERROR_RATE = 0.05  # of both processes while healthy: errors enough for quick verdicts


@pytest.fixture(scope="session")
def scraped_pair(prometheus_binaries: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScrapedPair]:
    """A baseline (1.4.1) and a canary (1.4.2) process of the sample service failing 5% of requests,
    both also exposing the OpenTelemetry names, scraped every second by a real Prometheus. Shared by
    the session's tests (Prometheus takes ~5 s to scrape for the first time): a test that regresses,
    restarts or stops something puts it back."""
    pair = start_scraped_pair(prometheus_binaries[0], tmp_path_factory.mktemp("prom"),
                              app_args=("--otel-names", "--error-rate", str(SAMPLE_ERROR_RATE)))
    yield pair
    stop_scraped_pair(pair)


def backfill(promtool: str, openmetrics: Path, data_dir: Path) -> None:
    """Write the OpenMetrics file (ending with ``# EOF``) as TSDB blocks into ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    src = openmetrics
    out = _subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(src), str(data_dir)],
                          capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"promtool failed ({out.returncode}): {out.stderr[-2000:]}")


# ===================================================================================================
# Alertmanager: the real server (Debian package `prometheus-alertmanager`) on a free loopback port
# ===================================================================================================
#
# ``start_alertmanager(paging_url, engineering_url)`` writes a config that routes severity="page" to
# the receiver ``paging`` and everything else to ``engineering`` (webhooks with send_resolved, which
# post payload version 4), with group_wait 0s and group_interval 1s so a test sees the firing and the
# resolved notifications within seconds, and starts one node (no cluster) with a temp storage dir;
# it is stopped after the test. Missing binary: the tests skip loudly, or fail when CI=true or
# GUARDRAIL_REQUIRE_INTEGRATION=1. Synchronous, like the Prometheus fixtures.

ALERTMANAGER_CONFIG = """\
route:
  receiver: engineering
  group_by: ['alertname', 'service', 'environment', 'deploy']
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
  routes:
    - receiver: paging
      matchers: ['severity="page"']
receivers:
  - name: paging
    webhook_configs: [{{url: '{paging}', send_resolved: true}}]
  - name: engineering
    webhook_configs: [{{url: '{engineering}', send_resolved: true}}]
"""


@_dataclass
class AlertmanagerServer:
    binary: str
    config: Path
    workdir: Path
    port: int = _field(default_factory=free_port)
    proc: _subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "alertmanager.log"

    def start(self) -> AlertmanagerServer:
        cmd = [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=debug",
        ]
        with self.log.open("wb") as out:
            self.proc = _subprocess.Popen(cmd, stdout=out, stderr=_subprocess.STDOUT)
        try:
            _wait_until(lambda: http_get(self.url + "/-/ready")[0] == 200, 15, "alertmanager", self.proc)
        except (RuntimeError, TimeoutError) as e:
            self.stop()
            raise RuntimeError(f"{e}; its log:\n{self.log.read_text()[-3000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except _subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def alertmanager_binary() -> str:
    path = os.environ.get("GUARDRAIL_TEST_ALERTMANAGER") or shutil.which("prometheus-alertmanager")
    if not path:
        _require_or_skip(
            "the `prometheus-alertmanager` binary is not installed (Debian package `prometheus-alertmanager`; "
            "`make test` installs it via scripts/test-deps.sh), so the real-Alertmanager tests cannot run"
        )
    assert path
    return path


@pytest.fixture
def start_alertmanager(alertmanager_binary: str, tmp_path: Path) -> Iterator[Callable[..., AlertmanagerServer]]:
    """``start(paging_url, engineering_url, port=None)``: the real Alertmanager routing severity
    page to ``paging_url`` and the rest to ``engineering_url`` (on ``port``, or a free one)."""
    started: list[AlertmanagerServer] = []

    def start(paging_url: str, engineering_url: str, port: int | None = None) -> AlertmanagerServer:
        workdir = tmp_path / f"alertmanager-{len(started)}"
        workdir.mkdir()
        config = workdir / "alertmanager.yml"
        config.write_text(ALERTMANAGER_CONFIG.format(paging=paging_url, engineering=engineering_url))
        server = AlertmanagerServer(alertmanager_binary, config, workdir, **({"port": port} if port else {}))
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
