"""Deploy policy checked when a marker is recorded: deployment windows and the pre-deployment
checklist. Pure: the time of the deploy is a parameter, no clock is read and nothing is fetched.

Checks, in the order they are listed in a result:

==========================  =====================================================================
check                       fails when
==========================  =====================================================================
fast_track                  a fast-track reason is given for a change type that may not use one
                            (always ``block``, never overridden)
freeze                      the deploy time is inside a freeze range (start inclusive, end exclusive)
friday_afternoon            it is Friday at or after the Friday start time in any team time zone
                            (the policy's zone when no teams are listed)
peak_hours                  the local time is inside a peak-hours range (weekday + time range, its zone)
team_hours                  the deploy is outside the working hours of *every* listed team (nobody is
                            around to watch it); skipped when no teams are listed
tests_passed ...            a checklist item CI did not answer or answered false; see :data:`CHECKLIST`
==========================  =====================================================================

Items guardrail verifies itself (``monitoring_configured``, ``rollback_configured`` and, when the
caller knows it, ``oncall_available``) come from :class:`PolicyFacts`: they pass only when guardrail
sees the thing configured and CI did not answer false. ``migrations_tested_on_staging`` only applies
to markers with ``db_migrations``.

Each check has an action: ``off`` (listed as skipped), ``warn`` or ``block``. **Precedence** of the
actions for one marker: everything starts ``off``; when the environment matches one of
``Policy.environments`` (shell-style globs, e.g. ``prod*``) the base actions apply; then every rule
whose environment globs and change types match is applied, least specific first, each overriding
only the checks it names. Specificity is ordered by the environment first (an exact name beats a
glob, a glob beats "every environment"), then by change types (a rule naming change types beats one
that does not); between equally specific rules the later one in the list wins.

A fast-tracked marker (a reason in ``fast_track`` and a change type in
``fast_track_change_types``) turns every ``block`` into ``overridden``: the check is still listed,
with the reason, and the deploy goes ahead.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo

from guardrail.domain.errors import ValidationError
from guardrail.domain.model import ChangeType
from guardrail.domain.records import Marker

Action = Literal["off", "warn", "block"]
Status = Literal["pass", "warn", "block", "overridden", "skipped"]
ACTIONS: tuple[Action, ...] = ("off", "warn", "block")

WINDOW_CHECKS = ("freeze", "friday_afternoon", "peak_hours", "team_hours")
# checklist items, in the order they are listed; the ones marked True guardrail verifies itself
CHECKLIST: dict[str, bool] = {
    "tests_passed": False,
    "review_approved": False,
    "migrations_tested_on_staging": False,
    "rollback_plan_documented": False,
    "rollback_configured": True,
    "monitoring_configured": True,
    "oncall_available": False,  # verified when PolicyFacts.has_oncall is known, else CI's answer
}
CHECKS = (*WINDOW_CHECKS, *CHECKLIST)
CHECKLIST_LABELS = {
    "tests_passed": "all tests pass in CI",
    "review_approved": "code review approved",
    "migrations_tested_on_staging": "database migrations tested on staging",
    "rollback_plan_documented": "rollback plan documented",
    "rollback_configured": "guardrail can roll this deploy back",
    "monitoring_configured": "monitoring configured",
    "oncall_available": "someone on call for post-deployment monitoring",
}
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FRIDAY = 4
DAY_S = 86_400
DEFAULT_FAST_TRACK = frozenset({ChangeType.SECURITY, ChangeType.BUGFIX})


def clock_text(seconds: int) -> str:
    """Seconds after midnight as ``HH:MM`` (``HH:MM:SS`` when not on a minute)."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}" + (f":{s:02d}" if s else "")


def days_text(days: frozenset[int]) -> str:
    ordered = sorted(days)
    if len(ordered) > 2 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{DAY_NAMES[ordered[0]][:3]}-{DAY_NAMES[ordered[-1]][:3]}"
    return ", ".join(DAY_NAMES[d][:3] for d in ordered)


def _zone_name(zone: tzinfo) -> str:
    return getattr(zone, "key", None) or str(zone)


def _local(at: float, zone: tzinfo) -> datetime:
    return datetime.fromtimestamp(at, tz=zone)


def _local_text(at: float, zone: tzinfo) -> str:
    t = _local(at, zone)
    return f"{DAY_NAMES[t.weekday()]} {t:%H:%M} {_zone_name(zone)}"


def _seconds_of_day(t: datetime) -> int:
    return t.hour * 3600 + t.minute * 60 + t.second


@dataclass(frozen=True, slots=True)
class WeeklyRange:
    """Local times ``[start_s, end_s)`` on the given weekdays (0 = Monday) in ``zone``. An ``end_s`` at
    or before ``start_s`` runs past midnight into the next day (the weekday is the day it starts)."""

    zone: tzinfo
    days: frozenset[int]
    start_s: int
    end_s: int

    def contains(self, at: float) -> bool:
        t = _local(at, self.zone)
        day, sec = t.weekday(), _seconds_of_day(t)
        if self.start_s < self.end_s:
            return day in self.days and self.start_s <= sec < self.end_s
        return (day in self.days and sec >= self.start_s) or ((day - 1) % 7 in self.days and sec < self.end_s)

    def describe(self) -> str:
        return f"{days_text(self.days)} {clock_text(self.start_s)}-{clock_text(self.end_s)} {_zone_name(self.zone)}"


@dataclass(frozen=True, slots=True)
class PeakHours:
    name: str
    hours: WeeklyRange


@dataclass(frozen=True, slots=True)
class Team:
    """A team (or on-call rotation) and its working hours, in its own time zone."""

    name: str
    hours: WeeklyRange


@dataclass(frozen=True, slots=True)
class Freeze:
    """No deploys from ``start`` (inclusive) until ``end`` (exclusive), both epoch seconds."""

    start: float
    end: float
    reason: str
    zone: tzinfo = UTC  # how the range is shown in details

    def describe(self) -> str:
        def show(ts: float) -> str:
            return f"{_local(ts, self.zone):%Y-%m-%d %H:%M %z}"

        return f"freeze {self.reason!r} ({show(self.start)} until {show(self.end)})"


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """Actions for markers whose environment matches one of ``environments`` (globs; empty or ``*``:
    every environment) and whose change type is in ``change_types`` (empty: every change type)."""

    actions: Mapping[str, Action]
    environments: tuple[str, ...] = ()
    change_types: frozenset[ChangeType] = frozenset()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.actions) - set(CHECKS))
        if unknown:
            raise ValidationError(
                f"unknown policy check(s) {unknown}; known: {', '.join(CHECKS)}", field="actions"
            )
        bad = {k: v for k, v in self.actions.items() if v not in ACTIONS}
        if bad:
            raise ValidationError(f"actions must be one of {', '.join(ACTIONS)}, got {bad}", field="actions")

    def matches(self, environment: str, change_type: ChangeType) -> bool:
        envs = self.environments or ("*",)
        return any(fnmatch.fnmatchcase(environment, g) for g in envs) and (
            not self.change_types or change_type in self.change_types
        )

    def specificity(self, environment: str) -> tuple[int, int]:
        """(environment: 2 exact name, 1 glob, 0 every environment; 1 when change types are named)."""
        matching = [g for g in self.environments if fnmatch.fnmatchcase(environment, g)]
        if any(g == environment for g in matching):
            env = 2
        elif any(g.strip("*") for g in matching):
            env = 1
        else:
            env = 0
        return env, 1 if self.change_types else 0


def default_actions() -> dict[str, Action]:
    """The base actions of the default policy: everything warns, nothing blocks."""
    return {name: "warn" for name in CHECKS}


@dataclass(frozen=True, slots=True)
class Policy:
    enabled: bool = True
    environments: tuple[str, ...] = ("prod*",)  # where the base actions apply
    base: Mapping[str, Action] = field(default_factory=default_actions)
    rules: tuple[PolicyRule, ...] = ()
    zone: tzinfo = UTC  # Friday afternoon is judged here when no teams are listed
    friday_start_s: int = 12 * 3600
    teams: tuple[Team, ...] = ()
    peak_hours: tuple[PeakHours, ...] = ()
    freezes: tuple[Freeze, ...] = ()
    fast_track_change_types: frozenset[ChangeType] = DEFAULT_FAST_TRACK

    def __post_init__(self) -> None:
        PolicyRule(self.base)  # validates the names and actions
        if not 0 <= self.friday_start_s < DAY_S:
            raise ValidationError(
                f"friday_start_s must be 0 to 86399 seconds after midnight, got {self.friday_start_s}",
                field="friday_start_s",
            )

    def actions_for(self, environment: str, change_type: ChangeType) -> dict[str, tuple[Action, str]]:
        """check -> (action, where it comes from), after the precedence in the module docstring."""
        out: dict[str, tuple[Action, str]] = {name: ("off", "no rule applies") for name in CHECKS}
        if any(fnmatch.fnmatchcase(environment, g) for g in self.environments):
            envs = ", ".join(self.environments)
            out.update({k: (v, f"policy for {envs}") for k, v in self.base.items()})
        matching = [(r.specificity(environment), i, r) for i, r in enumerate(self.rules)]
        for _, i, rule in sorted(m for m in matching if m[2].matches(environment, change_type)):
            envs = ", ".join(rule.environments) or "*"
            types = ", ".join(sorted(t.value for t in rule.change_types)) or "any change type"
            out.update({k: (v, f"rules[{i}] ({envs}; {types})") for k, v in rule.actions.items()})
        return out


@dataclass(frozen=True, slots=True)
class PolicyFacts:
    """What guardrail itself knows about a deploy (see :func:`derive_facts`)."""

    monitoring_configured: bool
    rollback_configured: bool
    has_oncall: bool | None = None  # None: guardrail cannot tell; CI's checklist answer counts
    monitoring_note: str = ""  # why, in words
    rollback_note: str = ""
    oncall_note: str = ""


def derive_facts(
    marker: Marker,
    *,
    prometheus_configured: bool,
    adapter_type: str,
    has_oncall: bool | None = None,
    oncall_note: str = "",
) -> PolicyFacts:
    """Facts from the server's settings: pushed metrics are always possible, pulled ones need a
    Prometheus URL; an adapter other than ``noop`` can roll back."""
    if marker.metrics_source == "prometheus":
        monitoring = prometheus_configured
        m_note = (
            "metrics are pulled from the configured Prometheus"
            if monitoring
            else "the marker asks for metrics from Prometheus but prometheus.url is not set"
        )
    else:
        monitoring, m_note = True, "metrics are pushed to guardrail"
    rollback = adapter_type != "noop"
    r_note = (
        f"adapter {marker.adapter.name!r} ({adapter_type}) can roll back"
        if rollback
        else f"adapter {marker.adapter.name!r} is noop: guardrail cannot roll back"
    )
    return PolicyFacts(monitoring, rollback, has_oncall, m_note, r_note, oncall_note)


@dataclass(frozen=True, slots=True)
class PolicyCheck:
    name: str
    status: Status
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class PolicyResult:
    checks: tuple[PolicyCheck, ...]
    blocked: bool
    fast_tracked: bool

    @property
    def blocking(self) -> tuple[PolicyCheck, ...]:
        return tuple(c for c in self.checks if c.status == "block")

    def summary(self) -> str:
        """One sentence for a 4xx/409 response or the timeline."""
        if self.blocked:
            return "deploy blocked by policy: " + "; ".join(c.detail for c in self.blocking)
        warned = [c.name for c in self.checks if c.status == "warn"]
        overridden = [c.name for c in self.checks if c.status == "overridden"]
        parts = []
        if overridden:
            parts.append(f"fast-tracked past {', '.join(overridden)}")
        if warned:
            parts.append(f"warnings: {', '.join(warned)}")
        return "deploy policy passed" + (f" ({'; '.join(parts)})" if parts else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "blocked": self.blocked,
            "fast_tracked": self.fast_tracked,
            "summary": self.summary(),
            "checks": [c.to_dict() for c in self.checks],
        }


# --- evaluation ------------------------------------------------------------------------------------


def _zones(policy: Policy) -> list[tzinfo]:
    zones: list[tzinfo] = []
    for team in policy.teams:
        if all(_zone_name(z) != _zone_name(team.hours.zone) for z in zones):
            zones.append(team.hours.zone)
    return zones or [policy.zone]


def _freeze(policy: Policy, at: float) -> tuple[bool | None, str]:
    if not policy.freezes:
        return None, "no freeze ranges are configured (policy.freezes)"
    hits = [f for f in policy.freezes if f.start <= at < f.end]
    if hits:
        when = _local_text(at, hits[0].zone)
        return True, f"{when} is inside the " + " and the ".join(f.describe() for f in hits)
    return False, f"{_local_text(at, UTC)} is outside every freeze range ({len(policy.freezes)} configured)"


def _friday(policy: Policy, at: float) -> tuple[bool, str]:
    start = clock_text(policy.friday_start_s)
    zones = _zones(policy)
    hits = [
        z for z in zones
        if _local(at, z).weekday() == FRIDAY and _seconds_of_day(_local(at, z)) >= policy.friday_start_s
    ]
    if hits:
        shown = ", ".join(_local_text(at, z) for z in hits)
        verb = "is" if len(hits) == 1 else "are"
        return True, f"{shown} {verb} inside the Friday-afternoon window (from {start})"
    shown = ", ".join(_local_text(at, z) for z in zones)
    return False, f"{shown}: not Friday afternoon (from {start})"


def _peak(policy: Policy, at: float) -> tuple[bool | None, str]:
    if not policy.peak_hours:
        return None, "no peak hours are configured (policy.peak_hours)"
    hits = [p for p in policy.peak_hours if p.hours.contains(at)]
    if hits:
        return True, "; ".join(
            f"{_local_text(at, p.hours.zone)} is inside peak hours {p.name!r} ({p.hours.describe()})" for p in hits
        )
    return False, f"{_local_text(at, UTC)} is outside all {len(policy.peak_hours)} peak-hours range(s)"


def _team_hours(policy: Policy, at: float) -> tuple[bool | None, str]:
    if not policy.teams:
        return None, "no team time zones are configured (policy.teams)"
    on = [t for t in policy.teams if t.hours.contains(at)]
    if on:
        names = ", ".join(f"{t.name} ({_local_text(at, t.hours.zone)})" for t in on)
        return False, f"within working hours of {names}"
    every = "; ".join(f"{t.name}: {_local_text(at, t.hours.zone)}, works {t.hours.describe()}" for t in policy.teams)
    return True, f"outside the working hours of every team ({every}): have the team available for monitoring"


def _checklist_item(name: str, marker: Marker, facts: PolicyFacts) -> tuple[bool | None, str]:
    """(failed, why); failed None: the item does not apply."""
    label = CHECKLIST_LABELS[name]
    answer = marker.checklist.get(name)
    ci_no = answer is False
    if name == "migrations_tested_on_staging" and not marker.db_migrations:
        return None, f"{label}: the marker has no database migrations"
    verified: tuple[bool, str] | None = None
    if name == "monitoring_configured":
        verified = facts.monitoring_configured, facts.monitoring_note
    elif name == "rollback_configured":
        verified = facts.rollback_configured, facts.rollback_note
    elif name == "oncall_available" and facts.has_oncall is not None:
        verified = facts.has_oncall, facts.oncall_note
    if verified is not None:
        ok, note = verified
        note = f" ({note})" if note else ""
        if not ok:
            return True, f"{label}: not met, verified by guardrail{note}"
        if ci_no:
            return True, f"{label}: CI answered false (guardrail found it configured{note})"
        return False, f"{label}: verified by guardrail{note}"
    if answer is None:
        return True, f"{label}: CI did not answer (checklist.{name} is missing)"
    if ci_no:
        return True, f"{label}: CI answered false"
    return False, f"{label}: CI answered true"


def evaluate_policy(marker: Marker, policy: Policy, *, at: float, facts: PolicyFacts) -> PolicyResult:
    """Check ``marker`` deployed at ``at`` (epoch seconds, data time) against ``policy``."""
    if not policy.enabled:
        return PolicyResult((PolicyCheck("policy", "skipped", "deploy policy is disabled"),), False, False)
    ctype = marker.change_type
    where = f"{marker.environment} {ctype.value} deploys"
    checks: list[PolicyCheck] = []

    fast_track = marker.fast_track.strip()
    fast_tracked = False
    if fast_track:
        types = ", ".join(sorted(t.value for t in policy.fast_track_change_types))
        allowed = f"only {types} changes may" if types else "no change type may"
        if ctype in policy.fast_track_change_types:
            fast_tracked = True
            checks.append(PolicyCheck(
                "fast_track", "pass",
                f"fast-track requested for a {ctype.value} change: {fast_track!r}; blocking checks are overridden",
            ))
        else:
            checks.append(PolicyCheck(
                "fast_track", "block",
                f"fast-track requested for a {ctype.value} change ({fast_track!r}), but {allowed} be "
                "fast-tracked (policy.fast_track_change_types)",
            ))

    actions = policy.actions_for(marker.environment, ctype)
    outcomes: list[tuple[str, bool | None, str]] = [
        ("freeze", *_freeze(policy, at)),
        ("friday_afternoon", *_friday(policy, at)),
        ("peak_hours", *_peak(policy, at)),
        ("team_hours", *_team_hours(policy, at)),
    ]
    outcomes += [(name, *_checklist_item(name, marker, facts)) for name in CHECKLIST]

    for name, failed, detail in outcomes:
        action, source = actions[name]
        if action == "off":
            checks.append(PolicyCheck(name, "skipped", f"not checked for {where} ({source}); {detail}"))
        elif failed is None:
            checks.append(PolicyCheck(name, "skipped", f"does not apply: {detail}"))
        elif not failed:
            checks.append(PolicyCheck(name, "pass", detail))
        else:
            rule = f"rule: {action} for {where}, from {source}"
            if action == "block" and fast_tracked:
                checks.append(PolicyCheck(
                    name, "overridden", f"{detail}; {rule}; overridden by fast-track: {fast_track!r}"
                ))
            else:
                checks.append(PolicyCheck(name, action, f"{detail}; {rule}"))
    blocked = any(c.status == "block" for c in checks)
    return PolicyResult(tuple(checks), blocked, fast_tracked)


def zone_or_error(name: str) -> ZoneInfo:
    """A ZoneInfo for an IANA name, or a ValueError (pydantic turns it into a config error naming the
    key) that says how to write one."""
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        raise ValueError(
            f"{name!r} is not a known time zone; write an IANA name such as UTC, Europe/Berlin or "
            "America/New_York (see /usr/share/zoneinfo)"
        ) from None
