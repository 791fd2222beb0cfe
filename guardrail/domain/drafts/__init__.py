"""Documents guardrail drafts from its own record of a deploy (issue 6).

``kinds`` says what each document is for and which sections it must have; ``facts`` assembles the
facts object from the record (never invented); ``check`` validates an LLM's answer against both.
"""

from guardrail.domain.drafts.kinds import DOCS, DocSpec, DraftKind, doc_spec
from guardrail.domain.drafts.model import Draft, DraftText

__all__ = ["DOCS", "DocSpec", "Draft", "DraftKind", "DraftText", "doc_spec"]
