"""Deploy leases held by this process (several replicas on one database).

A replica works on a deploy only while it holds the deploy's row lease. Within the process the lease
is shared: every piece of work on the deploy (a push, an override, the action runner, a timer) takes
a reference, the first one acquires the lease in the database, a heartbeat renews it while anyone
holds it, and the last one releases it. Expiry is kept on the database's clock (see
``SqlStore.acquire_lease``); the lease's token fences the writes made under it.

When a renewal finds the lease gone (another replica took over after this one stalled past the
expiry), the lease is marked lost, ``on_lost`` is called, and the work registered on it is cancelled:
a replica that lost its lease stops, and its writes are refused by the fence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from guardrail.domain.errors import BusyError
from guardrail.domain.records import Lease
from guardrail.ports import Store

log = logging.getLogger("guardrail.leases")


@dataclass(eq=False)
class _Held:
    lease: Lease
    count: int = 0
    lost: bool = False
    beat: asyncio.Task[None] | None = None
    work: set[asyncio.Task[object]] = field(default_factory=set)  # cancelled if the lease is lost


class DeployLeases:
    """This process's leases on deploys. ``hold`` is re-entrant across tasks of the process."""

    def __init__(
        self,
        store: Store,
        replica: str,
        *,
        lease_s: float,
        wait_s: float,
        on_lost: Callable[[str], None] = lambda deploy_id: None,
    ) -> None:
        self.store, self.replica = store, replica
        self.lease_s, self.wait_s = lease_s, wait_s
        self._on_lost = on_lost
        self._held: dict[str, _Held] = {}
        self._gates: dict[str, asyncio.Lock] = {}

    def current(self, deploy_id: str) -> Lease | None:
        """The lease this process holds on the deploy now (for fencing writes), if any."""
        held = self._held.get(deploy_id)
        return None if held is None or held.lost else held.lease

    def guard(self, deploy_id: str, task: asyncio.Task[object]) -> None:
        """Cancel ``task`` if the deploy's lease is lost while it runs."""
        held = self._held.get(deploy_id)
        if held is not None:
            held.work.add(task)
            task.add_done_callback(held.work.discard)

    @contextlib.asynccontextmanager
    async def hold(self, deploy_id: str, *, wait: bool = True) -> AsyncIterator[Lease | None]:
        """The deploy's lease for the duration of the block. Yields None when ``wait`` is False and
        another replica holds it; raises ``BusyError`` when waiting took longer than ``wait_s``. The
        lease yielded has ``last_owner`` set when this process just took it from another replica."""
        gate = self._gates.setdefault(deploy_id, asyncio.Lock())
        async with gate:
            held = self._held.get(deploy_id)
            if held is None or held.lost:
                lease = await self._acquire(deploy_id, wait=wait)
                if lease is None:
                    yield None
                    return
                held = _Held(lease)
                held.beat = asyncio.get_running_loop().create_task(self._renew(deploy_id, held))
                self._held[deploy_id] = held
                fresh = lease
            else:
                fresh = Lease(deploy_id, self.replica, held.lease.token, self.replica)
            held.count += 1
        try:
            yield fresh
        finally:
            async with gate:
                held.count -= 1
                if held.count == 0 and self._held.get(deploy_id) is held:
                    del self._held[deploy_id]
                    await self._let_go(held)

    async def _acquire(self, deploy_id: str, *, wait: bool) -> Lease | None:
        deadline = time.monotonic() + self.wait_s
        delay = 0.02
        while True:
            lease = await self.store.acquire_lease(deploy_id, self.replica, ttl_s=self.lease_s)
            if lease is not None or not wait:
                return lease
            if time.monotonic() >= deadline:
                raise BusyError(
                    f"deploy {deploy_id} is busy on another guardrail replica; retry in a few seconds",
                    field="id",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _let_go(self, held: _Held) -> None:
        if held.beat is not None:
            held.beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await held.beat
        if held.lost:
            return
        try:
            await self.store.release_lease(held.lease)
        except Exception:  # it expires by itself after lease_s
            log.warning("could not release the lease of deploy %s", held.lease.deploy_id, exc_info=True)

    async def _renew(self, deploy_id: str, held: _Held) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                ok = await self.store.renew_lease(held.lease, ttl_s=self.lease_s)
            except Exception:  # the database is unreachable: the next beat tries again
                log.warning("could not renew the lease of deploy %s", deploy_id, exc_info=True)
                continue
            if not ok:
                log.error(
                    "lost the lease of deploy %s (another replica took over): stopping work on it", deploy_id
                )
                held.lost = True
                for task in list(held.work):
                    task.cancel()
                self._on_lost(deploy_id)
                return

    async def close(self) -> None:
        for held in list(self._held.values()):
            for task in list(held.work):
                task.cancel()
