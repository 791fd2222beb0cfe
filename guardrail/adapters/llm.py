"""The LLM drafter: drafts a document with any OpenAI-compatible chat-completions API.

The user message holds the document kind's instructions and the deploy's facts as JSON, redacted
first (:func:`guardrail.domain.drafts.redact.redact_facts`: configured sensitive fields, the API key,
guardrail's own tokens and notifier secrets, secret-looking strings) and thinned to
``llm.max_facts_chars``. The answer is used only when it passes
:func:`guardrail.domain.drafts.check.check_answer` against the facts that were sent. On any provider
trouble (timeout, connection error, an HTTP error, an empty answer) or a failed check the fallback
drafter's rendering is returned with ``note`` saying why; :meth:`OpenAIDrafter.draft` never raises
for these. Logs say which kind, which model and how long; never the facts or the key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from openai import APIConnectionError, APIStatusError, APITimeoutError, AsyncOpenAI, OpenAIError

from guardrail.config import LLMConfig, Settings
from guardrail.domain.drafts.check import check_answer
from guardrail.domain.drafts.kinds import DOCS, DraftKind, instructions
from guardrail.domain.drafts.model import DraftText
from guardrail.domain.drafts.redact import redact_facts
from guardrail.ports import Drafter

log = logging.getLogger("guardrail.llm")

SYSTEM_PROMPT = (
    "You draft deployment documents for a software team from guardrail's record of one deploy. "
    "Answer with the Markdown document only. Use only the facts you are given: every number, name, "
    "time and cause in the document must come from them; where something is not in the facts, write "
    "'unknown' or a placeholder in square brackets. Keep figures as the facts state them."
)
_FENCED = re.compile(r"\A\s*(```|~~~)[ \t]*(?:markdown|md)?[ \t]*\n(?P<body>.*?)\n?[ \t]*\1\s*\Z", re.S | re.I)
_RETRY_BACKOFF_MAX_S = 8.0  # the openai client's longest pause between retries (without Retry-After)
_MAX_PROBLEMS_SHOWN = 3
_LEFT_OUT = re.compile(r"\[(\d+) entries left out\]")


def strip_fence(text: str) -> str:
    """The answer without a ```markdown (or ```md, or bare ```) fence wrapped around all of it."""
    m = _FENCED.match(text)
    return m.group("body") if m else text


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))


def _longest_list(value: Any) -> list[Any] | None:
    best: list[Any] | None = None
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, Mapping):
            stack.extend(v.values())
        elif isinstance(v, list):
            if len(v) > 3 and (best is None or len(v) > len(best)):
                best = v
            stack.extend(v)
    return best


def _thin(value: Any) -> Any:
    """A deep copy with lists as lists (tuples too) so they can be thinned in place."""
    if isinstance(value, Mapping):
        return {k: _thin(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thin(v) for v in value]
    return value


def fit_facts(facts: Mapping[str, Any], max_chars: int) -> tuple[dict[str, Any], bool]:
    """``facts`` made to fit ``max_chars`` of compact JSON by thinning the longest lists (the first
    and last quarter of each kept, a note where the middle was) and then cutting strings longer than
    2,000 characters; (facts, whether they fit)."""
    out: dict[str, Any] = _thin(facts)
    while _size(out) > max_chars:
        longest = _longest_list(out)
        if longest is None:
            break
        n = len(longest)
        keep = max(1, n // 4)  # n > 3, so at least two entries go each time
        dropped = longest[keep : n - keep]
        left_out = sum(_left_out(e) or 1 for e in dropped)
        longest[:] = [*longest[:keep], f"[{left_out} entries left out]", *longest[n - keep :]]
    if _size(out) > max_chars:
        out = _cut_strings(out, 2000)
    return out, _size(out) <= max_chars


def _left_out(entry: Any) -> int:
    """How many entries a marker left by :func:`fit_facts` stands for (0 for anything else)."""
    m = _LEFT_OUT.fullmatch(entry) if isinstance(entry, str) else None
    return int(m.group(1)) if m else 0


def _cut_strings(value: Any, limit: int) -> Any:
    if isinstance(value, Mapping):
        return {k: _cut_strings(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_strings(v, limit) for v in value]
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + " [cut]"
    return value


def configured_secrets(settings: Settings) -> list[str]:
    """Secret values in the settings that must never reach an LLM: every configured secret
    (:func:`guardrail.redaction.settings_secrets`: API tokens, the database password, secret
    settings, the secret settings of notifier and deploy adapter presets, keys read from the
    environment)."""
    from guardrail.redaction import settings_secrets

    return settings_secrets(settings)


class OpenAIDrafter:
    """:class:`guardrail.ports.Drafter` backed by an OpenAI-compatible API, falling back to
    ``fallback`` (the offline drafter) whenever the LLM's answer cannot be used."""

    name = "llm"

    def __init__(
        self,
        config: LLMConfig,
        *,
        api_key: str,
        fallback: Drafter,
        secret_values: Iterable[str] = (),
        deadline_s: float | None = None,
    ) -> None:
        self.config = config
        self.fallback = fallback
        self._secrets = [api_key, *(s for s in secret_values if s)]
        # the overall deadline: every attempt may take timeout_s, plus the pauses between retries
        self.deadline_s = deadline_s or (
            config.timeout_s * (config.max_retries + 1) + _RETRY_BACKOFF_MAX_S * config.max_retries + 1.0
        )
        self._client = AsyncOpenAI(
            base_url=config.base_url,
            api_key=api_key,
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, fallback: Drafter, env: Mapping[str, str] | None = None
    ) -> OpenAIDrafter:
        """Built at start-up: the key from ``settings.llm.api_key_env`` (a :class:`ConfigError`
        naming the variable when unset), every configured secret kept out of what is sent."""
        environ = dict(os.environ if env is None else env)
        return cls(
            settings.llm,
            api_key=settings.llm.api_key(environ),
            fallback=fallback,
            secret_values=configured_secrets(settings),
        )

    @property
    def source(self) -> str:
        return f"llm:{self.config.model}"

    def messages(self, kind: DraftKind, facts: Mapping[str, Any]) -> tuple[list[dict[str, str]], dict[str, Any]]:
        """The chat messages for ``kind`` and the facts they carry (redacted and thinned). Raises
        ValueError when the facts cannot be made to fit ``max_facts_chars``."""
        safe = redact_facts(facts, secret_values=self._secrets, fields=self.config.redact_fields)
        sent, fits = fit_facts(safe, self.config.max_facts_chars)
        if not fits:
            raise ValueError(
                f"the facts do not fit llm.max_facts_chars ({self.config.max_facts_chars} characters)"
            )
        spec = DOCS[kind]
        facts_json = json.dumps(sent, ensure_ascii=False, indent=1, default=str)
        user = (
            f"Document: {spec.title}\n\n{instructions(kind)}\n\n"
            f"Facts (JSON, from guardrail's record of the deploy):\n```json\n{facts_json}\n```"
        )
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}], sent

    async def draft(self, kind: DraftKind, facts: Mapping[str, Any]) -> DraftText:
        kind = DraftKind(kind)
        model = self.config.model
        started = time.monotonic()
        try:
            messages, sent = self.messages(kind, facts)
        except ValueError as e:
            return await self._fall_back(kind, facts, f"LLM not asked: {e}", started)
        try:
            response = await asyncio.wait_for(
                self._client.chat.completions.create(
                    model=model,
                    temperature=self.config.temperature,
                    messages=messages,  # type: ignore[arg-type]
                ),
                timeout=self.deadline_s,
            )
        except APITimeoutError:
            return await self._fall_back(
                kind, facts, f"LLM did not answer within {self.config.timeout_s:g} s", started
            )
        except APIConnectionError:
            return await self._fall_back(kind, facts, "LLM could not be reached", started)
        except APIStatusError as e:
            return await self._fall_back(kind, facts, f"LLM answered HTTP {e.status_code}", started)
        except TimeoutError:
            return await self._fall_back(
                kind, facts, f"LLM gave no answer within the deadline of {self.deadline_s:g} s", started
            )
        except OpenAIError as e:  # e.g. a body that is not a chat completion
            return await self._fall_back(kind, facts, f"LLM answer unreadable ({type(e).__name__})", started)

        choices = getattr(response, "choices", None) or []
        content = choices[0].message.content if choices and choices[0].message is not None else None
        if not isinstance(content, str) or not content.strip():
            return await self._fall_back(kind, facts, "LLM answer not used: it was empty", started)
        text = strip_fence(content).strip() + "\n"
        problems = check_answer(kind, text, sent)
        if choices[0].finish_reason == "length":
            problems.insert(0, "the answer was cut off at the model's length limit")
        if problems:
            shown = "; ".join(problems[:_MAX_PROBLEMS_SHOWN])
            more = len(problems) - _MAX_PROBLEMS_SHOWN
            if more > 0:
                shown += f"; and {more} more problem{'s' if more > 1 else ''}"
            return await self._fall_back(kind, facts, f"LLM answer not used: {shown}", started)
        log.info("drafted %s with %s in %.2f s", kind.value, model, time.monotonic() - started)
        return DraftText(markdown=text, source=self.source)

    async def _fall_back(self, kind: DraftKind, facts: Mapping[str, Any], why: str, started: float) -> DraftText:
        log.warning(
            "draft of %s with %s fell back to %s after %.2f s: %s",
            kind.value, self.config.model, self.fallback.name, time.monotonic() - started, why,
        )
        rendered = await self.fallback.draft(kind, facts)
        note = f"{why}; {self.fallback.name} rendering"
        if rendered.note:
            note = f"{note} ({rendered.note})"
        return DraftText(markdown=rendered.markdown, source=rendered.source, note=note)

    async def close(self) -> None:
        await self._client.close()
