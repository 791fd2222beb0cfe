"""Alerting wired into the rollout: one page and one resolve per regressed canary, announcements,
in-service rules and Alertmanager alerts as failure signals (real database, fake PagerDuty/Slack)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from guardrail.domain.model import DeployState
from guardrail.domain.records import EventKind
from guardrail.domain.rules import AlertState, ExternalAlert
from guardrail.testing import T0, RecordingDeployAdapter, SyntheticTraffic
from tests.integration.test_engine import drive, make_engine, marker
from tests.integration.test_notify import CHAT, PAGER, FakeReceivers, make_service

pytestmark = pytest.mark.integration


async def deliver(svc) -> None:
    while await svc.dispatch_once():
        pass


@pytest.fixture
async def fake() -> AsyncIterator[FakeReceivers]:
    """Fake PagerDuty and Slack that record what they got."""
    f = FakeReceivers()
    await f.server.start_server()
    yield f
    await f.server.close()


async def test_a_regressed_canary_pages_once_and_resolves_once(store, fake):
    svc = make_service(store, fake)
    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter, notifications=svc)
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    d = await drive(engine, d.id, SyntheticTraffic(rate=400, err_ratio=4), adapter)
    await deliver(svc)
    assert d.state is DeployState.ROLLED_BACK
    sent = [p for p in fake.delivered(PAGER) if p.get("event_action") in ("trigger", "resolve")]
    assert [p["event_action"] for p in sent] == ["trigger", "resolve"]
    assert sent[0]["dedup_key"] == sent[1]["dedup_key"]
    assert "rolled back" in sent[0]["payload"]["summary"]
    chat = " ".join(str(m) for m in fake.delivered(CHAT))
    assert "Deploying checkout 1.4.2" in chat  # the announcement before
    assert "Rolled back" in chat or "rolled back" in chat  # and after, with what happened


async def test_a_healthy_deploy_announces_and_pages_nobody(store, fake):
    svc = make_service(store, fake)
    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter, notifications=svc)
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    d = await drive(engine, d.id, SyntheticTraffic(rate=400), adapter)
    await deliver(svc)
    assert d.state is DeployState.PROMOTED
    assert fake.delivered(PAGER) == []
    assert "All systems nominal" in " ".join(str(m) for m in fake.delivered(CHAT))


async def test_a_rollback_that_keeps_failing_pages(store, fake):
    svc = make_service(store, fake)
    adapter = RecordingDeployAdapter(fail_rollbacks=100)
    engine = make_engine(store, adapter, notifications=svc)
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    d = await drive(engine, d.id, SyntheticTraffic(rate=400, err_ratio=5), adapter, windows=40)
    d = await engine.wait(d.id, timeout=10)
    await deliver(svc)
    assert d.state is DeployState.ROLLBACK_FAILED
    keys = [p["dedup_key"].rsplit(":", 1)[-1] for p in fake.delivered(PAGER) if p.get("event_action") == "trigger"]
    assert keys == ["CanaryRegression", "RollbackFailed"]


async def test_an_in_service_rule_firing_on_the_canary_rolls_it_back(store, fake):
    """error rate > 1% for 60 s on the canary, with the judge's own error test switched off."""
    svc = make_service(store, fake)
    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter, notifications=svc, rules={"overrides": {"HighErrorRate": {"for_s": 60}}})
    d, _ = await engine.record_deploy(marker(metrics_overrides={"overrides": {"error_rate": {"enabled": False}}}))
    d = await engine.settle(d.id)  # its first step is applied in the background
    d = await drive(engine, d.id, SyntheticTraffic(rate=400, err_ratio=6), adapter)
    await deliver(svc)
    assert d.state is DeployState.ROLLED_BACK
    assert d.rollout.reason.startswith("canary analysis failed: alert HighErrorRate firing")
    alerts = [e for e in await store.events(d.id) if e.kind is EventKind.ALERT]
    assert alerts and alerts[0].details["alert"]["track"] == "canary"
    triggered = [p["payload"]["class"] for p in fake.delivered(PAGER) if p.get("event_action") == "trigger"]
    assert "HighErrorRate" in triggered


async def test_an_alertmanager_page_during_the_canary_is_a_failure_signal(store, fake):
    svc = make_service(store, fake)
    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter, notifications=svc)
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    await drive(engine, d.id, SyntheticTraffic(rate=400), adapter, windows=3)

    def alert(service: str) -> ExternalAlert:
        return ExternalAlert(fingerprint=f"fp-{service}", status=AlertState.FIRING,
                             labels={"alertname": "DBConnectionPoolExhausted", "severity": "page",
                                     "service": service, "environment": "production"},
                             annotations={"summary": "pool maxed"}, starts_at=T0, ends_at=None,
                             generator_url="", group_key="g", receiver="guardrail")

    assert await engine.external_alerts([alert("search")]) == 0  # another service: not this deploy's
    assert await engine.external_alerts([alert("checkout")]) == 1
    d = await engine.settle(d.id)
    assert d.state is DeployState.ROLLED_BACK
    assert "DBConnectionPoolExhausted" in d.rollout.reason
    assert any(e.kind is EventKind.ALERT for e in await store.events(d.id))


async def test_rules_keep_watching_after_promotion_and_page_without_rolling_back(store, fake):
    svc = make_service(store, fake)
    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter, notifications=svc, rules={"overrides": {"HighErrorRate": {"for_s": 60}}})
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    d = await drive(engine, d.id, SyntheticTraffic(rate=400), adapter)
    assert d.state is DeployState.PROMOTED
    rng = np.random.default_rng(3)
    bad = SyntheticTraffic(rate=400, weight=0.999, err_ratio=8)
    start = d.data_time
    for k in range(20):  # all traffic on the new version now: the canary track
        c, _ = bad.window(rng, start + 10 * k)
        await engine.ingest(d.id, [c])
        await engine.settle(d.id)
    await deliver(svc)
    d = await store.get_deploy(d.id)
    assert d.state is DeployState.PROMOTED  # a human decides after promotion
    assert [p["payload"]["class"] for p in fake.delivered(PAGER) if p.get("event_action") == "trigger"] == [
        "HighErrorRate"]


async def test_a_tail_slow_on_both_tracks_pages_but_does_not_roll_the_canary_back(store, fake):
    """p99 about 1.2 s on the old and the new version alike: on-call is paged, the new version is
    not blamed (before: HighLatencyP99 firing on the canary rolled it back)."""
    svc = make_service(store, fake)
    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter, notifications=svc)
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    d = await drive(engine, d.id, SyntheticTraffic(rate=400, median_s=0.3, sigma=0.6), adapter, seed=21)
    await deliver(svc)
    assert d.state is DeployState.PROMOTED, d.rollout.reason
    events = await store.events(d.id)
    alerts = [e.details["alert"] for e in events if e.kind is EventKind.ALERT]
    assert {(a["rule"], a["track"]) for a in alerts if a["state"] == "firing"} >= {("HighLatencyP99", "canary")}
    notes = [e.message for e in events if e.kind is EventKind.NOTE and "HighLatencyP99" in e.message]
    assert notes and "not blamed on the new version" in notes[0] and "baseline (old version) breaches it too" in notes[0]
    verdicts = [e.details["verdict"] for e in events if e.kind is EventKind.VERDICT]
    explained = [v for v in verdicts if v["rules"]]
    assert explained and not any(r["attributable"] for v in explained for r in v["rules"])
    assert "Alert rules: HighLatencyP99 on the canary" in explained[-1]["summary"]
    triggered = [p["payload"]["class"] for p in fake.delivered(PAGER) if p.get("event_action") == "trigger"]
    assert "HighLatencyP99" in triggered  # the page itself still goes out


async def test_a_tail_slow_on_the_canary_only_is_blamed_on_it_by_the_rule(store, fake):
    """With the judge's own latency tests off, the rule alone catches the new version's slow tail."""
    svc = make_service(store, fake)
    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter, notifications=svc, rules={"overrides": {"HighLatencyP99": {"for_s": 60}}})
    off = {"latency_p99": {"enabled": False}, "latency_p95": {"enabled": False}}
    d, _ = await engine.record_deploy(marker(metrics_overrides={"overrides": off}))
    d = await engine.settle(d.id)  # its first step is applied in the background
    d = await drive(engine, d.id, SyntheticTraffic(rate=400, canary_latency_factor=4.0), adapter, seed=22)
    assert d.state is DeployState.ROLLED_BACK
    assert d.rollout.reason.startswith("canary analysis failed: alert HighLatencyP99 firing on the canary")
    assert "the baseline stays under p99 1 s over the same windows" in d.rollout.reason


async def test_old_version_windows_pushed_for_the_canary_track_cannot_fail_the_deploy(store, fake):
    """History pushed for the canary track before the switch is the old version's (it had 5% errors):
    before, the rule evaluator fired on it and rolled the deploy back at data time 0."""
    from guardrail.domain.model import Sample, Track

    svc = make_service(store, fake)
    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter, notifications=svc, rules={"overrides": {"HighErrorRate": {"for_s": 60}}})
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    old = [Sample(Track.CANARY, T0 - 600 + 60 * i, T0 - 540 + 60 * i, 2000, 100) for i in range(10)]
    r = await engine.ingest(d.id, old)
    await engine.settle(d.id)
    assert r.deploy.state is DeployState.ANALYZING
    d = await drive(engine, d.id, SyntheticTraffic(rate=400), adapter, seed=23)
    assert d.state is DeployState.PROMOTED, d.rollout.reason
    assert not [e for e in await store.events(d.id) if e.kind is EventKind.ALERT and e.details["alert"]["track"] == "canary"]


async def test_alertmanager_pages_about_the_old_version_or_both_tracks_do_not_fail_the_canary(store, fake):
    """Prometheus evaluates alerts/rules.yml per service and track: a baseline-track page is the old
    version's, and a canary-track page that also fires on the baseline is shared (before: any page for
    the service rolled the canary back)."""
    svc = make_service(store, fake)
    adapter = RecordingDeployAdapter()
    engine = make_engine(store, adapter, notifications=svc)
    d, _ = await engine.record_deploy(marker())
    d = await engine.settle(d.id)  # its first step is applied in the background
    await drive(engine, d.id, SyntheticTraffic(rate=400), adapter, windows=3)

    def alert(track: str, status: AlertState = AlertState.FIRING) -> ExternalAlert:
        return ExternalAlert(fingerprint=f"fp-{track}", status=status,
                             labels={"alertname": "HighLatencyP99", "severity": "page", "service": "checkout",
                                     "environment": "production", "track": track},
                             annotations={"summary": f"checkout ({track}): p99 latency 1.3s"}, starts_at=T0)

    assert await engine.external_alerts([alert("baseline")]) == 1
    assert (await store.get_deploy(d.id)).state is DeployState.ANALYZING
    assert await engine.external_alerts([alert("canary")]) == 1  # the baseline fires too: shared
    assert (await store.get_deploy(d.id)).state is DeployState.ANALYZING
    notes = [e.message for e in await store.events(d.id) if e.kind is EventKind.ALERT]
    assert any("does not fail the deploy: the same alert fires on the baseline" in m for m in notes)
    await engine.external_alerts([alert("baseline", AlertState.RESOLVED)])
    await engine.external_alerts([alert("canary")])  # now the canary's alone
    d = await engine.settle(d.id)
    assert d.state is DeployState.ROLLED_BACK and "HighLatencyP99" in d.rollout.reason
