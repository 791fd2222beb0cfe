"""GitHub Deployments: show the rollout on the repository's Deployments page and the commit.

It moves no traffic: pair it with a traffic adapter when traffic must move, or use it where GitHub
is where people look. For a deploy it keeps one GitHub deployment (``ref`` = the commit, the
``environment`` template over ``{service}`` / ``{environment}``, ``auto_merge: false``,
``required_contexts: []``, ``payload`` with ``guardrail_deploy_id``, ``service``, ``version``,
``previous_version``) and posts statuses to it:

============  ===============  ====================================
method        state            description
============  ===============  ====================================
apply_step    ``in_progress``  the step, e.g. ``10% of traffic``
finalize      ``success``      ``<version> promoted``
rollback      ``failure``      ``rolled back: <reason>``
============  ===============  ====================================

Every status carries ``log_url`` = ``{public_url}/deploys/{deploy_id}``. The deployment is found
again (listing ``?sha=<commit>&environment=<env>`` and matching the payload's
``guardrail_deploy_id``) before one is created, so a repeat after a crash, or a create whose answer
was lost, does not make a second one; creating is never retried blindly, only after such a look.

Headers: ``Accept: application/vnd.github+json``, ``X-GitHub-Api-Version: 2022-11-28``,
``Authorization: Bearer <token>``, ``User-Agent: guardrail``. Requests time out after ``timeout_s``;
no answer, 429 and 5xx are retried ``retries`` times with backoff (the outbound seam's policy),
within ``deadline_s`` per request.

Rate limits follow GitHub's documented rules ("Rate limits for the REST API", *Exceeding the rate
limit*), in :class:`GitHubRateLimit`: a 403 or 429 with ``retry-after`` waits that many seconds; with
``x-ratelimit-remaining: 0`` it waits until ``x-ratelimit-reset`` (UTC epoch seconds); a secondary
limit without either waits at least a minute, doubling on repeats. Until a limit has reset no
request is sent at all (also not by the next action). A wait longer than the request's deadline is
not waited out: the action fails at once saying when the limit resets (the engine retries a
rollback with its own backoff). A 403 without any of these is a permission problem, not retried.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Self
from urllib.parse import quote

import aiohttp

from guardrail.adapters.deploy import parse_adapter_config
from guardrail.adapters.deploy.rest import (
    JsonApi,
    Reply,
    check_base_url,
    check_name_template,
    check_timing,
    one_line,
    policy_of,
    render_name,
)
from guardrail.adapters.outbound import Throttle
from guardrail.domain.errors import ConfigError
from guardrail.domain.model import Step
from guardrail.ports import ActionResult, DeployTarget
from guardrail.retry import retry_after_seconds
from guardrail.secrets import redact_text, secret_field, secret_values

API_VERSION = "2022-11-28"
DESCRIPTION_LIMIT = 140  # GitHub rejects longer status descriptions
_REPOSITORY = re.compile(r"^[A-Za-z0-9-]+/[A-Za-z0-9._-]+$")


SECONDARY_WAIT_S = 60.0  # "Otherwise, wait for at least one minute before retrying"


class GitHubRateLimit:
    """GitHub's rate-limit rules for the outbound seam (one per adapter: a limit is per token).

    Source: github/docs ``content/rest/using-the-rest-api/rate-limits-for-the-rest-api.md``,
    section "Exceeding the rate limit"."""

    def __init__(self) -> None:
        self.blocked_until = 0.0  # wall time before which nothing is sent

    def before(self, now: float) -> float:
        return max(0.0, self.blocked_until - now)

    def after(
        self, status: int, headers: Mapping[str, str], body: str, now: float, repeats: int
    ) -> Throttle | None:
        if status not in (403, 429):
            return None
        retry_after = retry_after_seconds(headers.get("retry-after"), now)
        remaining = (headers.get("x-ratelimit-remaining") or "").strip()
        reset = _epoch(headers.get("x-ratelimit-reset"))
        if retry_after is not None:
            throttle = Throttle(retry_after, f"rate limited: retry-after {retry_after:g} s")
        elif remaining == "0" and reset is not None:
            wait = max(0.0, reset - now) + 1.0  # the reset second itself may still be limited
            throttle = Throttle(wait, f"rate limit spent until {_iso(reset)}")
        elif status == 429 or "secondary rate limit" in body.lower():
            wait = SECONDARY_WAIT_S * 2 ** min(repeats, 6)
            throttle = Throttle(wait, f"secondary rate limit: waiting {wait:g} s")
        else:
            return None  # a 403 that is not a limit: the token may not do this
        self.blocked_until = max(self.blocked_until, now + throttle.wait_s)
        return throttle


def _epoch(raw: str | None) -> float | None:
    try:
        return float(int((raw or "").strip()))
    except ValueError:
        return None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _find(listing: Any, deploy_id: str) -> int | None:
    """The id of the deployment in a listing whose payload names this guardrail deploy."""
    for item in listing if isinstance(listing, list) else []:
        payload = item.get("payload") if isinstance(item, dict) else None
        if isinstance(payload, str):
            try:
                payload = json.loads(payload)
            except ValueError:
                payload = None
        if isinstance(payload, dict) and payload.get("guardrail_deploy_id") == deploy_id:
            return int(item["id"])
    return None


def _short(text: str) -> str:
    text = one_line(text, 1000)
    return text if len(text) <= DESCRIPTION_LIMIT else text[: DESCRIPTION_LIMIT - 3] + "..."


@dataclass(frozen=True, slots=True)
class GitHubConfig:
    repository: str  # owner/repo
    public_url: str  # guardrail's own address, for log_url
    token: str = secret_field()  # needs the deployments: write permission
    api_url: str = "https://api.github.com"  # GitHub Enterprise Server: https://HOST/api/v3
    environment: str = "{environment}"  # template: {service}, {environment}
    timeout_s: float = 10.0  # per attempt
    retries: int = 3  # extra attempts after the first (no answer, 429, 5xx, rate limits)
    backoff_s: float = 0.5  # before the first retry; doubled each time, with jitter
    backoff_max_s: float = 30.0
    deadline_s: float = 600.0  # one request with its retries and rate-limit waits

    def __post_init__(self) -> None:
        if not _REPOSITORY.match(self.repository):
            raise ConfigError(f"must be owner/repo, got {self.repository!r}", field="repository")
        check_base_url("api_url", self.api_url)
        check_base_url("public_url", self.public_url)
        if not self.token or any(c in self.token for c in "\r\n\0 "):
            raise ConfigError("must be a non-empty token without spaces or line breaks", field="token")
        check_name_template("environment", self.environment)
        check_timing(self.timeout_s, self.retries, self.backoff_s, self.backoff_max_s, self.deadline_s)


class GitHubDeployAdapter:
    name = "github"
    config_type: ClassVar[type[GitHubConfig]] = GitHubConfig

    def __init__(
        self,
        config: GitHubConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.rate_limit = GitHubRateLimit()
        self._secrets = secret_values(config)
        self._public = config.public_url.rstrip("/")
        self._repo = "/".join(quote(p, safe="") for p in config.repository.split("/"))
        self._deployments: dict[tuple[str, str, str], int] = {}  # (deploy id, commit, env) -> id
        self._api = JsonApi(
            config.api_url,
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "Authorization": f"Bearer {config.token}",
                "User-Agent": "guardrail",
            },
            timeout_s=config.timeout_s,
            policy=policy_of(config.retries, config.backoff_s, config.backoff_max_s, config.deadline_s),
            secrets=lambda: self._secrets,
            session=session,
            sleep=sleep,
            rate_limit=self.rate_limit,
            clock=clock,
            monotonic=monotonic,
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(parse_adapter_config(GitHubConfig, config, name="github"))

    def __repr__(self) -> str:
        return f"GitHubDeployAdapter({self.config!r})"

    async def close(self) -> None:
        await self._api.close()

    def log_url(self, target: DeployTarget) -> str:
        return f"{self._public}/deploys/{quote(target.deploy_id, safe='')}"

    async def apply_step(self, target: DeployTarget, step: Step, index: int, total: int) -> ActionResult:
        return await self._status(target, "in_progress", step.describe())

    async def finalize(self, target: DeployTarget) -> ActionResult:
        return await self._status(target, "success", f"{target.version} promoted")

    async def rollback(self, target: DeployTarget, reason: str) -> ActionResult:
        return await self._status(target, "failure", f"rolled back: {reason}")

    # --- plumbing ---------------------------------------------------------------------------------

    async def _status(self, target: DeployTarget, state: str, description: str) -> ActionResult:
        env = render_name(self.config.environment, target.service, target.environment)
        deployment_id, failed = await self._ensure_deployment(target, env)
        if failed is not None:
            return failed
        body = {"state": state, "log_url": self.log_url(target), "description": _short(description)}
        path = f"/repos/{self._repo}/deployments/{deployment_id}/statuses"
        reply = await self._api.call("POST", path, body=body)
        data = {"deployment_id": deployment_id, "environment": env, "state": state, "history": reply.history}
        if reply.ok:
            return self._result(
                True,
                f"GitHub deployment {deployment_id} ({self.config.repository}, {env}): {state}, "
                f"{body['description']!r}",
                reply,
                data,
            )
        return self._result(
            False, f"status {state} not recorded: {self._explain(reply, target)}", reply, data
        )

    async def _ensure_deployment(self, target: DeployTarget, env: str) -> tuple[int, ActionResult | None]:
        """The GitHub deployment of this deploy: remembered, found, or created (after a look)."""
        key = (target.deploy_id, target.commit, env)
        known = self._deployments.get(key)
        if known is not None:
            return known, None
        listing = f"/repos/{self._repo}/deployments"
        params = {"sha": target.commit, "environment": env, "per_page": "100"}
        body = {
            "ref": target.commit,
            "environment": env,
            "description": _short(f"{target.service} {target.version} (guardrail deploy {target.deploy_id})"),
            "payload": {
                "guardrail_deploy_id": target.deploy_id,
                "service": target.service,
                "version": target.version,
                "previous_version": target.previous_version,
            },
            "auto_merge": False,
            "required_contexts": [],
        }
        # A create whose answer was lost (timeout, 5xx) may have made the deployment: look again
        # before creating again; the seam resends a create only when it surely did not take effect.
        last: Reply | None = None
        for look in range(2):
            if look:
                await self._api.http.pause(1)
            found = await self._api.call("GET", listing, params=params)
            if not found.ok:
                return 0, self._result(
                    False, f"cannot list deployments: {self._explain(found, target)}", found
                )
            existing = _find(found.json, target.deploy_id)
            if existing is not None:
                self._deployments[key] = existing
                return existing, None
            last = await self._api.call("POST", listing, body=body, idempotent=False)
            if last.status == 201 and isinstance(last.json, dict) and "id" in last.json:
                self._deployments[key] = int(last.json["id"])
                return int(last.json["id"]), None
            if not last.retryable or last.retry_after_s is not None:
                break  # a refusal, or a rate limit the seam already waited out as far as it may
        assert last is not None
        return 0, self._result(False, f"cannot create the deployment: {self._explain(last, target)}", last)

    def _explain(self, reply: Reply, target: DeployTarget) -> str:
        said = reply.message()
        repo = self.config.repository
        hint = {
            401: "the token was not accepted (bad credentials)",
            403: "the token may not do this (it needs deployments: write)",
            404: f"repository {repo} not found, or the token cannot see it",
            409: f"conflict creating a deployment of ref {target.commit}",
            422: f"GitHub rejected the request: is ref {target.commit} a commit in {repo}?",
        }.get(reply.status or 0, "")
        if reply.retry_after_s is not None and reply.status in (None, 403, 429):
            hint = (
                f"rate limited: GitHub asks to wait {reply.retry_after_s:.0f} s, longer than deadline_s "
                f"({self.config.deadline_s:g} s) allows; not sent again before then"
            )
        if reply.status == 202:
            hint = f"GitHub merged the default branch into {target.commit} instead of creating a deployment"
        extra = "; ".join(p for p in (hint, said) if p)
        return reply.outcome() + (f": {extra}" if extra else "")

    def _result(
        self, ok: bool, detail: str, reply: Reply, data: dict[str, Any] | None = None
    ) -> ActionResult:
        data = dict(data or {"history": reply.history})
        data.setdefault("repository", self.config.repository)
        return ActionResult(
            ok=ok,
            detail=one_line(redact_text(detail, self._secrets)),
            output=reply.text,
            data=data,
        )
