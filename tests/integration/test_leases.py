"""Deploy leases on a real database: at most one replica holds a deploy at a time, an expired lease
is taken over, and replicas sweeping at once split the active deploys between them."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from guardrail.adapters.db.store import SqlStore
from guardrail.domain.drafts import Draft, DraftKind
from guardrail.domain.errors import NotFoundError
from guardrail.domain.model import DeployState
from tests.integration.test_store import T0, deploy, event

pytestmark = pytest.mark.integration


async def _deploys(store: SqlStore, n: int, state: DeployState = DeployState.ANALYZING) -> list[str]:
    ids = [f"d-{i}" for i in range(n)]
    for i in ids:
        await store.create_deploy(deploy(i, state=state), event(), None)
    return ids


async def test_a_held_lease_is_refused_to_another_replica_until_it_expires(store: SqlStore) -> None:
    (d,) = await _deploys(store, 1)
    assert await store.acquire_lease(d, "a", now=T0, ttl_s=10) == (True, None)
    assert await store.acquire_lease(d, "b", now=T0 + 5, ttl_s=10) == (False, None)
    assert await store.acquire_lease(d, "a", now=T0 + 5, ttl_s=10) == (True, "a")  # re-entrant for its holder
    assert await store.renew_lease(d, "a", now=T0 + 9, ttl_s=10)
    assert await store.acquire_lease(d, "b", now=T0 + 18, ttl_s=10) == (False, None)  # renewed until T0+19
    got, last = await store.acquire_lease(d, "b", now=T0 + 19.5, ttl_s=10)  # expired: taken over
    assert (got, last) == (True, "a")
    assert not await store.renew_lease(d, "a", now=T0 + 20, ttl_s=10)  # the old holder learns it lost it


async def test_a_released_lease_is_free_at_once_and_only_its_holder_can_release_it(store: SqlStore) -> None:
    (d,) = await _deploys(store, 1)
    await store.acquire_lease(d, "a", now=T0, ttl_s=60)
    await store.release_lease(d, "b")  # not b's: nothing happens
    assert (await store.acquire_lease(d, "b", now=T0 + 1, ttl_s=60))[0] is False
    await store.release_lease(d, "a")
    assert await store.acquire_lease(d, "b", now=T0 + 1, ttl_s=60) == (True, "a")


async def test_leasing_an_unknown_deploy_names_it(store: SqlStore) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        await store.acquire_lease("nope", "a", now=T0, ttl_s=10)


async def test_concurrent_acquires_have_exactly_one_winner(store: SqlStore) -> None:
    (d,) = await _deploys(store, 1)
    results = await asyncio.gather(*(store.acquire_lease(d, f"r{i}", now=T0, ttl_s=30) for i in range(8)))
    assert sum(1 for got, _ in results if got) == 1


async def test_sweeping_replicas_split_active_deploys_and_skip_finished_ones(store: SqlStore) -> None:
    ids = await _deploys(store, 6)
    await store.create_deploy(deploy("done", state=DeployState.PROMOTED), event(), None)
    a, b = await asyncio.gather(
        store.claim_deploys("a", now=T0, ttl_s=30, limit=3), store.claim_deploys("b", now=T0, ttl_s=30, limit=3)
    )
    got_a, got_b = {i for i, _ in a}, {i for i, _ in b}
    assert not got_a & got_b  # no deploy leased to both
    assert got_a | got_b == set(ids) and "done" not in got_a | got_b
    # nothing is left for a third replica until the leases expire
    assert await store.claim_deploys("c", now=T0 + 10, ttl_s=30) == []
    assert {i for i, _ in await store.claim_deploys("c", now=T0 + 31, ttl_s=30)} == set(ids)


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
        return Draft(deploy_id=d, kind=kind, version=0, markdown=text, source="offline", note="", created_at=T0)

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
