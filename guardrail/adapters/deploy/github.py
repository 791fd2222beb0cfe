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
no answer, 429, 5xx and a rate-limited 403 are retried ``retries`` times with backoff.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
    render_name,
)
from guardrail.domain.errors import ConfigError
from guardrail.domain.model import Step
from guardrail.ports import ActionResult, DeployTarget
from guardrail.secrets import redact_text, secret_field, secret_values

API_VERSION = "2022-11-28"
DESCRIPTION_LIMIT = 140  # GitHub rejects longer status descriptions
_REPOSITORY = re.compile(r"^[A-Za-z0-9-]+/[A-Za-z0-9._-]+$")


def _rate_limited(resp: aiohttp.ClientResponse) -> bool:
    return resp.status == 403 and resp.headers.get("X-RateLimit-Remaining") == "0"


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
    timeout_s: float = 10.0
    retries: int = 3
    backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if not _REPOSITORY.match(self.repository):
            raise ConfigError(f"must be owner/repo, got {self.repository!r}", field="repository")
        check_base_url("api_url", self.api_url)
        check_base_url("public_url", self.public_url)
        if not self.token or any(c in self.token for c in "\r\n\0 "):
            raise ConfigError("must be a non-empty token without spaces or line breaks", field="token")
        check_name_template("environment", self.environment)
        check_timing(self.timeout_s, self.retries, self.backoff_s)


class GitHubDeployAdapter:
    name = "github"
    config_type: ClassVar[type[GitHubConfig]] = GitHubConfig

    def __init__(
        self,
        config: GitHubConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self._sleep = sleep
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
            retries=config.retries,
            backoff_s=config.backoff_s,
            secrets=lambda: self._secrets,
            session=session,
            sleep=sleep,
            retryable=_rate_limited,
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
        last: Reply | None = None
        for round_ in range(self.config.retries + 1):
            found = await self._api.call("GET", listing, params=params)
            if not found.ok:
                return 0, self._result(
                    False, f"cannot list deployments: {self._explain(found, target)}", found
                )
            for item in found.json if isinstance(found.json, list) else []:
                payload = item.get("payload") if isinstance(item, dict) else None
                if isinstance(payload, str):
                    try:
                        payload = json.loads(payload)
                    except ValueError:
                        payload = None
                if isinstance(payload, dict) and payload.get("guardrail_deploy_id") == target.deploy_id:
                    self._deployments[key] = int(item["id"])
                    return int(item["id"]), None
            body = {
                "ref": target.commit,
                "environment": env,
                "description": _short(
                    f"{target.service} {target.version} (guardrail deploy {target.deploy_id})"
                ),
                "payload": {
                    "guardrail_deploy_id": target.deploy_id,
                    "service": target.service,
                    "version": target.version,
                    "previous_version": target.previous_version,
                },
                "auto_merge": False,
                "required_contexts": [],
            }
            last = await self._api.call("POST", listing, body=body, retry=False)
            if last.status == 201 and isinstance(last.json, dict) and "id" in last.json:
                self._deployments[key] = int(last.json["id"])
                return int(last.json["id"]), None
            transient = last.status is None or last.status == 429 or last.status >= 500
            if not transient or round_ == self.config.retries:
                break
            await self._sleep(self.config.backoff_s * 2**round_)  # then look again before creating
        assert last is not None
        return 0, self._result(False, f"cannot create the deployment: {self._explain(last, target)}", last)

    def _explain(self, reply: Reply, target: DeployTarget) -> str:
        said = reply.message()
        repo = self.config.repository
        hint = {
            401: "the token was not accepted (bad credentials)",
            403: "the token may not do this (it needs deployments: write), or the rate limit is spent",
            404: f"repository {repo} not found, or the token cannot see it",
            409: f"conflict creating a deployment of ref {target.commit}",
            422: f"GitHub rejected the request: is ref {target.commit} a commit in {repo}?",
        }.get(reply.status or 0, "")
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
