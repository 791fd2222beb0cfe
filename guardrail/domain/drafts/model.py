"""A drafted document: the text a drafter returns, and the stored, versioned draft."""

from __future__ import annotations

from dataclasses import dataclass

from guardrail.domain.drafts.kinds import DraftKind


@dataclass(frozen=True, slots=True)
class DraftText:
    """What a drafter returns."""

    markdown: str
    source: str  # "offline" or "llm:<model>"
    note: str = ""  # e.g. why the LLM answer was not used and the offline rendering was


@dataclass(frozen=True, slots=True)
class Draft:
    """A stored draft: every request stores a new version; nothing is overwritten."""

    deploy_id: str
    kind: DraftKind
    version: int  # 1, 2, ... per (deploy, kind), assigned by the store
    markdown: str
    source: str
    note: str
    created_at: float  # wall time
    trigger: str = "request"  # request | rollback (drafted automatically) | cli
