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
    assert "version 1 (offline)" in out.stderr  # drafted automatically after the rollback, read here
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


def test_the_demo_hints_run_as_printed_from_anywhere(demo: tuple[Path, str, str], tmp_path: Path) -> None:
    """The final hint is a command a shell runs as printed: not relying on PATH or on the cwd."""
    _, _, stdout = demo
    hints = [line.split("all of it:", 1)[1].strip() for line in stdout.splitlines() if "all of it:" in line]
    assert len(hints) == 1, stdout[-2000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARDRAIL_")}
    env["PATH"] = "/usr/bin:/bin"  # no venv on the PATH, as in a fresh shell after `make demo`
    out = subprocess.run(hints[0], shell=True, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# Post-mortem: checkout 1.4.3")
    assert "the links above" in stdout and "--serve" in stdout  # it says the server stopped and how to keep it


def test_draft_reads_the_stored_version_and_new_drafts_another(demo: tuple[Path, str, str]) -> None:
    work, deploy_id, _ = demo
    db = f"sqlite+aiosqlite:///{work / 'guardrail.db'}"
    first = _cli("draft", "postmortem", deploy_id, "--database-url", db, cwd=work)
    assert first.returncode == 0, first.stderr
    version = int(re.search(r"version (\d+)", first.stderr).group(1))  # type: ignore[union-attr]
    assert "stored" in first.stderr and "--new" in first.stderr, first.stderr
    again = _cli("draft", "postmortem", deploy_id, "--database-url", db, cwd=work)
    assert f"version {version} " in again.stderr and again.stdout == first.stdout  # reading stores nothing
    new = _cli("draft", "postmortem", deploy_id, "--database-url", db, "--new", cwd=work)
    assert new.returncode == 0, new.stderr
    assert f"version {version + 1} " in new.stderr
    latest = _cli("draft", "postmortem", deploy_id, "--database-url", db, cwd=work)
    assert f"version {version + 1} " in latest.stderr
