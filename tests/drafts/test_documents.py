"""The offline documents and the facts behind them: structure, secrets, figures and determinism.
Built from the recorded deploys (the real engine on SQLite, see ``record.py``)."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace

import pytest

from guardrail.adapters.drafts.offline import OfflineDrafter
from guardrail.domain.drafts import DOCS, Draft, DraftKind
from guardrail.domain.drafts.facts import build_facts
from guardrail.domain.errors import ValidationError
from guardrail.domain.model import Histogram, Sample, Track
from guardrail.domain.records import EventKind, TimelineEvent
from tests.drafts.conftest import PUBLIC_URL, facts_of
from tests.drafts.record import NAMES, SECRET, load

DRAFTER = OfflineDrafter()


def headings(markdown: str) -> tuple[list[str], list[str]]:
    """(``#`` titles, ``##`` sections) outside code blocks."""
    titles, sections, fenced = [], [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("## "):
            sections.append(line[3:])
        elif not fenced and line.startswith("# "):
            titles.append(line[2:])
    return titles, sections


@pytest.mark.parametrize("deploy", NAMES)
def test_every_kind_has_the_title_and_exactly_its_sections_in_order(deploy: str, all_facts) -> None:
    facts = all_facts[deploy]
    for kind, spec in DOCS.items():
        md = DRAFTER.render(kind, facts)
        titles, sections = headings(md)
        assert md.startswith(f"# {spec.title}: checkout {facts['deploy']['version']}\n"), kind
        assert len(titles) == 1, (kind, titles)
        assert sections == list(spec.sections), kind


@pytest.mark.parametrize("deploy", NAMES)
def test_facts_hold_the_adapter_name_but_never_its_config_or_secret(deploy: str, all_facts) -> None:
    facts = all_facts[deploy]
    deploy_rec = load(deploy)[0]
    assert deploy_rec.marker.adapter.config["token"] == SECRET  # the record does hold it
    text = json.dumps(facts)
    assert SECRET not in text and "deploy.internal/hooks" not in text
    assert facts["deploy"]["adapter"] == "recording"
    for kind in DraftKind:
        assert SECRET not in DRAFTER.render(kind, facts)


@pytest.mark.parametrize("deploy", NAMES)
def test_facts_are_strict_json_and_deterministic(deploy: str) -> None:
    """Same record, in any order of events/actions/samples: the same facts, valid strict JSON."""
    deploy_rec, events, actions, samples = load(deploy)
    first = build_facts(deploy_rec, events, actions, samples, public_url=PUBLIC_URL)
    rng = random.Random(7)
    shuffled = [list(x) for x in (events, actions, samples)]
    for x in shuffled:
        rng.shuffle(x)
    again = build_facts(deploy_rec, *shuffled, public_url=PUBLIC_URL)
    assert json.dumps(first, allow_nan=False, sort_keys=True) == json.dumps(
        again, allow_nan=False, sort_keys=True
    )
    assert json.loads(json.dumps(first)) == first  # only JSON types: no tuples, enums or floats JSON lacks


def test_postmortem_detection_matches_the_first_fail_verdict_of_the_record(all_facts) -> None:
    deploy, events, _, _ = load("rolled_back")
    fail = next(
        e for e in events if e.kind is EventKind.VERDICT and e.details["verdict"]["decision"] == "fail"
    )
    failing = [e for e in fail.details["verdict"]["evidence"] if e["status"] == "fail"]
    det = all_facts["rolled_back"]["detection"]
    assert det["trigger"] == "judge"
    assert (
        [m["metric"] for m in det["verdict"]["metrics"]] == [e["metric"] for e in failing] == ["error_rate"]
    )
    assert det["since_traffic_s"] == fail.data_time - deploy.rollout.traffic_started_at == 30
    ev = det["verdict"]["metrics"][0]
    assert ev["estimate"] == round(failing[0]["estimate"], 2)
    assert ev["canary_value"] == round(100 * failing[0]["canary_value"], 2)  # 1.09 (%)
    md = DRAFTER.render(DraftKind.POSTMORTEM, all_facts["rolled_back"])
    detection = md.split("## Detection")[1].split("## What went well")[0]
    assert "**30 s after 1.4.3 first received traffic**" in detection
    assert "with a FAIL of error rate" in detection and failing[0]["detail"] in detection


def test_postmortem_rollback_figures_match_the_record(all_facts) -> None:
    _, events, actions, _ = load("rolled_back")
    rb_events = [e for e in events if e.details.get("kind") == "rollback"]
    started = next(e for e in rb_events if e.kind is EventKind.ACTION_STARTED)
    done = next(e for e in rb_events if e.kind is EventKind.ACTION_DONE)
    rb = all_facts["rolled_back"]["rollback"]
    assert rb["attempts"] == len([a for a in actions if a.command.kind.value == "rollback"]) == 2
    assert rb["seconds"] == round(done.wall_time - started.wall_time, 1)
    assert rb["succeeded"] and rb["automatic"] and rb["to_version"] == "1.4.2"
    md = DRAFTER.render(DraftKind.POSTMORTEM, all_facts["rolled_back"])
    assert f"rolled it back to 1.4.2 automatically after 2 attempts, {rb['seconds']:.0f} s from" in md
    assert (
        "The rollback needed 2 attempts; the failed one reported `roll back to 1.4.2: FAILED: rollback refused (drill)`."
        in md
    )


def test_impact_figures_are_recomputed_from_the_samples(all_facts) -> None:
    """Excess errors, budget burn and the traffic share, computed here independently of facts.py."""
    deploy, _, _, samples = load("rolled_back")
    t0 = deploy.rollout.traffic_started_at
    t1 = t0 + 30  # the record: FAIL and rollback at the end of the third 10-s window
    live = [s for s in samples if t0 <= s.start < t1]
    c = [s for s in live if s.track is Track.CANARY]
    b = [s for s in live if s.track is Track.BASELINE]
    c_req, c_err = sum(s.requests for s in c), sum(s.errors for s in c)
    b_req, b_err = sum(s.requests for s in b), sum(s.errors for s in b)
    excess = c_err - c_req * b_err / b_req
    rps = (c_req + b_req) / 30
    budget = 0.001 * rps * 30 * 86400
    imp = all_facts["rolled_back"]["impact"]
    assert (imp["requests_on_new_version"], imp["errors_on_new_version"]) == (c_req, c_err)
    assert imp["excess_errors"] == round(excess)
    assert imp["budget_errors"] == round(budget)
    assert imp["budget_burn_pct"] == pytest.approx(100 * excess / budget, rel=5e-3)
    assert imp["duration_s"] == 30 and imp["traffic_share_pct"] == 10 and imp["peak_traffic_pct"] == 10
    md = DRAFTER.render(DraftKind.POSTMORTEM, all_facts["rolled_back"])
    assert f"**{round(excess)} errors beyond the baseline**" in md


def test_traffic_share_weights_each_step_by_how_long_it_was_in_effect(all_facts) -> None:
    deploy = load("promoted")[0]
    (s0, a0), (s1, a1), (s2, a2) = deploy.rollout.history
    end = deploy.data_time
    w = [st.weight for st in deploy.rollout.steps]
    expected = (w[s0] * (a1 - a0) + w[s1] * (a2 - a1) + w[s2] * (end - a2)) / (end - a0)
    assert all_facts["promoted"]["impact"]["traffic_share_pct"] == pytest.approx(expected, rel=1e-3)


def test_continue_verdicts_are_left_out_of_the_timeline_and_pass_fail_kept(all_facts) -> None:
    _, events, _, _ = load("promoted")
    kept = all_facts["promoted"]["timeline"]
    decisions = [e.details["verdict"]["decision"] for e in events if e.kind is EventKind.VERDICT]
    assert "continue" in decisions
    verdict_lines = [t["message"] for t in kept if t["kind"] == "verdict"]
    assert verdict_lines and all(m.startswith("PASS") for m in verdict_lines)
    others = [e for e in events if e.kind is not EventKind.VERDICT]
    assert len(kept) == len(others) + decisions.count("pass") + decisions.count("fail")
    assert kept[0]["offset_s"] == 0 and kept[0]["at"] == "2023-11-14T22:13:20Z"


def test_a_deploy_that_never_got_traffic_has_unknowns_not_invented_figures(all_facts) -> None:
    f = all_facts["migration_failed"]
    assert f["impact"]["exposed"] is False and f["impact"]["budget_burn_pct"] is None
    assert f["measurements"]["canary"] is None and f["baseline_variation"]["error_rate_pct"] is None
    assert f["detection"]["trigger"] == "step_failure" and f["detection"]["verdict"] is None
    assert f["rollout"]["steps"][0]["status"] == "failed to apply"
    assert f["rollout"]["steps"][0]["failure"].startswith("migration 0042_orders_currency failed")
    monitoring = DRAFTER.render(DraftKind.MONITORING_PLAN, f)
    assert "Unknown: no baseline metrics reached guardrail" in monitoring
    assert not re.search(r"\d+(\.\d+)?%", monitoring.split("## Normal variation")[1])


def test_migration_plan_has_sql_and_undo_sql_for_each_step_from_the_marker(all_facts) -> None:
    md = DRAFTER.render(DraftKind.MIGRATION_PLAN, all_facts["migration_failed"])
    for section, next_section in (
        ("Expand", "Migrate data"),
        ("Migrate data", "Contract"),
        ("Contract", "Deployment order"),
    ):
        body = md.split(f"## {section}\n")[1].split(f"## {next_section}\n")[0]
        blocks = re.findall(r"```sql\n(.*?)```", body, re.S)
        assert len(blocks) == 2, section  # the step and its undo
        assert all("-- ADAPT" in b and "<table>" in b for b in blocks), section
    assert "-- ADAPT for: add NOT NULL column currency to orders, filled from accounts.currency" in md
    assert "step 1 failed with `migration 0042_orders_currency failed" in md


def test_checklist_ticks_what_guardrail_verified_and_leaves_the_rest_to_people() -> None:
    deploy, events, actions, samples = load("promoted")
    policy = [
        {"name": "deploy_window", "status": "pass", "detail": "Tuesday 22:13 is inside the window"},
        {"name": "review_approved", "status": "fail", "detail": "no approving review"},
    ]
    events = [replace(events[0], details={**events[0].details, "policy": policy}), *events[1:]]
    facts = build_facts(deploy, events, actions, samples, public_url=PUBLIC_URL)
    md = DRAFTER.render(DraftKind.CHECKLIST_PRE, facts)
    verified = md.split("## Verified by guardrail")[1].split("## For people to confirm")[0]
    assert "- [x] Policy check deploy_window: pass: Tuesday 22:13 is inside the window" in verified
    assert "- [ ] Policy check review_approved: fail: no approving review" in verified
    assert "- [x] Monitoring and canary analysis" in verified and "- [x] Automatic rollback" in verified
    people = md.split("## For people to confirm")[1].split("## Backups")[0]
    assert "- [ ] Database migrations tested on staging (CI answered no in the marker)" in people
    assert "- [x] All tests pass in the CI pipeline (CI answered yes in the marker)" in people
    assert "- [ ] Someone available to watch checkout after the deploy" in people


def test_noop_adapter_leaves_automatic_rollback_unticked() -> None:
    deploy, events, actions, samples = load("promoted")
    deploy = replace(
        deploy, marker=replace(deploy.marker, adapter=replace(deploy.marker.adapter, name="noop"))
    )
    facts = build_facts(deploy, events, actions, samples, public_url=PUBLIC_URL)
    assert "- [ ] Automatic rollback: the noop adapter" in DRAFTER.render(DraftKind.CHECKLIST_PRE, facts)


def test_alerts_and_drafts_reach_the_facts_and_a_firing_alert_the_postmortem() -> None:
    deploy, events, actions, samples = load("rolled_back")
    at = next(e.data_time for e in events if e.kind is EventKind.VERDICT and e.message.startswith("FAIL"))
    rule = {
        "rule": "HighErrorRate",
        "kind": "error_rate",
        "severity": "page",
        "track": "canary",
        "state": "firing",
        "at": at,
        "since": at,
        "value": 0.011,
        "threshold": 0.01,
        "fails_deploy": True,
        "sentence": "canary error rate 1.1% above 1% for 20 s",
    }
    am = {
        "fingerprint": "ab12",
        "status": "resolved",
        "labels": {"alertname": "CheckoutSlow", "severity": "ticket"},
        "annotations": {"summary": "p99 above 1 s"},
        "starts_at": 0.0,
        "ends_at": 1.0,
        "generator_url": "",
        "group_key": "",
        "receiver": "",
    }
    extra = [
        TimelineEvent(EventKind.ALERT, "HighErrorRate (page) firing", at, 0.0, {"alert": rule}, seq=100),
        TimelineEvent(EventKind.ALERT, "Alertmanager: CheckoutSlow", at, 0.0, {"alert": am}, seq=101),
    ]
    drafts = (Draft(deploy.id, DraftKind.POSTMORTEM, 2, "# x", "offline", "", 0.0, "rollback"),)
    facts = build_facts(deploy, [*events, *extra], actions, samples, public_url=PUBLIC_URL, drafts=drafts)
    assert [(a["source"], a["rule"], a["state"]) for a in facts["alerts"]] == [
        ("guardrail", "HighErrorRate", "firing"),
        ("alertmanager", "CheckoutSlow", "resolved"),
    ]
    assert facts["links"]["drafts"] == [
        {
            "kind": "postmortem",
            "version": 2,
            "source": "offline",
            "url": "https://guardrail.example.com/api/v1/deploys/0000000000000002/drafts/postmortem?version=2",
        }
    ]
    md = DRAFTER.render(DraftKind.POSTMORTEM, facts)
    assert "Alert HighErrorRate (page) fired at 2023-11-14 22:13:50 UTC" in md
    assert "CheckoutSlow" not in md.split("## What went wrong")[1].split("## Where we got lucky")[0]


def test_latency_quantiles_come_from_raw_latencies_when_there_is_no_histogram() -> None:
    deploy, events, actions, _ = load("rolled_back")
    t0 = deploy.rollout.traffic_started_at
    raw = tuple(i / 1000 for i in range(1, 1001))  # 1..1000 ms
    samples = [
        Sample(Track.CANARY, t0, t0 + 30, 1000, 10, latencies=raw),
        Sample(Track.BASELINE, t0, t0 + 30, 9000, 20, latency=Histogram((0.1, 0.2), (4500, 4410, 90))),
    ]
    facts = build_facts(deploy, events, actions, samples, public_url=PUBLIC_URL)
    c, b = facts["measurements"]["canary"], facts["measurements"]["baseline"]
    assert (c["latency_source"], c["p95_ms"], c["p99_ms"]) == ("raw", 950, 990)
    # 99% of 9000 = 8910 = 4500 + 4410: the top of the second bucket; p95 interpolates inside it
    assert (b["latency_source"], b["p99_ms"]) == ("histogram", 200)
    assert b["p95_ms"] == round(1000 * (0.1 + 0.1 * (0.95 * 9000 - 4500) / 4410))


def test_unknown_kind_and_incomplete_facts_are_refused_with_the_field() -> None:
    with pytest.raises(ValidationError) as e:
        DRAFTER.render("release-notes", facts_of("promoted"))
    assert e.value.field == "kind" and "postmortem" in str(e.value)
    facts = facts_of("promoted")
    del facts["impact"]
    with pytest.raises(ValidationError) as e:
        DRAFTER.render(DraftKind.POSTMORTEM, facts)
    assert e.value.field == "facts" and "impact" in str(e.value)
    with pytest.raises(ValidationError) as e:
        build_facts(*load("promoted"), public_url=PUBLIC_URL, slo=99.9)
    assert e.value.field == "slo"


@pytest.mark.parametrize("deploy", NAMES)
def test_every_figure_in_the_offline_documents_is_supported_by_the_facts(deploy: str, all_facts) -> None:
    """The same check an LLM's answer must pass (``guardrail.domain.drafts.check``): no invented numbers."""
    from guardrail.domain.drafts.check import check_answer

    facts = all_facts[deploy]
    for kind in DraftKind:
        assert check_answer(kind, DRAFTER.render(kind, facts), facts) == [], kind
