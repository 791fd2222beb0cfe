"""The Prometheus rule files and the Alertmanager example, checked by the real promtool and amtool."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ALERTS = Path(__file__).resolve().parent.parent / "alerts"
REQUIRED = os.environ.get("CI") == "true" or os.environ.get("GUARDRAIL_REQUIRE_INTEGRATION") == "1"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package prometheus / prometheus-alertmanager; `make test` installs it)"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_rules_pass_promtool_lint():
    r = _run(_tool("promtool"), "check", "rules", "--lint=all", "--lint-fatal", str(ALERTS / "rules.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 9 rules found" in r.stdout


def test_rule_unit_tests_pass():
    r = _run(_tool("promtool"), "test", "rules", str(ALERTS / "tests.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_rule_has_a_unit_test_and_a_runbook_section():
    import yaml

    rules = [r["alert"] for g in yaml.safe_load((ALERTS / "rules.yml").read_text())["groups"] for r in g["rules"]]
    tested = {t["alertname"] for case in yaml.safe_load((ALERTS / "tests.yml").read_text())["tests"]
              for t in case["alert_rule_test"]}
    runbook = (ALERTS / "RUNBOOK.md").read_text()
    assert set(rules) == tested
    for name in rules:
        assert f"## {name}" in runbook


def test_alertmanager_example_passes_amtool():
    r = _run(_tool("amtool"), "check-config", str(ALERTS / "alertmanager.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
