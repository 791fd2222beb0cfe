"""The ranges input must fall in before anything is stored (docs/hardening.md, "Input limits").

Pure: the caller passes the clock's reading (``now``) where a limit is relative to it. Every check
raises :class:`~guardrail.domain.errors.ValidationError` naming the field and what is accepted; the
offending value is not echoed for text (it may be long, or forge a log line), only for numbers.
"""

from __future__ import annotations

import unicodedata

from guardrail.domain.errors import ValidationError

INT64_MAX = 2**63 - 1  # counts: what PostgreSQL's BIGINT and SQLite's INTEGER hold
MAX_TIMESTAMP = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the last second a datetime can show
DAY_S = 86_400.0
WINDOW_BEFORE_DEPLOY_S = 7 * DAY_S  # sample windows may start this long before the deploy's start
WINDOW_AFTER_DEPLOY_S = 30 * DAY_S  # ... and end this long after it
MAX_WINDOW_S = DAY_S  # one sample window spans at most this long
MAX_AHEAD_S = DAY_S  # a marker's times may be this far ahead of the server's clock (clock skew)

# control characters (C0, DEL, C1), format characters (bidi overrides, zero-width), line and
# paragraph separators: each can forge a log line, a label value or what a page shows
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})

CONTROL_HELP = (
    "must not contain control characters (newline, carriage return, tab, escape, NUL, "
    "U+2028 and the like): send printable text"
)
DASH_HELP = "must not start with '-' (a deploy script would read it as a command-line option)"


def has_control(text: str) -> bool:
    """Whether ``text`` holds a character that has no business in a name or a log line."""
    return not text.isprintable() and any(unicodedata.category(c) in _FORBIDDEN_CATEGORIES for c in text)


def identifier_problem(text: str, *, dash: bool = True) -> str | None:
    """Why ``text`` cannot be an identifier (service, environment, version, commit, ...), or None.
    ``dash``: also refuse a leading '-' (values that reach a deploy command's arguments)."""
    if has_control(text):
        return CONTROL_HELP
    if dash and text.strip().startswith("-"):
        return DASH_HELP
    return None


def check_not_ahead(value: float | None, *, now: float, field: str) -> None:
    """A marker's data time (``started_at``, ``commit_time``) at most :data:`MAX_AHEAD_S` after the
    server's clock."""
    if value is not None and value > now + MAX_AHEAD_S:
        raise ValidationError(
            f"{field} ({value:.0f}) is more than {MAX_AHEAD_S / DAY_S:.0f} day after the server's clock "
            f"({now:.0f}): send the deploy's real start time, as unix seconds or RFC3339 with an offset",
            field=field,
        )


def check_window(start: float, end: float, *, deploy_start: float) -> None:
    """A sample window within :data:`WINDOW_BEFORE_DEPLOY_S` before and :data:`WINDOW_AFTER_DEPLOY_S`
    after the deploy's start (its data time), and at most :data:`MAX_WINDOW_S` long."""
    earliest = deploy_start - WINDOW_BEFORE_DEPLOY_S
    latest = deploy_start + WINDOW_AFTER_DEPLOY_S
    if start < earliest:
        raise ValidationError(
            f"start ({start:.0f}) is more than {WINDOW_BEFORE_DEPLOY_S / DAY_S:.0f} days before the deploy's "
            f"start ({deploy_start:.0f}): windows must lie between {earliest:.0f} and {latest:.0f}",
            field="start",
        )
    if end > latest:
        which, value = ("start", start) if start > latest else ("end", end)
        raise ValidationError(
            f"{which} ({value:.0f}) is more than {WINDOW_AFTER_DEPLOY_S / DAY_S:.0f} days after the deploy's "
            f"start ({deploy_start:.0f}): windows must lie between {earliest:.0f} and {latest:.0f}",
            field=which,
        )
    if end - start > MAX_WINDOW_S:
        raise ValidationError(
            f"a window spans at most {MAX_WINDOW_S:.0f} s (one day), this one {end - start:.0f} s: "
            "send windows of the analysis interval",
            field="end",
        )
