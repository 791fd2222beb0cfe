"""Every document kind for each recorded deploy, compared exactly with its golden Markdown
(``golden/<deploy>/<kind>.md``). Regenerate after an intended change with
``GUARDRAIL_UPDATE_GOLDEN=1 .venv/bin/pytest tests/drafts/test_goldens.py`` and read the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guardrail.adapters.drafts.offline import OfflineDrafter
from guardrail.domain.drafts import DraftKind
from tests.drafts.record import NAMES

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("GUARDRAIL_UPDATE_GOLDEN") == "1"
DRAFTER = OfflineDrafter()


@pytest.mark.parametrize("kind", list(DraftKind), ids=lambda k: k.value)
@pytest.mark.parametrize("deploy", NAMES)
async def test_offline_draft_matches_its_golden(deploy: str, kind: DraftKind, all_facts) -> None:
    """The offline drafter's document for a recorded deploy is exactly the reviewed golden file."""
    text = await DRAFTER.draft(kind, all_facts[deploy])
    assert text.source == "offline" and text.note == ""
    path = GOLDEN / deploy / f"{kind.value}.md"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.markdown)
    assert path.exists(), f"no golden {path}: run with GUARDRAIL_UPDATE_GOLDEN=1 and review it"
    assert text.markdown == path.read_text()
