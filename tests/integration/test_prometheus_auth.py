"""Issue 13, case 10: the Prometheus source behind auth, against a real Prometheus.

- A Prometheus started with ``--web.config.file`` (exporter-toolkit web configuration: TLS with a
  client certificate required, verified against our CA, and ``basic_auth_users`` with a bcrypt
  hash) is reached with ``basic_auth``, ``ca_file``, ``cert_file`` and ``key_file``.
- A loopback proxy in front of it plays a multi-tenant store (Mimir / Cortex / Thanos): it answers
  401 "no org id" without ``X-Scope-OrgID`` (as Mimir does) and 401 without the bearer token, and
  echoes what it got in its errors (a careless proxy), which lets the tests check redaction.
- Secrets (the password, the bearer token, secret headers) never show in errors, logs, or the
  settings' repr and dumps.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from guardrail.adapters.sources.prometheus import PrometheusMetricSource
from guardrail.config import PrometheusConfig, Settings
from guardrail.domain.errors import SourceUnavailableError, ValidationError
from guardrail.ports import SourceQuery
from tests.integration.conftest import _wait_until, backfill, free_port

pytestmark = pytest.mark.integration

PASSWORD = "pr0m-Passw0rd-7c1e"
BEARER = "t3nant-Bearer-55ab"
TENANT = "tenant-a"
T0 = 1_700_000_000


def _bcrypt(password: str) -> str:
    """A bcrypt hash (what basic_auth_users wants) from libxcrypt through the stdlib's crypt module
    (deprecated in 3.11, present until 3.13)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt as _crypt

        return _crypt.crypt(password, _crypt.mksalt(_crypt.METHOD_BLOWFISH, rounds=1 << 4))


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=guardrail test CA",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, ext in (("server", "san.ext"), ("client", "client.ext")):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=guardrail test {name}",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            ext,
            cwd=d,
        )
    return Certs(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")


def _openmetrics() -> str:
    lines = ["# TYPE http_requests_total counter"]
    for i in range(0, 11):
        t = T0 + 60 * i
        for track, errs in (("canary", 2), ("baseline", 1)):
            lines.append(
                f'http_requests_total{{service="checkout",track="{track}",code="200"}} {100 * i} {t}'
            )
            lines.append(
                f'http_requests_total{{service="checkout",track="{track}",code="500"}} {errs * i} {t}'
            )
    return "\n".join(lines) + "\n# EOF\n"


@pytest.fixture(scope="module")
def secured_prometheus(
    prometheus_binaries: tuple[str, str], certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """https://127.0.0.1:<port>: TLS, a client certificate required, basic auth ``guardrail``."""
    prom, promtool = prometheus_binaries
    d = tmp_path_factory.mktemp("secured-prometheus")
    (d / "metrics.om").write_text(_openmetrics())
    backfill(promtool, d / "metrics.om", d / "data")
    web_config = d / "web.yml"
    web_config.write_text(
        "tls_server_config:\n"
        f"  cert_file: {certs.server_cert}\n"
        f"  key_file: {certs.server_key}\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        f"  client_ca_file: {certs.ca}\n"
        "basic_auth_users:\n"
        f"  guardrail: '{_bcrypt(PASSWORD)}'\n"
    )
    (d / "prometheus.yml").write_text("global: {scrape_interval: 15s}\n")
    port = free_port()
    log = (d / "prometheus.log").open("ab")
    proc = subprocess.Popen(
        [
            prom,
            f"--config.file={d / 'prometheus.yml'}",
            f"--storage.tsdb.path={d / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.config.file={web_config}",
            "--storage.tsdb.retention.time=100y",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=log,
    )
    log.close()
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))

    def ready() -> bool:
        import urllib.request

        req = urllib.request.Request(f"https://127.0.0.1:{port}/-/ready")
        req.add_header(
            "Authorization", "Basic " + base64.b64encode(f"guardrail:{PASSWORD}".encode()).decode()
        )
        with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
            return r.status == 200

    try:
        _wait_until(ready, 30, "secured prometheus", proc)
        yield f"https://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def secured_config(url: str, certs: Certs, **changes: object) -> PrometheusConfig:
    raw: dict[str, object] = {
        "url": url,
        "timeout_s": 5,
        "retries": 1,
        "backoff_s": 0.05,
        "basic_auth": {"username": "guardrail", "password": PASSWORD},
        "ca_file": str(certs.ca),
        "cert_file": str(certs.client_cert),
        "key_file": str(certs.client_key),
    }
    raw.update(changes)
    return PrometheusConfig.model_validate({k: v for k, v in raw.items() if v is not None})


def query() -> SourceQuery:
    return SourceQuery(
        service="checkout",
        environment="production",
        canary_version="2.0",
        baseline_version="1.9",
        start=T0 + 60,
        end=T0 + 600,
        interval_s=60,
        overrides={"prometheus": {"track_label": "track"}},
    )


async def test_basic_auth_a_ca_file_and_a_client_certificate_reach_a_secured_prometheus(
    secured_prometheus: str, certs: Certs
) -> None:
    source = PrometheusMetricSource.from_settings(secured_config(secured_prometheus, certs))
    try:
        assert await source.instant("vector(1)")
        samples = await source.fetch(query())
    finally:
        await source.close()
    assert samples and {s.track.value for s in samples} == {"canary", "baseline"}
    canary = [s for s in samples if s.track.value == "canary"]
    assert all(s.requests == 102 and s.errors == 2 for s in canary)  # 100 ok + 2 errors a minute


async def test_a_wrong_password_is_a_401_named_without_the_password(
    secured_prometheus: str, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-pa55word-31337"
    cfg = secured_config(secured_prometheus, certs, basic_auth={"username": "guardrail", "password": wrong})
    source = PrometheusMetricSource.from_settings(cfg)
    try:
        with pytest.raises(SourceUnavailableError) as e:
            await source.instant("vector(1)")
    finally:
        await source.close()
    assert "401" in e.value.detail and "basic_auth" in e.value.detail
    for secret in (wrong, PASSWORD):
        assert secret not in e.value.detail and secret not in caplog.text
        assert secret not in repr(cfg) and secret not in cfg.model_dump_json()


async def test_without_the_client_certificate_tls_fails_at_once(
    secured_prometheus: str, certs: Certs
) -> None:
    cfg = secured_config(secured_prometheus, certs, cert_file=None, key_file=None, retries=3)
    source = PrometheusMetricSource.from_settings(cfg)
    started = time.monotonic()
    try:
        with pytest.raises(SourceUnavailableError) as e:
            await source.instant("vector(1)")
    finally:
        await source.close()
    assert "TLS" in e.value.detail or "certificate" in e.value.detail
    assert time.monotonic() - started < 3  # not retried: a TLS refusal does not go away


class TenantProxy:
    """A Mimir-like front: 401 "no org id" without X-Scope-OrgID, 401 without the bearer token;
    forwards the rest to the secured Prometheus (with its client certificate and basic auth).
    Error answers echo the request headers (secrets included). Records the headers of each request."""

    def __init__(self, upstream: str, certs: Certs) -> None:
        self.upstream = upstream
        self.seen: list[dict[str, str]] = []
        self.ctx = ssl.create_default_context(cafile=str(certs.ca))
        self.ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    async def handle(self, request: web.Request) -> web.Response:
        headers = dict(request.headers)
        self.seen.append(headers)
        if not request.headers.get("X-Scope-OrgID"):
            return web.Response(status=401, text=f"no org id; got {headers}")
        if request.headers.get("Authorization") != f"Bearer {BEARER}":
            return web.Response(status=401, text=f"bad credentials: {headers}")
        body = await request.read()
        basic = base64.b64encode(f"guardrail:{PASSWORD}".encode()).decode()
        headers = {
            "Authorization": f"Basic {basic}",
            "Content-Type": request.headers.get("Content-Type", "application/x-www-form-urlencoded"),
        }
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                request.method,
                self.upstream + request.path_qs,
                data=body or None,
                headers=headers,
                ssl=self.ctx,
            ) as r,
        ):
            return web.Response(status=r.status, body=await r.read(), content_type="application/json")


@pytest.fixture
async def proxy(secured_prometheus: str, certs: Certs) -> AsyncIterator[TenantProxy]:
    p = TenantProxy(secured_prometheus, certs)
    await p.server.start_server()
    yield p
    await p.server.close()


def proxied_config(proxy: TenantProxy, **changes: object) -> PrometheusConfig:
    raw: dict[str, object] = {
        "url": str(proxy.server.make_url("")).rstrip("/"),
        "timeout_s": 5,
        "retries": 0,
        "bearer_token": BEARER,
        "headers": {"X-Scope-OrgID": TENANT},
    }
    raw.update(changes)
    return PrometheusConfig.model_validate({k: v for k, v in raw.items() if v is not None})


async def test_bearer_token_and_tenant_header_go_with_every_query(proxy: TenantProxy) -> None:
    source = PrometheusMetricSource.from_settings(proxied_config(proxy, method="POST"))
    try:
        samples = await source.fetch(query())
    finally:
        await source.close()
    assert samples
    assert proxy.seen and all(h.get("X-Scope-OrgID") == TENANT for h in proxy.seen)
    assert all(h.get("Authorization") == f"Bearer {BEARER}" for h in proxy.seen)


async def test_a_bearer_token_from_a_file_and_a_secret_header_are_redacted_from_errors(
    proxy: TenantProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "token"
    token_file.write_text(BEARER + "-stale\n")
    cfg = proxied_config(
        proxy,
        bearer_token=None,
        bearer_token_file=str(token_file),
        headers={},
        secret_headers={"X-Scope-OrgID": TENANT},
    )
    source = PrometheusMetricSource.from_settings(cfg)
    try:
        with pytest.raises(SourceUnavailableError) as e:
            await source.instant("vector(1)")  # the proxy echoes the stale token in its 401
        assert "401" in e.value.detail
        token_file.write_text(BEARER + "\n")  # rotated: read again at the next call
        assert await source.instant("vector(1)")
    finally:
        await source.close()
    for secret in (BEARER + "-stale", TENANT):
        assert secret not in e.value.detail and secret not in caplog.text
    assert TENANT not in repr(cfg) and TENANT not in cfg.model_dump_json()


async def test_without_the_tenant_header_the_store_refuses_and_says_so(proxy: TenantProxy) -> None:
    source = PrometheusMetricSource.from_settings(proxied_config(proxy, headers={}))
    try:
        with pytest.raises(SourceUnavailableError) as e:
            await source.instant("vector(1)")
    finally:
        await source.close()
    assert "401" in e.value.detail and "no org id" in e.value.detail
    assert BEARER not in e.value.detail


def test_auth_settings_are_checked_and_name_the_key(certs: Certs, tmp_path: Path) -> None:
    base = {"url": "https://prom.example:9090"}
    for bad, key in [
        ({**base, "bearer_token": "x", "basic_auth": {"username": "u", "password": "p"}}, "bearer_token"),
        ({**base, "bearer_token": "x", "bearer_token_file": "/t"}, "bearer_token_file"),
        ({**base, "headers": {"Authorization": "Bearer x"}}, "headers"),
        ({**base, "headers": {"X-Scope-OrgID": "a\r\nb"}}, "headers"),
        ({**base, "cert_file": str(certs.client_cert)}, "key_file"),
        ({"url": "http://prom.example:9090", "ca_file": str(certs.ca)}, "ca_file"),
        ({**base, "basic_auth": {"username": "u"}}, "basic_auth"),
    ]:
        with pytest.raises(Exception) as e:
            Settings.model_validate({"prometheus": bad})
        assert f"prometheus.{key}" in str(e.value) or key in str(e.value), (bad, str(e.value))
    missing = secured_config("https://prom.example", certs, ca_file=str(tmp_path / "nope.pem"))
    with pytest.raises(ValidationError) as v:
        PrometheusMetricSource.from_settings(missing)
    assert v.value.field == "prometheus.ca_file" and "nope.pem" in v.value.detail
    assert os.path.exists(certs.ca)
