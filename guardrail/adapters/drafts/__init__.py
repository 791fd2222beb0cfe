"""Drafters: the ``Drafter`` port's adapters. ``offline`` renders jinja2 templates from the facts
object and always answers; an LLM drafter falls back to it."""

from guardrail.adapters.drafts.offline import OfflineDrafter

__all__ = ["OfflineDrafter"]
