"""The docker-compose stack, checked by the real tools without a Docker engine: docker-compose renders
and validates the file, promtool and amtool check the Prometheus and Alertmanager configs as the
containers would see them, guardrail loads its config with the environment compose gives it, and
the Dockerfile's sources and command exist. The read-only metrics proxy of the sample services is
run for real against the sample service."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from guardrail.cli import parser as cli_parser
from guardrail.config import load_settings
from guardrail.plugins import load_deploy_adapter, load_plugin
from tests.integration.conftest import REQUIRE_ENV

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SECRETS = {  # stand-ins for .env: hex strings as deploy/env.example asks
    "POSTGRES_PASSWORD": "5ca1ab1e0001",
    "GUARDRAIL_CI_TOKEN": "c1c1c1c1c1c1",
    "GUARDRAIL_OPERATOR_TOKEN": "0be7a70e0002",
    "GUARDRAIL_ALERTMANAGER_TOKEN": "a1e27a0a0003",
    "GRAFANA_ADMIN_PASSWORD": "6afa4a0a0004",
}
TOOL_TIMEOUT_S = 60


def tool(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    why = f"{name} is not installed (Debian: docker-compose, prometheus, prometheus-alertmanager)"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {why}", pytrace=False)
    pytest.skip(why)


def run(*argv: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)


def compose_env(**extra: str) -> dict[str, str]:
    """A clean environment (no COMPOSE_* of the caller) with the stand-in secrets."""
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    return {**base, **SECRETS, **extra}


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    """The compose file as docker-compose renders it (paths absolute, variables filled in)."""
    docker_compose = tool("docker-compose")
    out = run(docker_compose, "-f", str(COMPOSE), "config", env=compose_env())
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def services(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return stack["services"]


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str, bool]]:
    """(host path, container path, read-only) of the service's bind mounts."""
    mounts = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            host, container, *mode = v.split(":")
            read_only = bool(mode) and "ro" in mode[0].split(",")
        else:
            host, container, read_only = v.get("source", ""), v["target"], bool(v.get("read_only"))
        if host.startswith("/"):
            mounts.append((Path(host), container, read_only))
    return mounts


def container_layout(service: dict[str, Any], tmp: Path) -> Path:
    """The service's bind mounts copied under ``tmp`` at their container paths; returns ``tmp``."""
    for host, container, _ in bind_mounts(service):
        target = tmp / container.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if host.is_dir():
            shutil.copytree(host, target)
        else:
            shutil.copyfile(host, target)
    return tmp


def flag(argv: list[str], name: str) -> str:
    for i, a in enumerate(argv):
        if a == name:
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


def namespace_of(stack: dict[str, Any], name: str) -> str:
    """The service whose network namespace ``name`` lives in (itself unless network_mode: service:X)."""
    mode = services(stack)[name].get("network_mode", "")
    return mode.split(":", 1)[1] if mode.startswith("service:") else name


def load_module(path: Path) -> ModuleType:
    """A script outside the packages (deploy/ is not one), imported once."""
    name = f"_stack_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


PROXY = ROOT / "deploy/sample/metrics_proxy.py"


# --- docker-compose ----------------------------------------------------------------------------------


@pytest.mark.integration
def test_compose_file_is_valid_and_refuses_to_run_without_its_secrets() -> None:
    docker_compose = tool("docker-compose")
    ok = run(docker_compose, "-f", str(COMPOSE), "config", "-q", env=compose_env())
    assert ok.returncode == 0, ok.stderr
    for missing in SECRETS:
        env = {k: v for k, v in compose_env().items() if k != missing}
        out = run(docker_compose, "-f", str(COMPOSE), "config", "-q", env=env)
        assert out.returncode != 0 and missing in out.stderr, (missing, out.stderr)


@pytest.mark.integration
def test_every_path_the_stack_mounts_or_builds_from_exists(stack: dict[str, Any]) -> None:
    seen = 0
    for name, svc in services(stack).items():
        build = svc.get("build")
        if build:
            context = Path(build["context"])
            assert context.is_dir() and (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for host, container, read_only in bind_mounts(svc):
            assert host.exists(), f"{name} mounts {host}, which is not in the repository"
            assert host.resolve().is_relative_to(ROOT), f"{name} mounts {host} from outside the repository"
            assert read_only, f"{name} mounts {host} at {container} writable"
            seen += 1
    assert seen >= 6
    prom_mounts = {c: h for h, c, _ in bind_mounts(services(stack)["prometheus"])}
    assert prom_mounts["/etc/prometheus/rules/rules.yml"] == ROOT / "alerts/rules.yml"


@pytest.mark.integration
def test_services_have_healthchecks_and_wait_for_healthy_dependencies(stack: dict[str, Any]) -> None:
    svcs = services(stack)
    expected = {"postgres", "guardrail", "checkout-baseline", "checkout-canary", "checkout-metrics", "load",
                "prometheus", "alertmanager", "grafana"}
    assert set(svcs) == expected
    for name, svc in svcs.items():
        if name != "load":  # a client: nothing to probe
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, cond in svc.get("depends_on", {}).items():
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in svcs[dep], f"{name} waits for {dep} to be healthy, which has no healthcheck"
        for port in svc.get("ports", []):
            host_ip = port.split(":")[0] if isinstance(port, str) else port.get("host_ip")
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond the host's loopback"
    assert svcs["guardrail"]["depends_on"]["postgres"]["condition"] == "service_healthy"


# --- Prometheus and Alertmanager -------------------------------------------------------------------


@pytest.mark.integration
def test_prometheus_config_passes_promtool_with_the_rules_where_the_container_sees_them(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    promtool = tool("promtool")
    prom = services(stack)["prometheus"]
    config = flag(prom["command"], "--config.file")
    root = container_layout(prom, tmp_path)
    out = run(promtool, "check", "config", str(root / config.lstrip("/")))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rule files found" in out.stdout and "SUCCESS: 9 rules found" in out.stdout, out.stdout


@pytest.mark.integration
def test_alertmanager_config_passes_amtool_and_calls_guardrails_hook_with_the_token(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    amtool = tool("amtool")
    am = services(stack)["alertmanager"]
    script = " ".join(am["command"])
    config = flag(shlex.split(script.split("exec ", 1)[1]), "--config.file")
    root = container_layout(am, tmp_path)
    out = run(amtool, "check-config", str(root / config.lstrip("/")))
    assert out.returncode == 0, out.stdout + out.stderr
    doc = yaml.safe_load((root / config.lstrip("/")).read_text())
    hooks = [w for r in doc["receivers"] for w in r.get("webhook_configs", [])]
    assert hooks, "no receiver sends to guardrail"
    for hook in hooks:
        url = urlsplit(hook["url"])
        assert (url.hostname, url.port, url.path) == ("guardrail", 8080, "/hooks/alertmanager")
        credentials = hook["http_config"]["authorization"]["credentials_file"]
        assert f"> {credentials}" in script  # written from the environment at start
    assert am["environment"]["GUARDRAIL_ALERTMANAGER_TOKEN"] == SECRETS["GUARDRAIL_ALERTMANAGER_TOKEN"]
    tokens = yaml.safe_load(services(stack)["guardrail"]["environment"]["GUARDRAIL_TOKENS"])
    assert {"token": SECRETS["GUARDRAIL_ALERTMANAGER_TOKEN"], "scopes": ["ci"]}.items() <= next(
        t for t in tokens if t["token"] == SECRETS["GUARDRAIL_ALERTMANAGER_TOKEN"]
    ).items()


@pytest.mark.integration
def test_every_scrape_target_is_a_service_of_the_stack_on_a_port_it_listens_on(stack: dict[str, Any]) -> None:
    svcs = services(stack)
    prom = svcs["prometheus"]
    host_of = {c: h for h, c, _ in bind_mounts(prom)}
    config = yaml.safe_load(host_of[flag(prom["command"], "--config.file")].read_text())
    aliases = {
        alias: name
        for name, svc in svcs.items()
        for net in (svc.get("networks") or {}).values()
        for alias in (net or {}).get("aliases", [])
    }
    # what listens where: guardrail's server port, Prometheus' default, the metrics proxy's routes
    settings = load_settings(ROOT / "deploy/guardrail/guardrail.yaml", env={})
    proxy = load_module(PROXY)
    proxy_cmd = svcs["checkout-metrics"]["command"]
    listening = {
        "guardrail": {settings.server.port},
        "prometheus": {9090},
        namespace_of(stack, "checkout-metrics"): {
            proxy.parse_route(proxy_cmd[i + 1]).listen_port for i, a in enumerate(proxy_cmd) if a == "--route"
        },
    }
    jobs = {}
    for job in config["scrape_configs"]:
        for sc in job["static_configs"]:
            for target in sc["targets"]:
                host, port = target.rsplit(":", 1)
                service = host if host in svcs else aliases.get(host)
                assert service is not None, f"job {job['job_name']} scrapes {host}, not a service of the stack"
                assert int(port) in listening.get(namespace_of(stack, service), set()), target
                jobs.setdefault(job["job_name"], set()).add(host)
    assert jobs == {"prometheus": {"prometheus"}, "guardrail": {"guardrail"},
                    "checkout": {"checkout-baseline", "checkout-canary"}}
    alertmanagers = [t for a in config["alerting"]["alertmanagers"] for s in a["static_configs"] for t in s["targets"]]
    assert alertmanagers == ["alertmanager:9093"]


# --- guardrail -------------------------------------------------------------------------------------


@pytest.mark.integration
def test_guardrail_config_loads_with_the_environment_compose_gives_it(stack: dict[str, Any]) -> None:
    svcs = services(stack)
    gr = svcs["guardrail"]
    config_path = flag(gr["command"], "--config")
    host_path = {c: h for h, c, _ in bind_mounts(gr)}[config_path]
    env = {k: str(v) for k, v in gr["environment"].items()}
    settings = load_settings(host_path, env=env)
    assert settings.database_url.startswith("postgresql+asyncpg://guardrail:")
    assert urlsplit(settings.database_url).hostname == "postgres"
    assert {t.name: set(t.scopes) for t in settings.tokens} == {
        "ci": {"ci"}, "operator": {"operator", "read"}, "alertmanager": {"ci"}
    }
    assert {t.token.get_secret_value() for t in settings.tokens} == {
        SECRETS["GUARDRAIL_CI_TOKEN"], SECRETS["GUARDRAIL_OPERATOR_TOKEN"], SECRETS["GUARDRAIL_ALERTMANAGER_TOKEN"]
    }
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8080
    assert urlsplit(settings.prometheus.url or "").hostname == "prometheus"
    for preset in settings.adapters.values():
        load_deploy_adapter(preset.type, preset.config)  # raises on a config the adapter rejects
    for name, preset in settings.notifications.notifiers.items():
        notifier = load_plugin("guardrail.notifiers", preset.type, preset.config)
        assert urlsplit(preset.config["url"]).hostname in svcs, name
        assert notifier is not None
    assert settings.notifications.routes, "no severity is routed anywhere"
    # the file alone holds no secret: no tokens, no database password
    raw = yaml.safe_load(host_path.read_text())
    assert "tokens" not in raw and "@" not in raw.get("database_url", "")


@pytest.mark.integration
def test_dockerfile_copies_existing_sources_runs_as_non_root_and_its_command_is_real(stack: dict[str, Any]) -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.startswith("#")]
    instr = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]
    assert instr[0] == ("FROM", "python:3.11-slim")
    ignored = {p.strip().rstrip("/") for p in (ROOT / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")}
    copies = [args.split() for op, args in instr if op == "COPY"]
    assert copies
    for *sources, _dest in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert Path(src).parts[0].rstrip("/") not in ignored, f"COPY {src}: excluded by .dockerignore"
    users = [args for op, args in instr if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(op == "RUN" and "pip install ." in args for op, args in instr)
    assert ("EXPOSE", "8080") in instr
    health = next(args for op, args in instr if op == "HEALTHCHECK")
    assert "/healthz" in health and "127.0.0.1:8080" in health
    entrypoint = yaml.safe_load(next(args for op, args in instr if op == "ENTRYPOINT"))
    cmd = yaml.safe_load(next(args for op, args in instr if op == "CMD"))
    assert entrypoint == ["guardrail"]
    args = cli_parser().parse_args(cmd)  # a real subcommand with real flags
    assert args.command == "serve" and args.config == "/etc/guardrail/guardrail.yaml"
    mounted = {c for _, c, _ in bind_mounts(services(stack)["guardrail"])}
    assert args.config in mounted


@pytest.mark.integration
def test_sample_containers_run_real_modules_with_real_flags(stack: dict[str, Any]) -> None:
    from examples.app.service import parse_args

    svcs = services(stack)
    for name in ("checkout-baseline", "checkout-canary"):
        svc = svcs[name]
        assert svc["entrypoint"] == ["python", "-m", "examples.app.service"]
        args = parse_args(svc["command"])  # exits on an unknown flag or a non-loopback --host
        assert args.track == name.split("-")[1] and args.service == "checkout"
        assert namespace_of(stack, name) == "checkout-baseline"
    baseline, canary = (parse_args(svcs[n]["command"]) for n in ("checkout-baseline", "checkout-canary"))
    assert baseline.port != canary.port and baseline.version != canary.version
    load = svcs["load"]
    assert load["entrypoint"] == ["python", "-m", "examples.app.load"]
    source = (ROOT / "examples/app/load.py").read_text()
    for a in load["command"]:
        if a.startswith("--"):
            assert f'add_argument("{a}"' in source, f"examples.app.load has no flag {a}"
    targets = [load["command"][i + 1] for i, a in enumerate(load["command"]) if a == "--target"]
    assert {urlsplit(t).port for t in targets} == {baseline.port, canary.port}
    assert namespace_of(stack, "load") == "checkout-baseline"
    proxy = svcs["checkout-metrics"]
    assert proxy["entrypoint"][1] == "deploy/sample/metrics_proxy.py" and PROXY.is_file()
    routes = [load_module(PROXY).parse_route(proxy["command"][i + 1])
              for i, a in enumerate(proxy["command"]) if a == "--route"]
    assert {urlsplit(r.upstream).port for r in routes} == {baseline.port, canary.port}


# --- Grafana ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_grafana_provisioning_points_at_the_mounted_dashboards_and_prometheus(stack: dict[str, Any]) -> None:
    if not (ROOT / "dashboards").is_dir():
        pytest.skip("dashboards/ is not in the repository yet (written by the dashboards issue)")
    svcs = services(stack)
    mounts = {c: h for h, c, _ in bind_mounts(svcs["grafana"])}
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == ROOT / "dashboards/provisioning" and provisioning.is_dir()
    assert mounts["/var/lib/grafana/dashboards"] == ROOT / "dashboards"
    assert list((ROOT / "dashboards").glob("*.json")), "no dashboard JSON to provision"
    providers = [p for f in (provisioning / "dashboards").glob("*.y*ml")
                 for p in yaml.safe_load(f.read_text()).get("providers", [])]
    assert providers and all(p["options"]["path"] in mounts for p in providers)
    sources = [d for f in (provisioning / "datasources").glob("*.y*ml")
               for d in yaml.safe_load(f.read_text()).get("datasources", [])]
    assert any(urlsplit(d["url"]).hostname == "prometheus" and urlsplit(d["url"]).port == 9090 for d in sources)


# --- the metrics proxy, for real ---------------------------------------------------------------------


@pytest.fixture
async def sample() -> AsyncIterator[TestServer]:
    from examples.app.service import Behaviour, SampleService, ServiceConfig

    cfg = ServiceConfig(service="checkout", track="canary", version="1.4.2", environment="production",
                        behaviour=Behaviour(), seed=1, otel_names=False, otlp_endpoint=None, otlp_interval_s=1.0)
    server = TestServer(SampleService(cfg).app(), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def test_metrics_proxy_forwards_metrics_and_health_and_nothing_else(sample: TestServer) -> None:
    import aiohttp

    proxy = load_module(PROXY)
    route = proxy.parse_route(f"9111=127.0.0.1:{sample.port}")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as upstream_session:
        client = TestClient(TestServer(proxy.proxy_app(route.upstream, upstream_session), host="127.0.0.1"))
        await client.start_server()
        try:
            direct = await upstream_session.get(f"{route.upstream}/work")
            assert direct.status in (200, 500)
            resp = await client.get("/metrics")
            body = await resp.text()
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
            assert re.search(r'http_requests_total\{[^}]*track="canary"', body), body[:500]
            assert (await client.get("/healthz")).status == 200
            assert (await client.post("/admin/regression", json={"error_rate": 1.0})).status in (404, 405)
            assert (await client.get("/admin/regression")).status == 404
            behaviour = await (await upstream_session.get(f"{route.upstream}/admin/regression")).json()
            assert behaviour["error_rate"] != 1.0  # the POST never reached the service
            assert (await client.get("/work")).status == 404
            await sample.close()  # the upstream goes away: a clear 502, no hang
            down = await client.get("/metrics")
            assert down.status == 502 and "unavailable" in await down.text()
        finally:
            await client.close()


@pytest.mark.parametrize("text", ["9111=10.0.0.5:9101", "9111=checkout:9101", "9111", "70000=127.0.0.1:9101"])
def test_metrics_proxy_refuses_routes_that_are_not_loopback_ports(text: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        load_module(PROXY).parse_route(text)


def test_metrics_proxy_module_runs_as_a_script() -> None:
    out = run(sys.executable, str(PROXY), "--help")
    assert out.returncode == 0 and "--route" in out.stdout
