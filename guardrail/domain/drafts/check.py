"""Checks an LLM's draft against the document's structure and the facts it was given.

:func:`check_answer` returns a list of problems, one sentence each; an empty list means the answer
may be used. The rule:

1. **Title.** The first non-blank line is a ``# `` title.
2. **Sections.** Every required ``##`` heading of ``DOCS[kind]`` is present, in that order; other
   sections may come in between. Headings are compared without case, leading numbering ("2."),
   emphasis and a trailing colon.
3. **Figures.** Every figure in the text must be supported by the facts. A figure is a number in the
   prose (not in fenced code, inline code or URLs), with its unit when it has one: a percentage
   (``%``, "percent"), a duration (ms, s, min, h, days, spelled out or short), a ``k``/``M``
   multiplier, or a bare number (counts, rates, ratios like ``2.6×``).

   Not figures: list and step numbering (``1.`` / ``2)`` at the start of a line, "step 2",
   "phase 3", "attempt 2", "#4", "[1]"), numbering in headings and in a table's first column, version strings and IP addresses (three or more
   dotted parts: ``1.4.3``, ``v2.0.1``), numbers glued to letters (commit hashes, ``p99``, ``5xx``,
   ``v1``, ``2nd``), path parts (``/v1/``), HTTP status codes written as ``HTTP 503`` or
   ``status 503``, and numbers that spell like words only ("two"). Dates (``2024-05-01``) and times
   of day (``14:32``, ``14:32:05``) are checked as wholes: each must appear in a string of the
   facts, or be the UTC rendering of an epoch-seconds number in the facts; a bare ``M:SS`` or
   ``H:MM:SS`` (e.g. ``T+1:30``) is also supported as an elapsed time the facts give in seconds.

   A figure is supported when some number found anywhere in the facts (recursively: values of
   mappings and lists, and numbers inside strings such as ``"2.13%"`` or ``"412 ms"``), in the
   instructions of any document kind (the team's practice, e.g. "24 hours"), or one of 0 and 1, equals it after the
   usual conversions and rounding to the precision the text shows:

   - ratio <-> percent: ``0.0213`` supports ``2.13%`` and ``2.1%``; ``"2.13%"`` supports ``0.0213``;
   - durations: a fact with a time unit converts to the text's unit (``"412 ms"`` supports
     ``0.41 s``); a bare number in the facts is read as the text's unit, as seconds or as
     milliseconds (``300`` supports ``5 min`` and ``300 s``);
   - thousands separators and ``k``/``M`` are expanded (``28,711`` = ``28711``; ``28.7k``);
   - rounding: the text's value must lie within half a unit of its last shown digit of the fact's
     value; after "about", "around", "roughly", "approximately", "nearly", "almost", "over",
     "under", "~" or "≈" a whole number ending in zeros is read at its significant digits
     ("about 400 ms" is supported by 412 ms);
   - signs are ignored (``-12%`` and ``+12%`` are both supported by ``0.12`` or ``-0.12``).

Pure: no I/O and no clock reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from guardrail.domain.drafts.kinds import DOCS, DraftKind, instructions

__all__ = ["Figure", "check_answer", "figures_in_text", "supported"]

# seconds per time unit, keyed by every spelling accepted
_TIME_UNITS: dict[str, float] = {
    **dict.fromkeys(("ms", "msec", "msecs", "millisecond", "milliseconds"), 0.001),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
    **dict.fromkeys(("day", "days"), 86400.0),
}
_UNIT_ALTERNATION = "|".join(sorted(map(re.escape, _TIME_UNITS), key=len, reverse=True))
_MULTIPLIERS = {"k": 1e3, "K": 1e3, "M": 1e6}

# A number, optionally signed, with thousands separators or decimals, an optional k/M multiplier and
# an optional unit; not glued to letters, dots, slashes or a "word-" prefix on either side.
_NUMBER = re.compile(
    r"(?<![\w.,/#:\\])(?<!\w-)"
    r"(?P<sign>[+\-−±]?)"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?P<mult>[kKM](?![A-Za-z]))?"
    r"(?:[x×](?!\w))?"
    rf"(?:\s?(?P<unit>%|percent\b|(?:{_UNIT_ALTERNATION})\b))?"
    r"(?![\w]|[.,]\d)"
)
# Numbers in the facts: every numeric run, with a unit if it has one (generous on purpose).
_FACT_NUMBER = re.compile(
    r"(?P<sign>[+\-−]?)(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?P<mult>[kKM](?![A-Za-z]))?"
    rf"(?:\s?(?P<unit>%|percent\b|(?:{_UNIT_ALTERNATION})\b))?"
)
_DATE = re.compile(r"(?<![\w-])(\d{4}-\d{2}-\d{2})(?:[T ](\d{1,2}:\d{2}(?::\d{2})?)(?:\.\d+)?)?")
_TIME = re.compile(r"(?<![\w:.])(\d{1,2}:\d{2}(?::\d{2})?)(?:\.\d+)?(?![\w:])")
_FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1[^\n]*$", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.\S+|<[^>\s]+@[^>\s]+>|\b[\w.+-]+@[\w-]+\.[\w.]+")
_VERSION = re.compile(r"(?<![\w.])v?\d+(?:\.\d+){2,}(?:[-+][\w.]+)?(?::\d+)?(?![\w])")
_LIST_NUMBER = re.compile(r"^(\s*(?:[-*+]\s+)?(?:\[[ xX]\]\s+)?)\d+(?:\.\d+)*[.)](?=\s)", re.M)
_HEADING_NUMBER = re.compile(r"^(#{1,6}\s+)\d+(?:\.\d+)*[.)]?(?=\s)", re.M)
_ROW_NUMBER = re.compile(r"^(\s*\|\s*)\d+[.)]?(?=\s*\|)", re.M)
_LABELLED_NUMBER = re.compile(
    r"\b(?:step|phase|stage|item|option|section|part|attempt|round|no\.|number|http|status(?:\s+code)?)\s*#?\s*\d+\b"
    r"|#\d+\b|\[\d+\]",
    re.I,
)
_APPROX = re.compile(r"(?:\b(?:about|around|roughly|approximately|approx\.|nearly|almost|over|under)|[~≈])\s*$", re.I)
_EPOCH_RANGE = (946_684_800.0, 4_102_444_800.0)  # 2000-01-01 .. 2100-01-01 in seconds
_TRIVIAL = (0.0, 1.0)


@dataclass(frozen=True, slots=True)
class Figure:
    """A number as written: ``value`` (multiplier applied, sign dropped), ``tolerance`` (half a unit
    of the last shown digit) and ``unit`` ("%", a time unit in seconds-per-unit, or None)."""

    text: str
    value: float
    tolerance: float
    unit: str | None  # "%", "time", or None
    seconds_per_unit: float = 1.0


@dataclass(frozen=True, slots=True)
class _Fact:
    value: float
    unit: str | None  # "%", "time" or None
    seconds_per_unit: float = 1.0


def _unit_of(raw: str | None) -> tuple[str | None, float]:
    if not raw:
        return None, 1.0
    raw = raw.lower()
    if raw in ("%", "percent"):
        return "%", 1.0
    return "time", _TIME_UNITS[raw]


def _parse(m: re.Match[str], approx: bool) -> Figure:
    num = m.group("num").replace(",", "")
    mult = _MULTIPLIERS.get(m.group("mult") or "", 1.0)
    decimals = len(num.split(".", 1)[1]) if "." in num else 0
    step = 10.0**-decimals
    if approx and decimals == 0:
        digits = num.lstrip("0") or "0"
        zeros = len(digits) - len(digits.rstrip("0"))
        if 0 < zeros < len(digits):
            step = 10.0**zeros
    unit, per = _unit_of(m.group("unit"))
    return Figure(m.group(0).strip(), abs(float(num)) * mult, step * mult / 2, unit, per)


def _blank(text: str, pattern: re.Pattern[str], keep_group: int | None = None) -> str:
    """``text`` with the matches of ``pattern`` replaced by spaces (keeping group ``keep_group``)."""

    def repl(m: re.Match[str]) -> str:
        if keep_group is None:
            return " " * len(m.group(0))
        kept = m.group(keep_group)
        return kept + " " * (len(m.group(0)) - len(kept))

    return pattern.sub(repl, text)


def _prose(markdown: str) -> str:
    """The text figures are looked for in: code, URLs, versions and numbering blanked out."""
    text = _blank(markdown, _FENCE)
    text = _blank(text, _INLINE_CODE)
    text = _blank(text, _URL)
    text = _blank(text, _VERSION)
    text = _blank(text, _LIST_NUMBER, keep_group=1)
    text = _blank(text, _HEADING_NUMBER, keep_group=1)
    text = _blank(text, _ROW_NUMBER, keep_group=1)
    return _blank(text, _LABELLED_NUMBER)


def _dates_and_times(text: str) -> tuple[list[tuple[str, str | None]], str]:
    """(date, time-or-None) pairs and bare times found in ``text``, and the text without them."""
    found: list[tuple[str, str | None]] = []
    for m in _DATE.finditer(text):
        found.append((m.group(1), m.group(2)))
    text = _blank(text, _DATE)
    for m in _TIME.finditer(text):
        found.append(("", m.group(1)))
    return found, _blank(text, _TIME)


def figures_in_text(markdown: str) -> tuple[list[Figure], list[tuple[str, str | None]]]:
    """The figures of ``markdown`` and its dates and times, as :func:`check_answer` sees them."""
    stamps, text = _dates_and_times(_prose(markdown))
    figures = [
        _parse(m, bool(_APPROX.search(text[max(0, m.start() - 24) : m.start()]))) for m in _NUMBER.finditer(text)
    ]
    return figures, stamps


def _walk(value: Any) -> Iterable[Any]:
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield k
            yield from _walk(v)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            yield from _walk(v)
    else:
        yield value


def _norm_time(t: str) -> str:
    hh, rest = t.split(":", 1)
    return f"{int(hh):02d}:{rest}"


class _Support:
    """Everything in the facts a figure, a date or a time can be supported by."""

    def __init__(self, facts: Any, extra_text: Iterable[str]) -> None:
        self.facts: list[_Fact] = [_Fact(v, None) for v in _TRIVIAL]
        self.dates: set[str] = set()
        self.times: set[str] = set()
        for leaf in _walk(facts):
            if isinstance(leaf, bool) or leaf is None:
                continue
            if isinstance(leaf, int | float):
                if math.isfinite(leaf):
                    self._add_number(float(leaf))
            elif isinstance(leaf, str):
                self._add_text(leaf)
        for text in extra_text:
            self._add_text(text)

    def _add_number(self, value: float) -> None:
        self.facts.append(_Fact(abs(value), None))
        if _EPOCH_RANGE[0] <= value <= _EPOCH_RANGE[1]:
            at = datetime.fromtimestamp(value, tz=UTC)
            self.dates.add(at.strftime("%Y-%m-%d"))
            self.times.update((at.strftime("%H:%M"), at.strftime("%H:%M:%S")))

    def _add_text(self, text: str) -> None:
        for date, time in _DATE.findall(text):
            self.dates.add(date)
            if time:
                self._add_time(time)
        for time in _TIME.findall(text):
            self._add_time(time)
        for m in _FACT_NUMBER.finditer(text):
            unit, per = _unit_of(m.group("unit"))
            num = m.group("num").replace(",", "")
            value = float(num) * _MULTIPLIERS.get(m.group("mult") or "", 1.0)
            self.facts.append(_Fact(value, unit, per))
            if unit is not None or m.group("mult"):  # the bare number too, e.g. "412" of "412 ms"
                self.facts.append(_Fact(float(num), None))

    def _add_time(self, time: str) -> None:
        t = _norm_time(time)
        self.times.add(t)
        self.times.add(t[:5])

    def candidates(self, figure: Figure) -> Iterable[float]:
        for f in self.facts:
            if figure.unit == "%":
                if f.unit == "%":
                    yield f.value
                elif f.unit is None:
                    yield f.value
                    yield f.value * 100
            elif figure.unit == "time":
                if f.unit == "time":
                    yield f.value * f.seconds_per_unit / figure.seconds_per_unit
                elif f.unit is None:
                    yield f.value
                    yield f.value / figure.seconds_per_unit
                    yield f.value * 0.001 / figure.seconds_per_unit
            else:
                yield f.value
                if f.unit == "%":
                    yield f.value / 100

    def supports(self, figure: Figure) -> bool:
        slack = figure.tolerance * (1 + 1e-9) + 1e-12
        return any(abs(c - figure.value) <= slack for c in self.candidates(figure))

    def supports_stamp(self, date: str, time: str | None) -> bool:
        if date:
            return date in self.dates and (time is None or _norm_time(time) in self.times)
        if time is None or _norm_time(time) in self.times:
            return True
        # not a time of day in the facts: an elapsed time (T+1:30, 1:02:03) the facts give in seconds?
        parts = [int(p) for p in time.split(":")]
        elapsed = {parts[0] * 60 + parts[1]} if len(parts) == 2 else set()
        elapsed.add(parts[0] * 3600 + parts[1] * 60 + (parts[2] if len(parts) == 3 else 0))
        seconds = [f.value * f.seconds_per_unit if f.unit == "time" else f.value for f in self.facts if f.unit != "%"]
        return any(abs(sec - e) <= 0.5 for sec in seconds for e in elapsed)


def supported(text: str, facts: Any) -> list[str]:
    """The figures, dates and times of ``text`` that ``facts`` do not support (each once, in order)."""
    return _unsupported(text, _Support(facts, ()))


def _unsupported(text: str, support: _Support) -> list[str]:
    figures, stamps = figures_in_text(text)
    out: list[str] = []
    for date, time in stamps:
        if not support.supports_stamp(date, time):
            shown = " ".join(x for x in (date, time) if x)
            if shown not in out:
                out.append(shown)
    for figure in figures:
        if not support.supports(figure) and figure.text not in out:
            out.append(figure.text)
    return out


def _heading_key(text: str) -> str:
    t = text.strip().strip("#").strip()
    t = re.sub(r"^\d+(?:\.\d+)*[.)]?\s+", "", t)
    t = t.replace("*", "").replace("_", " ").strip().rstrip(":").strip()
    return re.sub(r"\s+", " ", t).casefold()


def _headings(markdown: str) -> list[str]:
    text = _blank(markdown, _FENCE)
    return [line[3:] for line in text.splitlines() if line.startswith("## ")]


def check_answer(kind: DraftKind | str, markdown: str, facts: Mapping[str, Any]) -> list[str]:
    """Problems with ``markdown`` as a draft of ``kind`` from ``facts``; empty when acceptable."""
    kind = DraftKind(kind)
    spec = DOCS[kind]
    problems: list[str] = []
    first = next((line for line in markdown.splitlines() if line.strip()), "")
    if not first.startswith("# ") or not first[2:].strip():
        problems.append("the answer does not start with a '# ' title line")

    found = [_heading_key(h) for h in _headings(markdown)]
    at = 0
    for section in spec.sections:
        key = _heading_key(section)
        if key in found[at:]:
            at = found.index(key, at) + 1
        elif key in found:
            problems.append(f"section '{section}' is out of order (the order is: {'; '.join(spec.sections)})")
        else:
            problems.append(f"missing section '{section}'")

    # the process figures every kind's instructions state (24 hours of watching, 30 minutes close
    # watching) are the team's practice, not facts about this deploy: allowed in any kind
    support = _Support(facts, (*(instructions(k) for k in DraftKind), spec.title, *spec.sections))
    for shown in _unsupported(markdown, support):
        problems.append(f"figure '{shown}' does not appear in the facts")
    return problems
