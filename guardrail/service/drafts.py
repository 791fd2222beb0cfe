"""Drafting documents from guardrail's own record of a deploy (the ``draft`` use case).

The facts come from the store only (:func:`guardrail.domain.drafts.facts.build_facts`); a drafter
writes the Markdown (an LLM when configured and asked for, the offline templates otherwise, and
always as the fallback); every draft is stored as a new version. After a rollback a post-mortem is
drafted automatically and linked from the deploy's timeline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from guardrail.domain.drafts import Draft, DraftKind, doc_spec
from guardrail.domain.errors import NotFoundError, ValidationError
from guardrail.domain.model import DeployState
from guardrail.domain.records import Deploy, EventKind, TimelineEvent
from guardrail.ports import Drafter, Store

log = logging.getLogger("guardrail.drafts")

AUTO_DRAFT_TIMEOUT_S = 600.0  # a last-resort bound around the automatic post-mortem (drafters have their own)


class DraftService:
    def __init__(
        self,
        *,
        store: Store,
        offline: Drafter,
        llm: Drafter | None = None,
        public_url: str,
        grafana_url: str | None = None,
        slo: float = 0.999,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.offline = offline
        self.llm = llm
        self.public_url = public_url.rstrip("/")
        self.grafana_url = grafana_url
        self.slo = slo
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    async def facts(self, deploy_id: str) -> dict[str, Any]:
        from guardrail.domain.drafts.facts import build_facts

        deploy = await self.store.get_deploy(deploy_id)
        if deploy is None:
            raise NotFoundError(f"no deploy with id {deploy_id!r}", field="id")
        return build_facts(
            deploy,
            await self.store.events(deploy_id),
            await self.store.actions(deploy_id),
            await self.store.samples(deploy_id),
            public_url=self.public_url,
            slo=self.slo,
            grafana_url=self.grafana_url,
            drafts=tuple(await self.store.drafts(deploy_id)),
        )

    async def draft(
        self, deploy_id: str, kind: DraftKind | str, *, use_llm: bool | None = None, trigger: str = "request"
    ) -> Draft:
        """Draft ``kind`` for the deploy and store it as a new version. ``use_llm``: None = the LLM
        when one is configured; True = insist (an error if none is configured); False = offline."""
        kind = doc_spec(kind).kind
        if use_llm and self.llm is None:
            raise ValidationError(
                "no LLM is configured (set llm.enabled, llm.base_url and the API key variable); "
                "leave llm unset or false for the offline draft",
                field="llm",
            )
        drafter = self.llm if (use_llm is not False and self.llm is not None) else self.offline
        facts = await self.facts(deploy_id)
        t0 = time.perf_counter()
        text = await drafter.draft(kind, facts)
        log.info(
            "drafted %s for deploy %s with %s in %.2f s%s",
            kind.value, deploy_id, text.source, time.perf_counter() - t0, f" ({text.note})" if text.note else "",
        )
        return await self.store.add_draft(
            Draft(
                deploy_id=deploy_id,
                kind=kind,
                version=0,
                markdown=text.markdown,
                source=text.source,
                note=text.note,
                created_at=self.clock(),
                trigger=trigger,
            )
        )

    async def list(self, deploy_id: str, kind: DraftKind | str | None = None) -> list[Draft]:
        if await self.store.get_deploy(deploy_id) is None:
            raise NotFoundError(f"no deploy with id {deploy_id!r}", field="id")
        return await self.store.drafts(deploy_id, None if kind is None else doc_spec(kind).kind)

    async def get(self, deploy_id: str, kind: DraftKind | str, version: int | None = None) -> Draft:
        spec = doc_spec(kind)
        found = await self.store.drafts(deploy_id, spec.kind, version=version)
        if not found:
            which = f"version {version} of the" if version is not None else "a"
            raise NotFoundError(
                f"deploy {deploy_id!r} has no {which} {spec.kind.value} draft; "
                f"POST /api/v1/deploys/{deploy_id}/drafts/{spec.kind.value} drafts one",
                field="kind",
            )
        return found[0]

    def url(self, draft: Draft) -> str:
        return f"{self.public_url}/api/v1/deploys/{draft.deploy_id}/drafts/{draft.kind.value}?version={draft.version}"

    # --- automatic post-mortem -------------------------------------------------------------------

    def on_finished(self, deploy: Deploy) -> None:
        """Engine hook: after a rollback (done or failed), draft the post-mortem in the background and
        link it from the timeline. Never blocks or fails the caller."""
        if deploy.state not in (DeployState.ROLLED_BACK, DeployState.ROLLBACK_FAILED):
            return
        task = asyncio.get_running_loop().create_task(self._auto_postmortem(deploy))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _auto_postmortem(self, deploy: Deploy) -> None:
        try:
            draft = await asyncio.wait_for(
                self.draft(deploy.id, DraftKind.POSTMORTEM, trigger="rollback"), AUTO_DRAFT_TIMEOUT_S
            )
            await self.store.save(
                deploy.id,
                events=[
                    TimelineEvent(
                        EventKind.NOTE,
                        f"post-mortem drafted (version {draft.version}, {draft.source}): {self.url(draft)}",
                        deploy.data_time,
                        self.clock(),
                        {"draft": {"kind": draft.kind.value, "version": draft.version, "url": self.url(draft)}},
                    )
                ],
            )
        except asyncio.CancelledError:
            raise
        except Exception:  # a drafting problem must never disturb the rollout; it is logged
            log.exception("automatic post-mortem of deploy %s failed", deploy.id)

    async def drain(self) -> None:
        """Wait for automatic drafts in progress (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for d in (self.llm, self.offline):
            closer = getattr(d, "close", None)
            if closer is not None:
                await closer()
