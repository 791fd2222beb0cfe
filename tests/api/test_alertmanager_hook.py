"""POST /hooks/alertmanager: Alertmanager's webhook (version 4) parsed, de-duplicated and handed to the
alert sink; bad payloads are 400 naming the field; a ci token is needed; a real Alertmanager delivers."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guardrail.adapters.db import SqlStore
from guardrail.adapters.http import create_app
from guardrail.adapters.http.alertmanager_hook import ALERT_HOOK, ALERT_SINK
from guardrail.config import Settings
from guardrail.domain.errors import StoreError
from guardrail.domain.rules import AlertState, ExternalAlert
from guardrail.plugins import load_deploy_adapter
from guardrail.service.engine import Engine
from guardrail.telemetry import Telemetry
from tests.api.conftest import TOKENS, Api

HOOK = "/hooks/alertmanager"
GROUP = '{}/{severity="page"}:{alertname="HighErrorRate", service="checkout"}'
STARTS = "2024-05-01T10:00:00.123456789Z"  # Go's RFC3339Nano, as Alertmanager writes it
ZERO = "0001-01-01T00:00:00Z"  # Go's zero time: not ended yet


@dataclass
class Sink:
    """A recording alert sink: what it was handed, call by call."""

    calls: list[list[ExternalAlert]] = field(default_factory=list)
    fail: int = 0  # fail this many calls (as the store being down would)
    delay_s: float = 0.0

    async def __call__(self, alerts: list[ExternalAlert]) -> int:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail:
            self.fail -= 1
            raise StoreError("database unavailable")
        self.calls.append(alerts)
        return sum(1 for a in alerts if a.service == "checkout")

    @property
    def alerts(self) -> list[ExternalAlert]:
        return [a for call in self.calls for a in call]


@pytest.fixture
async def hooked(aiohttp_client: Any, store: SqlStore, settings: Settings) -> AsyncIterator[tuple[Api, Sink]]:
    telemetry = Telemetry()
    engine = Engine(store=store, settings=settings, adapter_factory=load_deploy_adapter, telemetry=telemetry)
    sink = Sink()
    app = create_app(engine=engine, settings=settings, telemetry=telemetry, alert_sink=sink)
    assert app[ALERT_SINK] is sink
    client = await aiohttp_client(app)
    yield Api(client, engine, store, settings), sink
    await engine.close()


def alert(fingerprint: str = "1a30ba71cca2921f", status: str = "firing", **kw: Any) -> dict[str, Any]:
    return {
        "status": status,
        "labels": kw.pop(
            "labels",
            {
                "alertname": "HighErrorRate",
                "service": "checkout",
                "environment": "production",
                "severity": "page",
            },
        ),
        "annotations": {"summary": "checkout (canary): 5xx ratio 4.7%", "runbook_url": "https://runbook/#x"},
        "startsAt": kw.pop("startsAt", STARTS),
        "endsAt": kw.pop("endsAt", ZERO),
        "generatorURL": "http://prometheus:9090/graph?g0.expr=...",
        "fingerprint": fingerprint,
        **kw,
    }


def payload(*alerts: dict[str, Any], status: str = "firing", group_key: str = GROUP) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "guardrail",
        "groupLabels": {"alertname": "HighErrorRate", "service": "checkout"},
        "commonLabels": {"alertname": "HighErrorRate", "service": "checkout"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts or (alert(),)),
    }


async def post(api: Api, body: Any, as_: str | None = "ci") -> tuple[int, Any]:
    return await api.call("POST", HOOK, as_=as_, json=body)


async def test_a_firing_alert_is_handed_to_the_sink_as_an_external_alert(hooked: tuple[Api, Sink]) -> None:
    api, sink = hooked
    status, out = await post(api, payload())
    assert status == 200 and out == {"received": 1, "own": 0, "new": 1, "duplicates": 0, "matched": 1}
    ((a,),) = sink.calls
    assert a.fingerprint == "1a30ba71cca2921f" and a.status is AlertState.FIRING
    assert a.starts_at == pytest.approx(1_714_557_600.123456) and a.ends_at is None
    assert (a.name, a.service, a.environment, a.severity) == (
        "HighErrorRate",
        "checkout",
        "production",
        "page",
    )
    assert (
        a.summary == "checkout (canary): 5xx ratio 4.7%"
        and a.annotations["runbook_url"] == "https://runbook/#x"
    )
    assert a.generator_url.startswith("http://prometheus:9090/") and a.group_key == GROUP
    assert a.receiver == "guardrail"


async def test_the_resolve_of_an_alert_is_handed_over_too(hooked: tuple[Api, Sink]) -> None:
    api, sink = hooked
    await post(api, payload())
    status, out = await post(
        api, payload(alert(status="resolved", endsAt="2024-05-01T10:15:00Z"), status="resolved")
    )
    assert status == 200 and out["new"] == 1
    resolved = sink.calls[-1][0]
    assert resolved.status is AlertState.RESOLVED and resolved.ends_at == 1_714_558_500.0


async def test_a_retried_delivery_is_not_handed_over_twice(hooked: tuple[Api, Sink]) -> None:
    api, sink = hooked
    body = payload(alert("aaaa"), alert("bbbb", labels={"alertname": "HighErrorRate", "service": "cart"}))
    assert (await post(api, body))[1] == {"received": 2, "own": 0, "new": 2, "duplicates": 0, "matched": 1}
    status, out = await post(api, body)
    assert status == 200 and out == {"received": 2, "own": 0, "new": 0, "duplicates": 2, "matched": 0}
    assert len(sink.calls) == 1  # nothing new: the sink is not called at all


async def test_a_group_resent_with_one_new_alert_hands_over_only_that_one(hooked: tuple[Api, Sink]) -> None:
    api, sink = hooked
    await post(api, payload(alert("aaaa")))
    status, out = await post(api, payload(alert("aaaa"), alert("cccc")))
    assert status == 200 and (out["new"], out["duplicates"]) == (1, 1)
    assert [a.fingerprint for a in sink.calls[-1]] == ["cccc"]
    # the same alert in another group (another route of Alertmanager) is another delivery
    await post(api, payload(alert("aaaa"), group_key='{}:{alertname="HighErrorRate"}'))
    assert [a.fingerprint for a in sink.calls[-1]] == ["aaaa"]


async def test_an_alert_that_fires_again_after_resolving_is_handed_over_again(
    hooked: tuple[Api, Sink],
) -> None:
    api, sink = hooked
    await post(api, payload(alert()))
    await post(api, payload(alert(status="resolved", endsAt="2024-05-01T10:15:00Z"), status="resolved"))
    await post(api, payload(alert(startsAt="2024-05-01T11:00:00Z")))
    assert [(a.status.value, a.starts_at) for a in sink.alerts] == [
        ("firing", pytest.approx(1_714_557_600.123456)),
        ("resolved", pytest.approx(1_714_557_600.123456)),
        ("firing", 1_714_561_200.0),
    ]


@pytest.mark.parametrize(
    ("change", "field_name"),
    [
        ({"version": "3"}, "version"),
        ({"alerts": [alert(status="pending")]}, "alerts[0].status"),
        ({"alerts": [{k: v for k, v in alert().items() if k != "fingerprint"}]}, "alerts[0].fingerprint"),
        ({"alerts": [alert(startsAt="yesterday")]}, "alerts[0].startsAt"),
        ({"alerts": [alert(startsAt="2024-05-01T10:00:00")]}, "alerts[0].startsAt"),  # no offset
        ({"alerts": [alert(), alert("x", labels={"alertname": 5})]}, "alerts[1].labels.alertname"),
        ({"groupKey": None}, "groupKey"),
        ({"alerts": "none"}, "alerts"),
    ],
)
async def test_a_bad_payload_is_400_naming_the_field(
    hooked: tuple[Api, Sink], change: dict[str, Any], field_name: str
) -> None:
    api, sink = hooked
    status, err = await post(api, {**payload(), **change})
    assert status == 400 and err["error"] == "invalid" and err["field"] == field_name, err
    assert sink.calls == []


async def test_not_json_and_unknown_fields(hooked: tuple[Api, Sink]) -> None:
    api, sink = hooked
    resp = await api.client.post(
        HOOK,
        data=b"{not json",
        headers={"Authorization": f"Bearer {TOKENS['ci'][1]}", "Content-Type": "application/json"},
    )
    assert resp.status == 400 and (await resp.json())["error"] == "invalid_json"
    # fields a newer Alertmanager adds are ignored, not rejected
    status, _ = await post(api, {**payload(), "somethingNew": {"x": 1}})
    assert status == 200 and len(sink.calls) == 1


async def test_the_hook_needs_a_ci_token(hooked: tuple[Api, Sink]) -> None:
    api, sink = hooked
    assert (await post(api, payload(), as_=None))[0] == 401
    for scope in ("read", "operator"):
        status, err = await post(api, payload(), as_=scope)
        assert status == 403 and "'ci'" in err["detail"]
    assert sink.calls == []
    assert (await post(api, payload(), as_="ci"))[0] == 200


async def test_a_failing_sink_is_503_and_the_retry_is_handed_over(hooked: tuple[Api, Sink]) -> None:
    api, sink = hooked
    sink.fail = 1
    status, err = await post(api, payload())
    assert status == 503 and "retry" in err["detail"] and "database" not in err["detail"]
    status, out = await post(api, payload())  # Alertmanager retries the 5xx
    assert status == 200 and out["new"] == 1 and len(sink.alerts) == 1


async def test_a_slow_sink_is_answered_202_and_carries_on(hooked: tuple[Api, Sink]) -> None:
    api, sink = hooked
    api.client.app[ALERT_HOOK].ack_timeout_s = 0.05
    sink.delay_s = 0.3
    t = time.monotonic()
    status, out = await post(api, payload())
    assert status == 202 and out["matched"] is None and out["new"] == 1
    assert time.monotonic() - t < 0.3 and sink.calls == []
    await asyncio.sleep(0.4)
    assert len(sink.alerts) == 1  # handed over after the answer
    assert (await post(api, payload()))[1]["new"] == 0  # and a retry is still a duplicate


async def test_without_a_sink_the_hook_answers_503(api: Api) -> None:
    status, err = await post(api, payload())
    assert status == 503 and "no alert sink" in err["detail"]
    status, err = await post(api, {**payload(), "version": "3"})  # validation comes first
    assert status == 400 and err["field"] == "version"


async def test_openapi_documents_the_hook(api: Api) -> None:
    _, doc = await api.call("GET", "/api/v1/openapi.json", as_=None)
    op = doc["paths"][HOOK]["post"]
    assert op["x-required-scope"] == "ci" and op["tags"] == ["alerts"]
    assert {"200", "400", "401", "403", "503"} <= set(op["responses"])
    assert "AlertmanagerWebhookIn" in doc["components"]["schemas"]


# --- a real Alertmanager ---------------------------------------------------------------------------

REQUIRED = (
    os.environ.get("CI", "").lower() == "true" or os.environ.get("GUARDRAIL_REQUIRE_INTEGRATION") == "1"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def alertmanager_binary() -> str:
    path = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if path is None:
        why = "prometheus-alertmanager is not installed (Debian package prometheus-alertmanager)"
        if REQUIRED:
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return path


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{what}: not within {timeout} s")


@pytest.mark.integration
async def test_a_real_alertmanager_delivers_firing_and_resolved_with_a_bearer_token(
    hooked: tuple[Api, Sink], alertmanager_binary: str, tmp_path: Path
) -> None:
    api, sink = hooked
    port = _free_port()
    hook_url = str(api.client.make_url(HOOK))
    (tmp_path / "am.yml").write_text(
        f"""
route:
  receiver: guardrail
  group_by: ['alertname', 'service']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: guardrail
    webhook_configs:
      - url: '{hook_url}'
        send_resolved: true
        http_config:
          authorization: {{type: Bearer, credentials: '{TOKENS["ci"][1]}'}}
"""
    )
    proc = subprocess.Popen(
        [
            alertmanager_binary,
            f"--config.file={tmp_path / 'am.yml'}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

            async def ready() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"alertmanager exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
                try:
                    async with http.get(f"{base}/-/ready") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await _until(ready, 20, "alertmanager ready")
            labels = {
                "alertname": "HighErrorRate",
                "service": "checkout",
                "environment": "production",
                "severity": "page",
            }
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
            firing = [{"labels": labels, "annotations": {"summary": "5xx ratio 4.7%"}, "startsAt": started,
                       "generatorURL": "http://prometheus:9090/graph"}]  # fmt: skip
            async with http.post(f"{base}/api/v2/alerts", json=firing) as r:
                assert r.status == 200, await r.text()

            async def delivered(state: AlertState) -> Any:
                async def check() -> bool:
                    return any(a.status is state for a in sink.alerts)

                return check

            await _until(await delivered(AlertState.FIRING), 20, "firing alert delivered")
            ended = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
            async with http.post(f"{base}/api/v2/alerts", json=[{**firing[0], "endsAt": ended}]) as r:
                assert r.status == 200, await r.text()
            await _until(await delivered(AlertState.RESOLVED), 20, "resolved alert delivered")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    fired = next(a for a in sink.alerts if a.status is AlertState.FIRING)
    resolved = next(a for a in sink.alerts if a.status is AlertState.RESOLVED)
    assert fired.labels == labels and fired.summary == "5xx ratio 4.7%" and fired.fingerprint
    assert fired.receiver == "guardrail" and 'alertname="HighErrorRate"' in fired.group_key
    assert resolved.fingerprint == fired.fingerprint and resolved.ends_at is not None
    assert abs(fired.starts_at - (time.time() - 5)) < 120
    assert sum(a.status is AlertState.FIRING for a in sink.alerts) == 1  # group re-sends were de-duplicated


# --- guardrail's own notices (issue 13, case 2) ----------------------------------------------------


def own_page_labels() -> dict[str, str]:
    """The labels guardrail's alertmanager notifier puts on a page, built by the notifier itself."""
    from guardrail.adapters.notify.alertmanager import AlertmanagerNotifier
    from guardrail.domain.notifications import Notice, NoticeAction, Severity

    notifier = AlertmanagerNotifier.from_config(
        {"url": "http://alertmanager:9093", "labels": {"team": "checkout"}}
    )
    notice = Notice(
        action=NoticeAction.TRIGGER,
        key="guardrail:checkout:production:dep-7:CanaryRegression",
        severity=Severity.PAGE,
        service="checkout",
        environment="production",
        summary="canary 5xx 4.7% vs 0.1%: rolled back",
        rule="CanaryRegression",
        deploy_id="dep-7",
        occurred_at=time.time(),
    )
    return notifier.alert(notice)["labels"]


async def test_guardrails_own_pages_coming_back_are_recognised_and_not_handed_over(
    hooked: tuple[Api, Sink],
) -> None:
    """A route that sends every alert to the hook (as alerts/alertmanager.yml does) brings guardrail's
    own pages back; they carry the label the notifier always sets, whatever the operator configured,
    and never reach the deploys (a page about a rollback would fail the next deploy)."""
    api, sink = hooked
    own = alert("0000000000000007", labels=own_page_labels())
    theirs = alert("1a30ba71cca2921f")
    status, out = await post(api, payload(own, theirs))
    assert status == 200, out
    assert (out["received"], out["own"], out["new"]) == (2, 1, 1)
    assert [a.fingerprint for a in sink.alerts] == ["1a30ba71cca2921f"]


def test_the_origin_label_cannot_be_configured_away() -> None:
    from guardrail.adapters.notify.alertmanager import AlertmanagerNotifier
    from guardrail.domain.errors import ConfigError

    for value in ("ci", "guardrail"):
        with pytest.raises(ConfigError) as e:
            AlertmanagerNotifier.from_config({"url": "http://am:9093", "labels": {"origin": value}})
        assert "origin" in e.value.detail
    assert own_page_labels()["origin"] == "guardrail"


@pytest.mark.integration
async def test_the_example_routing_in_a_real_alertmanager_never_feeds_guardrails_pages_back(
    hooked: tuple[Api, Sink], alertmanager_binary: str, tmp_path: Path
) -> None:
    """alerts/alertmanager.yml in a real Alertmanager, its guardrail receiver pointed at this hook
    and its timings shortened; run twice: as shipped, and with the guardrail route's origin matcher
    removed (a catch-all, as an operator might write it). guardrail's page, posted by its own
    notifier, never reaches the deploys either way; a Prometheus alert does."""
    from guardrail.adapters.notify.alertmanager import AlertmanagerNotifier
    from guardrail.domain.notifications import Notice, NoticeAction, Severity

    api, sink = hooked
    hook = api.client.app[ALERT_HOOK]
    token_file = tmp_path / "guardrail-token"
    token_file.write_text(TOKENS["ci"][1])
    example = (Path(__file__).resolve().parents[2] / "alerts/alertmanager.yml").read_text()
    assert "'origin!=\"guardrail\"'" in example
    for variant, text in (
        ("as shipped", example),
        ("catch-all", example.replace(", 'origin!=\"guardrail\"'", "")),
    ):
        text = (
            text.replace("http://guardrail:8080/hooks/alertmanager", str(api.client.make_url(HOOK)))
            .replace("/etc/alertmanager/guardrail-token", str(token_file))
            .replace("group_wait: 30s", "group_wait: 1s")
            .replace("group_interval: 5m", "group_interval: 1s")
        )
        workdir = tmp_path / variant.replace(" ", "-")
        workdir.mkdir()
        (workdir / "am.yml").write_text(text)
        port = _free_port()
        proc = subprocess.Popen(
            [alertmanager_binary, f"--config.file={workdir / 'am.yml'}", f"--storage.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        notifier = AlertmanagerNotifier.from_config({"url": base, "timeout_s": 5})
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:

                async def ready(
                    http: aiohttp.ClientSession = http, proc: subprocess.Popen[bytes] = proc, base: str = base
                ) -> bool:
                    if proc.poll() is not None:
                        raise RuntimeError(f"alertmanager exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
                    try:
                        async with http.get(f"{base}/-/ready") as r:
                            return r.status == 200
                    except aiohttp.ClientError:
                        return False

                await _until(ready, 20, "alertmanager ready")
                page = Notice(
                    key=f"guardrail:checkout:production:dep-7:CanaryRegression:{variant}",
                    action=NoticeAction.TRIGGER,
                    severity=Severity.PAGE,
                    summary="canary 5xx 4.7% vs 0.1%: rolled back",
                    service="checkout",
                    environment="production",
                    deploy_id="dep-7",
                    rule="CanaryRegression",
                    occurred_at=time.time() - 5,
                )
                sent = await notifier.send(page)
                assert sent.ok, sent
                theirs = [{"labels": {"alertname": f"HighErrorRate{len(sink.alerts)}", "service": "checkout",
                                      "environment": "production", "severity": "page"},
                           "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))}]  # fmt: skip
                before = len(sink.alerts)
                async with http.post(f"{base}/api/v2/alerts", json=theirs) as r:
                    assert r.status == 200, await r.text()

                async def handed_over(before: int = before) -> bool:
                    return len(sink.alerts) > before

                await _until(handed_over, 20, f"{variant}: the Prometheus alert handed over")
                if variant == "catch-all":

                    async def came_back() -> bool:
                        return hook.own >= 1

                    await _until(came_back, 20, "guardrail's page routed back to the hook")
                else:
                    await asyncio.sleep(2.5)  # two group intervals: time for it to arrive, were it routed
                    assert hook.own == 0  # the shipped route keeps it off the guardrail receiver
        finally:
            await notifier.close()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert all(a.labels.get("origin") != "guardrail" for a in sink.alerts), variant
        assert not any(a.labels.get("deploy") == "dep-7" for a in sink.alerts), variant
