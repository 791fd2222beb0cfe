"""Contract of the DeployAdapter port: every adapter passes the same suite, against a real target
(noop: itself; command: shell scripts in a temp dir; webhook: an aiohttp test server on loopback).
Then what is specific to each adapter."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shlex
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from guardrail.adapters.deploy.command import CommandDeployAdapter
from guardrail.adapters.deploy.noop import NoopDeployAdapter
from guardrail.adapters.deploy.webhook import SIGNATURE_HEADER, WebhookConfig, WebhookDeployAdapter
from guardrail.domain.errors import ConfigError
from guardrail.domain.model import Step
from guardrail.plugins import load_deploy_adapter
from guardrail.ports import ActionResult, DeployAdapter, DeployTarget
from guardrail.secrets import redact_config

SECRET = "s3cr3t-T0ken-9f2c"  # what the target would love to leak
HMAC_KEY = "hmac-key-77aa1b"


def target(**changes: str) -> DeployTarget:
    values = {
        "deploy_id": "dep-1",
        "service": "checkout",
        "environment": "production",
        "version": "2.4.0",
        "previous_version": "2.3.9",
        "commit": "abc1234",
        "action_key": "dep-1/apply_step:0",
    }
    return DeployTarget(**{**values, **changes})


def assert_clean(result: ActionResult, *secrets: str) -> None:
    assert isinstance(result, ActionResult)
    assert result.detail and "\n" not in result.detail
    text = result.detail + result.output + json.dumps(result.data, default=str)
    for s in secrets:
        assert s not in text


def gone(pid: int) -> bool:
    """The process no longer runs (reaped, or a zombie waiting for init)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # vanished while we looked (ENOENT, or ESRCH mid-read)
        return True
    return state == "Z"


# --- harnesses: one per adapter, same interface -----------------------------------------------------


@dataclass
class Harness:
    """``make(mode)`` builds an adapter through ``from_config`` whose target succeeds ("ok"), fails
    ("fail") or answers later than the adapter's timeout ("slow"). ``seen()`` lists the methods the
    target received, in order. ``secrets`` are in the adapter's config; targets echo them back."""

    name: str
    make: Callable[[str], Awaitable[DeployAdapter]]
    seen: Callable[[], list[str]]
    valid_config: dict[str, Any]
    wrong_type: tuple[str, Any]
    secrets: tuple[str, ...] = ()
    timeout_s: float | None = None
    after_timeout: Callable[[], Awaitable[None]] | None = None  # checks the target gave up too


async def noop_harness() -> AsyncIterator[Harness]:
    created: list[NoopDeployAdapter] = []

    async def make(mode: str) -> DeployAdapter:
        assert mode != "slow", "noop does no I/O: nothing to time out"
        config = {"fail_on": ["apply_step", "finalize", "rollback"]} if mode == "fail" else {}
        adapter = NoopDeployAdapter.from_config(config)
        created.append(adapter)
        return adapter

    yield Harness(
        name="noop",
        make=make,
        seen=lambda: [c.method for a in created for c in a.calls],
        valid_config={"fail_on": ["rollback"]},
        wrong_type=("fail_on", 5),
    )


TARGET_SCRIPT = """#!/bin/sh
# A deploy target: log argv (one argument per line), show the token, then behave as told.
for a in "$@"; do printf '%s\\n' "$a"; done >> "{log}"
echo "--- $GUARDRAIL_ACTION_KEY $GUARDRAIL_DEPLOY_ID" >> "{log}"
echo "deploying with token $DEPLOY_TOKEN"
echo "progress on stderr" >&2
case "{mode}" in
  fail) echo "no capacity left" >&2; exit 3 ;;
  slow) echo $$ > "{pids}"; sleep 5 & echo $! >> "{pids}"; wait ;;
esac
exit 0
"""


def write_script(path: Path, mode: str, log: Path, pids: Path) -> Path:
    path.write_text(TARGET_SCRIPT.format(log=log, mode=mode, pids=pids))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def read_log(log: Path) -> list[list[str]]:
    """The argv of each call the script received."""
    if not log.exists():
        return []
    calls, current = [], []
    for line in log.read_text().splitlines():
        if line.startswith("--- "):
            calls.append(current)
            current = []
        else:
            current.append(line)
    return calls


def command_config(script: Path, **extra: Any) -> dict[str, Any]:
    s = shlex.quote(str(script))
    return {
        "apply_step": f"{s} apply_step {{version}} --weight {{weight}} --servers {{servers}} "
        "--step {step}/{total_steps}",
        "finalize": f"{s} finalize {{version}}",
        "rollback": f"{s} rollback {{previous_version}} --reason {{reason}}",
        "secret_env": {"DEPLOY_TOKEN": SECRET},
        **extra,
    }


async def command_harness(tmp_path: Path) -> AsyncIterator[Harness]:
    log, pids = tmp_path / "calls.log", tmp_path / "pids"

    async def make(mode: str) -> DeployAdapter:
        script = write_script(tmp_path / f"target-{mode}.sh", mode, log, pids)
        extra = {"timeout_s": 0.5} if mode == "slow" else {}
        return CommandDeployAdapter.from_config(command_config(script, **extra))

    async def after_timeout() -> None:
        started = [int(p) for p in pids.read_text().split()]
        assert len(started) == 2  # the script and its background sleep
        deadline = time.monotonic() + 1.0
        while not all(gone(p) for p in started) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert all(gone(p) for p in started), "the whole process group is killed on timeout"

    yield Harness(
        name="command",
        make=make,
        seen=lambda: [argv[0] for argv in read_log(log)],
        valid_config=command_config(tmp_path / "deploy.sh"),
        wrong_type=("timeout_s", "soon"),
        secrets=(SECRET,),
        timeout_s=0.5,
        after_timeout=after_timeout,
    )


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class WebhookTarget:
    """A Flagger-style webhook receiver on loopback that records what it receives.
    ``/hook/ok``: 200; ``/hook/fail``: 500; ``/hook/slow``: answers when released;
    ``/hook/scripted``: statuses from ``script`` in order. Every answer echoes the request headers."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.script: list[int] = []
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook/{mode}", self.handle)
        self.server = TestServer(app, host="127.0.0.1")

    def url(self, mode: str) -> str:
        return str(self.server.make_url(f"/hook/{mode}"))

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(Seen(request.path, dict(request.headers), await request.read()))
        echo = {"received_headers": dict(request.headers)}
        mode = request.match_info["mode"]
        if mode == "slow":
            await asyncio.wait_for(self.release.wait(), 10)
        status = {"ok": 200, "fail": 500, "slow": 200}.get(mode) or self.script.pop(0)
        return web.json_response(echo, status=status)

    def types(self) -> list[str]:
        kind = {"rollout": "apply_step", "confirm-promotion": "finalize", "rollback": "rollback"}
        return [kind[r.json["metadata"]["guardrail_hook"]] for r in self.requests]


@pytest.fixture
async def webhook_target() -> AsyncIterator[WebhookTarget]:
    t = WebhookTarget()
    await t.server.start_server()
    yield t
    t.release.set()
    await t.server.close()


def webhook_config(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "url": url,
        "secret": HMAC_KEY,
        "secret_headers": {"Authorization": f"Bearer {SECRET}"},
        "headers": {"X-Team": "payments"},
        "retries": 1,
        "backoff_s": 0.01,
        **extra,
    }


async def webhook_harness(t: WebhookTarget) -> AsyncIterator[Harness]:
    created: list[WebhookDeployAdapter] = []

    async def make(mode: str) -> DeployAdapter:
        extra = {"timeout_s": 0.3, "retries": 0} if mode == "slow" else {}
        adapter = WebhookDeployAdapter.from_config(webhook_config(t.url(mode), **extra))
        created.append(adapter)
        return adapter

    try:
        yield Harness(
            name="webhook",
            make=make,
            seen=t.types,
            valid_config=webhook_config("https://deploys.example.com/hook"),
            wrong_type=("retries", "3"),
            secrets=(SECRET, HMAC_KEY),
            timeout_s=0.3,
        )
    finally:  # aclose() resumes the generator with GeneratorExit at the yield
        for adapter in created:
            await adapter.close()


@pytest.fixture(params=["noop", "command", "webhook"])
async def harness(
    request: pytest.FixtureRequest, tmp_path: Path, webhook_target: WebhookTarget
) -> AsyncIterator[Harness]:
    if request.param == "noop":
        gen = noop_harness()
    elif request.param == "command":
        gen = command_harness(tmp_path)
    else:
        gen = webhook_harness(webhook_target)
    try:
        yield await anext(gen)
    finally:
        await gen.aclose()


# --- the contract --------------------------------------------------------------------------------


async def test_is_a_deploy_adapter_registered_under_its_name(harness: Harness) -> None:
    adapter = await harness.make("ok")
    assert isinstance(adapter, DeployAdapter)
    assert adapter.name == harness.name
    assert type(load_deploy_adapter(harness.name, harness.valid_config)) is type(adapter)


async def test_successful_actions_return_ok_and_reach_the_target(harness: Harness) -> None:
    adapter = await harness.make("ok")
    results = [
        await adapter.apply_step(target(), Step(weight=10), 0, 3),
        await adapter.finalize(target(action_key="dep-1/finalize")),
        await adapter.rollback(target(action_key="dep-1/rollback"), "error rate 4x baseline"),
    ]
    for r in results:
        assert r.ok, r
        assert_clean(r, *harness.secrets)
    assert harness.seen() == ["apply_step", "finalize", "rollback"]


async def test_failed_actions_return_not_ok_instead_of_raising(harness: Harness) -> None:
    adapter = await harness.make("fail")
    results = [
        await adapter.apply_step(target(), Step(weight=50), 1, 3),
        await adapter.finalize(target(action_key="dep-1/finalize")),
        await adapter.rollback(target(action_key="dep-1/rollback"), "latency p99 doubled"),
    ]
    for r in results:
        assert r.ok is False, r
        assert_clean(r, *harness.secrets)


async def test_rollback_is_safe_to_repeat(harness: Harness) -> None:
    adapter = await harness.make("ok")
    t = target(action_key="dep-1/rollback")
    first = await adapter.rollback(t, "errors")
    again = await adapter.rollback(t, "errors")
    assert first.ok and again.ok
    assert harness.seen() == ["rollback", "rollback"]


@pytest.mark.parametrize("harness", ["command", "webhook"], indirect=True)  # noop does no I/O
async def test_a_slow_target_is_cut_off_at_the_timeout(harness: Harness) -> None:
    adapter = await harness.make("slow")
    assert harness.timeout_s is not None
    started = time.monotonic()
    result = await adapter.apply_step(target(), Step(weight=10), 0, 3)
    elapsed = time.monotonic() - started
    assert result.ok is False
    assert "timed out" in result.detail
    assert elapsed < harness.timeout_s + 0.7, f"took {elapsed:.2f} s"
    assert_clean(result, *harness.secrets)
    if harness.after_timeout is not None:
        await harness.after_timeout()


async def test_from_config_rejects_an_unknown_key_naming_it(harness: Harness) -> None:
    cls = type(await harness.make("ok"))
    with pytest.raises(ConfigError) as e:
        cls.from_config({**harness.valid_config, "rollbak_cmd": "x"})
    assert e.value.field == "adapter.config.rollbak_cmd"
    assert "rollbak_cmd" in str(e.value) and "accepted" in str(e.value)


async def test_from_config_rejects_a_wrong_type_naming_the_key(harness: Harness) -> None:
    cls = type(await harness.make("ok"))
    key, bad = harness.wrong_type
    with pytest.raises(ConfigError) as e:
        cls.from_config({**harness.valid_config, key: bad})
    assert e.value.field == f"adapter.config.{key}"
    assert f"adapter.config.{key}" in str(e.value) and "expected" in str(e.value)


async def test_secrets_never_show_in_results_repr_or_redacted_config(harness: Harness) -> None:
    adapter = await harness.make("ok")
    results = [
        await adapter.apply_step(target(), Step(servers=2), 1, 3),
        await adapter.finalize(target()),
        await adapter.rollback(target(), "errors"),
    ]
    shown = [repr(adapter), repr(getattr(adapter, "config", None))]
    shown.append(json.dumps(redact_config(type(adapter), harness.valid_config)))
    for s in harness.secrets:
        assert all(s not in text for text in shown)
    for r in results:
        assert_clean(r, *harness.secrets)
    if harness.secrets:  # the target echoed the secret back: the adapter redacted it
        assert all("***" in r.output for r in results)


# --- command ---------------------------------------------------------------------------------------


@pytest.fixture
def script(tmp_path: Path) -> Path:
    return write_script(tmp_path / "deploy.sh", "ok", tmp_path / "calls.log", tmp_path / "pids")


async def test_command_hostile_marker_values_stay_one_argument(tmp_path: Path, script: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    hostile = f"1.0; rm -rf {victim} $(touch {tmp_path}/pwned) `id`"
    adapter = CommandDeployAdapter.from_config(command_config(script))
    result = await adapter.apply_step(target(version=hostile), Step(weight=10), 0, 3)
    assert result.ok, result
    assert read_log(tmp_path / "calls.log")[0][1] == hostile
    assert victim.exists() and not (tmp_path / "pwned").exists()


async def test_command_renders_weight_servers_and_steps_plainly(tmp_path: Path, script: Path) -> None:
    adapter = CommandDeployAdapter.from_config(command_config(script))
    await adapter.apply_step(target(), Step(weight=10.0), 0, 3)
    await adapter.apply_step(target(), Step(weight=12.5, servers=4), 1, 3)
    await adapter.apply_step(target(), Step(), 2, 3)
    weights_servers_steps = [(argv[3], argv[5], argv[7]) for argv in read_log(tmp_path / "calls.log")]
    assert weights_servers_steps == [("10", "all", "1/3"), ("12.5", "4", "2/3"), ("", "all", "3/3")]


async def test_command_gets_action_key_deploy_id_and_env(tmp_path: Path) -> None:
    script = tmp_path / "env.sh"
    script.write_text('#!/bin/sh\necho "$GUARDRAIL_ACTION_KEY|$GUARDRAIL_DEPLOY_ID|$REGION|$1"\n')
    script.chmod(0o755)
    adapter = CommandDeployAdapter.from_config(
        {"apply_step": f"{script} {{deploy_id}}", "rollback": str(script), "env": {"REGION": "eu-west-1"}}
    )
    result = await adapter.apply_step(target(action_key="dep-1/apply_step:0"), Step(weight=1), 0, 1)
    assert result.output == "dep-1/apply_step:0|dep-1|eu-west-1|dep-1\n"
    assert result.detail.startswith("exit 0 in ")


async def test_command_rejects_unknown_placeholders_at_config_time(script: Path) -> None:
    with pytest.raises(ConfigError) as e:
        CommandDeployAdapter.from_config(command_config(script, apply_step=f"{script} {{version.__class__}}"))
    assert e.value.field == "adapter.config.apply_step" and "{version}" in str(e.value)
    with pytest.raises(ConfigError) as e:
        CommandDeployAdapter.from_config(command_config(script, rollback=f"{script} --weight {{weight}}"))
    assert e.value.field == "adapter.config.rollback" and "{reason}" in str(e.value)
    with pytest.raises(ConfigError, match="may not contain placeholders"):
        CommandDeployAdapter.from_config(command_config(script, apply_step="./deploy-{environment}.sh"))
    with pytest.raises(ConfigError, match="cannot split"):
        CommandDeployAdapter.from_config(command_config(script, finalize=f"{script} 'unclosed"))


async def test_command_missing_executable_is_a_failed_result(tmp_path: Path) -> None:
    adapter = CommandDeployAdapter.from_config(
        {"apply_step": str(tmp_path / "nope.sh"), "rollback": "no-such-command-guardrail {previous_version}"}
    )
    applied = await adapter.apply_step(target(), Step(weight=10), 0, 3)
    rolled = await adapter.rollback(target(), "errors")
    assert not applied.ok and "nope.sh" in applied.detail and "no such file" in applied.detail
    assert not rolled.ok and "no-such-command-guardrail" in rolled.detail


async def test_command_nul_byte_in_a_marker_value_is_a_failed_result(script: Path) -> None:
    adapter = CommandDeployAdapter.from_config(command_config(script))
    result = await adapter.apply_step(target(version="1.0\x00evil"), Step(weight=10), 0, 3)
    assert not result.ok and "null byte" in result.detail


async def test_command_without_finalize_finalizes_as_a_no_op(tmp_path: Path, script: Path) -> None:
    config = command_config(script)
    del config["finalize"]
    result = await CommandDeployAdapter.from_config(config).finalize(target())
    assert result.ok and "nothing to do" in result.detail
    assert read_log(tmp_path / "calls.log") == []


async def test_command_output_keeps_the_redacted_tail(tmp_path: Path) -> None:
    script = tmp_path / "chatty.sh"
    script.write_text(
        '#!/bin/sh\ni=0\nwhile [ $i -lt 500 ]; do echo "line $i $TOKEN"; i=$((i+1)); done\necho END\n'
    )
    script.chmod(0o755)
    adapter = CommandDeployAdapter.from_config(
        {
            "apply_step": str(script),
            "rollback": str(script),
            "secret_env": {"TOKEN": SECRET},
            "output_limit": 300,
        }
    )
    result = await adapter.apply_step(target(), Step(weight=1), 0, 1)
    assert len(result.output) <= 300
    assert result.output.startswith("[earlier output truncated]")
    assert result.output.endswith("line 499 ***\nEND\n")
    assert SECRET[:6] not in result.output


async def test_command_cancelled_kills_its_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = write_script(tmp_path / "slow.sh", "slow", tmp_path / "calls.log", pids)
    adapter = CommandDeployAdapter.from_config({"apply_step": str(script), "rollback": str(script)})
    task = asyncio.create_task(adapter.apply_step(target(), Step(weight=1), 0, 1))
    while not (pids.exists() and len(pids.read_text().split()) == 2):
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 1.0
    started = [int(p) for p in pids.read_text().split()]
    while not all(gone(p) for p in started) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert all(gone(p) for p in started)


# --- webhook ---------------------------------------------------------------------------------------


async def test_webhook_signs_the_exact_body_with_hmac_sha256(webhook_target: WebhookTarget) -> None:
    adapter = WebhookDeployAdapter.from_config(webhook_config(webhook_target.url("ok")))
    try:
        assert (await adapter.apply_step(target(), Step(weight=10), 0, 3)).ok
    finally:
        await adapter.close()
    [seen] = webhook_target.requests
    expected = "sha256=" + hmac.new(HMAC_KEY.encode(), seen.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(seen.headers[SIGNATURE_HEADER], expected)
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Idempotency-Key"] == "dep-1/apply_step:0"
    assert seen.headers["Authorization"] == f"Bearer {SECRET}"
    assert seen.headers["X-Team"] == "payments"


# Flagger's webhook payload and phases, from fluxcd/flagger at 15bd6ad555e6c935da55f0ab95977be74c149bd6:
# pkg/apis/flagger/v1beta1/canary.go (CanaryWebhookPayload: name, namespace, phase, checksum,
# metadata map[string]string), pkg/apis/flagger/v1beta1/status.go (CanaryPhase values),
# pkg/controller/scheduler_hooks.go and scheduler.go (the phase sent with each hook type) and
# pkg/loadtester/server.go (the load tester reads metadata.type as its task type; task types in
# pkg/loadtester/*.go).
FLAGGER_PAYLOAD_KEYS = {"name", "namespace", "phase", "checksum", "metadata"}
FLAGGER_PHASES = {
    "Initializing", "Initialized", "Waiting", "Progressing", "WaitingPromotion", "Promoting",
    "Finalising", "Succeeded", "Failed", "Terminating", "Terminated",
}  # fmt: skip
PHASE_SENT_WITH = {  # runAnalysis / runConfirmPromotionHooks send Progressing; rollback: the status phase
    "rollout": {"Progressing"},
    "confirm-promotion": {"Progressing"},
    "rollback": {"Progressing", "Waiting", "WaitingPromotion"},
}
LOADTESTER_TASK_TYPES = {"cmd", "bash", "helm", "helmv3", "kubectl", "concord", "ngrinder"}


def as_flagger_decodes(body: bytes) -> dict[str, Any]:
    """The body decoded into CanaryWebhookPayload's fields, failing where a Flagger receiver would
    see something Flagger never sends."""
    doc = json.loads(body)
    assert set(doc) == FLAGGER_PAYLOAD_KEYS, f"not CanaryWebhookPayload: {sorted(doc)}"
    assert all(isinstance(doc[k], str) for k in ("name", "namespace", "phase", "checksum"))
    assert doc["phase"] in FLAGGER_PHASES and doc["checksum"]
    assert isinstance(doc["metadata"], dict) and all(isinstance(v, str) for v in doc["metadata"].values())
    assert doc["metadata"].get("type", "cmd") in LOADTESTER_TASK_TYPES  # else the load tester answers 400
    return doc


async def test_webhook_bodies_are_flaggers_canary_webhook_payload(webhook_target: WebhookTarget) -> None:
    """Issue 13, case 6."""
    adapter = WebhookDeployAdapter.from_config({"url": webhook_target.url("ok")})
    try:
        await adapter.apply_step(target(), Step(weight=12.5), 1, 3)
        await adapter.apply_step(target(), Step(servers=None), 2, 3)
        await adapter.finalize(target(action_key="dep-1/finalize"))
        await adapter.rollback(target(action_key="dep-1/rollback"), "error rate 4x baseline")
    finally:
        await adapter.close()
    bodies = [as_flagger_decodes(r.body) for r in webhook_target.requests]
    hooks = [b["metadata"]["guardrail_hook"] for b in bodies]
    assert hooks == ["rollout", "rollout", "confirm-promotion", "rollback"]
    for body, hook in zip(bodies, hooks, strict=True):
        assert body["phase"] in PHASE_SENT_WITH[hook], (hook, body["phase"])
        assert "type" not in body["metadata"]
    assert len({b["checksum"] for b in bodies}) == 1  # one deploy, one configuration
    common = {"deploy_id": "dep-1", "version": "2.4.0", "previous_version": "2.3.9", "commit": "abc1234"}
    assert bodies[0] == {
        "name": "checkout",
        "namespace": "production",
        "phase": "Progressing",
        "checksum": bodies[0]["checksum"],
        "metadata": {
            "guardrail_hook": "rollout",
            **common,
            "weight": "12.5",
            "servers": "all",
            "step": "2",
            "total_steps": "3",
            "action_key": "dep-1/apply_step:0",
        },
    }
    assert bodies[1]["metadata"]["weight"] == "" and bodies[1]["metadata"]["step"] == "3"
    assert bodies[2]["metadata"] == {
        "guardrail_hook": "confirm-promotion",
        **common,
        "action_key": "dep-1/finalize",
    }
    assert bodies[3]["metadata"] == {
        "guardrail_hook": "rollback",
        **common,
        "reason": "error rate 4x baseline",
        "action_key": "dep-1/rollback",
    }
    other = WebhookDeployAdapter.from_config({"url": webhook_target.url("ok")})
    assert (
        json.loads(other.body(target(deploy_id="dep-2"), "rollout", {}))["checksum"] != bodies[0]["checksum"]
    )
    assert all(SIGNATURE_HEADER not in r.headers for r in webhook_target.requests)  # no secret: unsigned


async def test_webhook_retries_503_then_succeeds_once(webhook_target: WebhookTarget) -> None:
    webhook_target.script = [503, 200]
    async with aiohttp.ClientSession() as session:
        adapter = WebhookDeployAdapter(
            WebhookConfig(url=webhook_target.url("scripted") + "?token=abc", backoff_s=0.01), session=session
        )
        result = await adapter.rollback(target(action_key="dep-1/rollback"), "errors")
        await adapter.close()  # an injected session stays open: it is the caller's
        assert not session.closed
    assert result.ok
    assert len(webhook_target.requests) == 2
    assert {r.headers["Idempotency-Key"] for r in webhook_target.requests} == {"dep-1/rollback"}
    assert result.detail.startswith(f"POST {webhook_target.url('scripted')} -> 200 in ")
    assert result.detail.endswith("(attempt 2)") and "token=abc" not in result.detail
    assert result.data["history"][0].startswith("503")


async def test_webhook_does_not_retry_a_400(webhook_target: WebhookTarget) -> None:
    webhook_target.script = [400, 200]
    adapter = WebhookDeployAdapter.from_config({"url": webhook_target.url("scripted"), "backoff_s": 0})
    try:
        result = await adapter.apply_step(target(), Step(weight=10), 0, 3)
    finally:
        await adapter.close()
    assert not result.ok and "-> 400" in result.detail and "not retried" in result.detail
    assert len(webhook_target.requests) == 1


async def test_webhook_retries_429_and_gives_up_after_retries(webhook_target: WebhookTarget) -> None:
    webhook_target.script = [429, 502, 500]
    adapter = WebhookDeployAdapter.from_config(
        {"url": webhook_target.url("scripted"), "retries": 2, "backoff_s": 0}
    )
    try:
        result = await adapter.finalize(target())
    finally:
        await adapter.close()
    assert not result.ok and "(attempt 3 of 3, giving up)" in result.detail
    assert len(webhook_target.requests) == 3


async def test_webhook_unreachable_target_is_a_failed_result() -> None:
    server = TestServer(web.Application(), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/hook"))
    await server.close()  # nothing listens there any more
    adapter = WebhookDeployAdapter.from_config({"url": url, "retries": 1, "backoff_s": 0, "timeout_s": 2})
    try:
        result = await adapter.rollback(target(), "errors")
    finally:
        await adapter.close()
    assert not result.ok and result.data["attempts"] == 2 and "giving up" in result.detail


async def test_webhook_config_is_checked_at_construction() -> None:
    for bad, key in [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "https://user:pw@example.com/x"}, "url"),
        ({"url": "https://example.com", "retries": -1}, "retries"),
        ({"url": "https://example.com", "headers": {"Idempotency-Key": "x"}}, "headers"),
        ({"url": "https://example.com", "secret_headers": {"X-A": "a\r\nX-B: b"}}, "secret_headers"),
    ]:
        with pytest.raises(ConfigError) as e:
            WebhookDeployAdapter.from_config(bad)
        assert e.value.field == f"adapter.config.{key}"
    with pytest.raises(ConfigError) as e:
        WebhookDeployAdapter.from_config({"url": "https://example.com", "secret": 12345})
    assert "12345" not in str(e.value)  # a secret's value is never quoted back


def env_script(tmp_path: Path) -> Path:
    script = tmp_path / "env.sh"
    script.write_text('#!/bin/sh\nenv\necho "ARGS $*"\n')
    script.chmod(0o755)
    return script


def env_of(output: str) -> dict[str, str]:
    return dict(
        line.split("=", 1) for line in output.splitlines() if "=" in line and not line.startswith("ARGS ")
    )


async def test_command_gets_an_explicit_environment_not_the_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's secrets (database URL, LLM key, anything else in its environment) never reach a
    command: it gets PATH, HOME, the locale and the GUARDRAIL_* deploy variables, plus what the
    preset sets or names."""
    monkeypatch.setenv("GUARDRAIL_DATABASE_URL", "postgresql+asyncpg://u:db-pass-8812@db/guardrail")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-server-key-5521")
    monkeypatch.setenv("LANG", "C.UTF-8")
    script = env_script(tmp_path)
    adapter = CommandDeployAdapter.from_config(
        {
            "apply_step": f"{script} {{version}}",
            "rollback": str(script),
            "env": {"REGION": "eu-west-1"},
            "secret_env": {"DEPLOY_TOKEN": SECRET},
        }
    )
    result = await adapter.apply_step(target(), Step(weight=10, servers=None), 1, 3)
    assert result.ok, result
    env = env_of(result.output)
    assert "db-pass-8812" not in result.output and "sk-server-key-5521" not in result.output
    assert set(env) - {"PWD", "SHLVL", "_", "OLDPWD"} == {  # what a shell adds itself aside
        "PATH",
        "HOME",
        "LANG",
        "GUARDRAIL_ACTION",
        "GUARDRAIL_ACTION_KEY",
        "GUARDRAIL_DEPLOY_ID",
        "GUARDRAIL_SERVICE",
        "GUARDRAIL_ENVIRONMENT",
        "GUARDRAIL_VERSION",
        "GUARDRAIL_PREVIOUS_VERSION",
        "GUARDRAIL_COMMIT",
        "GUARDRAIL_WEIGHT",
        "GUARDRAIL_SERVERS",
        "GUARDRAIL_STEP",
        "GUARDRAIL_TOTAL_STEPS",
        "REGION",
        "DEPLOY_TOKEN",
    } - ({"HOME"} if "HOME" not in os.environ else set())
    assert env["PATH"] == os.environ["PATH"] and env["LANG"] == "C.UTF-8"
    assert env["DEPLOY_TOKEN"] == "***"  # given, and redacted from the output
    assert (env["GUARDRAIL_ACTION"], env["GUARDRAIL_VERSION"], env["GUARDRAIL_PREVIOUS_VERSION"]) == (
        "apply_step",
        "2.4.0",
        "2.3.9",
    )
    assert (
        env["GUARDRAIL_WEIGHT"],
        env["GUARDRAIL_SERVERS"],
        env["GUARDRAIL_STEP"],
        env["GUARDRAIL_TOTAL_STEPS"],
    ) == ("10", "all", "2", "3")
    rolled = await adapter.rollback(target(), "error rate 5%")
    renv = env_of(rolled.output)
    assert renv["GUARDRAIL_ACTION"] == "rollback" and renv["GUARDRAIL_REASON"] == "error rate 5%"
    assert "GUARDRAIL_WEIGHT" not in renv


async def test_command_passes_named_server_variables_and_redacts_the_secret_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/etc/kube/config")
    monkeypatch.setenv("CLOUD_TOKEN", "cloud-tok-3391ab")
    monkeypatch.setenv("UNNAMED_SECRET", "unnamed-4410")
    script = env_script(tmp_path)
    adapter = CommandDeployAdapter.from_config(
        {
            "apply_step": str(script),
            "rollback": str(script),
            "pass_env": ["KUBECONFIG", "NOT_SET_ANYWHERE"],
            "pass_secret_env": ["CLOUD_TOKEN"],
        }
    )
    result = await adapter.apply_step(target(), Step(weight=10), 0, 1)
    env = env_of(result.output)
    assert env["KUBECONFIG"] == "/etc/kube/config" and "NOT_SET_ANYWHERE" not in env
    assert env["CLOUD_TOKEN"] == "***" and "cloud-tok-3391ab" not in result.output
    assert "UNNAMED_SECRET" not in env
    with pytest.raises(ConfigError) as e:
        CommandDeployAdapter.from_config(
            {"apply_step": str(script), "rollback": str(script), "pass_env": ["A=B"]}
        )
    assert e.value.field == "adapter.config.pass_env"
    with pytest.raises(ConfigError, match="set by guardrail"):
        CommandDeployAdapter.from_config(
            {"apply_step": str(script), "rollback": str(script), "env": {"GUARDRAIL_VERSION": "x"}}
        )


async def test_command_never_passes_a_deploy_value_where_it_reads_as_an_option(tmp_path: Path) -> None:
    """A version like --help is refused where the program would read it as an option; after a -- in
    the template, or inside an argument with a literal prefix, it is passed as it is."""
    script = env_script(tmp_path)
    hostile = target(version="--help", previous_version="-rf")
    bare = CommandDeployAdapter.from_config(
        {"apply_step": f"{script} up {{version}}", "rollback": f"{script} {{previous_version}}"}
    )
    refused = await bare.apply_step(hostile, Step(weight=10), 0, 1)
    assert not refused.ok and "--help" not in refused.output and "ARGS" not in refused.output
    assert "{version}" in refused.detail and "--" in refused.detail and "option" in refused.detail
    assert not (await bare.rollback(hostile, "errors")).ok
    safe = CommandDeployAdapter.from_config(
        {
            "apply_step": f"{script} up --tag=v{{version}} -- {{version}}",
            "rollback": f"{script} -- {{previous_version}}",
        }
    )
    applied = await safe.apply_step(hostile, Step(weight=10), 0, 1)
    assert applied.ok and "ARGS up --tag=v--help -- --help" in applied.output
    rolled = await safe.rollback(hostile, "errors")
    assert rolled.ok and "ARGS -- -rf" in rolled.output


def test_the_command_deploy_variables_are_not_read_as_settings() -> None:
    """A deploy script may run the guardrail CLI: its GUARDRAIL_* variables are not settings."""
    from guardrail.adapters.deploy.command import DEPLOY_ENV
    from guardrail.config import NOT_SETTINGS

    assert set(DEPLOY_ENV) <= NOT_SETTINGS
