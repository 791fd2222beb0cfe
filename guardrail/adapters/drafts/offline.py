"""``OfflineDrafter``: every document kind rendered from the facts object with jinja2 templates
(``templates/<kind>.md.j2``), no network. Deterministic: the same facts give the same Markdown.

Templates see ``f`` (the facts), ``d`` (``f.deploy``), ``spec`` (the kind's ``DocSpec``) and the
filters below; a missing fact is an error (``StrictUndefined``), so a template cannot silently
print nothing where a figure belongs. Where the facts hold ``None`` the templates write "unknown"
or a placeholder for people to fill in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from guardrail.domain.drafts import DraftKind, DraftText, doc_spec
from guardrail.domain.errors import ValidationError

TEMPLATES = Path(__file__).parent / "templates"
UNKNOWN = "unknown"

_METRIC_NAMES = {
    "error_rate": "error rate",
    "latency_p99": "p99 latency",
    "latency_p95": "p95 latency",
    "throughput": "throughput",
}
_STATES = {
    "pending": "waiting for its first step",
    "analyzing": "being analysed",
    "paused": "paused, held for a person",
    "rolling_back": "rolling back",
    "promoted": "promoted",
    "rolled_back": "rolled back",
    "rollback_failed": "stuck: the rollback failed",
}


def _missing(x: Any) -> bool:
    return x is None or x == "" or (isinstance(x, float) and not math.isfinite(x))


def unknown(x: Any, placeholder: str = UNKNOWN) -> Any:
    return placeholder if _missing(x) else x


def num(x: Any, digits: int = 0) -> str:
    """1289 -> "1,289"; floats keep ``digits`` decimals (trailing zeros dropped)."""
    if _missing(x):
        return UNKNOWN
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and digits == 0):
        return f"{int(x):,}"
    text = f"{x:,.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def pct(x: Any) -> str:
    """A percentage already in percent: 1.09 -> "1.09%"."""
    if _missing(x):
        return UNKNOWN
    return f"{x:g}%" if abs(x) >= 1e-4 or x == 0 else f"{x:.2g}%"


def ms(x: Any) -> str:
    return UNKNOWN if _missing(x) else f"{num(x)} ms"


def dur(s: Any) -> str:
    """Seconds for people: "under 1 s", "30 s", "8 min", "2 h 5 min"."""
    if _missing(s):
        return UNKNOWN
    if s < 1:
        return "under 1 s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        m, sec = divmod(round(s), 60)
        return f"{m} min" + (f" {sec} s" if sec else "")
    h, m = divmod(round(s / 60), 60)
    return f"{h} h" + (f" {m} min" if m else "")


def offset(s: Any) -> str:
    """Seconds from the deploy's start: "T+0:30", "T+1:02:03"."""
    if _missing(s):
        return ""
    sign = "-" if s < 0 else "+"
    total = abs(round(s))
    h, rest = divmod(total, 3600)
    m, sec = divmod(rest, 60)
    return f"T{sign}{h}:{m:02d}:{sec:02d}" if h else f"T{sign}{m}:{sec:02d}"


def when(iso: Any) -> str:
    """``2023-11-14T22:13:20Z`` -> ``2023-11-14 22:13:20 UTC``."""
    if _missing(iso):
        return UNKNOWN
    return str(iso).replace("T", " ").replace("Z", " UTC")


def ratio(x: Any) -> str:
    return "unbounded" if _missing(x) else f"{x:g}x"


def metric(name: Any) -> str:
    return _METRIC_NAMES.get(str(name), str(name).replace("_", " "))


def state(s: Any) -> str:
    return _STATES.get(str(s), str(s).replace("_", " "))


def words(s: Any) -> str:
    return str(s).replace("_", " ")


def cell(s: Any) -> str:
    """Safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(str(unknown(s)).split()).replace("|", "\\|")


def code(s: Any) -> str:
    """Inline code that survives backticks in the text."""
    text = " ".join(str(s).split())
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def capitalize_first(s: Any) -> str:
    text = str(s)
    return text[:1].upper() + text[1:]


def fmt(x: Any, kind: str) -> str:
    """``kind``: pct, ms, rps (requests per second), s (a duration)."""
    if kind == "pct":
        return pct(x)
    if kind == "ms":
        return ms(x)
    if kind == "rps":
        return UNKNOWN if _missing(x) else f"{num(x, 1)} req/s"
    return dur(x)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # Markdown, not HTML
        keep_trailing_newline=True,
    )
    env.filters.update(
        unknown=unknown,
        num=num,
        pct=pct,
        ms=ms,
        dur=dur,
        offset=offset,
        when=when,
        ratio=ratio,
        metric=metric,
        state=state,
        words=words,
        cell=cell,
        code=code,
        fmt=fmt,
        capitalize_first=capitalize_first,
    )
    return env


def _tidy(markdown: str) -> str:
    lines = [line.rstrip() for line in markdown.splitlines()]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text + "\n"


class OfflineDrafter:
    """The ``Drafter`` port with jinja2 templates: always answers, never calls out."""

    name = "offline"

    def __init__(self) -> None:
        self._env = _environment()

    def render(self, kind: DraftKind | str, facts: Mapping[str, Any]) -> str:
        spec = doc_spec(kind)
        template = self._env.get_template(f"{spec.kind.value}.md.j2")
        try:
            text = template.render(f=facts, d=facts["deploy"], spec=spec)
        except (jinja2.UndefinedError, KeyError) as e:
            raise ValidationError(
                f"the facts object lacks a field the {spec.kind.value} template needs ({e}); build it with "
                "guardrail.domain.drafts.facts.build_facts",
                field="facts",
            ) from None
        return _tidy(text)

    async def draft(self, kind: DraftKind, facts: Mapping[str, Any]) -> DraftText:
        return DraftText(self.render(kind, facts), "offline")
