"""The differential test of issue 17: the in-service alert rules (guardrail.domain.rules) and
Prometheus's (alerts/rules.yml, evaluated by the real ``promtool test rules``) on the same seeded
data: every pending, firing and resolved time identical at the 1-minute evaluation interval, every
value within 1e-6 relative. The data sets and both inputs are built in tests/rule_parity.py; one
promtool run evaluates them all.

Prometheus's behaviour this relies on (v2.42.0, the Debian package; upstream commit 225c6112):
rules/alerting.go ``AlertingRule.Eval`` (a series missing from the result resolves a firing alert and
drops a pending one; ``for`` is ``ts - ActiveAt >= holdDuration``); promql/engine.go
``matrixIterSlice`` and ``vectorSelectorSingle`` (ranges and the 5-minute lookback include their
left end); promql/functions.go ``extrapolatedRate``, ``bucketQuantile`` (a rank past the last finite
bucket returns that bound) and ``linearRegression``; cmd/promtool/unittest.go (rules evaluated
every ``evaluation_interval`` from time 0, then each ``promql_expr_test`` queried, differences
printed as ``got:``).
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
import yaml

from tests import rule_parity as parity

REQUIRED = os.environ.get("CI") == "true" or os.environ.get("GUARDRAIL_REQUIRE_INTEGRATION") == "1"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (Debian package prometheus; `make test` installs it)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def results(promtool: str) -> list[parity.Comparison]:
    ds = parity.datasets()
    prom = parity.run_promtool(ds, promtool)
    return [parity.compare(d, parity.run_service(d), prom[d.name]) for d in ds]


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).replace("( ", "(").replace(" )", ")").strip()


def test_the_compared_values_are_the_rule_files_own_expressions():
    groups = yaml.safe_load(parity.RULES_YML.read_text())["groups"]
    exprs = {r["alert"]: _squash(r["expr"]) for g in groups for r in g["rules"]}
    for rule, raw in parity.RAW.items():
        assert _squash(raw) in exprs[rule], rule


def test_the_in_service_rules_and_prometheus_agree_on_every_data_set(results):
    bad = [c for c in results if not c.agree]
    report = (
        parity.table(results)
        + "\n\n"
        + "\n\n".join(f"{c.dataset}:\n{parity.first_mismatches(c)}" for c in bad)
    )
    assert not bad, report


def test_the_data_sets_exercise_what_they_are_named_after(results):
    """Not a vacuous agreement: the healthy data never alerts; every other data set pages, and the
    holes and zero traffic resolve a firing rule and fire it again afterwards (the agreed semantics)."""
    by = {c.dataset: c for c in results}
    assert set(by) == {
        "healthy", "hovering", "step-change", "holes-pending", "holes-firing", "zero-traffic",
        "counter-reset", "inf-edge", "memory-trend",
    }  # fmt: skip
    assert by["healthy"].pages["service"] == 0
    for name, c in by.items():
        assert c.points > 0 and c.pages["service"] == c.pages["prometheus"], name
        if name != "healthy":
            assert c.pages["service"] > 0, name
    assert by["step-change"].pages["service"] >= 5  # every deployment rule fires on the canary
    assert by["hovering"].pages["service"] >= 10  # flapping around the thresholds
    for name in ("holes-firing", "zero-traffic"):
        assert by[name].pages["service"] >= 2 * 2, name  # error rate and p99: paged again after the gap
