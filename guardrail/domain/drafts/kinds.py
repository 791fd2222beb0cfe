"""The documents guardrail drafts, each following the structure of the lesson's prompt templates
(`deployment-process.txt`, "AI Prompts for Deployment"), in guardrail's own words.

``sections`` are the Markdown ``##`` headings a draft must have, in order; an LLM's answer missing
one is refused and the offline rendering is used. ``instructions`` is what the LLM is asked to do
with the facts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from guardrail.domain.errors import ValidationError


class DraftKind(StrEnum):
    CHECKLIST_PRE = "checklist-pre"  # pre-deployment checklist, with what guardrail can verify ticked
    CHECKLIST_DAY = "checklist-day"  # deployment-day checklist
    CHECKLIST_POST = "checklist-post"  # post-deployment checklist
    ANNOUNCEMENT = "announcement"  # before the deploy
    COMPLETION = "completion"  # after, with measured error rate, response time, throughput
    ROLLBACK_PLAN = "rollback-plan"
    ROLLBACK_TEST = "rollback-test"
    MONITORING_PLAN = "monitoring-plan"
    SMOKE_TESTS = "smoke-tests"
    MIGRATION_PLAN = "migration-plan"
    TRIAGE = "triage"  # "production errors after deploy"
    POSTMORTEM = "postmortem"


@dataclass(frozen=True, slots=True)
class DocSpec:
    kind: DraftKind
    title: str
    sections: tuple[str, ...]
    instructions: str


_COMMON = (
    "Write Markdown. Use only the facts given; where a fact is missing, write 'unknown' or leave a "
    "placeholder like [owner] for people to fill in. Do not invent figures, names, times or causes. "
    "Start with a '# ' title line, then use exactly these '## ' section headings, in this order: "
)

DOCS: dict[DraftKind, DocSpec] = {
    d.kind: d
    for d in (
        DocSpec(
            DraftKind.CHECKLIST_PRE,
            "Pre-deployment checklist",
            ("Change", "Verified by guardrail", "For people to confirm", "Backups", "Deployment steps",
             "Verification", "Rollback"),
            "Draft the checklist to go through before this deploy. Tick ([x]) only what the facts show "
            "as verified (policy checks that passed, monitoring configured, a rollback adapter set up); "
            "leave the rest unticked ([ ]) for people.",
        ),
        DocSpec(
            DraftKind.CHECKLIST_DAY,
            "Deployment-day checklist",
            ("Before the first step", "During the rollout", "After promotion"),
            "Draft the checklist for the day of the deploy: announce, staging and smoke tests, sign-off, "
            "each rollout step with how long guardrail watches it, the 30 minutes of close watching, "
            "the success update.",
        ),
        DocSpec(
            DraftKind.CHECKLIST_POST,
            "Post-deployment checklist",
            ("Watch", "Follow-up", "Improvements"),
            "Draft the checklist for after the deploy: 24 hours of watching with the figures to watch, "
            "team feedback, issues to document, improvements to plan.",
        ),
        DocSpec(
            DraftKind.ANNOUNCEMENT,
            "Deploy announcement",
            ("What", "When", "Expected impact", "Rollback", "Monitoring"),
            "Draft the short message posted to the team before the deploy: what is deployed, when, the "
            "expected impact, how fast it can be rolled back, where to watch.",
        ),
        DocSpec(
            DraftKind.COMPLETION,
            "Deploy completion update",
            ("Result", "Measured", "Next"),
            "Draft the message posted after the deploy with the measured error rate, response time and "
            "throughput of the new version against the old, and what happens next.",
        ),
        DocSpec(
            DraftKind.ROLLBACK_PLAN,
            "Rollback plan",
            ("Why", "What to roll back first", "Database changes", "Verification after rollback",
             "Communication"),
            "Draft the rollback plan: the order of steps (traffic first, then code, config, data), how to "
            "handle the database changes, how to verify the rollback worked, who to tell and what to say.",
        ),
        DocSpec(
            DraftKind.ROLLBACK_TEST,
            "Rollback test procedure",
            ("Checklist", "Commands", "Expected rollback time", "Verification", "Communication template"),
            "Draft the procedure to rehearse this deploy's rollback before it happens: a checklist, the "
            "commands or API calls, the expected time, the checks after, a message template.",
        ),
        DocSpec(
            DraftKind.MONITORING_PLAN,
            "Post-deployment monitoring plan",
            ("Metrics to watch", "Alert thresholds", "How long", "Normal variation", "Signs that call for rollback"),
            "Draft the monitoring plan: which metrics, the thresholds, how long to watch actively, what "
            "normal variation looks like (from the baseline's own variation in the facts), and which "
            "signs call for a rollback.",
        ),
        DocSpec(
            DraftKind.SMOKE_TESTS,
            "Smoke-test plan",
            ("Critical flows", "New features and fixes", "Integration points", "Database operations",
             "External services"),
            "Draft smoke tests for this deploy covering critical user flows, what the change adds or "
            "fixes, integration points, database operations and external service connections.",
        ),
        DocSpec(
            DraftKind.MIGRATION_PLAN,
            "Database migration plan",
            ("Current state", "Expand", "Migrate data", "Contract", "Deployment order", "If a step fails"),
            "Draft an expand-migrate-contract plan for the database change with SQL for each step and "
            "the SQL that undoes it, the order of code and schema deploys, and what to do when a step "
            "fails. Mark SQL that people must adapt to their schema.",
        ),
        DocSpec(
            DraftKind.TRIAGE,
            "Production errors after deploy: triage",
            ("Severity", "Roll back or fix forward", "Suspect change", "Mitigation", "User communication"),
            "Assess the errors after this deploy: severity from the measured figures, whether to roll "
            "back or fix forward, which change is the likely cause, the immediate mitigation, and a "
            "message to users if needed.",
        ),
        DocSpec(
            DraftKind.POSTMORTEM,
            "Post-mortem",
            ("Summary", "Impact", "Timeline", "Detection", "What went well", "What went wrong",
             "Where we got lucky", "Action items", "Lessons"),
            "Write a blameless post-mortem: a summary; the impact (duration, share of traffic on the new "
            "version, error budget burned); the timeline from the deploy's events; how it was detected "
            "(how fast, by which metric and evidence); what went well, what went wrong, where we got "
            "lucky; action items with owners left blank; lessons. Describe systems and decisions, never "
            "blame people.",
        ),
    )
}


def doc_spec(kind: DraftKind | str) -> DocSpec:
    try:
        return DOCS[DraftKind(kind)]
    except ValueError:
        known = ", ".join(k.value for k in DraftKind)
        raise ValidationError(f"no document kind {kind!r}; known: {known}", field="kind") from None


def instructions(kind: DraftKind) -> str:
    spec = DOCS[kind]
    return f"{spec.instructions}\n\n{_COMMON}" + "; ".join(spec.sections) + "."
