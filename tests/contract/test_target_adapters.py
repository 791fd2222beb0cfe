"""The DeployAdapter contract (the suite of ``test_deploy_adapters.py``, imported) for the adapters of
real targets: kubernetes (a Deployment, an Argo Rollout) and github against in-memory fakes of their
APIs on loopback, nginx against shell scripts standing in for ``nginx -t`` / ``nginx -s reload``."""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from guardrail.adapters.deploy.github import GitHubDeployAdapter
from guardrail.adapters.deploy.kubernetes import KubernetesDeployAdapter
from guardrail.adapters.deploy.nginx import NginxDeployAdapter
from guardrail.domain.model import Step
from guardrail.ports import DeployAdapter
from tests.contract.target_fakes import FakeGitHub, FakeKubernetes
from tests.contract.test_deploy_adapters import (
    SECRET,
    Harness,
    assert_clean,
    gone,
    target,
    test_failed_actions_return_not_ok_instead_of_raising,
    test_from_config_rejects_a_wrong_type_naming_the_key,
    test_from_config_rejects_an_unknown_key_naming_it,
    test_is_a_deploy_adapter_registered_under_its_name,
    test_rollback_is_safe_to_repeat,
    test_secrets_never_show_in_results_repr_or_redacted_config,
    test_successful_actions_return_ok_and_reach_the_target,
)

__all__ = [  # the imported contract, collected here against the harnesses below
    "test_failed_actions_return_not_ok_instead_of_raising",
    "test_from_config_rejects_a_wrong_type_naming_the_key",
    "test_from_config_rejects_an_unknown_key_naming_it",
    "test_is_a_deploy_adapter_registered_under_its_name",
    "test_rollback_is_safe_to_repeat",
    "test_secrets_never_show_in_results_repr_or_redacted_config",
    "test_successful_actions_return_ok_and_reach_the_target",
]

SLOW_TIMEOUT_S = 0.3


def kubernetes_config(url: str, mode: str, **extra: Any) -> dict[str, Any]:
    return {
        "api_url": url,
        "namespace": "{environment}",
        "mode": mode,
        "token": SECRET,
        "retries": 1,
        "backoff_s": 0.01,
        "poll_s": 0.01,
        "wait_s": 1,
        **extra,
    }


async def kubernetes_harness(mode: str) -> AsyncIterator[Harness]:
    fake = FakeKubernetes(SECRET)
    await fake.start()
    created: list[KubernetesDeployAdapter] = []
    watched = "/deployments/" if mode == "deployment" else "/rollouts/"

    async def make(kind: str) -> DeployAdapter:
        extra: dict[str, Any] = {}
        fake.echo = kind == "ok"
        if kind == "fail":
            fake.always = 503
        if kind == "slow":
            fake.slow = True
            extra = {"timeout_s": SLOW_TIMEOUT_S, "retries": 0}
        adapter = KubernetesDeployAdapter.from_config(kubernetes_config(fake.url, mode, **extra))
        created.append(adapter)
        return adapter

    def seen() -> list[str]:
        """The GETs of the watched object (one starts each action, an Argo promote looks again to
        see the step move); their User-Agent names the method."""
        gets = [r for r in fake.requests if r.method == "GET" and watched in r.path]
        return [
            r.action
            for i, r in enumerate(fake.requests)
            if r in gets and not (i and fake.requests[i - 1].method == "PATCH" and r.action == "apply_step")
        ]

    try:
        yield Harness(
            name="kubernetes",
            make=make,
            seen=seen,
            valid_config=kubernetes_config("https://kubernetes.default.svc", mode),
            wrong_type=("insecure_skip_tls_verify", "yes"),
            secrets=(SECRET,),
            timeout_s=SLOW_TIMEOUT_S,
        )
    finally:
        for adapter in created:
            await adapter.close()
        await fake.close()


async def github_harness() -> AsyncIterator[Harness]:
    fake = FakeGitHub(SECRET)
    await fake.start()
    created: list[GitHubDeployAdapter] = []

    async def make(kind: str) -> DeployAdapter:
        extra: dict[str, Any] = {}
        fake.echo = kind == "ok"
        if kind == "fail":
            fake.always = 503
        if kind == "slow":
            fake.slow = True
            extra = {"timeout_s": SLOW_TIMEOUT_S, "retries": 0}
        adapter = GitHubDeployAdapter.from_config(github_config(fake.url, **extra))
        created.append(adapter)
        return adapter

    def seen() -> list[str]:
        method = {"in_progress": "apply_step", "success": "finalize", "failure": "rollback"}
        return [method[r.json["state"]] for r in fake.status_posts()]

    try:
        yield Harness(
            name="github",
            make=make,
            seen=seen,
            valid_config=github_config("https://api.github.com"),
            wrong_type=("retries", "3"),
            secrets=(SECRET,),
            timeout_s=SLOW_TIMEOUT_S,
        )
    finally:
        for adapter in created:
            await adapter.close()
        await fake.close()


def github_config(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "api_url": url,
        "repository": "acme/shop",
        "public_url": "https://guardrail.example.com",
        "token": SECRET,
        "retries": 1,
        "backoff_s": 0.01,
        **extra,
    }


CHECK_SCRIPT = """#!/bin/sh
# Stands in for `nginx -t`: logs which action wrote the file (its first line says), then behaves.
sed -n '1s/^# Written by guardrail (\\([a-z_]*\\)).*/\\1/p' "$GUARDRAIL_UPSTREAM_FILE" >> "{log}"
case "{mode}" in
  fail) echo 'nginx: [emerg] host not found in upstream "canary:8080"'; exit 1 ;;
  slow) sleep 5 & echo $! > "{pids}"; wait ;;
esac
echo "nginx: configuration file test is successful"
"""


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def nginx_config(tmp_path: Path, mode: str = "ok", **extra: Any) -> dict[str, Any]:
    check = write_script(
        tmp_path / f"check-{mode}.sh",
        CHECK_SCRIPT.format(log=tmp_path / "checks.log", mode=mode, pids=tmp_path / "pids"),
    )
    reload = write_script(tmp_path / "reload.sh", '#!/bin/sh\necho reloaded >> "$0.log"\n')
    return {
        "path": str(tmp_path / "upstream.conf"),
        "stable": "stable:8080",
        "canary": "canary:8080",
        "check_command": str(check),
        "reload_command": str(reload),
        **extra,
    }


async def nginx_harness(tmp_path: Path) -> AsyncIterator[Harness]:
    log = tmp_path / "checks.log"

    async def make(kind: str) -> DeployAdapter:
        extra = {"timeout_s": SLOW_TIMEOUT_S} if kind == "slow" else {}
        return NginxDeployAdapter.from_config(nginx_config(tmp_path, kind, **extra))

    async def after_timeout() -> None:
        pid = int((tmp_path / "pids").read_text())
        deadline = time.monotonic() + 1.0
        while not gone(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert gone(pid), "the check command's process group is killed on timeout"

    yield Harness(
        name="nginx",
        make=make,
        seen=lambda: log.read_text().split() if log.exists() else [],
        valid_config=nginx_config(tmp_path),
        wrong_type=("timeout_s", "soon"),
        timeout_s=SLOW_TIMEOUT_S,
        after_timeout=after_timeout,
    )


@pytest.fixture(params=["kubernetes-deployment", "kubernetes-argo", "github", "nginx"])
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    if request.param == "kubernetes-deployment":
        gen = kubernetes_harness("deployment")
    elif request.param == "kubernetes-argo":
        gen = kubernetes_harness("argo-rollout")
    elif request.param == "github":
        gen = github_harness()
    else:
        gen = nginx_harness(tmp_path)
    try:
        yield await anext(gen)
    finally:
        await gen.aclose()


async def test_a_slow_target_is_cut_off_at_the_timeout(harness: Harness) -> None:
    adapter = await harness.make("slow")
    assert harness.timeout_s is not None
    started = time.monotonic()
    result = await adapter.apply_step(target(), Step(weight=10), 1, 3)
    elapsed = time.monotonic() - started
    assert result.ok is False
    assert "timed out" in result.detail
    assert elapsed < harness.timeout_s + 0.7, f"took {elapsed:.2f} s"
    assert_clean(result, *harness.secrets)
    if harness.after_timeout is not None:
        await harness.after_timeout()
