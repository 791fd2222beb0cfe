"""The CI examples run as written: the deploy job of ``examples/github-actions.yml`` (its ``run:``
steps) and of ``examples/gitlab-ci.yml`` (its script lines), read from the YAML, executed by bash in
a git checkout against a real ``guardrail serve`` process, which pulls its data from a real
Prometheus scraping the sample service (a baseline and a canary process) under load. The job's
``./deploy-production.sh`` and the server's ``checkout-deploy`` preset both run the checkout's script,
which moves the load generator's split, as a load balancer would.

A healthy version is promoted and ``guardrail wait`` exits 0; a regressed one (the canary process
fails a quarter of its requests) is rolled back and it exits 1, then the job's failure path shows
the evidence. Only the steps that install tools are not run (the test runs this checkout's
guardrail, and jq is installed): they are named below and must exist as written.

Data time is short for the test, through the marker file the examples read
(``GUARDRAIL_MARKER_FILE``): 2 s windows, 6 s steps and wide PASS margins (as in
test_prometheus_e2e); examples/guardrail-marker.yml holds the production ones."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from examples.app.load import LoadGenerator
from tests.integration.conftest import SAMPLE_ERROR_RATE, ScrapedPair, _require_or_skip
from tests.integration.servers import GuardrailProcess, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GITHUB = ROOT / "examples" / "github-actions.yml"
GITLAB = ROOT / "examples" / "gitlab-ci.yml"
TOKEN = "ci-example-token"
RPS = 600
STEP_TIMEOUT_S = 90.0
# the steps that only install tools, with what each must contain: the test does not run them
GITHUB_INSTALL_STEPS = {"Install the guardrail CLI": "pip install"}
GITLAB_INSTALL_LINES = ("pip install", "apt-get install -y -qq jq")

# The marker file the examples read, with the test's short data time (2 s windows, 6 s steps) and
# the wide PASS margins of test_prometheus_e2e (a healthy canary is promoted after ~20 s of traffic).
TEST_MARKER = {
    "metrics": {
        "source": "prometheus",
        "overrides": {
            "error_rate": {"critical_change": 3.0},
            "latency_p99": {"critical_change": 5.0},
            "latency_p95": {"critical_change": 3.0},
        },
    },
    "steps": [{"weight": 10, "min_duration_s": 6}, {"weight": 50, "min_duration_s": 6}, {"weight": 100}],
    "analysis": {"interval_s": 2, "max_duration_s": 60},
}

# The team's deploy script: here it records which version has which share of the traffic.
DEPLOY_SCRIPT = """#!/bin/sh
# ./deploy-production.sh VERSION --weight PERCENT
set -eu
[ "$2" = "--weight" ] || { echo "usage: $0 VERSION --weight PERCENT" >&2; exit 2; }
state="$(dirname "$0")/traffic.state"
echo "$1 $3" > "$state.new" && mv "$state.new" "$state"  # atomically: the load reads it meanwhile
echo "$1 on $3% of traffic"
"""


@dataclass
class Checkout:
    """The repository as CI checks it out: three commits, the deploy script, the marker files."""

    path: Path
    commits: list[str]  # oldest first

    @classmethod
    def make(cls, path: Path) -> Checkout:
        path.mkdir(parents=True)
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "dana",
            "GIT_AUTHOR_EMAIL": "dana@example.test",
            "GIT_COMMITTER_NAME": "dana",
            "GIT_COMMITTER_EMAIL": "dana@example.test",
        }

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args], cwd=path, env=env, check=True, capture_output=True, text=True
            ).stdout.strip()

        git("init", "-q", "-b", "main")
        script = path / "deploy-production.sh"
        script.write_text(DEPLOY_SCRIPT)
        script.chmod(0o755)
        for where in (".github/guardrail-marker.yml", "ci/guardrail-marker.yml"):
            (path / where).parent.mkdir(parents=True, exist_ok=True)
            (path / where).write_text(yaml.safe_dump(TEST_MARKER))
        commits = []
        for subject in ("feat: checkout 1.4.1", "feat: new payment client", "fix: retry the payment call"):
            git("add", "-A")
            git("commit", "-q", "--allow-empty", "-m", subject)
            commits.append(git("rev-parse", "HEAD"))
        return cls(path, commits)


@dataclass
class Traffic:
    """The sample service's load, split between the baseline and the canary process as the last run
    of ./deploy-production.sh said: the version being deployed gets its weight on the canary."""

    pair: ScrapedPair
    state_file: Path
    new_version: str = ""
    load: LoadGenerator = field(init=False)
    weights: list[tuple[float, float]] = field(default_factory=list)  # (wall time, canary %)

    def __post_init__(self) -> None:
        self.load = LoadGenerator(
            [self.pair.baseline.work_url, self.pair.canary.work_url],
            rps=RPS,
            weights=[100, 0],
            concurrency=32,
        )

    def canary_weight(self) -> float | None:
        """The canary's share now; None while the state file is missing or unreadable."""
        try:
            version, weight = self.state_file.read_text().split()
        except (FileNotFoundError, ValueError):
            return None
        return float(weight) if version == self.new_version else 0.0

    async def follow(self) -> None:
        last = -1.0
        while True:
            w = self.canary_weight()
            if w is None:
                w = 0.0 if last < 0 else last
            if w != last:
                self.load.set_weights([100 - w, w])
                self.weights.append((time.time(), w))
                last = w
            await asyncio.sleep(0.1)


@dataclass
class StepResult:
    name: str
    code: int
    output: str
    seconds: float = 0.0


@dataclass
class Rig:
    checkout: Checkout
    traffic: Traffic
    url: str
    http: aiohttp.ClientSession

    async def deploys(self) -> list[dict[str, Any]]:
        async with self.http.get(
            f"{self.url}/api/v1/deploys",
            params={"service": "checkout"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        return body["deploys"] if isinstance(body, dict) else body


@contextlib.asynccontextmanager
async def rig(pair: ScrapedPair, tmp: Path) -> AsyncIterator[Rig]:
    """The checkout, guardrail serving with the ``checkout-deploy`` preset and Prometheus as its
    source, and the load following the deploy script; all stopped on exit."""
    checkout = Checkout.make(tmp / "checkout")
    port = free_port()
    config = tmp / "guardrail.yaml"
    config.write_text(
        textwrap.dedent(f"""
        database_url: sqlite+aiosqlite:///{tmp / "guardrail.db"}
        server: {{host: 127.0.0.1, port: {port}, public_url: "http://127.0.0.1:{port}"}}
        tokens: [{{name: github-actions, token: {TOKEN}, scopes: [ci]}}]
        engine: {{tick_s: 0.5}}
        adapters:
          checkout-deploy:
            type: command
            config:
              apply_step: ./deploy-production.sh {{version}} --weight {{weight}}
              rollback: ./deploy-production.sh {{previous_version}} --weight 100
              finalize: ./deploy-production.sh {{version}} --weight 100
              cwd: {checkout.path}
              timeout_s: 30
        prometheus:
          url: {pair.prometheus.url}
          timeout_s: 2
          retries: 1
          scrape_delay_s: 1.5
          history_s: 4
          poll_s: 0.2
    """)
    )
    server = GuardrailProcess(config, tmp / "guardrail.log", port)
    traffic = Traffic(pair, checkout.path / "traffic.state")
    tasks = [asyncio.create_task(traffic.load.run(600)), asyncio.create_task(traffic.follow())]
    server.spawn()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            await server.ready(http, tries=600)  # a loaded machine starts python slowly
            await asyncio.sleep(4)  # baseline history before the first deploy
            yield Rig(checkout, traffic, f"http://127.0.0.1:{port}", http)
    finally:
        server.stop()
        traffic.load.stop()
        tasks[1].cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def bash(script: str, *, env: dict[str, str], cwd: Path, flags: tuple[str, ...]) -> tuple[int, str]:
    """The script in bash (in a process group of its own: a timeout kills what it started too)."""
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "--noprofile",
        "--norc",
        *flags,
        "-c",
        script,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=STEP_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise AssertionError(f"a CI step ran longer than {STEP_TIMEOUT_S:.0f} s:\n{script}") from None
    return proc.returncode or 0, out.decode(errors="replace")


def base_env(checkout: Checkout) -> dict[str, str]:
    """What any CI runner has: a PATH with this checkout's guardrail (and python, jq, git), CI=true."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    return {"PATH": path, "HOME": str(checkout.path), "CI": "true", "LANG": "C.UTF-8"}


# --- GitHub Actions ---------------------------------------------------------------------------------

EXPRESSION = re.compile(r"\$\{\{\s*(.+?)\s*\}\}")


def github_job() -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The deploy job of the workflow: its environment (workflow's and job's) and its steps."""
    workflow = yaml.safe_load(GITHUB.read_text())
    job = workflow["jobs"]["deploy"]
    return {**workflow.get("env", {}), **job.get("env", {})}, job["steps"]


async def run_github(r: Rig, sha: str, before: str, run_id: int) -> list[StepResult]:
    """The deploy job's steps as a runner runs them (``bash -e`` per step, GITHUB_ENV and
    GITHUB_OUTPUT carried between steps, ``if: failure()`` after a failed step), with the
    ``${{ }}`` expressions of the YAML's env blocks filled in from this push's context."""
    env_block, steps = github_job()
    outputs: dict[str, dict[str, str]] = {}
    context = {
        "secrets.GUARDRAIL_URL": r.url,
        "secrets.GUARDRAIL_TOKEN": TOKEN,
        "github.sha": sha,
        "github.event.before": before,
        "github.actor": "dana",
        "github.ref_type == 'tag' && github.ref_name || github.sha": sha,  # a push to main
    }

    def fill(value: Any) -> str:
        def one(m: re.Match[str]) -> str:
            expr = m.group(1)
            if expr.startswith("steps.") and ".outputs." in expr:
                step_id, _, key = expr.removeprefix("steps.").partition(".outputs.")
                return outputs.get(step_id, {}).get(key, "")
            assert expr in context, f"the test does not know the expression {expr!r}"
            return context[expr]

        return EXPRESSION.sub(one, str(value))

    work = r.checkout.path.parent / f"github-{run_id}"
    work.mkdir()
    github_env, summary = work / "env", work / "summary"
    github_env.touch()
    results: list[StepResult] = []
    failed = False
    for i, step in enumerate(steps):
        name = step.get("name") or step.get("uses") or f"step {i}"
        if "uses" in step:
            continue  # checkout and setup-python: the checkout is here, python is this one
        if name in GITHUB_INSTALL_STEPS:
            assert GITHUB_INSTALL_STEPS[name] in step["run"], name
            continue
        condition = step.get("if")
        assert condition in (None, "failure()"), f"{name}: the test does not know `if: {condition}`"
        if (condition == "failure()") != failed:
            continue
        run = step["run"]
        assert "${{" not in run, f"{name}: an expression inside run: (script injection)"
        output_file = work / f"output-{i}"
        output_file.touch()
        env = {
            **base_env(r.checkout),
            **{k: fill(v) for k, v in env_block.items()},
            **{k: fill(v) for k, v in (step.get("env") or {}).items()},
            **dict(line.split("=", 1) for line in github_env.read_text().splitlines() if "=" in line),
            "GITHUB_SHA": sha,
            "GITHUB_RUN_ID": str(run_id),
            "GITHUB_RUN_ATTEMPT": "1",
            "GITHUB_ENV": str(github_env),
            "GITHUB_OUTPUT": str(output_file),
            "GITHUB_STEP_SUMMARY": str(summary),
            "GITHUB_WORKSPACE": str(r.checkout.path),
            "GITHUB_ACTIONS": "true",
        }
        t0 = time.monotonic()
        code, out = await bash(run, env=env, cwd=r.checkout.path, flags=("-e",))
        if "id" in step:
            outputs[step["id"]] = dict(
                line.split("=", 1) for line in output_file.read_text().splitlines() if "=" in line
            )
        results.append(StepResult(name, code, out, time.monotonic() - t0))
        failed = failed or code != 0
    return results


# --- GitLab CI --------------------------------------------------------------------------------------


async def run_gitlab(r: Rig, sha: str, before: str, pipeline_id: int) -> tuple[int, str, str]:
    """The deploy job as a runner's bash shell runs it: the script lines in one shell with
    ``set -eo pipefail``, then after_script in a shell of its own with CI_JOB_STATUS. Returns (the
    script's exit code, its output, after_script's output)."""
    pipeline = yaml.safe_load(GITLAB.read_text())
    job = pipeline["deploy"]
    before_script = job["before_script"]
    assert len(before_script) == len(GITLAB_INSTALL_LINES) and all(
        want in line for want, line in zip(GITLAB_INSTALL_LINES, before_script, strict=True)
    ), before_script
    variables = {**pipeline.get("variables", {}), **job.get("variables", {})}
    assert not any("$" in str(v) for v in variables.values()), variables  # none to expand
    env = {
        **base_env(r.checkout),
        **{k: str(v) for k, v in variables.items()},
        "GUARDRAIL_URL": r.url,  # CI/CD variables
        "GUARDRAIL_TOKEN": TOKEN,
        "CI_COMMIT_SHA": sha,
        "CI_COMMIT_BEFORE_SHA": before,
        "CI_COMMIT_BRANCH": "main",
        "CI_DEFAULT_BRANCH": "main",
        "CI_PIPELINE_ID": str(pipeline_id),
        "CI_JOB_NAME": "deploy",
        "GITLAB_USER_LOGIN": "dana",
        "GITLAB_CI": "true",
    }
    (r.checkout.path / "guardrail-deploy-id").unlink(missing_ok=True)
    code, out = await bash(
        "\n".join(job["script"]), env=env, cwd=r.checkout.path, flags=("-e", "-o", "pipefail")
    )
    status = "success" if code == 0 else "failed"
    _, after = await bash(
        "\n".join(job["after_script"]), env={**env, "CI_JOB_STATUS": status}, cwd=r.checkout.path, flags=()
    )
    return code, out, after


# --- the tests --------------------------------------------------------------------------------------


@pytest.fixture
def pair(scraped_pair: ScrapedPair) -> Iterator[ScrapedPair]:
    """The session's sample processes, healthy before and after the test (and the tools the jobs'
    steps use: jq and git, installed by scripts/test-deps.sh)."""
    for tool in ("jq", "git", "bash"):
        if shutil.which(tool) is None:
            _require_or_skip(f"`{tool}` is not installed; the CI examples' steps use it")
    scraped_pair.canary.regress(error_rate=SAMPLE_ERROR_RATE)
    yield scraped_pair
    scraped_pair.canary.regress(error_rate=SAMPLE_ERROR_RATE)


def test_the_examples_read_their_marker_file_and_send_it() -> None:
    """Both jobs post the marker with the file that says where the metrics come from, and the
    file shipped as the example pulls from Prometheus."""
    env, steps = github_job()
    mark = next(s for s in steps if s.get("name") == "Post the deploy marker")
    assert '-f "$GUARDRAIL_MARKER_FILE"' in mark["run"] and env["GUARDRAIL_MARKER_FILE"]
    gitlab = yaml.safe_load(GITLAB.read_text())["deploy"]
    assert any('-f "$GUARDRAIL_MARKER_FILE"' in line for line in gitlab["script"])
    shipped = yaml.safe_load((ROOT / "examples" / "guardrail-marker.yml").read_text())
    assert shipped["metrics"]["source"] == "prometheus"


async def test_github_actions_job_exits_0_when_promoted_and_1_when_rolled_back(
    pair: ScrapedPair, tmp_path: Path
) -> None:
    started = time.monotonic()
    async with rig(pair, tmp_path) as r:
        c = r.checkout.commits
        r.traffic.new_version = c[1]
        healthy = await run_github(r, sha=c[1], before=c[0], run_id=101)
        took_healthy = time.monotonic() - started
        await asyncio.to_thread(pair.canary.regress, error_rate=5 * SAMPLE_ERROR_RATE)
        r.traffic.new_version = c[2]
        regressed = await run_github(r, sha=c[2], before=c[1], run_id=102)
        deploys = {d["version"]: d for d in await r.deploys()}
    took = time.monotonic() - started

    by_name = {s.name: s for s in healthy}
    assert all(s.code == 0 for s in healthy), [(s.name, s.code, s.output[-600:]) for s in healthy]
    assert "promoted by guardrail" in by_name["Wait for guardrail's verdict"].output
    assert "Show the evidence" not in by_name  # the failure path did not run
    assert deploys[c[1]]["state"] == "promoted" and deploys[c[1]]["previous_version"] == c[0]

    by_name = {s.name: s for s in regressed}
    wait = by_name["Wait for guardrail's verdict"]
    assert wait.code == 1, wait.output[-2000:]
    assert "::error::guardrail rolled checkout" in wait.output
    assert "rolled_back" in by_name["Show the evidence"].output  # the failure path shows the evidence
    assert deploys[c[2]]["state"] == "rolled_back"
    assert deploys[c[2]]["previous_version"] == c[1]  # found as the last promoted deploy
    assert deploys[c[2]]["metrics_source"] == "prometheus"
    assert r.traffic.weights[-1][1] == 0  # the rollback took the canary out of the traffic
    steps = ", ".join(f"{s.name} {s.seconds:.1f} s" for s in healthy + regressed)
    print(f"healthy run {took_healthy:.0f} s, both {took:.0f} s: {steps}")  # shown with -s


async def test_gitlab_ci_job_exits_0_when_promoted_and_1_when_rolled_back(
    pair: ScrapedPair, tmp_path: Path
) -> None:
    async with rig(pair, tmp_path) as r:
        c = r.checkout.commits
        r.traffic.new_version = c[1]
        code, out, after = await run_gitlab(r, sha=c[1], before=c[0], pipeline_id=7)
        assert code == 0 and "promoted by guardrail" in out, out[-2000:]
        assert after.strip() == ""  # the evidence is shown only when the job failed
        await asyncio.to_thread(pair.canary.regress, error_rate=5 * SAMPLE_ERROR_RATE)
        r.traffic.new_version = c[2]
        code, out, after = await run_gitlab(r, sha=c[2], before=c[1], pipeline_id=8)
        deploys = {d["version"]: d for d in await r.deploys()}
    assert code == 1 and "guardrail rolled checkout" in out, out[-2000:]
    assert "rolled_back" in after
    assert deploys[c[1]]["state"] == "promoted" and deploys[c[2]]["state"] == "rolled_back"
    assert deploys[c[2]]["previous_version"] == c[1]
    assert deploys[c[2]]["metrics_source"] == "prometheus"
