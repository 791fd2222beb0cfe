"""The kubernetes deploy adapter against an in-memory Kubernetes API on loopback (a Deployment with
its ReplicaSets, an Argo Rollout), which records every request."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from guardrail.adapters.deploy.kubernetes import (
    HASH_LABEL,
    PROMOTED_BY,
    PROMOTED_FROM,
    REVISION,
    ROLLBACK_DEPLOY,
    ROLLBACK_TO,
    KubernetesDeployAdapter,
)
from guardrail.domain.errors import ConfigError
from guardrail.domain.model import Step
from tests.contract.target_fakes import NAME, NS, FakeKubernetes, pod_template
from tests.contract.test_deploy_adapters import SECRET, assert_clean, target

DEP_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}"
Adapters = list[KubernetesDeployAdapter]
RO_PATH = f"/apis/argoproj.io/v1alpha1/namespaces/{NS}/rollouts/{NAME}"


@pytest.fixture
async def k8s() -> AsyncIterator[FakeKubernetes]:
    fake = FakeKubernetes(SECRET)
    await fake.start()
    yield fake
    await fake.close()


def config(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "api_url": url,
        "namespace": "{environment}",
        "token": SECRET,
        "retries": 2,
        "backoff_s": 0,
        "poll_s": 0.01,
        "wait_s": 2,
        **extra,
    }


@pytest.fixture
async def adapters() -> AsyncIterator[list[KubernetesDeployAdapter]]:
    made: list[KubernetesDeployAdapter] = []
    yield made
    for a in made:
        await a.close()


def make(adapters: list[KubernetesDeployAdapter], url: str, **extra: Any) -> KubernetesDeployAdapter:
    adapter = KubernetesDeployAdapter.from_config(config(url, **extra))
    adapters.append(adapter)
    return adapter


def deployment(k8s: FakeKubernetes) -> dict[str, Any]:
    return k8s.deployments[(NS, NAME)]


def rs_by_revision(k8s: FakeKubernetes, revision: int) -> dict[str, Any]:
    return next(rs for rs in k8s.replicasets if rs["metadata"]["annotations"][REVISION] == str(revision))


# --- Deployment: rollback ----------------------------------------------------------------------------


async def test_rollback_json_patches_the_template_of_the_previous_owned_revision(
    k8s: FakeKubernetes, adapters: Adapters
) -> None:
    """Second highest revision among the ReplicaSets the Deployment controls (an impostor with the
    same labels and revision 9 is ignored), pod-template-hash dropped, JSON Patch content type."""
    adapter = make(adapters, k8s.url)
    result = await adapter.rollback(target(), "error rate 4x baseline")
    assert result.ok, result
    assert result.data["revision"] == 2 and result.data["changed"] is True
    [listing] = [r for r in k8s.requests if r.path.endswith("/replicasets")]
    assert listing.query == {"labelSelector": "app=checkout"}
    [patch] = k8s.patches()
    assert patch.path == DEP_PATH
    assert patch.content_type == "application/json-patch+json"
    assert patch.headers["Authorization"] == f"Bearer {SECRET}"
    ops = patch.json
    expected = copy.deepcopy(rs_by_revision(k8s, 2)["spec"]["template"])
    del expected["metadata"]["labels"][HASH_LABEL]
    assert ops[0] == {"op": "replace", "path": "/spec/template", "value": expected}
    assert HASH_LABEL not in ops[0]["value"]["metadata"]["labels"]
    annotations = deployment(k8s)["metadata"]["annotations"]
    assert annotations[ROLLBACK_DEPLOY] == "dep-1"
    assert annotations[ROLLBACK_TO] == rs_by_revision(k8s, 2)["metadata"]["name"]
    assert deployment(k8s)["spec"]["template"] == pod_template("2.3.9")
    assert_clean(result, SECRET)


async def test_rollback_restores_the_revisions_annotations_as_kubectl_does(
    k8s: FakeKubernetes, adapters: Adapters
) -> None:
    """Issue 13, case 8. kubectl rollout undo (kubernetes/kubectl
    ``pkg/polymorphichelpers/rollback.go`` at dee3483a3d6a64c07fdf746caf80af446dee99ac,
    ``DeploymentRollbacker.Rollback`` and ``annotationsToSkip``) replaces the Deployment's
    annotations with the ReplicaSet's, except the skip list (last-applied-configuration, revision,
    revision-history, desired-replicas, max-replicas, deprecated rollback-to), which keep the
    Deployment's values: ``kubernetes.io/change-cause`` goes back to the old version's."""
    dep = deployment(k8s)
    dep["metadata"]["annotations"].update(
        {
            "kubernetes.io/change-cause": "release 2.4.0",
            "kubectl.kubernetes.io/last-applied-configuration": '{"kind":"Deployment"}',
            "deployment.kubernetes.io/revision-history": "1",
            "team.example.com/owner": "payments",  # only on the Deployment: dropped, as kubectl does
        }
    )
    rs_by_revision(k8s, 2)["metadata"]["annotations"].update(
        {
            "kubernetes.io/change-cause": "release 2.3.9",
            "deployment.kubernetes.io/desired-replicas": "4",
            "deployment.kubernetes.io/max-replicas": "5",
            "kubectl.kubernetes.io/last-applied-configuration": '{"kind":"Old"}',
        }
    )
    result = await make(adapters, k8s.url).rollback(target(), "error rate 4x baseline")
    assert result.ok, result
    assert deployment(k8s)["metadata"]["annotations"] == {
        "kubernetes.io/change-cause": "release 2.3.9",  # the ReplicaSet's
        "kubectl.kubernetes.io/last-applied-configuration": '{"kind":"Deployment"}',  # skip list: kept
        REVISION: "3",  # skip list: the Deployment's own
        "deployment.kubernetes.io/revision-history": "1",
        ROLLBACK_DEPLOY: "dep-1",
        ROLLBACK_TO: rs_by_revision(k8s, 2)["metadata"]["name"],
    }


async def test_rollback_refuses_a_paused_deployment(k8s: FakeKubernetes, adapters: Adapters) -> None:
    deployment(k8s)["spec"]["paused"] = True
    result = await make(adapters, k8s.url).rollback(target(), "errors")
    assert not result.ok
    assert "paused" in result.detail and "kubectl rollout resume deployment/checkout" in result.detail
    assert k8s.patches() == []


async def test_rollback_repeated_after_the_controller_renumbered_revisions_is_a_no_op(
    k8s: FakeKubernetes, adapters: Adapters
) -> None:
    """After the undo the controller gives the old ReplicaSet the highest revision, so the "previous"
    one is now the bad version: the repeat must not flip back to it."""
    adapter = make(adapters, k8s.url)
    assert (await adapter.rollback(target(), "errors")).ok
    k8s.settle_deployment()
    assert rs_by_revision(k8s, 4)["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":2.3.9")
    again = await make(adapters, k8s.url).rollback(target(action_key="dep-1/rollback:2"), "errors")
    assert again.ok and again.data["changed"] is False and "nothing to do" in again.detail
    assert len(k8s.patches()) == 1
    assert deployment(k8s)["spec"]["template"] == pod_template("2.3.9")


async def test_rollback_when_the_deployment_already_runs_the_previous_template_is_a_no_op(
    k8s, adapters
) -> None:
    deployment(k8s)["spec"]["template"] = pod_template("2.3.9")  # someone ran kubectl rollout undo
    result = await make(adapters, k8s.url).rollback(target(), "errors")
    assert result.ok and result.data["changed"] is False and "already runs" in result.detail
    assert k8s.patches() == []


async def test_rollback_refuses_to_go_back_to_the_version_being_rolled_back(
    k8s: FakeKubernetes, adapters: Adapters
) -> None:
    """Someone else undid the deploy and the controller renumbered: the second highest revision is
    now the bad version itself."""
    deployment(k8s)["spec"]["template"] = pod_template("2.3.9")
    k8s.settle_deployment()
    result = await make(adapters, k8s.url).rollback(target(version="2.4.0"), "errors")
    assert not result.ok and "the version being rolled back" in result.detail
    assert k8s.patches() == []
    assert deployment(k8s)["spec"]["template"] == pod_template("2.3.9")


async def test_rollback_does_not_undo_a_change_made_after_it(k8s: FakeKubernetes, adapters: Adapters) -> None:
    adapter = make(adapters, k8s.url)
    assert (await adapter.rollback(target(), "errors")).ok
    deployment(k8s)["spec"]["template"] = pod_template("2.4.1")  # a fix went out meanwhile
    again = await adapter.rollback(target(), "errors")
    assert not again.ok and "changed since" in again.detail
    assert len(k8s.patches()) == 1


async def test_rollback_without_a_previous_revision_fails(k8s: FakeKubernetes, adapters: Adapters) -> None:
    k8s.replicasets = [rs_by_revision(k8s, 3)]
    result = await make(adapters, k8s.url).rollback(target(), "errors")
    assert not result.ok and "no previous revision" in result.detail
    assert k8s.patches() == []


async def test_a_missing_deployment_is_named(k8s: FakeKubernetes, adapters: Adapters) -> None:
    result = await make(adapters, k8s.url, name="billing").rollback(target(), "errors")
    assert not result.ok
    assert "Deployment production/billing not found" in result.detail and "404" in result.detail


# --- Deployment: rollout status ------------------------------------------------------------------------


def progressing(k8s: FakeKubernetes, **status: Any) -> None:
    """A rollout in flight: a new generation, ``status`` as given."""
    dep = deployment(k8s)
    dep["metadata"]["generation"] = 6
    dep["status"].update(status)


class Controller:
    """Stands in for the Deployment controller between polls: each wait moves the rollout on."""

    def __init__(self, k8s: FakeKubernetes, steps: list[dict[str, Any]]) -> None:
        self.k8s = k8s
        self.steps = steps
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.steps:
            deployment(self.k8s)["status"].update(self.steps.pop(0))


async def test_apply_step_waits_until_enough_replicas_are_updated(k8s: FakeKubernetes) -> None:
    progressing(k8s, observedGeneration=5, updatedReplicas=0, replicas=4, availableReplicas=4)
    controller = Controller(
        k8s,
        [
            {"observedGeneration": 6},
            {"updatedReplicas": 1, "replicas": 5},
            {"updatedReplicas": 2, "replicas": 5},
        ],
    )
    adapter = KubernetesDeployAdapter(
        KubernetesDeployAdapter.config_type(**config(k8s.url)), sleep=controller
    )
    try:
        result = await adapter.apply_step(target(), Step(servers=2), 1, 3)
    finally:
        await adapter.close()
    assert result.ok, result
    assert result.data["polls"] == 4 and len(controller.waits) == 3
    assert "at least 2 of 4 replicas updated" in result.detail
    assert [r.method for r in k8s.requests] == ["GET"] * 4  # it only reads: CI changed the image


async def test_the_final_step_waits_for_old_replicas_to_go_and_new_ones_to_be_available(
    k8s: FakeKubernetes,
) -> None:
    progressing(k8s, observedGeneration=6, updatedReplicas=4, replicas=5, availableReplicas=3)
    controller = Controller(k8s, [{"replicas": 4}, {"availableReplicas": 4}])
    adapter = KubernetesDeployAdapter(
        KubernetesDeployAdapter.config_type(**config(k8s.url)), sleep=controller
    )
    try:
        result = await adapter.apply_step(target(), Step(weight=100), 2, 3)
    finally:
        await adapter.close()
    assert result.ok and "rollout complete" in result.detail
    assert result.data["polls"] == 3


async def test_apply_step_reads_a_weight_as_a_share_of_replicas_rounded_up(
    k8s: FakeKubernetes, adapters: Adapters
) -> None:
    progressing(k8s, observedGeneration=6, updatedReplicas=1, replicas=5, availableReplicas=4)
    adapter = make(adapters, k8s.url, wait_s=0)
    assert (await adapter.apply_step(target(), Step(weight=10), 0, 3)).ok  # 10% of 4 -> 1
    fifty = await adapter.apply_step(target(), Step(weight=50), 1, 3)  # 50% of 4 -> 2
    assert not fifty.ok and "1 of the 2 replicas this step wants" in fifty.detail


async def test_a_rollout_past_its_progress_deadline_fails_at_once(
    k8s: FakeKubernetes, adapters: Adapters
) -> None:
    progressing(
        k8s,
        observedGeneration=6,
        updatedReplicas=1,
        conditions=[
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "checkout-7d9" has timed out progressing.',
            }
        ],
    )
    started = time.monotonic()
    result = await make(adapters, k8s.url, wait_s=5).finalize(target())
    assert not result.ok and "progress deadline" in result.detail
    assert time.monotonic() - started < 1 and result.data["polls"] == 1


async def test_a_rollout_that_does_not_get_there_in_wait_s_fails_saying_where_it_is(
    k8s: FakeKubernetes, adapters: Adapters
) -> None:
    progressing(k8s, observedGeneration=6, updatedReplicas=2, replicas=5, availableReplicas=4)
    result = await make(adapters, k8s.url, wait_s=0.1).finalize(target())
    assert not result.ok
    assert "not rollout complete after 0.1s" in result.detail and "2 of 4 replicas updated" in result.detail


async def test_a_paused_deployment_short_of_the_step_fails(k8s: FakeKubernetes, adapters: Adapters) -> None:
    progressing(k8s, observedGeneration=6, updatedReplicas=1, replicas=5)
    deployment(k8s)["spec"]["paused"] = True
    result = await make(adapters, k8s.url, wait_s=5).apply_step(target(), Step(servers=3), 1, 3)
    assert not result.ok and "paused" in result.detail and result.data["polls"] == 1


# --- Argo Rollouts ----------------------------------------------------------------------------------


async def test_argo_promote_marks_the_rollout_then_clears_pause_conditions_on_status(
    k8s: FakeKubernetes, adapters: Adapters
) -> None:
    adapter = make(adapters, k8s.url, mode="argo-rollout")
    result = await adapter.apply_step(target(action_key="dep-1:7:apply_step:1"), Step(weight=50), 1, 3)
    assert result.ok, result
    assert [(r.method, r.path) for r in k8s.requests] == [
        ("GET", RO_PATH),
        ("PATCH", RO_PATH),
        ("PATCH", RO_PATH + "/status"),
        ("GET", RO_PATH),  # the step moved: checked, not assumed
    ]
    marks_patch, status_patch = k8s.patches()
    assert {marks_patch.content_type, status_patch.content_type} == {"application/merge-patch+json"}
    assert "spec" not in marks_patch.json  # not paused: nothing to unpause (promote.go)
    assert marks_patch.json["metadata"]["annotations"] == {
        PROMOTED_BY: "dep-1:7:apply_step:1",
        PROMOTED_FROM: "1",
    }
    assert status_patch.json == {"status": {"pauseConditions": None}}
    assert k8s.rollouts[(NS, NAME)]["status"]["currentStepIndex"] == 3
    assert "canary weight 50%" in result.detail


async def test_argo_status_patch_falls_back_to_the_main_resource_on_404(
    k8s: FakeKubernetes, adapters: Adapters
) -> None:
    k8s.status_subresource = False
    adapter = make(adapters, k8s.url, mode="argo-rollout")
    result = await adapter.rollback(target(), "errors")
    assert result.ok, result
    assert [(r.method, r.path) for r in k8s.patches()] == [("PATCH", RO_PATH + "/status"), ("PATCH", RO_PATH)]
    assert all(r.json == {"status": {"abort": True}} for r in k8s.patches())
    assert k8s.rollouts[(NS, NAME)]["status"]["abort"] is True


async def test_argo_finalize_promotes_fully_and_rollback_aborts(
    k8s: FakeKubernetes, adapters: Adapters
) -> None:
    adapter = make(adapters, k8s.url, mode="argo-rollout")
    assert (await adapter.finalize(target())).ok
    assert (await adapter.rollback(target(), "errors")).ok
    assert [(r.path, r.json) for r in k8s.patches()] == [
        (RO_PATH + "/status", {"status": {"promoteFull": True}}),
        (RO_PATH + "/status", {"status": {"abort": True}}),
    ]


async def test_argo_first_step_is_left_to_argo_unless_configured(
    k8s: FakeKubernetes, adapters: Adapters
) -> None:
    observed = await make(adapters, k8s.url, mode="argo-rollout").apply_step(target(), Step(weight=10), 0, 3)
    assert observed.ok and observed.data["promoted"] is False and k8s.patches() == []
    adapter = make(adapters, k8s.url, mode="argo-rollout", promote_first_step=True)
    promoted = await adapter.apply_step(target(), Step(weight=10), 0, 3)
    assert promoted.ok and promoted.data["promoted"] is True and len(k8s.patches()) == 2


async def test_argo_repeating_a_promote_does_not_skip_the_next_pause(
    k8s: FakeKubernetes, adapters: Adapters
) -> None:
    adapter = make(adapters, k8s.url, mode="argo-rollout")
    key = "dep-1:7:apply_step:1"
    assert (await adapter.apply_step(target(action_key=key), Step(weight=50), 1, 3)).ok
    again = await make(adapters, k8s.url, mode="argo-rollout").apply_step(
        target(action_key=key), Step(weight=50), 1, 3
    )
    assert again.ok and "already promoted" in again.detail
    assert len(k8s.patches()) == 2
    assert k8s.rollouts[(NS, NAME)]["status"]["currentStepIndex"] == 3


async def test_argo_a_promote_cut_off_between_its_two_patches_is_finished_on_repeat(
    k8s: FakeKubernetes, adapters: Adapters
) -> None:
    ro = k8s.rollouts[(NS, NAME)]
    key = "dep-1:7:apply_step:1"
    ro["metadata"]["annotations"] = {PROMOTED_BY: key, PROMOTED_FROM: "1"}  # spec patch landed, then a crash
    result = await make(adapters, k8s.url, mode="argo-rollout").apply_step(
        target(action_key=key), Step(weight=50), 1, 3
    )
    assert result.ok and result.data["promoted"] is True
    assert k8s.rollouts[(NS, NAME)]["status"]["currentStepIndex"] == 3


async def test_argo_a_missing_rollout_is_named(k8s: FakeKubernetes, adapters: Adapters) -> None:
    adapter = make(adapters, k8s.url, mode="argo-rollout", name="{service}-canary")
    for result in (
        await adapter.apply_step(target(), Step(weight=50), 1, 3),
        await adapter.rollback(target(), "errors"),
    ):
        assert not result.ok and "Rollout production/checkout-canary not found" in result.detail
    assert k8s.patches() == []


# --- transport ------------------------------------------------------------------------------------


async def test_5xx_is_retried_and_4xx_is_not(k8s: FakeKubernetes, adapters: Adapters) -> None:
    k8s.script = [503, 500]
    adapter = make(adapters, k8s.url, mode="argo-rollout")
    result = await adapter.rollback(target(), "errors")
    assert result.ok, result
    assert [r.method for r in k8s.requests] == ["GET", "GET", "GET", "PATCH"]  # 503, 500, then 200
    k8s.requests.clear()
    k8s.script = [403]
    forbidden = await adapter.apply_step(target(), Step(weight=50), 1, 3)
    assert not forbidden.ok and "403" in forbidden.detail and "RBAC" in forbidden.detail
    assert len(k8s.requests) == 1


async def test_requests_say_which_action_sent_them(k8s: FakeKubernetes, adapters: Adapters) -> None:
    await make(adapters, k8s.url).rollback(target(action_key="dep-1:9:rollback"), "errors")
    assert {r.headers["User-Agent"] for r in k8s.requests} == {"guardrail (rollback; dep-1:9:rollback)"}
    assert {r.headers["Accept"] for r in k8s.requests} == {"application/json"}


async def test_a_rejected_token_is_a_failed_result_saying_so(k8s: FakeKubernetes, adapters: Adapters) -> None:
    k8s.token = "another-token"
    result = await make(adapters, k8s.url).rollback(target(), "errors")
    assert not result.ok and "401" in result.detail and "token was not accepted" in result.detail
    assert len(k8s.requests) == 1  # not retried
    assert_clean(result, SECRET)


async def test_token_file_is_read_at_each_action_and_never_shown(
    k8s: FakeKubernetes, adapters: Adapters, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-projected-token-111\n")
    k8s.token, k8s.echo = "first-projected-token-111", True
    cfg = config(k8s.url, token_file=str(token_file))
    del cfg["token"]
    adapter = KubernetesDeployAdapter.from_config(cfg)
    adapters.append(adapter)
    first = await adapter.finalize(target())
    token_file.write_text("rotated-projected-token-222")
    k8s.token = "rotated-projected-token-222"
    second = await adapter.finalize(target())
    assert first.ok and second.ok
    assert_clean(first, "first-projected-token-111")
    assert_clean(second, "rotated-projected-token-222")
    assert "***" in first.output and "***" in second.output  # the fake echoed the token back
    token_file.unlink()
    missing = await adapter.finalize(target())
    assert not missing.ok and "cannot read token_file" in missing.detail


async def test_a_name_that_is_not_a_kubernetes_name_fails_without_a_request(
    k8s: FakeKubernetes, adapters: Adapters
) -> None:
    result = await make(adapters, k8s.url).apply_step(target(service="Check_Out"), Step(weight=10), 0, 3)
    assert not result.ok and "'Check_Out'" in result.detail and "DNS-1123" in result.detail
    assert k8s.requests == []


def test_config_is_checked_at_construction() -> None:
    base = {"api_url": "https://k8s.example.com:6443"}
    for bad, key in [
        ({"api_url": "k8s.example.com"}, "api_url"),
        ({**base, "mode": "statefulset"}, "mode"),
        ({**base, "token": "t", "token_file": "/var/run/t"}, "token_file"),
        ({**base, "ca_file": "/ca.pem", "insecure_skip_tls_verify": True}, "insecure_skip_tls_verify"),
        ({"api_url": "http://127.0.0.1:8001", "ca_file": "/ca.pem"}, "ca_file"),
        ({**base, "namespace": "Prod_EU"}, "namespace"),
        ({**base, "name": "{service}-{version}"}, "name"),
        ({**base, "wait_s": 3600}, "wait_s"),
    ]:
        with pytest.raises(ConfigError) as e:
            KubernetesDeployAdapter.from_config(bad)
        assert e.value.field == f"adapter.config.{key}", (bad, e.value)


# --- TLS (needs the openssl command to make a certificate) ---------------------------------------------


def _openssl_or_skip() -> str:
    found = shutil.which("openssl")
    if found:
        return found
    if os.environ.get("GUARDRAIL_REQUIRE_INTEGRATION") == "1":
        pytest.fail("GUARDRAIL_REQUIRE_INTEGRATION=1 but openssl is not installed", pytrace=False)
    pytest.skip("openssl is not installed (needed to make a test certificate)")


@pytest.mark.integration
async def test_tls_is_verified_against_ca_file(tmp_path: Path, adapters: Adapters) -> None:
    import ssl

    openssl = _openssl_or_skip()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    fake = FakeKubernetes(SECRET)
    await fake.start(server_ctx)
    try:
        assert fake.url.startswith("https://")
        trusted = await make(adapters, fake.url, ca_file=str(cert)).finalize(target())
        unknown = await make(adapters, fake.url).finalize(target())
        skipped = await make(adapters, fake.url, insecure_skip_tls_verify=True).finalize(target())
        bad_ca = await make(adapters, fake.url, ca_file=str(tmp_path / "nope.pem")).finalize(target())
    finally:
        await fake.close()
    assert trusted.ok, trusted
    assert not unknown.ok and "TLS failed" in unknown.detail and "certificate" in unknown.detail
    assert skipped.ok
    assert not bad_ca.ok and "cannot load ca_file" in bad_ca.detail
