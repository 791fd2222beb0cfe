"""Issue 13, case 1: Argo Rollouts' web metric provider on GET /api/v1/analysis, evaluated the way
Argo evaluates it (tests/api/argo_model.py, modelled from argo-rollouts at 9f8d111d:
metricproviders/webmetric/webmetric.go, utils/evaluate/evaluate.go, analysis/analysis.go), with the
exact AnalysisTemplates and Rollout of examples/argo.

- "No marker yet" and "no verdict yet" are 2xx answers the background template counts as
  Successful (the analysis keeps Running), never an Error: four consecutive Errors (the default
  consecutiveErrorLimit) would error the background analysis and abort a healthy rollout.
- The Rollout passes its own version (its pod template's app.kubernetes.io/version label) to the
  templates, so a new rollout after a rolled-back one reads its own deploy, not the old "fail".
- Each verdict state gives the measurement and metric phases the templates promise.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml

from tests.api.argo_model import (
    ERROR,
    FAILED,
    INCONCLUSIVE,
    RUNNING,
    SUCCESSFUL,
    ExprError,
    MetricRun,
    eval_condition,
    measure,
)
from tests.api.conftest import TOKENS, Api
from tests.api.helpers import marker, window
from tests.api.test_integrations import STEPS, judged

ROOT = Path(__file__).resolve().parents[2]
_ARG = re.compile(r"\{\{\s*args\.([A-Za-z0-9_-]+)\s*\}\}")
_FIELD = re.compile(r"^spec\.template\.metadata\.labels\['([^']+)'\]$")


def manifests() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    docs = list(yaml.safe_load_all((ROOT / "examples/argo/analysis-template.yaml").read_text()))
    templates = {d["metadata"]["name"]: d for d in docs if d["kind"] == "AnalysisTemplate"}
    rollout = yaml.safe_load((ROOT / "examples/argo/rollout.yaml").read_text())
    return templates, rollout


def rollout_args(rollout: dict[str, Any], args: list[dict[str, Any]]) -> dict[str, str]:
    """The Rollout's analysis args resolved as Argo does: ``value``, or ``valueFrom.fieldRef`` into
    the Rollout (the subset used: a pod template label)."""
    out = {}
    for a in args:
        if "value" in a:
            out[a["name"]] = a["value"]
            continue
        path = a["valueFrom"]["fieldRef"]["fieldPath"]
        m = _FIELD.match(path)
        assert m, f"fieldRef {path!r} is outside the subset this test resolves"
        out[a["name"]] = rollout["spec"]["template"]["metadata"]["labels"][m.group(1)]
    return out


def template_args(template: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    out = {}
    for a in template["spec"]["args"]:
        if a["name"] in given:
            out[a["name"]] = given[a["name"]]
        elif "value" in a:
            out[a["name"]] = a["value"]
        elif a["name"] == "api-token":
            out[a["name"]] = TOKENS["read"][1]  # the Secret's value, filled in
        else:
            raise AssertionError(f"argument {a['name']} of {template['metadata']['name']} has no value")
    return out


async def measurement(api: Api, metric: dict[str, Any], args: dict[str, str]) -> tuple[str, Any]:
    web = metric["provider"]["web"]
    url = urlsplit(_ARG.sub(lambda m: args[m.group(1)], web["url"]))
    headers = {h["key"]: _ARG.sub(lambda m: args[m.group(1)], h["value"]) for h in web["headers"]}
    resp = await api.client.get(
        url.path, params=parse_qsl(url.query, keep_blank_values=True), headers=headers
    )
    return measure(metric, resp.status, await resp.read())


def metric_of(templates: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    (metric,) = templates[name]["spec"]["metrics"]
    return metric


def args_for(template: dict[str, Any], version: str) -> dict[str, str]:
    return template_args(
        template,
        {
            "service": "checkout",
            "environment": "production",
            "version": version,
            "guardrail-url": "http://guardrail.test",
        },
    )


async def test_the_rollout_passes_its_own_version_and_the_templates_require_one() -> None:
    templates, rollout = manifests()
    canary = rollout["spec"]["strategy"]["canary"]
    background = rollout_args(rollout, canary["analysis"]["args"])
    image = rollout["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(":" + background["version"])  # the label and the image tag agree
    for step in (s for s in canary["steps"] if "analysis" in s):
        assert rollout_args(rollout, step["analysis"]["args"])["version"] == background["version"]
    for template in templates.values():
        version = next(a for a in template["spec"]["args"] if a["name"] == "version")
        assert "value" not in version, "no default: an empty version would read another rollout's deploy"


async def test_no_marker_yet_keeps_the_background_analysis_running(api: Api) -> None:
    templates, _ = manifests()
    metric = metric_of(templates, "guardrail-watch")
    args = args_for(templates["guardrail-watch"], "v7.0.0")  # CI has not posted its marker yet
    run = MetricRun(metric)
    for _ in range(12):  # six minutes at the 30-s interval
        phase, value = await measurement(api, metric, args)
        assert (phase, value) == (SUCCESSFUL, "none")
        run.add(phase)
    assert run.phase == RUNNING
    gate = metric_of(templates, "guardrail-gate")
    phase, _ = await measurement(api, gate, args_for(templates["guardrail-gate"], "v7.0.0"))
    assert phase == INCONCLUSIVE and MetricRun(gate).add(phase) == RUNNING  # the gate waits


async def test_a_new_rollout_after_a_rolled_back_one_reads_its_own_deploy(api: Api) -> None:
    failed = await judged(api, "v2.4.2", canary_error_rate=0.05)
    assert failed["state"] == "rolled_back"
    templates, _ = manifests()
    metric = metric_of(templates, "guardrail-watch")
    run = MetricRun(metric)
    phase, value = await measurement(api, metric, args_for(templates["guardrail-watch"], "v2.4.3"))
    assert (value, run.add(phase)) == ("none", RUNNING)  # not the rolled-back deploy's "fail"
    await api.mark(marker(version="v2.4.3", steps=STEPS))  # the marker arrives
    phase, value = await measurement(api, metric, args_for(templates["guardrail-watch"], "v2.4.3"))
    assert (value, run.add(phase)) == ("none", RUNNING)


PHASES = {  # decision: (watch measurement, watch metric), (gate measurement, gate metric)
    "pass": ((SUCCESSFUL, RUNNING), (SUCCESSFUL, SUCCESSFUL)),
    "fail": ((FAILED, FAILED), (FAILED, FAILED)),
    "inconclusive": ((INCONCLUSIVE, INCONCLUSIVE), (INCONCLUSIVE, RUNNING)),
    "continue": ((SUCCESSFUL, RUNNING), (INCONCLUSIVE, RUNNING)),
    "none": ((SUCCESSFUL, RUNNING), (INCONCLUSIVE, RUNNING)),
}


async def test_each_verdict_state_gives_the_promised_phases(api: Api) -> None:
    """promoted -> pass, rolled back -> fail, paused -> inconclusive, analyzing with a verdict ->
    continue, analyzing before one -> none; each through both templates, measured and assessed."""
    versions = {
        "pass": "v5.1.0",
        "fail": "v5.2.0",
        "inconclusive": "v5.3.0",
        "continue": "v5.4.0",
        "none": "v5.5.0",
    }
    assert (await judged(api, versions["pass"], canary_error_rate=0.005))["state"] == "promoted"
    assert (await judged(api, versions["fail"], canary_error_rate=0.05))["state"] == "rolled_back"
    slow = [{"weight": 10, "min_duration_s": 3600}, {"weight": 100}]
    held = await api.mark(marker(version=versions["inconclusive"], steps=slow))
    await api.call("POST", f"/api/v1/deploys/{held['id']}/pause", as_="operator", json={"reason": "freeze"})
    going = await api.mark(marker(version=versions["continue"], steps=slow))
    await api.push(going["id"], window(0, 10))
    await api.mark(marker(version=versions["none"], steps=slow))
    templates, _ = manifests()
    seen = {}
    for decision, version in versions.items():
        for name in ("guardrail-watch", "guardrail-gate"):
            metric = metric_of(templates, name)
            phase, value = await measurement(api, metric, args_for(templates[name], version))
            assert value == decision, (name, version, value)
            seen[decision, name] = (phase, MetricRun(metric).add(phase))
    assert seen == {
        (d, name): phases[i]
        for d, phases in PHASES.items()
        for i, name in enumerate(("guardrail-watch", "guardrail-gate"))
    }


async def test_guardrail_unreachable_errors_only_after_the_templates_error_limit() -> None:
    """A restart of guardrail (a few failed polls) must not abort the rollout: the background metric
    tolerates consecutiveErrorLimit errors, more than Argo's default of 4 at its interval."""
    templates, _ = manifests()
    metric = metric_of(templates, "guardrail-watch")
    run = MetricRun(metric)
    limit = int(metric["consecutiveErrorLimit"])
    assert limit * int(metric["interval"].rstrip("s")) >= 180  # three minutes of guardrail being away
    for _ in range(limit):
        run.add(ERROR)
    assert run.phase == RUNNING
    assert run.add(SUCCESSFUL) == RUNNING and run.consecutive_error == 0


def test_the_expr_subset_behaves_like_expr() -> None:
    assert eval_condition('result in ["pass", "continue"]', "pass") is True
    assert eval_condition('result == "fail" || result == "x"', "pass") is False
    assert eval_condition('!(result == "fail") && result != "none"', "pass") is True
    assert eval_condition('result not in ["a"]', "b") is True
    with pytest.raises(ExprError):
        eval_condition("result == 1", "pass")  # mismatched types: a compile error in expr
    with pytest.raises(ExprError):
        eval_condition("asInt(result) > 1", "pass")  # outside the subset: not silently true
