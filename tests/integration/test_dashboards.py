"""The Grafana dashboards in ``dashboards/``: valid, provisionable JSON, and every query they hold runs
against a real Prometheus and returns data.

Structure: unique uids and panel ids, gridPos inside the 24-column grid without overlaps, every
target with an expr and a unique refId, every datasource the provisioned one (uid ``prom``) or
Grafana's own annotation store, every template variable used defined (and defined before it is
used), provisioning files pointing where docker-compose mounts the dashboards.

Real run (``dashboards_fixtures.dashboard_stack``): template variables are resolved in order the way
Grafana does it (``label_values(m, l)`` -> ``/api/v1/label/l/values?match[]=m``; All -> ``.*``,
otherwise the first value), substituted into every panel target (range targets via
``query_range`` over the life of the stack, instant ones via ``query``; a repeated panel once per
value of its variable) and every Prometheus annotation query; each must succeed and return at least
one series with a number that is not NaN. Queries are polled until a shared deadline, since some
data (the DORA gauges, a stall) appears a few seconds after the scenario ends.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.integration import dashboards_fixtures
from tests.integration.conftest import REPO_ROOT
from tests.integration.dashboards_fixtures import DashboardStack

pytestmark = pytest.mark.integration

dashboard_stack = dashboards_fixtures.dashboard_stack  # the fixture, for the tests below

DASHBOARDS = REPO_ROOT / "dashboards"
PROVISIONING = DASHBOARDS / "provisioning"
UIDS = ("guardrail-deploys", "guardrail-canary", "guardrail-dora", "guardrail-health")
GRAFANA_DATASOURCE = {"type": "grafana", "uid": "-- Grafana --"}
BUILTIN_VARIABLES = {
    "__interval", "__interval_ms", "__rate_interval", "__range", "__range_s", "__range_ms", "__data",
    "__field", "__series", "__value", "__all", "__from", "__to", "__dashboard", "__org", "__user",
    "__url_time_range", "__timeFilter", "__name",
}
# what Grafana would put in for the built-ins, for queries over the stack's short life (1 s scrapes)
SUBSTITUTES = {"__rate_interval": "20s", "__interval": "2s", "__range": "10m"}
STEP_S = 1.0
DEADLINE_S = 30.0  # per dashboard, for all its queries to return data (the stack is ready by then)
VAR_REF = re.compile(r"\$\{(\w+)(?:[.:][^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")


def load(uid: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS / f"{uid}.json").read_text())


def provisioned_datasource() -> dict[str, Any]:
    cfg = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    (ds,) = cfg["datasources"]
    return ds


def all_panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])  # collapsed rows hold their panels


def variables(d: dict[str, Any]) -> list[dict[str, Any]]:
    return d["templating"]["list"]


def prom_annotations(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in d["annotations"]["list"] if a["datasource"].get("type") == "prometheus"]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every leaf and dict in the JSON."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def references(text: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in VAR_REF.finditer(text)}


# ==================================================================================================
# Structure
# ==================================================================================================


def test_the_four_dashboards_are_there_with_distinct_uids_and_titles() -> None:
    """Each dashboard file holds its own uid (file name = uid), and no two share a uid or title."""
    files = sorted(p.stem for p in DASHBOARDS.glob("*.json"))
    assert files == sorted(UIDS)
    boards = [load(u) for u in UIDS]
    assert [b["uid"] for b in boards] == list(UIDS)
    assert len({b["title"] for b in boards}) == len(UIDS)


@pytest.mark.parametrize("uid", UIDS)
def test_dashboard_has_the_fields_grafana_needs(uid: str) -> None:
    """schemaVersion 39, a time range, a refresh, templating and annotation lists, tags for the
    dashboard links, and panels."""
    d = load(uid)
    assert d["schemaVersion"] == 39
    assert d["time"]["from"].startswith("now-") and d["time"]["to"] == "now"
    assert re.fullmatch(r"\d+[smhd]", d["refresh"])
    assert isinstance(d["templating"]["list"], list) and isinstance(d["annotations"]["list"], list)
    assert "guardrail" in d["tags"] and d["panels"]
    assert "id" not in d or d["id"] is None  # provisioning assigns ids; a fixed one would clash


@pytest.mark.parametrize("uid", UIDS)
def test_panels_have_unique_ids_and_fit_the_grid_without_overlapping(uid: str) -> None:
    d = load(uid)
    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), ids
    titles = [p["title"] for p in all_panels(d)]
    assert len(titles) == len(set(titles)), titles
    taken: dict[tuple[int, int], str] = {}
    for p in all_panels(d):
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in ("x", "y", "w", "h")), p["title"]
        assert g["x"] >= 0 and g["w"] >= 1 and g["x"] + g["w"] <= 24 and g["h"] >= 1, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']!r} overlaps {taken[x, y]!r} at {(x, y)}"
                taken[x, y] = p["title"]


@pytest.mark.parametrize("uid", UIDS)
def test_every_target_has_an_expr_and_a_unique_refid(uid: str) -> None:
    d = load(uid)
    for p in all_panels(d):
        if p["type"] in ("row", "text", "annolist"):
            assert not p.get("targets"), p["title"]
            continue
        targets = p.get("targets") or []
        assert targets, f"panel {p['title']!r} has no query"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)) and all(refs), p["title"]
        for t in targets:
            assert isinstance(t.get("expr"), str) and t["expr"].strip(), (p["title"], t["refId"])


@pytest.mark.parametrize("uid", UIDS)
def test_every_datasource_is_the_provisioned_prometheus_or_the_annotation_store(uid: str) -> None:
    prom = provisioned_datasource()
    expected = {"type": prom["type"], "uid": prom["uid"]}
    found = [(path, v) for path, v in walk(load(uid)) if path.endswith(".datasource")]
    assert found
    for path, ds in found:
        assert ds in (expected, GRAFANA_DATASOURCE), f"{path}: {ds}"
    for a in load(uid)["annotations"]["list"]:
        if a["datasource"] == GRAFANA_DATASOURCE and not a.get("builtIn"):
            assert a["target"]["type"] == "tags" and a["target"]["tags"], a["name"]


@pytest.mark.parametrize("uid", UIDS)
def test_template_variables_used_are_defined_before_use(uid: str) -> None:
    d = load(uid)
    defined: list[str] = []
    for v in variables(d):
        used = references(json.dumps(v.get("query", "")))
        assert used <= set(defined) | BUILTIN_VARIABLES, f"variable {v['name']} uses {used - set(defined)}"
        if v["type"] == "query":
            assert re.fullmatch(r"label_values\((.+), *(\w+)\)", v["query"]), v["query"]
            assert v["datasource"] == {"type": "prometheus", "uid": "prom"}
        defined.append(v["name"])
    assert len(defined) == len(set(defined))
    for path, value in walk({k: d[k] for k in ("panels", "annotations", "links", "title")}):
        if isinstance(value, str):
            missing = references(value) - set(defined) - BUILTIN_VARIABLES
            assert not missing, f"{path} uses undefined {missing}: {value}"
    for p in all_panels(d):
        if p.get("repeat"):
            assert p["repeat"] in defined, p["title"]


def test_provisioning_points_at_the_mounted_dashboards_and_the_prom_datasource() -> None:
    """docker-compose mounts dashboards/provisioning at /etc/grafana/provisioning and dashboards/*.json
    at /var/lib/grafana/dashboards."""
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "guardrail.yaml").read_text())
    assert providers["apiVersion"] == 1
    (p,) = providers["providers"]
    assert p["type"] == "file" and p["options"]["path"] == "/var/lib/grafana/dashboards"
    ds = provisioned_datasource()
    assert (ds["type"], ds["uid"], ds["url"], ds["access"]) == ("prometheus", "prom", "http://prometheus:9090", "proxy")


def test_deploys_and_canary_dashboards_link_to_guardrail_deploy_pages() -> None:
    deploys, canary = load("guardrail-deploys"), load("guardrail-canary")
    table = next(p for p in deploys["panels"] if p["title"] == "Deploys in progress")
    links = [lk["url"] for o in table["fieldConfig"]["overrides"] for prop in o["properties"]
             if prop["id"] == "links" for lk in prop["value"]]
    assert links == ["${guardrail_url}/deploys/${__data.fields.deploy}"]
    assert "${guardrail_url}/deploys/${deploy_id}" in [lk["url"] for lk in canary["links"]]
    tags = {tuple(a["target"]["tags"]) for a in deploys["annotations"]["list"] if "target" in a}
    assert ("deploy",) in tags  # the markers guardrail posts to Grafana's annotation store


# ==================================================================================================
# Every query against a real Prometheus
# ==================================================================================================


class Resolver:
    """Template variables resolved in order against Prometheus, then substituted into queries."""

    def __init__(self, stack: DashboardStack, d: dict[str, Any]) -> None:
        self.prom = stack.prometheus
        self.start = stack.started_at
        self.d = d
        self.values: dict[str, list[str]] = {}
        self.chosen: dict[str, str] = {}

    def substitute(self, text: str, **pinned: str) -> str:
        table = {**SUBSTITUTES, **self.chosen, **pinned}

        def one(m: re.Match[str]) -> str:
            name = next(g for g in m.groups() if g)
            if name not in table:
                raise AssertionError(f"no value for ${name} in {text!r}")
            return table[name]

        return VAR_REF.sub(one, text)

    def label_values(self, query: str) -> list[str]:
        m = re.fullmatch(r"label_values\((.+), *(\w+)\)", self.substitute(query))
        assert m, query
        status, body = self.prom.api(f"/api/v1/label/{m[2]}/values",
                                     {"match[]": m[1], "start": self.start, "end": time.time()})
        assert status == 200 and body["status"] == "success", body
        return body["data"]

    def resolve(self, deadline: float) -> list[str]:
        """Resolves every variable (polling until ``deadline`` for values); returns the problems."""
        problems = []
        for v in variables(self.d):
            if v["type"] == "textbox":
                self.values[v["name"]] = [v["query"]]
                self.chosen[v["name"]] = v["query"]
                continue
            values = poll(lambda v=v: self.label_values(v["query"]), deadline)
            if not values:
                problems.append(f"variable {v['name']}: {v['query']} has no values")
                values = ["no-value"]
            self.values[v["name"]] = values
            self.chosen[v["name"]] = v.get("allValue", ".*") if v.get("includeAll") else values[0]
        return problems


def poll(fetch: Any, deadline: float) -> Any:
    """``fetch()`` until it returns something truthy or the deadline passes (then its last answer)."""
    while True:
        out = fetch()
        if out or time.monotonic() >= deadline:
            return out
        time.sleep(0.5)


def has_numbers(result: list[dict[str, Any]]) -> bool:
    def ok(v: str) -> bool:
        return not math.isnan(float(v))

    return any(ok(s["value"][1]) if "value" in s else any(ok(v) for _, v in s["values"]) for s in result)


def run_query(stack: DashboardStack, expr: str, *, instant: bool, step: str | float = STEP_S) -> tuple[bool, str]:
    """Runs ``expr`` like Grafana would; (has data, what came back)."""
    now = time.time()
    if instant:
        status, body = stack.prometheus.api("/api/v1/query", {"query": expr, "time": now})
    else:
        status, body = stack.prometheus.api("/api/v1/query_range",
                                            {"query": expr, "start": stack.started_at, "end": now, "step": step})
    if status != 200 or body.get("status") != "success":
        return False, f"HTTP {status}: {body.get('errorType')}: {body.get('error')}"
    result = body["data"]["result"]
    return has_numbers(result), f"{len(result)} series, none with a number" if result else "empty result"


def queries(r: Resolver) -> Iterator[tuple[str, str, bool]]:
    """(where, PromQL, instant) of every panel target (per repeat value) and Prometheus annotation."""
    for p in all_panels(r.d):
        repeat = p.get("repeat")
        pins = [{repeat: v} for v in r.values[repeat]] if repeat else [{}]
        for pin in pins:
            for t in p.get("targets", []):
                where = f"panel {p['title']!r} {t['refId']}" + (f" ({pin})" if pin else "")
                yield where, r.substitute(t["expr"], **pin), bool(t.get("instant"))
    for a in prom_annotations(r.d):
        yield f"annotation {a['name']!r}", r.substitute(a["expr"]), False


@pytest.mark.parametrize("uid", UIDS)
def test_every_query_of_the_dashboard_returns_data_from_a_real_prometheus(
    dashboard_stack: DashboardStack, uid: str
) -> None:
    """Template queries first (each must list values), then every panel target and annotation query
    with the variables substituted: each parses, runs and returns at least one number."""
    deadline = time.monotonic() + DEADLINE_S
    r = Resolver(dashboard_stack, load(uid))
    problems = r.resolve(deadline)
    ran = 0
    for where, expr, instant in queries(r):
        ran += 1
        outcome = poll(lambda e=expr, i=instant: run_query(dashboard_stack, e, instant=i)[0], deadline)
        if not outcome:
            problems.append(f"{where}: {run_query(dashboard_stack, expr, instant=instant)[1]}\n    {expr}")
    assert ran >= 5
    if problems and uid == "guardrail-dora" and not dashboard_stack.prometheus.query('{__name__=~"guardrail_dora_.+"}'):
        problems.insert(0, "guardrail exports no guardrail_dora_* series at all: is the DORA service built "
                        "and its refresh loop started in guardrail/main.py?")
    assert not problems, f"{uid}: {len(problems)} of {ran} queries without data:\n" + "\n".join(problems)


def test_the_deploys_dashboard_counts_the_failed_rollback_and_a_rollback_rate(dashboard_stack: DashboardStack) -> None:
    """Figures, not just data: 7 deploys started (5 pushed, 2 pulled), 5 finished (2 promoted, 2 rolled
    back, 1 rollback failed: rollback rate 3/5), 1 failed rollback, 2 held. Counters born inside the
    range count in full (the stack is younger than the 10-minute range)."""
    r = Resolver(dashboard_stack, load("guardrail-deploys"))
    assert not r.resolve(time.monotonic() + 10)
    panels = {p["title"]: p for p in all_panels(r.d)}

    def value(title: str) -> float:
        res = dashboard_stack.prometheus.query(r.substitute(panels[title]["targets"][0]["expr"]))
        assert len(res) == 1, (title, res)
        return float(res[0]["value"][1])

    assert value("Deploys started") == 7
    assert value("Deploys finished") == 5
    assert value("Rollback rate") == pytest.approx(0.6)
    assert value("Failed rollbacks") == 1
    assert value("Active deploys") == 2  # the two pulled deploys, held on their first step
    assert value("Stalled analyses") == 1


def test_the_canary_dashboard_shows_evidence_for_the_pulled_deploy(dashboard_stack: DashboardStack) -> None:
    """The deploy variable offers the deploy guardrail is analysing from this Prometheus, and its
    confidence bounds bracket its estimate."""
    r = Resolver(dashboard_stack, load("guardrail-canary"))
    assert not r.resolve(time.monotonic() + DEADLINE_S)
    pulled = dashboard_stack.deploys["pulled"]
    assert pulled in r.values["deploy_id"]  # (with the deploys that were active earlier in the range)
    panel = next(p for p in all_panels(r.d) if p.get("repeat") == "metric")
    metrics = r.label_values(f'label_values(guardrail_evidence_ratio{{deploy="{pulled}"}}, metric)')
    assert "error_rate" in metrics and len(metrics) >= 2, metrics
    for metric in metrics:
        expr = r.substitute(panel["targets"][0]["expr"], metric=metric, deploy_id=pulled)
        res = dashboard_stack.prometheus.query(expr)
        bounds = {s["metric"]["bound"]: float(s["value"][1]) for s in res}
        if {"ci_low", "estimate", "ci_high"} <= set(bounds):
            assert bounds["ci_low"] <= bounds["estimate"] <= bounds["ci_high"], (metric, bounds)


def test_the_stack_delivered_and_kept_notifications(dashboard_stack: DashboardStack) -> None:
    """The receiver got announcements and pages (what the 'sent' series counts), and the one that
    answers 400 was tried (what 'failed' counts)."""
    deadline = time.monotonic() + 20
    paths = poll(lambda: {p for p, _ in dashboard_stack.receiver.received} >= {"/ok", "/reject"}, deadline)
    assert paths, dashboard_stack.receiver.received
