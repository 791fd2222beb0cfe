"""Mutation-pinned promtool tests (issue 17): every threshold, comparison operator and ``for``
duration of alerts/rules.yml, moved by the smallest meaningful step, must make
``promtool test rules alerts/tests.yml`` fail. So do the clauses of a rule joined by ``and``/``or``,
each left out in turn. A mutant that passes names an edge the unit tests do not pin.

The smallest meaningful step:
- a threshold: 1% of its value (0.01 -> 0.0099 and 0.0101), one unit for a count or a zero threshold
  (deploys in progress; bytes per second of memory growth), one evaluation interval (60 s) for a
  threshold in seconds;
- an operator: the edge flips (``>`` <-> ``>=``, ``<`` <-> ``<=``), ``==`` <-> ``!=``;
- a ``for``: one evaluation interval (1m) either way; a rule without ``for`` gets ``for: 1m``.
Runs the real promtool (Debian package prometheus), one process per mutant on the test groups that
check the mutated rule (~0.1 s each).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ALERTS = Path(__file__).resolve().parent.parent / "alerts"
REQUIRED = os.environ.get("CI") == "true" or os.environ.get("GUARDRAIL_REQUIRE_INTEGRATION") == "1"

# (rule, threshold as written) -> the two mutated values; every threshold in rules.yml must be here
STEPS: dict[tuple[str, str], tuple[str, str]] = {
    ("HighErrorRate", "0.01"): ("0.0099", "0.0101"),
    ("HighLatencyP99", "1"): ("0.99", "1.01"),
    ("HighLatencyP99", "0.99"): ("0.9801", "0.9999"),
    ("DBConnectionPoolExhausted", "1"): ("0.99", "1.01"),
    ("DiskSpaceLow", "0.10"): ("0.099", "0.101"),
    ("MemoryLeakSuspected", "0"): ("-1", "1"),  # bytes per second
    ("MemoryLeakSuspected", "2 * 1024 * 1024 * 1024"): (
        "1.98 * 1024 * 1024 * 1024",
        "2.02 * 1024 * 1024 * 1024",
    ),
    ("GuardrailRollbackFailed", "1"): ("0.99", "1.01"),
    ("GuardrailAnalysisStalled", "1"): ("0.99", "1.01"),
    ("GuardrailMetricSourceDown", "0"): ("-1", "1"),  # up == 0; deploys in progress > 0
    ("GuardrailDeployStuck", "3600"): ("3540", "3660"),  # seconds: one evaluation interval
}
FLIP = {">": ">=", ">=": ">", "<": "<=", "<=": "<", "==": "!=", "!=": "=="}
_COMPARISON = re.compile(
    r"(?<![=!<>~])(?P<op>>=|<=|==|!=|>|<)(?P<sp>\s*(?:bool\s+)?)(?P<num>-?\d+(?:\.\d+)?(?:\s*\*\s*\d+(?:\.\d+)?)*)"
)
_JOIN = re.compile(r"\s\b(?P<op>and|or|unless)\b(?:\s+(?:on|ignoring)\s*\([^)]*\))?\s")


@dataclass(frozen=True)
class Mutant:
    rule: str
    what: str  # e.g. "threshold 0.01 -> 0.0099"
    rules_yml: str


def _top_level(expr: str, op: str) -> list[tuple[int, int]]:
    """Spans of the ``op`` joins (with their on/ignoring) at parenthesis depth 0."""
    depth, spans = 0, []
    depth_at = []
    for ch in expr:
        depth += ch == "("
        depth -= ch == ")"
        depth_at.append(depth)
    for m in _JOIN.finditer(expr):
        if m["op"] == op and depth_at[m.start()] == 0:
            spans.append((m.start(), m.end()))
    return spans


def _split(expr: str, op: str) -> list[str]:
    parts, at = [], 0
    for a, b in _top_level(expr, op):
        parts.append(expr[at:a])
        at = b
    return [*parts, expr[at:]]


def _clause_drops(expr: str) -> Iterator[tuple[str, str]]:
    """Each operand of a top-level ``or``, then of each ``and`` inside it, left out in turn."""
    terms = _split(expr, "or")
    if len(terms) > 1:
        for i, t in enumerate(terms):
            yield (
                f"without or-term {i + 1} of {len(terms)} `{_short(t)}`",
                " or ".join(terms[:i] + terms[i + 1 :]),
            )
    for i, term in enumerate(terms):
        factors = _split(term, "and")
        if len(factors) > 1:
            for j, f in enumerate(factors):
                rest = " and ".join(factors[:j] + factors[j + 1 :])
                yield (
                    f"without and-operand {j + 1} of {len(factors)} `{_short(f)}`",
                    " or ".join([*terms[:i], rest, *terms[i + 1 :]]),
                )


def _short(text: str) -> str:
    words = " ".join(text.split())
    return words if len(words) <= 70 else words[:40] + " ... " + words[-25:]


def mutants(rules_text: str) -> list[Mutant]:
    doc = yaml.safe_load(rules_text)
    out: list[Mutant] = []
    seen_thresholds: set[tuple[str, str]] = set()

    def emit(gi: int, ri: int, what: str, **change: object) -> None:
        d = yaml.safe_load(rules_text)
        rule = d["groups"][gi]["rules"][ri]
        for k, v in change.items():
            rule[k] = v
        out.append(Mutant(rule["alert"], what, yaml.safe_dump(d, sort_keys=False, width=1 << 16)))

    for gi, group in enumerate(doc["groups"]):
        for ri, rule in enumerate(group["rules"]):
            name, expr = rule["alert"], rule["expr"]
            for m in _COMPARISON.finditer(expr):
                op, num = m["op"], " ".join(m["num"].split())
                key = (name, num)
                assert key in STEPS, f"{name}: no step for the threshold {num!r}: add it to STEPS"
                seen_thresholds.add(key)
                flipped = expr[: m.start("op")] + FLIP[op] + expr[m.end("op") :]
                emit(gi, ri, f"`{op} {num}` -> `{FLIP[op]} {num}`", expr=flipped)
                for new in STEPS[key]:
                    moved = expr[: m.start("num")] + new + expr[m.end("num") :]
                    emit(gi, ri, f"`{op} {num}` -> `{op} {new}`", expr=moved)
            for what, dropped in _clause_drops(expr):
                emit(gi, ri, what, expr=dropped)
            if "for" in rule:
                minutes = re.fullmatch(r"(\d+)m", rule["for"])
                assert minutes, (
                    f"{name}: write `for` in minutes (the evaluation interval), got {rule['for']!r}"
                )
                for new in (int(minutes[1]) - 1, int(minutes[1]) + 1):
                    emit(gi, ri, f"for {rule['for']} -> {new}m", **{"for": f"{new}m" if new else "0s"})
            else:
                emit(gi, ri, "no for -> for 1m", **{"for": "1m"})
    assert seen_thresholds == set(STEPS), (
        f"STEPS names thresholds rules.yml no longer has: {set(STEPS) - seen_thresholds}"
    )
    return out


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (Debian package prometheus; `make test` installs it)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return path


def _passes(promtool: str, tests: Path, rules_yml: str) -> tuple[bool, str]:
    (tests.parent / "rules.yml").write_text(rules_yml)
    r = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60, check=False
    )
    return r.returncode == 0, r.stdout + r.stderr


def test_every_mutant_of_the_rules_fails_the_promtool_tests(promtool: str, tmp_path: Path):
    """A mutant of rule R runs against the test groups of alerts/tests.yml that name R (the others
    check other alerts and cannot see it): the same verdict as the whole file, in a fraction of
    the time."""
    rules_text = (ALERTS / "rules.yml").read_text()
    tests = yaml.safe_load((ALERTS / "tests.yml").read_text())
    whole = tmp_path / "tests.yml"
    whole.write_text(yaml.safe_dump(tests, sort_keys=False))
    ok, out = _passes(promtool, whole, rules_text)
    assert ok, f"the unmutated rules must pass their tests:\n{out}"
    by_rule: dict[str, Path] = {}
    all_mutants = mutants(rules_text)
    assert len(all_mutants) >= 9 * 4  # every rule: operator, two thresholds, two `for`s at least
    survivors = []
    for m in all_mutants:
        if m.rule not in by_rule:
            groups = [g for g in tests["tests"] if m.rule in yaml.safe_dump(g)]
            assert groups, f"no test group of alerts/tests.yml checks {m.rule}"
            by_rule[m.rule] = tmp_path / f"tests-{m.rule}.yml"
            by_rule[m.rule].write_text(yaml.safe_dump({**tests, "tests": groups}, sort_keys=False))
        passed, out = _passes(promtool, by_rule[m.rule], m.rules_yml)
        if passed:
            survivors.append(f"{m.rule}: {m.what}")
        else:  # failed on a test's expectation, not on loading the mutant
            assert re.search(r"^\s+(alertname|expr): ", out, re.M), (
                f"{m.rule}: {m.what}: not a test failure:\n{out}"
            )
    assert not survivors, (
        f"{len(survivors)} of {len(all_mutants)} mutants pass alerts/tests.yml:\n" + "\n".join(survivors)
    )
