"""The github deploy adapter against an in-memory GitHub Deployments API on loopback, which keeps
deployments and statuses and records every request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from guardrail.adapters.deploy.github import GitHubDeployAdapter
from guardrail.domain.errors import ConfigError
from guardrail.domain.model import Step
from tests.contract.target_fakes import FakeGitHub
from tests.contract.test_deploy_adapters import SECRET, assert_clean, target

PUBLIC = "https://guardrail.example.com"
Adapters = list[GitHubDeployAdapter]


@pytest.fixture
async def gh() -> AsyncIterator[FakeGitHub]:
    fake = FakeGitHub(SECRET)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def adapters() -> AsyncIterator[list[GitHubDeployAdapter]]:
    made: list[GitHubDeployAdapter] = []
    yield made
    for a in made:
        await a.close()


def make(adapters: list[GitHubDeployAdapter], url: str, **extra: Any) -> GitHubDeployAdapter:
    config = {
        "api_url": url,
        "repository": "acme/shop",
        "public_url": PUBLIC + "/",
        "token": SECRET,
        "retries": 2,
        "backoff_s": 0,
        **extra,
    }
    adapter = GitHubDeployAdapter.from_config(config)
    adapters.append(adapter)
    return adapter


async def test_one_deployment_per_deploy_even_across_a_restart(gh: FakeGitHub, adapters: Adapters) -> None:
    first = make(adapters, gh.url)
    assert (await first.apply_step(target(), Step(weight=10), 0, 3)).ok
    restarted = make(adapters, gh.url)  # a new process: nothing remembered
    assert (await restarted.apply_step(target(action_key="k2"), Step(weight=50), 1, 3)).ok
    assert (await restarted.finalize(target(action_key="k3"))).ok
    assert len(gh.created()) == 1 and len(gh.deployments) == 1
    [deployment_id] = gh.statuses
    assert [s["state"] for s in gh.statuses[deployment_id]] == ["in_progress", "in_progress", "success"]
    listing = next(r for r in gh.requests if r.method == "GET")
    assert listing.path == "/repos/acme/shop/deployments"
    assert listing.query == {"sha": "abc1234", "environment": "production", "per_page": "100"}


async def test_the_deployment_is_created_as_documented(gh: FakeGitHub, adapters: Adapters) -> None:
    result = await make(adapters, gh.url).apply_step(target(), Step(weight=10), 0, 3)
    assert result.ok, result
    [create] = gh.created()
    assert create.json == {
        "ref": "abc1234",
        "environment": "production",
        "description": "checkout 2.4.0 (guardrail deploy dep-1)",
        "payload": {
            "guardrail_deploy_id": "dep-1",
            "service": "checkout",
            "version": "2.4.0",
            "previous_version": "2.3.9",
        },
        "auto_merge": False,
        "required_contexts": [],
    }
    for r in gh.requests:
        assert r.headers["Accept"] == "application/vnd.github+json"
        assert r.headers["X-GitHub-Api-Version"] == "2022-11-28"
        assert r.headers["Authorization"] == f"Bearer {SECRET}"
        assert r.headers["User-Agent"] == "guardrail"
    assert create.content_type == "application/json"


async def test_statuses_follow_the_rollout_and_link_the_deploy_page(
    gh: FakeGitHub, adapters: Adapters
) -> None:
    adapter = make(adapters, gh.url)
    await adapter.apply_step(target(), Step(weight=10), 0, 3)
    await adapter.finalize(target())
    await adapter.rollback(target(), "error rate 4x baseline " + "x" * 200)
    bodies = [r.json for r in gh.status_posts()]
    assert [b["state"] for b in bodies] == ["in_progress", "success", "failure"]
    assert {b["log_url"] for b in bodies} == {f"{PUBLIC}/deploys/dep-1"}
    assert bodies[0]["description"] == "10% of traffic"
    assert bodies[1]["description"] == "2.4.0 promoted"
    assert bodies[2]["description"].startswith("rolled back: error rate 4x baseline xxx")
    assert len(bodies[2]["description"]) == 140 and bodies[2]["description"].endswith("...")
    assert all(r.path == "/repos/acme/shop/deployments/1000/statuses" for r in gh.status_posts())


async def test_a_create_whose_answer_was_lost_is_found_not_repeated(
    gh: FakeGitHub, adapters: Adapters
) -> None:
    gh.lose_create_answers = 1  # GitHub created it, then the answer was a 502
    result = await make(adapters, gh.url).apply_step(target(), Step(weight=10), 0, 3)
    assert result.ok, result
    assert len(gh.created()) == 1 and len(gh.deployments) == 1
    assert [r.method for r in gh.requests] == ["GET", "POST", "GET", "POST"]  # list, create, list, status


async def test_an_unknown_ref_names_the_ref_and_repository_and_is_not_retried(
    gh: FakeGitHub, adapters: Adapters
) -> None:
    result = await make(adapters, gh.url).apply_step(target(commit="deadbee"), Step(weight=10), 0, 3)
    assert not result.ok
    assert "422" in result.detail and "deadbee" in result.detail and "acme/shop" in result.detail
    assert "No ref found for: deadbee" in result.detail
    assert len(gh.created()) == 1


async def test_an_unknown_repository_is_named(gh: FakeGitHub, adapters: Adapters) -> None:
    result = await make(adapters, gh.url, repository="acme/shpo").finalize(target())
    assert not result.ok and "404" in result.detail
    assert "repository acme/shpo not found, or the token cannot see it" in result.detail
    assert len(gh.requests) == 1


async def test_5xx_and_rate_limits_are_retried_but_not_401(gh: FakeGitHub, adapters: Adapters) -> None:
    adapter = make(adapters, gh.url)
    gh.script = [502]
    gh.secondary = [(403, 0)]
    result = await adapter.apply_step(target(), Step(weight=10), 0, 3)
    assert result.ok, result
    assert [r.method for r in gh.requests] == ["GET", "GET", "GET", "POST", "POST"]
    gh.requests.clear()
    gh.token = "rotated"
    refused = await adapter.finalize(target())
    assert not refused.ok and "401" in refused.detail and "bad credentials" in refused.detail
    assert len(gh.requests) == 1
    assert_clean(refused, SECRET)


async def test_the_environment_template_names_the_github_environment(
    gh: FakeGitHub, adapters: Adapters
) -> None:
    adapter = make(adapters, gh.url, environment="{service}-{environment}")
    assert (await adapter.apply_step(target(), Step(weight=10), 0, 3)).ok
    assert gh.deployments[0]["environment"] == "checkout-production"


async def test_a_leaky_api_never_gets_the_token_into_results(gh: FakeGitHub, adapters: Adapters) -> None:
    gh.echo = True
    result = await make(adapters, gh.url).rollback(target(), "errors")
    assert result.ok and "***" in result.output
    assert_clean(result, SECRET)
    assert SECRET not in repr(adapters[0])


def test_config_is_checked_at_construction() -> None:
    base = {"repository": "acme/shop", "public_url": PUBLIC, "token": SECRET}
    for bad, key in [
        ({**base, "repository": "shop"}, "repository"),
        ({**base, "public_url": "guardrail.example.com"}, "public_url"),
        ({**base, "api_url": "https://token@api.github.com"}, "api_url"),
        ({**base, "token": ""}, "token"),
        ({**base, "environment": "{env}"}, "environment"),
        ({"repository": "acme/shop", "token": SECRET}, "public_url"),
    ]:
        with pytest.raises(ConfigError) as e:
            GitHubDeployAdapter.from_config(bad)
        assert e.value.field == f"adapter.config.{key}", (bad, e.value)
