"""The rollout state machine: paths per strategy, overrides, and invariants under random events."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrail.domain.errors import ConflictError
from guardrail.domain.model import Decision, DeployState, Strategy, default_steps
from guardrail.domain.rollout import (
    MAX_ROLLBACK_ATTEMPTS,
    ActionDone,
    Command,
    CommandKind,
    Override,
    Rollout,
    Start,
    VerdictReached,
    transition,
)


def canary() -> Rollout:
    return Rollout(steps=default_steps(Strategy.CANARY), concurrent=True)


def drive(r: Rollout, events):
    commands = []
    for ev in events:
        r, cmds = transition(r, ev)
        commands.extend(cmds)
    return r, commands


def done(cmd: Command, at: float = 0.0, ok: bool = True) -> ActionDone:
    return ActionDone(cmd, ok, at, "")


def test_canary_walks_10_50_100_then_promotes():
    r, cmds = transition(canary(), Start(0))
    assert cmds == [Command(CommandKind.APPLY_STEP, 0)]
    r, cmds = transition(r, done(cmds[0], 0))
    assert r.state is DeployState.ANALYZING and r.step == 0 and cmds == []
    r, cmds = transition(r, VerdictReached(Decision.PASS, 100))
    assert cmds == []  # 300 s minimum at 10% not reached yet
    r, cmds = transition(r, VerdictReached(Decision.PASS, 300))
    assert cmds == [Command(CommandKind.APPLY_STEP, 1)]
    r, cmds = transition(r, done(cmds[0], 300))
    r, cmds = transition(r, VerdictReached(Decision.PASS, 600))
    assert cmds == [Command(CommandKind.APPLY_STEP, 2)]
    r, cmds = transition(r, done(cmds[0], 600))
    assert cmds == [Command(CommandKind.FINALIZE)]  # 100%: nothing left to compare against
    r, cmds = transition(r, done(cmds[0], 600))
    assert r.state is DeployState.PROMOTED
    assert [s for s, _ in r.history] == [0, 1, 2]


def test_continue_never_promotes():
    r, cmds = drive(canary(), [Start(0)])
    r, _ = transition(r, done(cmds[0]))
    r, cmds = drive(r, [VerdictReached(Decision.CONTINUE, t) for t in range(0, 5000, 100)])
    assert cmds == [] and r.state is DeployState.ANALYZING


def test_fail_rolls_back_once_even_if_it_fails_again():
    r, cmds = drive(canary(), [Start(0)])
    r, _ = transition(r, done(cmds[0]))
    r, cmds = transition(r, VerdictReached(Decision.FAIL, 50, "errors x3"))
    assert r.state is DeployState.ROLLING_BACK and cmds == [Command(CommandKind.ROLLBACK, reason=r.reason)]
    r, again = transition(r, VerdictReached(Decision.FAIL, 60))
    assert again == []  # no double rollback
    r, _ = transition(r, done(cmds[0]))
    assert r.state is DeployState.ROLLED_BACK


def test_failed_rollback_is_retried_then_reported():
    r, cmds = drive(canary(), [Start(0)])
    r, _ = transition(r, done(cmds[0]))
    r, cmds = transition(r, VerdictReached(Decision.FAIL, 50))
    for attempt in range(1, MAX_ROLLBACK_ATTEMPTS):
        r, cmds = transition(r, done(cmds[0], ok=False))
        assert r.rollback_attempts == attempt and cmds and cmds[0].kind is CommandKind.ROLLBACK
    r, cmds = transition(r, done(cmds[0], ok=False))
    assert r.state is DeployState.ROLLBACK_FAILED and cmds == []
    r, cmds = transition(r, Override("rollback", "alice", "retry by hand", 99))
    assert r.state is DeployState.ROLLING_BACK and cmds[0].kind is CommandKind.ROLLBACK


def test_failed_step_rolls_back():
    r, cmds = drive(canary(), [Start(0)])
    r, cmds = transition(r, done(cmds[0], ok=False))
    assert r.state is DeployState.ROLLING_BACK and cmds[0].kind is CommandKind.ROLLBACK


def test_inconclusive_holds_for_a_human_or_rolls_back_by_policy():
    r, cmds = drive(canary(), [Start(0)])
    r, _ = transition(r, done(cmds[0]))
    held, _ = transition(r, VerdictReached(Decision.INCONCLUSIVE, 1800, "not enough traffic"))
    assert held.state is DeployState.PAUSED and "not enough traffic" in held.reason
    strict = Rollout(steps=default_steps(Strategy.CANARY), concurrent=True, on_inconclusive="rollback")
    s, cmds = drive(strict, [Start(0)])
    s, _ = transition(s, done(cmds[0]))
    s, cmds = transition(s, VerdictReached(Decision.INCONCLUSIVE, 1800))
    assert s.state is DeployState.ROLLING_BACK


def test_pause_blocks_promotion_but_not_rollback():
    r, cmds = drive(canary(), [Start(0)])
    r, _ = transition(r, done(cmds[0]))
    r, _ = transition(r, Override("pause", "bob", "watching a dashboard", 10))
    r, cmds = transition(r, VerdictReached(Decision.PASS, 1000))
    assert cmds == [] and r.state is DeployState.PAUSED
    r, cmds = transition(r, VerdictReached(Decision.FAIL, 1010))
    assert r.state is DeployState.ROLLING_BACK


def test_resume_and_manual_promotions():
    r, cmds = drive(canary(), [Start(0)])
    r, _ = transition(r, done(cmds[0]))
    r, _ = transition(r, Override("pause", "bob", "x", 10))
    r, _ = transition(r, Override("resume", "bob", "ok", 20))
    assert r.state is DeployState.ANALYZING
    r, cmds = transition(r, Override("promote", "bob", "looks fine", 30))
    assert cmds == [Command(CommandKind.APPLY_STEP, 1)]
    with pytest.raises(ConflictError):
        transition(r, Override("promote", "bob", "twice", 31))  # the step is still being applied
    r, _ = transition(r, done(cmds[0]))
    r, cmds = transition(r, Override("promote_full", "bob", "ship it", 40))
    assert cmds == [Command(CommandKind.APPLY_STEP, 2)]


def test_overrides_on_finished_deploys_are_conflicts():
    r = Rollout(steps=default_steps(Strategy.CANARY), concurrent=True, state=DeployState.ROLLED_BACK)
    for action in ("promote", "pause", "resume", "rollback"):
        with pytest.raises(ConflictError):
            transition(r, Override(action, "a", "b", 0))


def test_blue_green_deploys_green_then_watches_after_the_switch():
    r = Rollout(steps=default_steps(Strategy.BLUE_GREEN, watch_s=600), concurrent=False)
    r, cmds = drive(r, [Start(0)])
    r, cmds = transition(r, done(cmds[0], 0))
    assert cmds == [Command(CommandKind.APPLY_STEP, 1)]  # green has no traffic to judge: switch
    assert r.traffic_started_at is None
    r, cmds = transition(r, done(cmds[0], 5))
    assert cmds == [] and r.traffic_started_at == 5
    r, cmds = transition(r, VerdictReached(Decision.PASS, 300))
    assert cmds == []  # watched 295 s of 600
    r, cmds = transition(r, VerdictReached(Decision.PASS, 605))
    assert cmds == [Command(CommandKind.FINALIZE)]


def test_rolling_phases_1_then_3_then_all():
    steps = default_steps(Strategy.ROLLING)
    assert [s.servers for s in steps] == [1, 3, None]


EVENTS = st.one_of(
    st.builds(VerdictReached, st.sampled_from(list(Decision)), st.floats(0, 5000)),
    st.builds(Override, st.sampled_from(["promote", "promote_full", "rollback", "pause", "resume"]),
              st.just("who"), st.just("why"), st.floats(0, 5000)),
    st.booleans(),  # the result of the pending command: ok or failed
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(list(Strategy)), st.lists(EVENTS, max_size=40))
def test_invariants_under_random_events(strategy, script):
    r = Rollout(steps=default_steps(strategy, watch_s=60), concurrent=strategy is Strategy.CANARY)
    r, pending = transition(r, Start(0))
    rollbacks = 0
    failed_rollbacks = 0
    manual_after_failure = 0
    for item in script:
        before = r
        if isinstance(item, bool):
            if not pending:
                continue
            cmd, pending = pending[0], pending[1:]
            if cmd.kind is CommandKind.ROLLBACK and not item:
                failed_rollbacks += 1
            r, cmds = transition(r, ActionDone(cmd, item, 0.0, ""))
        else:
            try:
                r, cmds = transition(r, item)
            except ConflictError:
                continue
            manual = isinstance(item, Override) and item.action == "rollback"
            if manual and before.state in (DeployState.ROLLBACK_FAILED, DeployState.PROMOTED):
                manual_after_failure += 1
        pending = pending + cmds
        rollbacks += sum(c.kind is CommandKind.ROLLBACK for c in cmds)
        # a finished deploy stays finished; only a human may roll back a promoted one
        if before.state is DeployState.ROLLED_BACK or (
            before.state is DeployState.PROMOTED and not (isinstance(item, Override) and item.action == "rollback")
        ):
            assert r.state is before.state
        # steps are taken in order, none skipped except by a manual promote_full
        steps = [s for s, _ in r.history]
        assert steps == sorted(steps)
        if r.state is DeployState.PROMOTED:
            assert steps and steps[-1] == r.last_step
    # at most one rollback per episode: the first, plus one per failed attempt or manual rollback
    assert rollbacks <= 1 + failed_rollbacks + manual_after_failure
