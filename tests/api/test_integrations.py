"""guardrail as the analysis step of Argo Rollouts (GET /api/v1/analysis) and Flagger
(POST /hooks/flagger), on deploys judged through pushed samples; the example manifests in
examples/argo and examples/flagger are run against the real routes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml

from tests.api.argo_model import eval_condition
from tests.api.conftest import TOKENS, Api
from tests.api.helpers import marker, window

ROOT = Path(__file__).resolve().parents[2]
STEPS = [{"weight": 10, "min_duration_s": 0}, {"weight": 50, "min_duration_s": 0}, {"weight": 100}]
CI_TOKEN = TOKENS["ci"][1]
PLACEHOLDER = "REPLACE-WITH-A-CI-TOKEN"  # in examples/flagger/canary.yaml


async def judged(api: Api, version: str, *, canary_error_rate: float, **overrides: Any) -> dict[str, Any]:
    """A deploy driven with pushed 10-s windows until it leaves 'analyzing'."""
    d = await api.mark(marker(version=version, steps=STEPS, **overrides))
    for i in range(150):
        weight = d["steps"][max(d["step"]["index"], 0)]["weight"]
        d = (await api.push(d["id"], window(i, weight, canary_error_rate=canary_error_rate)))["deploy"]
        if d["state"] != "analyzing":
            return d
    raise AssertionError(f"deploy {version} still analyzing after 150 windows")


@pytest.fixture
async def deploys(api: Api) -> dict[str, dict[str, Any]]:
    passed = await judged(api, "v2.4.1", canary_error_rate=0.005)
    failed = await judged(api, "v2.4.2", canary_error_rate=0.05)
    assert (passed["state"], failed["state"]) == ("promoted", "rolled_back")
    return {"pass": passed, "fail": failed}


async def analysis(api: Api, as_: str | None = "read", **params: str) -> tuple[int, Any]:
    return await api.call("GET", "/api/v1/analysis", as_=as_, params=params)


async def flagger(
    api: Api, hook: str, body: dict[str, Any], *, as_: str | None = None, token: str | None = CI_TOKEN
) -> tuple[int, Any]:
    """Flagger's call: the token in the webhook's URL (Flagger cannot send headers), unless the
    test sends it as a header (``as_``) or not at all (``token=None``)."""
    query = f"type={hook}" + (f"&token={token}" if token is not None and as_ is None else "")
    return await api.call("POST", f"/hooks/flagger?{query}", as_=as_, json=body)


def flagger_body(**metadata: str) -> dict[str, Any]:
    return {"name": "checkout", "namespace": "production", "phase": "Progressing", "metadata": {**metadata}}


# --- GET /api/v1/analysis ---------------------------------------------------------------------------


async def test_analysis_of_a_promoted_deploy_is_pass_with_evidence_and_links(
    api: Api, deploys: dict[str, dict[str, Any]]
) -> None:
    status, out = await analysis(api, service="checkout", environment="production", version="v2.4.1")
    assert status == 200, out
    assert out["deploy_id"] == deploys["pass"]["id"]
    assert (out["state"], out["decision"], out["verdict_decision"]) == ("promoted", "pass", "pass")
    assert {e["metric"] for e in out["evidence"]} >= {"error_rate", "latency_p99"}
    assert out["deploy_url"] == f"{api.settings.server.public_url}/deploys/{out['deploy_id']}"
    assert out["api_url"].endswith(f"/api/v1/deploys/{out['deploy_id']}")
    assert "\n" not in out["summary"] and out["summary"].startswith("checkout v2.4.1 (production): promoted")


async def test_analysis_of_a_rolled_back_deploy_is_fail_with_the_reason(
    api: Api, deploys: dict[str, dict[str, Any]]
) -> None:
    status, out = await analysis(api, service="checkout", version="v2.4.2")
    assert status == 200, out
    assert (out["deploy_id"], out["decision"]) == (deploys["fail"]["id"], "fail")
    assert "canary analysis failed" in out["summary"]
    assert any(e["status"] == "fail" for e in out["evidence"])


async def test_without_a_version_the_newest_deploy_answers(api: Api, deploys: dict[str, dict[str, Any]]) -> None:
    status, out = await analysis(api, service="checkout", environment="production", version="")
    assert status == 200 and out["deploy_id"] == deploys["fail"]["id"]  # recorded last


async def test_a_deploy_still_being_judged_is_continue_and_before_data_none(api: Api) -> None:
    d = await api.mark(marker(version="v3.0.0", steps=[{"weight": 10, "min_duration_s": 3600}, {"weight": 100}]))
    status, out = await analysis(api, service="checkout", version="v3.0.0")
    assert status == 200 and (out["state"], out["decision"], out["verdict_decision"]) == ("analyzing", "none", None)
    assert "no verdict yet" in out["summary"]
    for i in range(150):  # healthy data until the step passes: the deploy waits out the step's minimum
        pushed = (await api.push(d["id"], window(i, 10)))["deploy"]
        if i == 0:
            _, first = await analysis(api, service="checkout", version="v3.0.0")
            assert (first["verdict_decision"], first["decision"]) == ("continue", "continue")
        if pushed["verdict"]["decision"] == "pass":
            break
    _, out = await analysis(api, service="checkout", version="v3.0.0")
    assert out["state"] == "analyzing" and out["verdict_decision"] == "pass" and out["decision"] == "continue"


async def test_a_paused_deploy_is_inconclusive(api: Api) -> None:
    d = await api.mark(marker(version="v3.1.0", steps=STEPS))
    await api.call("POST", f"/api/v1/deploys/{d['id']}/pause", as_="operator", json={"reason": "freeze"})
    _, out = await analysis(api, service="checkout", version="v3.1.0")
    assert (out["state"], out["decision"]) == ("paused", "inconclusive") and "freeze" in out["summary"]


async def test_a_version_without_a_deploy_yet_is_none_not_an_error(api: Api, deploys: dict[str, Any]) -> None:
    status, out = await analysis(api, service="checkout", environment="production", version="v9")
    assert status == 200, out
    assert (out["deploy_id"], out["state"], out["decision"]) == (None, None, "none")
    assert "no deploy recorded yet" in out["summary"] and "version 'v9'" in out["summary"]


async def test_analysis_needs_a_token_and_any_valid_token_reads(api: Api, deploys: dict[str, Any]) -> None:
    status, err = await analysis(api, as_=None, service="checkout")
    assert status == 401 and err["error"] == "unauthorized"
    for scope in ("ci", "operator", "read"):
        status, _ = await analysis(api, as_=scope, service="checkout")
        assert status == 200, scope


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({}, "service", "service is required"),
        ({"service": "checkout", "colour": "red"}, "colour", "unknown field 'colour'"),
        ({"service": "nope"}, "service", "no deploy matches service 'nope'"),
    ],
)
async def test_analysis_errors_name_the_field(
    api: Api, deploys: dict[str, Any], params: dict[str, str], field: str, words: str
) -> None:
    status, err = await analysis(api, **params)
    assert status in (400, 404) and err["field"] == field and words in err["detail"], err


# --- POST /hooks/flagger -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hook", "version", "expected"),
    [
        ("pre-rollout", "v2.4.1", 200),
        ("rollout", "v2.4.1", 200),
        ("confirm-traffic-increase", "v2.4.1", 200),
        ("confirm-promotion", "v2.4.1", 200),
        ("rollback", "v2.4.1", 409),
        ("pre-rollout", "v2.4.2", 409),
        ("rollout", "v2.4.2", 409),
        ("confirm-promotion", "v2.4.2", 409),
        ("rollback", "v2.4.2", 200),
    ],
)
async def test_flagger_webhooks_follow_flaggers_semantics(
    api: Api, deploys: dict[str, Any], hook: str, version: str, expected: int
) -> None:
    status, out = await flagger(api, hook, flagger_body(version=version))
    assert status == expected, out
    if status == 200:
        assert out["hook"] == hook and out["judgement"]["version"] == version
        assert out["answer"] == ("roll back" if hook == "rollback" else "advance")
    else:
        assert out["error"] == "refused" and hook in out["detail"] and "/deploys/" in out["detail"]


async def test_confirm_promotion_waits_while_the_judge_goes_on_and_rollout_checks_pass(api: Api) -> None:
    d = await api.mark(marker(version="v3.2.0", steps=STEPS))
    await api.push(d["id"], window(0, 10))
    assert (await flagger(api, "rollout", flagger_body(version="v3.2.0")))[0] == 200
    status, out = await flagger(api, "confirm-promotion", flagger_body(version="v3.2.0"))
    assert status == 409 and "the judge says continue" in out["detail"]
    assert (await flagger(api, "rollback", flagger_body(version="v3.2.0")))[0] == 409


async def test_flagger_finds_the_deploy_by_name_and_namespace_without_metadata(
    api: Api, deploys: dict[str, Any]
) -> None:
    body = {"name": "checkout", "namespace": "production", "phase": "Progressing",
            "checksum": "6d2f1a", "metadata": {}}
    status, out = await flagger(api, "rollback", body, as_="ci")  # the token in the header this time
    assert status == 200 and out["judgement"]["deploy_id"] == deploys["fail"]["id"]  # the newest
    status, err = await flagger(api, "rollout", {**body, "namespace": "staging"}, as_="ci")
    assert status == 404 and err["field"] == "name" and "environment 'staging'" in err["detail"]


async def test_flagger_hook_needs_a_ci_token_in_the_header_or_the_url(
    api: Api, deploys: dict[str, Any]
) -> None:
    no_token = {"name": "checkout", "namespace": "production", "metadata": {"version": "v2.4.1"}}
    status, err = await flagger(api, "rollout", no_token, token=None)
    assert status == 401 and "token=" in err["detail"]
    status, err = await flagger(api, "rollout", {**no_token, "metadata": {"token": CI_TOKEN}}, token=None)
    assert status == 401  # a token in the body is not read
    status, err = await flagger(api, "rollout", no_token, token="wrong")
    assert status == 401 and "wrong" not in err["detail"]
    status, err = await flagger(api, "rollout", no_token, token=TOKENS["read"][1])
    assert status == 403 and "'ci' scope" in err["detail"]
    status, _ = await flagger(api, "rollout", no_token, as_="operator")
    assert status == 403
    status, _ = await flagger(api, "rollout", no_token, as_="ci")
    assert status == 200
    status, _ = await flagger(api, "rollout", no_token)
    assert status == 200


@pytest.mark.parametrize(
    ("query", "body", "field", "words"),
    [
        ("type=post-rollout", flagger_body(), "type", "confirm-promotion"),
        ("", flagger_body(), "type", "type is required"),
        ("type=rollout", {"namespace": "production", "metadata": {}}, "name", "name is required"),
        ("type=rollout", {**flagger_body(), "weight": 10}, "weight", "unknown field 'weight'"),
        ("type=rollout", {"name": "checkout", "namespace": "production", "metadata": {"n": 1}},
         "metadata.n", "string"),
        ("type=rollout", flagger_body(service="payments"), "metadata.service", "no deploy matches service 'payments'"),
    ],
)
async def test_flagger_hook_errors_name_the_field(
    api: Api, deploys: dict[str, Any], query: str, body: dict[str, Any], field: str, words: str
) -> None:
    status, err = await api.call("POST", f"/hooks/flagger?{query}&token={CI_TOKEN}", as_=None, json=body)
    assert status in (400, 404) and err["field"] == field and words in err["detail"], err
    assert CI_TOKEN not in err["detail"]


# --- the example manifests against the real routes ---------------------------------------------------

_JSONPATH = re.compile(r"^\{\$((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\}$")
_ARG = re.compile(r"\{\{\s*args\.([A-Za-z0-9_-]+)\s*\}\}")


def jsonpath(expr: str, doc: Any) -> Any:
    """Kubernetes JSONPath, the subset Argo's examples use: ``{$.a.b}``."""
    m = _JSONPATH.match(expr)
    assert m, f"jsonPath {expr!r} is outside the {{$.a.b}} subset this test evaluates"
    for key in m.group(1).strip(".").split("."):
        doc = doc[key]
    return doc


def condition(expr: str, result: str) -> bool:
    """An Argo condition, evaluated as expr-lang does (tests/api/argo_model.py)."""
    return eval_condition(expr, result)


def render(text: str, args: dict[str, str]) -> str:
    return _ARG.sub(lambda m: args[m.group(1)], text)


async def test_argo_templates_read_the_decision_from_the_real_route(api: Api, deploys: dict[str, Any]) -> None:
    docs = list(yaml.safe_load_all((ROOT / "examples/argo/analysis-template.yaml").read_text()))
    secret = next(d for d in docs if d["kind"] == "Secret")
    templates = {d["metadata"]["name"]: d for d in docs if d["kind"] == "AnalysisTemplate"}
    assert set(templates) == {"guardrail-watch", "guardrail-gate"}
    rollout = yaml.safe_load((ROOT / "examples/argo/rollout.yaml").read_text())
    used = {t["templateName"] for t in rollout["spec"]["strategy"]["canary"]["analysis"]["templates"]}
    used |= {t["templateName"] for s in rollout["spec"]["strategy"]["canary"]["steps"] if "analysis" in s
             for t in s["analysis"]["templates"]}
    assert used == set(templates)
    outcomes = {}
    for name, template in templates.items():
        spec_args = {a["name"]: a for a in template["spec"]["args"]}
        token_ref = spec_args["api-token"]["valueFrom"]["secretKeyRef"]
        assert token_ref["name"] == secret["metadata"]["name"] and token_ref["key"] in secret["stringData"]
        (metric,) = template["spec"]["metrics"]
        web = metric["provider"]["web"]
        assert web["timeoutSeconds"] <= 30
        for version, expected in (("v2.4.1", "pass"), ("v2.4.2", "fail")):
            args = {"service": "checkout", "environment": "production", "version": version,
                    "guardrail-url": "http://guardrail.test", "api-token": TOKENS["read"][1]}
            url = urlsplit(render(web["url"], args))
            headers = {h["key"]: render(h["value"], args) for h in web["headers"]}
            resp = await api.client.get(url.path, params=parse_qsl(url.query, keep_blank_values=True),
                                        headers=headers)
            assert resp.status == 200, await resp.text()
            result = jsonpath(web["jsonPath"], await resp.json())
            assert result == expected
            outcomes[(name, version)] = (
                condition(metric["successCondition"], result), condition(metric["failureCondition"], result)
            )
        for result, success, failure in (("continue", name == "guardrail-watch", False),
                                         ("inconclusive", False, False)):
            assert condition(metric["successCondition"], result) is success, (name, result)
            assert condition(metric["failureCondition"], result) is failure, (name, result)
    assert outcomes == {
        ("guardrail-watch", "v2.4.1"): (True, False), ("guardrail-watch", "v2.4.2"): (False, True),
        ("guardrail-gate", "v2.4.1"): (True, False), ("guardrail-gate", "v2.4.2"): (False, True),
    }


async def test_confirm_rollout_holds_flagger_until_the_marker_is_in(api: Api) -> None:
    """Flagger waits (phase Waiting, no failed check) while confirm-rollout answers non-2xx
    (fluxcd/flagger pkg/controller/scheduler_hooks.go runConfirmRolloutHooks @ 15bd6ad5)."""
    status, _ = await flagger(api, "confirm-rollout", flagger_body(version="v8.0.0"))
    assert status == 404  # no marker yet: Flagger holds the canary
    await api.mark(marker(version="v8.0.0", steps=STEPS))
    status, out = await flagger(api, "confirm-rollout", flagger_body(version="v8.0.0"))
    assert status == 200 and out["answer"] == "advance"


async def test_flagger_canary_webhooks_get_the_documented_answers(api: Api, deploys: dict[str, Any]) -> None:
    canary = yaml.safe_load((ROOT / "examples/flagger/canary.yaml").read_text())
    assert canary["kind"] == "Canary"
    hooks = canary["spec"]["analysis"]["webhooks"]
    assert {h["type"] for h in hooks} == {"confirm-rollout", "pre-rollout", "rollout", "confirm-promotion", "rollback"}
    answers = {}
    for hook in hooks:
        url = urlsplit(hook["url"])
        query = dict(parse_qsl(url.query))
        assert url.path == "/hooks/flagger" and query == {"type": hook["type"], "token": PLACEHOLDER}
        assert "token" not in hook["metadata"]
        query["token"] = CI_TOKEN  # the placeholder, filled in
        for version in ("v2.4.1", "v2.4.2"):
            body = {"name": canary["metadata"]["name"], "namespace": canary["metadata"]["namespace"],
                    "phase": "Progressing", "checksum": "5f1c", "metadata": {**hook["metadata"], "version": version}}
            resp = await api.client.post(url.path, params=query, json=body)
            answers[(hook["type"], version)] = resp.status
    assert answers == {
        ("confirm-rollout", "v2.4.1"): 200, ("confirm-rollout", "v2.4.2"): 409,
        ("pre-rollout", "v2.4.1"): 200, ("pre-rollout", "v2.4.2"): 409,
        ("rollout", "v2.4.1"): 200, ("rollout", "v2.4.2"): 409,
        ("confirm-promotion", "v2.4.1"): 200, ("confirm-promotion", "v2.4.2"): 409,
        ("rollback", "v2.4.1"): 409, ("rollback", "v2.4.2"): 200,
    }
