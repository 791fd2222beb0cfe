"""The rollout state machine: ``transition(deploy, event) -> (deploy, commands)``. Pure.

Every input (a step applied, a verdict, an operator's override, an adapter's result) is an event;
the answer is the new rollout state plus the commands to carry out. The service persists both in one
transaction *before* carrying out a command (an intent log), so a restart resumes where it stopped.

States and the main paths::

    pending --ApplyStep(0)--> analyzing(step i) --PASS, min duration--> ApplyStep(i+1) ... --> Finalize --> promoted
        any FAIL verdict (paused too) or a failed step --> rolling_back --Rollback--> rolled_back
        rollback failing max_rollback_attempts times --> rollback_failed (pages on-call)
        inconclusive at the end of the analysis window --> paused (hold for a human) or rolling_back
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from guardrail.domain.errors import ConflictError
from guardrail.domain.model import Decision, DeployState, Step

MAX_ROLLBACK_ATTEMPTS = 5


class CommandKind(StrEnum):
    APPLY_STEP = "apply_step"
    FINALIZE = "finalize"
    ROLLBACK = "rollback"


@dataclass(frozen=True, slots=True)
class Command:
    kind: CommandKind
    step: int | None = None
    reason: str = ""

    @property
    def key(self) -> str:
        """Identity of the action within a deploy: each is carried out once."""
        return f"{self.kind.value}:{self.step}" if self.step is not None else self.kind.value


@dataclass(frozen=True, slots=True)
class Rollout:
    """The engine's view of one deploy (persisted with it)."""

    steps: tuple[Step, ...]
    concurrent: bool  # canary and baseline side by side (else: pre-deploy window is the baseline)
    on_inconclusive: str = "hold"  # "hold" (pause for a human) or "rollback"
    state: DeployState = DeployState.PENDING
    step: int = -1  # index of the step in effect (-1: none yet)
    step_started_at: float | None = None  # data time the current step took effect
    traffic_started_at: float | None = None  # data time the new version first got traffic
    pending_step: int | None = None  # step being applied by the adapter
    rollback_attempts: int = 0
    reason: str = ""  # why paused / rolled back
    history: tuple[tuple[int, float], ...] = ()  # (step, data time it took effect), in order

    @property
    def last_step(self) -> int:
        return len(self.steps) - 1

    def carries_traffic(self, i: int) -> bool:
        s = self.steps[i]
        return s.weight is None or s.weight > 0

    def step_summary(self) -> str:
        """The step in effect in words: live ("step 1/3: 10% of traffic") or, once the deploy has
        left it, how it ended ("rolled back at step 1/3 (10% of traffic)")."""
        n = len(self.steps)
        if not 0 <= self.step < n:
            return f"no step yet (0/{n})"
        where, what = f"step {self.step + 1}/{n}", self.steps[self.step].describe()
        ended = {
            DeployState.ROLLING_BACK: "rolling back from",
            DeployState.ROLLED_BACK: "rolled back at",
            DeployState.ROLLBACK_FAILED: "rollback failed at",
            DeployState.PROMOTED: "promoted at",
        }.get(self.state)
        return f"{ended} {where} ({what})" if ended else f"{where}: {what}"


# --- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    at: float


@dataclass(frozen=True, slots=True)
class ActionDone:
    command: Command
    ok: bool
    at: float
    detail: str = ""


@dataclass(frozen=True, slots=True)
class VerdictReached:
    decision: Decision
    at: float  # data time of the evaluation
    summary: str = ""


@dataclass(frozen=True, slots=True)
class Override:
    action: str  # promote | promote_full | rollback | pause | resume
    who: str
    why: str
    at: float


Event = Start | ActionDone | VerdictReached | Override


def transition(r: Rollout, ev: Event) -> tuple[Rollout, list[Command]]:
    if isinstance(ev, Start):
        if r.state is not DeployState.PENDING or r.pending_step is not None:
            return r, []
        return replace(r, pending_step=0), [Command(CommandKind.APPLY_STEP, 0)]
    if isinstance(ev, ActionDone):
        return _action_done(r, ev)
    if isinstance(ev, VerdictReached):
        return _verdict(r, ev)
    return _override(r, ev)


def _rollback(r: Rollout, reason: str) -> tuple[Rollout, list[Command]]:
    if r.state in (DeployState.ROLLING_BACK, DeployState.ROLLED_BACK):
        return r, []  # never twice
    return replace(r, state=DeployState.ROLLING_BACK, reason=reason, pending_step=None), [
        Command(CommandKind.ROLLBACK, reason=reason)
    ]


def _action_done(r: Rollout, ev: ActionDone) -> tuple[Rollout, list[Command]]:
    cmd = ev.command
    if cmd.kind is CommandKind.ROLLBACK:
        if ev.ok:
            return replace(r, state=DeployState.ROLLED_BACK), []
        attempts = r.rollback_attempts + 1
        if attempts >= MAX_ROLLBACK_ATTEMPTS:
            return replace(r, state=DeployState.ROLLBACK_FAILED, rollback_attempts=attempts), []
        return replace(r, rollback_attempts=attempts), [Command(CommandKind.ROLLBACK, reason=r.reason)]
    if r.state in (DeployState.ROLLING_BACK, DeployState.ROLLED_BACK, DeployState.ROLLBACK_FAILED):
        return r, []  # a late result of a forward action changes nothing once rolling back
    if cmd.kind is CommandKind.FINALIZE:
        if ev.ok:
            return replace(r, state=DeployState.PROMOTED, pending_step=None), []
        return _rollback(r, f"promotion failed: {ev.detail}")
    # APPLY_STEP
    if not ev.ok:
        n = (cmd.step or 0) + 1  # people count steps from 1, as the timeline does ("step 1/3")
        return _rollback(r, f"step {n}/{len(r.steps)} ({r.steps[cmd.step or 0].describe()}) failed: {ev.detail}")
    i = cmd.step if cmd.step is not None else 0
    state = DeployState.PAUSED if r.state is DeployState.PAUSED else DeployState.ANALYZING
    r = replace(
        r, state=state, step=i, step_started_at=ev.at, pending_step=None, history=(*r.history, (i, ev.at))
    )
    if r.traffic_started_at is None and r.carries_traffic(i):
        r = replace(r, traffic_started_at=ev.at)
    if state is DeployState.PAUSED:
        return r, []
    if i == r.last_step and r.concurrent:
        # all traffic is on the new version: nothing left to compare against
        return replace(r, pending_step=-1), [Command(CommandKind.FINALIZE)]
    if not r.carries_traffic(i) and r.steps[i].min_duration_s <= 0:
        return _advance(r)  # e.g. blue-green: green deployed, no traffic yet to judge
    return r, []


def _advance(r: Rollout) -> tuple[Rollout, list[Command]]:
    if r.pending_step is not None:
        return r, []
    if r.step >= r.last_step:
        return replace(r, pending_step=-1), [Command(CommandKind.FINALIZE)]
    return replace(r, pending_step=r.step + 1), [Command(CommandKind.APPLY_STEP, r.step + 1)]


def _verdict(r: Rollout, ev: VerdictReached) -> tuple[Rollout, list[Command]]:
    if r.state.terminal or r.state is DeployState.ROLLING_BACK:
        return r, []
    if ev.decision is Decision.FAIL:  # armed even while paused
        return _rollback(r, f"canary analysis failed: {ev.summary}")
    if r.state is not DeployState.ANALYZING or r.step < 0 or r.pending_step is not None:
        return r, []
    if ev.decision is Decision.INCONCLUSIVE:
        if r.on_inconclusive == "rollback":
            return _rollback(r, f"analysis inconclusive: {ev.summary}")
        return replace(
            r, state=DeployState.PAUSED, reason=f"analysis inconclusive, held for a human: {ev.summary}"
        ), []
    started = r.step_started_at if r.step_started_at is not None else ev.at
    if ev.decision is Decision.PASS and ev.at - started >= r.steps[r.step].min_duration_s:
        return _advance(r)
    return r, []


def _override(r: Rollout, ev: Override) -> tuple[Rollout, list[Command]]:
    a = ev.action
    if a == "rollback":
        if r.state in (DeployState.ROLLING_BACK, DeployState.ROLLED_BACK):
            raise ConflictError(f"deploy is already {r.state.value}")
        if r.state is DeployState.ROLLBACK_FAILED:  # a human retries a failed rollback
            r = replace(r, state=DeployState.ANALYZING, rollback_attempts=0)
        return _rollback(r, f"manual rollback by {ev.who}: {ev.why}")
    if r.state.terminal or r.state is DeployState.ROLLING_BACK:
        raise ConflictError(f"cannot {a} a deploy that is {r.state.value}")
    if a == "pause":
        if r.state is DeployState.PAUSED:
            raise ConflictError("deploy is already paused")
        return replace(r, state=DeployState.PAUSED, reason=f"paused by {ev.who}: {ev.why}"), []
    if a == "resume":
        if r.state is not DeployState.PAUSED:
            raise ConflictError(f"only a paused deploy can resume; it is {r.state.value}")
        state = DeployState.ANALYZING if r.step >= 0 else DeployState.PENDING
        r = replace(r, state=state, reason="")
        if r.step < 0 and r.pending_step is None:
            return transition(r, Start(ev.at))
        return r, []
    if a in ("promote", "promote_full"):
        if r.pending_step is not None:
            raise ConflictError("an adapter action is in progress; try again when it finishes")
        r = replace(r, state=DeployState.ANALYZING, reason="")
        if a == "promote_full" and r.step < r.last_step:
            # jump to the last step: concurrent strategies finalize right after it
            return replace(r, pending_step=r.last_step), [Command(CommandKind.APPLY_STEP, r.last_step)]
        return _advance(r)
    raise ConflictError(f"unknown action {a!r}; known: promote, promote_full, rollback, pause, resume")
