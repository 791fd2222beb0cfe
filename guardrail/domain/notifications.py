"""What guardrail tells people: pages, tickets and announcements, with one incident per deploy and rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    PAGE = "page"  # wakes on-call
    TICKET = "ticket"  # engineering queue
    INFO = "info"  # announcements, chat


class NoticeAction(StrEnum):
    TRIGGER = "trigger"  # open (or keep open) the incident ``key``
    RESOLVE = "resolve"  # close the incident ``key``
    ANNOUNCE = "announce"  # a message with no incident (deploy announcements)


@dataclass(frozen=True, slots=True)
class Link:
    href: str
    text: str


@dataclass(frozen=True, slots=True)
class Notice:
    """One notification, before routing. ``key`` identifies the incident: the same key is one
    incident in PagerDuty (dedup_key), one alert in Alertmanager (its labels), one thread of
    messages elsewhere."""

    key: str  # e.g. "guardrail:checkout:production:<deploy id>:canary-regression"
    action: NoticeAction
    severity: Severity
    summary: str  # one line, <= 1024 chars
    service: str
    environment: str
    deploy_id: str | None = None
    rule: str = ""  # e.g. "CanaryRegression", "HighErrorRate", "DeployAnnouncement"
    details: dict[str, Any] = field(default_factory=dict)  # figures and evidence, JSON-able
    links: tuple[Link, ...] = ()
    text: str = ""  # longer Markdown body (announcements, evidence)
    occurred_at: float = 0.0  # wall time


def incident_key(service: str, environment: str, deploy_id: str | None, rule: str) -> str:
    return f"guardrail:{service}:{environment}:{deploy_id or '-'}:{rule}"
