"""``guardrail demo`` then ``guardrail draft``: the issue's "done when", as a person runs it.

The demo rolls 1.4.3 back; its post-mortem is drafted automatically, and ``guardrail draft
postmortem ID`` writes a complete one offline from the demo's SQLite file, with no server running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from guardrail.domain.drafts import DOCS, DraftKind


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDRAIL_")}
    return subprocess.run(
        [sys.executable, "-m", "guardrail.cli", *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    work = tmp_path_factory.mktemp("demo")
    out = _cli("demo", "--dir", str(work), cwd=work)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rolled_back = re.search(r"timeline of 1\.4\.3 \(([0-9a-f]{16})\)", out.stdout)
    assert rolled_back is not None, out.stdout[-2000:]
    assert "post-mortem drafted automatically after the rollback" in out.stdout
    return work, rolled_back.group(1), out.stdout


def test_draft_postmortem_of_the_demo_rollback_is_complete_offline(demo: tuple[Path, str, str]) -> None:
    work, deploy_id, _ = demo
    db = f"sqlite+aiosqlite:///{work / 'guardrail.db'}"
    out = _cli("draft", "postmortem", deploy_id, "--database-url", db, "-o", str(work / "pm.md"), cwd=work)
    assert out.returncode == 0, out.stderr
    assert "version 2 (offline)" in out.stderr  # version 1 was drafted automatically after the rollback
    text = (work / "pm.md").read_text()
    assert text.startswith("# Post-mortem: checkout 1.4.3")
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert headings == list(DOCS[DraftKind.POSTMORTEM].sections)
    assert "rolled it back to 1.4.2 automatically" in text
    assert "| Time (UTC) |" in text and "FAIL" in text  # the timeline with the judge's verdict


def test_draft_prints_to_stdout_and_names_bad_input(demo: tuple[Path, str, str]) -> None:
    work, deploy_id, _ = demo
    db = f"sqlite+aiosqlite:///{work / 'guardrail.db'}"
    out = _cli("draft", "rollback-plan", deploy_id, "--database-url", db, cwd=work)
    assert out.returncode == 0 and out.stdout.startswith("# Rollback plan: checkout 1.4.3")
    missing = _cli("draft", "postmortem", "0000000000000000", "--database-url", db, cwd=work)
    assert missing.returncode == 2 and "0000000000000000" in missing.stderr
    no_llm = _cli("draft", "postmortem", deploy_id, "--llm", "--database-url", db, cwd=work)
    assert no_llm.returncode == 2 and "llm" in no_llm.stderr.lower()
    bad_kind = _cli("draft", "essay", deploy_id, "--database-url", db, cwd=work)
    assert bad_kind.returncode == 2 and "postmortem" in bad_kind.stderr
