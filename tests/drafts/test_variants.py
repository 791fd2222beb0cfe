"""Deploys that end (or have not yet ended) other ways, run live on the real engine and SQLite
(``record.py``'s extra scenarios, ~1 s): every kind still renders with its sections, and says what
happened."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from guardrail.adapters.drafts.offline import OfflineDrafter
from guardrail.domain.drafts import DOCS, DraftKind
from guardrail.domain.drafts.facts import build_facts
from tests.drafts.record import EXTRA, SECRET, from_record, record_all
from tests.drafts.test_documents import headings

DRAFTER = OfflineDrafter()


@pytest.fixture(scope="module")
def variants() -> dict[str, dict[str, Any]]:
    """Sync on purpose: a module-wide fixture runs the engine on its own event loop."""
    recs = asyncio.run(record_all(EXTRA))
    return {
        name: build_facts(*from_record(rec), public_url="http://127.0.0.1:8080") for name, rec in recs.items()
    }


@pytest.fixture(scope="module")
def docs(variants) -> dict[tuple[str, DraftKind], str]:
    return {(name, kind): DRAFTER.render(kind, f) for name, f in variants.items() for kind in DraftKind}


def test_every_variant_renders_every_kind_with_its_sections(variants, docs) -> None:
    for (name, kind), md in docs.items():
        assert headings(md)[1] == list(DOCS[kind].sections), (name, kind)
        assert SECRET not in md
    for f in variants.values():
        json.dumps(f, allow_nan=False)


def test_a_failed_rollback_is_reported_as_stuck(variants, docs) -> None:
    rb = variants["rollback_failed"]["rollback"]
    assert (rb["succeeded"], rb["attempts"], rb["finished_at"]) == (False, 5, None)
    assert variants["rollback_failed"]["outcome"]["state"] == "rollback_failed"
    pm = docs[("rollback_failed", DraftKind.POSTMORTEM)]
    assert "the rollback to 1.4.2 failed 5 time(s): the deploy is stuck on 1.4.3 until a person acts" in pm
    assert "The rollback was tried 5 times and never succeeded; the 5 failed ones reported `roll" in pm
    assert "- 1.4.3 is still live until a person rolls it back." in pm
    assert "**Roll back now, by hand**" in docs[("rollback_failed", DraftKind.TRIAGE)]


def test_a_manual_rollback_names_who_and_why_and_is_not_called_automatic(variants, docs) -> None:
    f = variants["manual_rollback"]
    assert f["detection"]["trigger"] == "manual" and f["rollback"]["automatic"] is False
    pm = docs[("manual_rollback", DraftKind.POSTMORTEM)]
    assert "The deploy was rolled back by hand by bob (customer reports of double charges)" in pm
    assert "The rollback was automatic" not in pm


def test_a_deploy_in_progress_is_described_as_provisional(variants, docs) -> None:
    f = variants["in_progress"]
    assert f["outcome"]["finished"] is False and f["outcome"]["ended_at"] is None
    assert f["rollout"]["steps"][0]["status"] == "in effect"
    assert (
        "The deploy is being analysed; figures below are as of" in docs[("in_progress", DraftKind.COMPLETION)]
    )
