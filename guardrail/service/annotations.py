"""Deploy markers fanned out to the configured annotators (Grafana, Honeycomb), in the background.

:meth:`DeployAnnotations.started` and :meth:`DeployAnnotations.finished` return at once: each
schedules a task per annotator and never raises into the caller (they fit the engine's
``on_created`` / ``on_finished`` observers), so a rollback never waits on Grafana. Each annotator
call retries by itself (the outbound seam's policy, built from ``annotations:`` by
``guardrail.adapters.annotate.build_annotators``); what still failed is logged and dropped.
Annotations are a convenience, not a record: nothing about them is stored.

The end of a deploy updates the mark its start made (Grafana's annotation id, kept in memory per
deploy and annotator, the most recent ``max_remembered``). After a restart, or when the start mark
failed, the id is unknown and the annotator makes a new mark covering the whole deploy instead. The
end waits for its start's task (retries included) so the two never race.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from guardrail.config import AnnotationsConfig
from guardrail.domain.model import DeployState
from guardrail.domain.records import Deploy
from guardrail.ports import AnnotationRef, AnnotationResult, Annotator, DeployAnnotation

log = logging.getLogger("guardrail.annotations")

GUARD_S = 120.0  # a last-resort bound around one annotator call (each has its own, shorter timeout)


def annotation_of(deploy: Deploy, url: str) -> DeployAnnotation:
    """What annotators are told about ``deploy``: data times, and once terminal its result and a
    one-line summary (the rollback reason, else the latest verdict's summary)."""
    m = deploy.marker
    started = m.started_at if m.started_at is not None else deploy.data_time
    terminal = deploy.state.terminal
    summary = ""
    if terminal:
        verdict = (deploy.verdict or {}).get("summary", "")
        reason = deploy.rollout.reason
        summary = reason if deploy.state is not DeployState.PROMOTED and reason else str(verdict or reason)
    return DeployAnnotation(
        deploy_id=deploy.id,
        service=m.service,
        environment=m.environment,
        version=m.version,
        previous_version=m.previous_version,
        commit=m.commit,
        url=url,
        started_at=started,
        finished_at=deploy.data_time if terminal else None,
        result=deploy.state.value if terminal else None,
        summary=" ".join(summary.split())[:500],
    )


class DeployAnnotations:
    def __init__(
        self,
        annotators: Sequence[Annotator],
        *,
        deploy_url: Callable[[Deploy], str],
        max_remembered: int = 10_000,
    ) -> None:
        self.annotators = tuple(annotators)
        self.deploy_url = deploy_url
        self.max_remembered = max_remembered
        self._refs: OrderedDict[tuple[str, str], AnnotationRef] = OrderedDict()
        self._starts: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_config(
        cls,
        annotators: Sequence[Annotator],
        config: AnnotationsConfig,
        *,
        deploy_url: Callable[[Deploy], str],
    ) -> DeployAnnotations:
        """For the ``annotations:`` settings (the annotators, with their retry policy, come from
        ``guardrail.adapters.annotate.build_annotators``)."""
        return cls(annotators, deploy_url=deploy_url)

    # --- what the engine calls (never blocks, never raises) -----------------------------------------
    def started(self, deploy: Deploy) -> None:
        try:
            info = annotation_of(deploy, self.deploy_url(deploy))
            for a in self.annotators:
                key = (a.name, deploy.id)
                task = self._starts[key] = self._spawn(self._start(a, info))
                task.add_done_callback(lambda t, k=key: self._forget_start(k, t))
        except Exception:
            log.exception("could not schedule the start marks of deploy %s", deploy.id)

    def finished(self, deploy: Deploy) -> None:
        try:
            info = annotation_of(deploy, self.deploy_url(deploy))
            for a in self.annotators:
                self._spawn(self._finish(a, info, self._starts.pop((a.name, deploy.id), None)))
        except Exception:
            log.exception("could not schedule the end marks of deploy %s", deploy.id)

    # --- background work ----------------------------------------------------------------------------
    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _forget_start(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._starts.get(key) is task:  # done: its id (if any) is in _refs now
            del self._starts[key]

    def _remember(self, key: tuple[str, str], ref: AnnotationRef) -> None:
        self._refs[key] = ref
        self._refs.move_to_end(key)
        while len(self._refs) > self.max_remembered:
            self._refs.popitem(last=False)

    async def _start(self, a: Annotator, info: DeployAnnotation) -> None:
        result = await self._attempts(a, "start", info, lambda: a.deploy_started(info))
        if result is not None and result.ok and result.ref is not None:
            self._remember((a.name, info.deploy_id), result.ref)

    async def _finish(self, a: Annotator, info: DeployAnnotation, start: asyncio.Task[None] | None) -> None:
        if start is not None and not start.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(start)  # the start's id, if it gets one
        key = (a.name, info.deploy_id)
        ref = self._refs.get(key)
        result = await self._attempts(a, "end", info, lambda: a.deploy_finished(info, ref))
        if result is not None and result.ok and result.ref is not None:
            self._remember(key, result.ref)  # a later end (after a retried rollback) updates it again

    async def _attempts(
        self,
        a: Annotator,
        what: str,
        info: DeployAnnotation,
        call: Callable[[], Awaitable[AnnotationResult]],
    ) -> AnnotationResult | None:
        """One call (the annotator retries within it), bounded by GUARD_S; a failure is logged."""
        try:
            result = await asyncio.wait_for(call(), timeout=GUARD_S)
        except TimeoutError:
            result = AnnotationResult(False, True, f"{a.name}: no answer within {GUARD_S:g} s")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # an annotator bug: logged, not retried
            log.exception("annotator %s failed on the %s of deploy %s", a.name, what, info.deploy_id)
            return AnnotationResult(False, False, f"{a.name}: {type(e).__name__}")
        if result.ok:
            log.debug("%s mark of deploy %s: %s", what, info.deploy_id, result.detail)
        else:
            log.warning("%s mark of deploy %s not made: %s", what, info.deploy_id, result.detail)
        return result

    # --- lifecycle ----------------------------------------------------------------------------------
    async def drain(self, timeout: float | None = None) -> bool:
        """Wait for the marks in flight (tests, an orderly shutdown); False when ``timeout`` passed first."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        return not pending

    async def close(self) -> None:
        """Cancel the marks still in flight and close the annotators."""
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for a in self.annotators:
            with contextlib.suppress(Exception):
                await a.close()
