"""Issue 13, case 4: the kubernetes adapter's Argo promote does what ``kubectl argo rollouts promote``
does, and says "promoted" only when the rollout moved.

Upstream: argoproj/argo-rollouts ``pkg/kubectl-argo-rollouts/cmd/promote/promote.go`` at
9f8d111d8f8e3e88b6d7f8bbdf62fd3cd863ef9d (``PromoteRollout``, ``getPatches``, ``isInconclusive``) and
``utils/replicaset/canary.go`` (``GetCurrentCanaryStep``):

- ``spec.paused`` -> ``{"spec":{"paused":false}}`` (sent after the status patch);
- an inconclusive step analysis that paused the controller (pause conditions and
  ``controllerPause``) -> ``{"status":{"pauseConditions":null,"controllerPause":false,
  "currentStepIndex":i+1}}``;
- pause conditions -> ``{"status":{"pauseConditions":null}}``;
- no pause condition -> ``{"status":{"pauseConditions":null,"currentStepIndex":i+1}}``;
- the status patch goes to ``/status``; on 404 the unified patch (spec and status) goes to the
  main resource instead;
- ``--full``: unpause ``spec.paused`` if set; ``{"status":{"promoteFull":true}}`` only while
  ``currentPodHash != stableRS``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from guardrail.adapters.deploy.kubernetes import PROMOTED_BY, PROMOTED_FROM, KubernetesDeployAdapter
from guardrail.domain.model import Step
from tests.contract.target_fakes import NAME, NS, FakeKubernetes
from tests.contract.test_deploy_adapters import SECRET, target

RO_PATH = f"/apis/argoproj.io/v1alpha1/namespaces/{NS}/rollouts/{NAME}"
KEY = "dep-1:7:apply_step:1"


@pytest.fixture
async def k8s() -> AsyncIterator[FakeKubernetes]:
    fake = FakeKubernetes(SECRET)
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
async def adapter(k8s: FakeKubernetes) -> AsyncIterator[KubernetesDeployAdapter]:
    a = KubernetesDeployAdapter.from_config(
        {
            "api_url": k8s.url,
            "namespace": "{environment}",
            "token": SECRET,
            "mode": "argo-rollout",
            "retries": 0,
            "poll_s": 0.01,
            "wait_s": 0.3,
        }
    )
    yield a
    await a.close()


def ro(k8s: FakeKubernetes) -> dict[str, Any]:
    return k8s.rollouts[(NS, NAME)]


def status_patches(k8s: FakeKubernetes) -> list[Any]:
    return [r.json for r in k8s.patches() if r.path.endswith("/status")]


async def test_a_paused_step_has_its_pause_conditions_cleared_and_moves_on(
    k8s: FakeKubernetes, adapter: KubernetesDeployAdapter
) -> None:
    result = await adapter.apply_step(target(action_key=KEY), Step(weight=50), 1, 3)
    assert result.ok and result.data["promoted"] is True, result
    assert status_patches(k8s) == [{"status": {"pauseConditions": None}}]
    main = [r.json for r in k8s.patches() if r.path == RO_PATH]
    assert main == [{"metadata": {"annotations": {PROMOTED_BY: KEY, PROMOTED_FROM: "1"}}}]  # no spec.paused
    assert ro(k8s)["status"]["currentStepIndex"] == 3
    assert result.data["to_step_index"] == 3


async def test_a_step_without_a_pause_is_advanced_by_its_index(
    k8s: FakeKubernetes, adapter: KubernetesDeployAdapter
) -> None:
    st = ro(k8s)["status"]
    st.update(currentStepIndex=2, phase="Progressing")  # at setWeight 50, pods not ready yet
    del st["pauseConditions"]
    k8s.argo_frozen = True
    result = await adapter.apply_step(target(action_key=KEY), Step(weight=50), 1, 3)
    assert result.ok, result
    assert status_patches(k8s) == [{"status": {"pauseConditions": None, "currentStepIndex": 3}}]
    assert ro(k8s)["status"]["currentStepIndex"] == 3


async def test_an_inconclusive_analysis_is_released_with_its_controller_pause(
    k8s: FakeKubernetes, adapter: KubernetesDeployAdapter
) -> None:
    r = ro(k8s)
    r["spec"]["strategy"]["canary"]["steps"][1] = {"analysis": {"templates": [{"templateName": "guardrail"}]}}
    r["status"].update(
        currentStepIndex=1,
        controllerPause=True,
        pauseConditions=[{"reason": "InconclusiveAnalysisRun"}],
    )
    r["status"]["canary"]["currentStepAnalysisRunStatus"] = {"name": "run-1", "status": "Inconclusive"}
    result = await adapter.apply_step(target(action_key=KEY), Step(weight=50), 1, 3)
    assert result.ok, result
    assert status_patches(k8s) == [
        {"status": {"pauseConditions": None, "controllerPause": False, "currentStepIndex": 2}}
    ]
    assert ro(k8s)["status"]["currentStepIndex"] == 3 and not ro(k8s)["status"].get("controllerPause")


async def test_a_paused_spec_is_unpaused_after_the_status(
    k8s: FakeKubernetes, adapter: KubernetesDeployAdapter
) -> None:
    ro(k8s)["spec"]["paused"] = True
    result = await adapter.apply_step(target(action_key=KEY), Step(weight=50), 1, 3)
    assert result.ok, result
    paths = [(r.path, r.json) for r in k8s.patches()]
    assert paths[1] == (RO_PATH + "/status", {"status": {"pauseConditions": None}})
    assert paths[2] == (RO_PATH, {"spec": {"paused": False}})
    assert ro(k8s)["status"]["currentStepIndex"] == 3


async def test_without_the_status_subresource_the_unified_patch_goes_to_the_rollout(
    k8s: FakeKubernetes, adapter: KubernetesDeployAdapter
) -> None:
    k8s.status_subresource = False
    ro(k8s)["spec"]["paused"] = True
    result = await adapter.apply_step(target(action_key=KEY), Step(weight=50), 1, 3)
    assert result.ok, result
    unified = [r.json for r in k8s.patches() if r.path == RO_PATH and "status" in r.json]
    assert unified == [{"spec": {"paused": False}, "status": {"pauseConditions": None}}]
    assert ro(k8s)["status"]["currentStepIndex"] == 3


async def test_a_promote_that_moves_nothing_is_not_reported_as_promoted(
    k8s: FakeKubernetes, adapter: KubernetesDeployAdapter
) -> None:
    k8s.argo_frozen = True  # the controller does not act on the cleared pause
    result = await adapter.apply_step(target(action_key=KEY), Step(weight=50), 1, 3)
    assert not result.ok
    assert "did not move past step index 1" in result.detail
    assert result.data["promoted"] is False


async def test_full_promotion_unpauses_first_and_skips_a_rollout_already_on_its_stable_pods(
    k8s: FakeKubernetes, adapter: KubernetesDeployAdapter
) -> None:
    ro(k8s)["spec"]["paused"] = True
    assert (await adapter.finalize(target())).ok
    assert [(r.path, r.json) for r in k8s.patches()] == [
        (RO_PATH + "/status", {"status": {"promoteFull": True}}),
        (RO_PATH, {"spec": {"paused": False}}),
    ]
    k8s.requests.clear()
    again = await adapter.finalize(target(action_key="dep-1:7:finalize:2"))  # now stableRS == currentPodHash
    assert again.ok and "already fully promoted" in again.detail
    assert k8s.patches() == []
