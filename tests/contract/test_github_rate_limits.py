"""Issue 13, case 3: the github deploy adapter follows GitHub's documented rate-limit rules.

Source of the rules and of the fake's answers: github/docs
``content/rest/using-the-rest-api/rate-limits-for-the-rest-api.md`` at commit
21143d5aa2dfc551d9009bc0ba1eac17de1e41d3, section "Exceeding the rate limit":

- primary: 403 or 429 with ``x-ratelimit-remaining: 0``: do not retry until ``x-ratelimit-reset``
  (UTC epoch seconds);
- secondary: 403 or 429 with a message saying so; ``retry-after`` present: wait that many seconds;
  else wait at least one minute, exponentially longer on repeats;
- "Continuing to make requests while you are rate limited may result in the banning of your
  integration": the fake counts requests sent before the reset.

Time is simulated: the adapter's sleep advances a clock the fake GitHub reads too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from guardrail.adapters.deploy.github import GitHubDeployAdapter
from guardrail.domain.model import Step
from tests.contract.target_fakes import FakeGitHub
from tests.contract.test_deploy_adapters import SECRET, assert_clean, target

T0 = 1_714_557_600.0


class FakeTime:
    """Wall and monotonic time that only move when someone sleeps; records each sleep."""

    def __init__(self) -> None:
        self.now = T0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - T0

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


@pytest.fixture
async def gh() -> AsyncIterator[FakeGitHub]:
    fake = FakeGitHub(SECRET)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def fixture_time(gh: FakeGitHub) -> FakeTime:
    t = FakeTime()
    gh.clock = t.clock
    return t


@pytest.fixture
async def adapter(gh: FakeGitHub, fixture_time: FakeTime) -> AsyncIterator[GitHubDeployAdapter]:
    a = GitHubDeployAdapter(
        GitHubDeployAdapter.config_type(
            repository="acme/shop",
            public_url="https://guardrail.example.com",
            token=SECRET,
            api_url=gh.url,
            retries=3,
            backoff_s=0.5,
            deadline_s=600,
        ),
        sleep=fixture_time.sleep,
        clock=fixture_time.clock,
        monotonic=fixture_time.monotonic,
    )
    yield a
    await a.close()


@pytest.mark.parametrize("status", [403, 429])
async def test_a_spent_primary_limit_is_waited_out_until_its_reset(
    gh: FakeGitHub, adapter: GitHubDeployAdapter, fixture_time: FakeTime, status: int
) -> None:
    gh.primary_status = status
    gh.primary_until = T0 + 45
    result = await adapter.apply_step(target(), Step(weight=10), 0, 3)
    assert result.ok, result
    assert gh.sent_while_limited == 1  # the first request only: nothing more before the reset
    assert sum(fixture_time.sleeps) >= 45
    assert len(gh.created()) == 1 and len(gh.status_posts()) == 1


async def test_a_secondary_limit_with_retry_after_waits_that_long(
    gh: FakeGitHub, adapter: GitHubDeployAdapter, fixture_time: FakeTime
) -> None:
    gh.secondary = [(403, 17)]
    result = await adapter.finalize(target())
    assert result.ok, result
    assert fixture_time.sleeps[0] >= 17


async def test_a_secondary_limit_without_retry_after_waits_a_minute_then_longer(
    gh: FakeGitHub, adapter: GitHubDeployAdapter, fixture_time: FakeTime
) -> None:
    gh.secondary = [(429, None), (403, None)]
    result = await adapter.rollback(target(), "errors")
    assert result.ok, result
    assert len(fixture_time.sleeps) == 2
    assert fixture_time.sleeps[0] >= 60 and fixture_time.sleeps[1] >= 120


async def test_a_limit_resetting_past_the_deadline_fails_at_once_and_holds_later_calls_back(
    gh: FakeGitHub, adapter: GitHubDeployAdapter, fixture_time: FakeTime
) -> None:
    gh.primary_until = T0 + 3000  # an hour's limit, spent: far past deadline_s
    step = await adapter.apply_step(target(), Step(weight=10), 0, 3)
    assert not step.ok
    assert "rate limit spent until" in step.detail and "deadline_s" in step.detail
    assert fixture_time.sleeps == []  # nothing waited for in vain
    assert len(gh.requests) == 1
    rollback = await adapter.rollback(target(action_key="dep-1/rollback:1"), "errors")
    assert not rollback.ok and "rate limit" in rollback.detail
    assert gh.sent_while_limited == 1  # the rollback was not sent into the limit
    assert_clean(rollback, SECRET)
    fixture_time.now = T0 + 3001  # the engine retries the rollback after the reset
    again = await adapter.rollback(target(action_key="dep-1/rollback:2"), "errors")
    assert again.ok, again
    assert gh.sent_while_limited == 1


async def test_a_plain_403_is_a_permission_problem_and_not_retried(
    gh: FakeGitHub, adapter: GitHubDeployAdapter, fixture_time: FakeTime
) -> None:
    gh.forbidden = True
    result = await adapter.finalize(target())
    assert not result.ok and "403" in result.detail and "deployments: write" in result.detail
    assert len(gh.requests) == 1 and fixture_time.sleeps == []
