"""Deploy leases on a real database: at most one replica holds a deploy at a time, an expired lease
is taken over (expiry on the database's clock), writes are fenced by the lease, and replicas sweeping at once split the active deploys between them."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from guardrail.adapters.db.store import SqlStore
from guardrail.domain.drafts import Draft, DraftKind
from guardrail.domain.errors import LeaseLostError, NotFoundError
from guardrail.domain.model import DeployState
from guardrail.domain.records import Action, ActionStatus, Lease
from guardrail.domain.rollout import Command, CommandKind
from tests.integration.test_store import T0, deploy, event

pytestmark = pytest.mark.integration


async def _deploys(store: SqlStore, n: int, state: DeployState = DeployState.ANALYZING) -> list[str]:
    ids = [f"d-{i}" for i in range(n)]
    for i in ids:
        await store.create_deploy(deploy(i, state=state), event(), None)
    return ids


async def test_a_held_lease_is_refused_to_another_replica_until_it_expires(store: SqlStore) -> None:
    (d,) = await _deploys(store, 1)
    a = await store.acquire_lease(d, "a", ttl_s=0.6)
    assert a is not None and a.last_owner is None
    assert await store.acquire_lease(d, "b", ttl_s=10) is None
    again = await store.acquire_lease(d, "a", ttl_s=0.6)  # re-entrant for its holder, same token
    assert again is not None and again.token == a.token and again.last_owner == "a"
    await asyncio.sleep(0.4)
    assert await store.renew_lease(a, ttl_s=0.6)  # until 0.6 s from now, on the database's clock
    await asyncio.sleep(0.4)
    assert await store.acquire_lease(d, "b", ttl_s=10) is None  # renewed: not expired yet
    await asyncio.sleep(0.4)
    b = await store.acquire_lease(d, "b", ttl_s=10)  # expired: taken over, with a new token
    assert b is not None and b.last_owner == "a" and b.token == a.token + 1
    assert not await store.renew_lease(a, ttl_s=10)  # the old holder learns it lost it


async def test_expiry_is_reckoned_on_the_database_clock_whatever_the_stores_clock(store_url: str) -> None:
    fast = await SqlStore.open(store_url, clock=lambda: time.time() + 3600)  # a replica an hour ahead
    slow = await SqlStore.open(store_url, clock=lambda: time.time() - 3600)
    try:
        (d,) = await _deploys(fast, 1)
        assert await slow.acquire_lease(d, "slow", ttl_s=30) is not None
        assert await fast.acquire_lease(d, "fast", ttl_s=30) is None  # not expired on the database's clock
    finally:
        await fast.close()
        await slow.close()


async def test_writes_under_a_lease_another_replica_took_are_refused_and_leave_nothing(
    store: SqlStore,
) -> None:
    (d,) = await _deploys(store, 1)
    a = await store.acquire_lease(d, "a", ttl_s=0.2)
    assert a is not None
    (act,) = await store.save(
        d, events=[event()], new_actions=[Action(d, Command(CommandKind.FINALIZE))], lease=a
    )
    await asyncio.sleep(0.3)
    b = await store.acquire_lease(d, "b", ttl_s=30)
    assert b is not None
    before = await store.events(d)
    with pytest.raises(LeaseLostError, match=d):
        await store.save(d, events=[event()], lease=a)
    with pytest.raises(LeaseLostError):
        await store.update_action(
            act.id, status=ActionStatus.DONE, attempts=1, result={}, event=event(), lease=a
        )
    assert await store.events(d) == before
    assert [x.status for x in await store.actions(d)] == [ActionStatus.PENDING]
    await store.update_action(
        act.id, status=ActionStatus.DONE, attempts=1, result={}, lease=b
    )  # the holder's go
    await store.save(d, events=[event()], lease=b)
    assert len(await store.events(d)) == len(before) + 1


async def test_a_released_lease_is_free_at_once_and_only_its_holder_can_release_it(store: SqlStore) -> None:
    (d,) = await _deploys(store, 1)
    a = await store.acquire_lease(d, "a", ttl_s=60)
    assert a is not None
    await store.release_lease(Lease(d, "b", a.token))  # not b's: nothing happens
    assert await store.acquire_lease(d, "b", ttl_s=60) is None
    await store.release_lease(a)
    b = await store.acquire_lease(d, "b", ttl_s=60)
    assert b is not None and b.last_owner == "a"


async def test_leasing_an_unknown_deploy_names_it(store: SqlStore) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        await store.acquire_lease("nope", "a", ttl_s=10)


async def test_concurrent_acquires_have_exactly_one_winner(store: SqlStore) -> None:
    (d,) = await _deploys(store, 1)
    results = await asyncio.gather(*(store.acquire_lease(d, f"r{i}", ttl_s=30) for i in range(8)))
    assert sum(1 for got in results if got is not None) == 1


async def test_sweeping_replicas_split_active_deploys_and_skip_finished_ones(store: SqlStore) -> None:
    ids = await _deploys(store, 6)
    await store.create_deploy(deploy("done", state=DeployState.PROMOTED), event(), None)
    a, b = await asyncio.gather(
        store.claim_deploys("a", ttl_s=0.5, limit=3), store.claim_deploys("b", ttl_s=0.5, limit=3)
    )
    got_a, got_b = {x.deploy_id for x in a}, {x.deploy_id for x in b}
    assert not got_a & got_b  # no deploy leased to both
    assert got_a | got_b == set(ids) and "done" not in got_a | got_b
    # nothing is left for a third replica until the leases expire
    assert await store.claim_deploys("c", ttl_s=30) == []
    await asyncio.sleep(0.6)
    c = await store.claim_deploys("c", ttl_s=30)
    assert {x.deploy_id for x in c} == set(ids)
    assert all(x.token == 2 for x in c)  # each changed hands twice


async def test_new_samples_record_when_data_last_arrived(store: SqlStore) -> None:
    from guardrail.domain.model import Track
    from tests.integration.test_store import window

    (d,) = await _deploys(store, 1)
    assert await store.data_arrivals() == {d: T0}  # no data yet: since the deploy was created
    await store.add_samples(d, [window(Track.CANARY, T0)])
    first = (await store.data_arrivals())[d]
    assert first > T0  # the store's clock at the insert
    await store.add_samples(d, [window(Track.CANARY, T0)])  # a duplicate is not new data
    assert (await store.data_arrivals())[d] == first


async def test_drafts_are_versioned_per_kind_newest_first(store: SqlStore) -> None:
    (d,) = await _deploys(store, 1)

    def draft(kind: DraftKind, text: str) -> Draft:
        return Draft(
            deploy_id=d, kind=kind, version=0, markdown=text, source="offline", note="", created_at=T0
        )

    one = await store.add_draft(draft(DraftKind.POSTMORTEM, "# one"))
    two = await store.add_draft(draft(DraftKind.POSTMORTEM, "# two"))
    other = await store.add_draft(draft(DraftKind.ROLLBACK_PLAN, "# plan"))
    assert (one.version, two.version, other.version) == (1, 2, 1)
    assert [x.markdown for x in await store.drafts(d, DraftKind.POSTMORTEM)] == ["# two", "# one"]
    assert [x.markdown for x in await store.drafts(d, DraftKind.POSTMORTEM, version=1)] == ["# one"]
    assert len(await store.drafts(d)) == 3
    # concurrent drafts of one kind get distinct versions
    many = await asyncio.gather(*(store.add_draft(draft(DraftKind.TRIAGE, f"# {i}")) for i in range(12)))
    assert sorted(x.version for x in many) == list(range(1, 13))
    with pytest.raises(NotFoundError):
        await store.add_draft(dataclasses.replace(draft(DraftKind.TRIAGE, "# x"), deploy_id="gone"))
