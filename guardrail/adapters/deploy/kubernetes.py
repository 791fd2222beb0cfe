"""Kubernetes: watch a Deployment's rollout and undo it, or drive an Argo Rollout.

Talks to the Kubernetes API directly (aiohttp, no client library), with a bearer ``token`` (or one
read from ``token_file`` at each action, e.g. the projected service-account token
``/var/run/secrets/kubernetes.io/serviceaccount/token``), TLS verified against ``ca_file`` (or the
system CAs; ``insecure_skip_tls_verify`` turns verification off). ``api_url`` may also be
``http://127.0.0.1:8001`` behind ``kubectl proxy``. ``namespace`` and ``name`` are templates over
``{service}`` and ``{environment}``. Every request sends ``User-Agent: guardrail (<method>; <action
key>)`` so that the cluster's audit log shows which action touched the object.

``mode: deployment`` (``apps/v1`` Deployment). guardrail does **not** change images or pace the
rollout: CI changed the image and the Deployment controller rolls it out by itself.

- ``apply_step`` waits (up to ``wait_s``, polling every ``poll_s``) until the step is in effect, as
  ``kubectl rollout status`` judges it: the controller has observed the latest generation, and then
  for a partial step (``servers: N``, or ``weight: W`` read as W% of ``spec.replicas``, rounded
  up) at least N replicas are updated; for a full step (all servers, 100%) every replica is updated,
  no old replica is left and every updated one is available. It fails at once when the rollout has
  exceeded its progress deadline, or when the Deployment is paused before reaching the step.
- ``finalize`` checks that the whole rollout completed (the full-step check, same wait).
- ``rollback`` is ``kubectl rollout undo``: refuse a paused Deployment; list the ReplicaSets
  matching its selector and controlled by it (owner reference uid); take the previous revision
  (second highest ``deployment.kubernetes.io/revision``); drop ``pod-template-hash`` from its
  template labels; send a JSON Patch (``application/json-patch+json``)
  ``[{"op": "replace", "path": "/spec/template", "value": <template>}, {"op": "add", "path":
  "/metadata/annotations", ...}]``: as kubectl does, the annotations become the ReplicaSet's except
  kubectl's skip list (last-applied-configuration, revision, revision-history, desired/max
  replicas), which keep the Deployment's values, so ``kubernetes.io/change-cause`` reverts too;
  guardrail adds ``guardrail.dev/rollback-deploy-id`` and ``guardrail.dev/rollback-to-replicaset``.
  Repeating it is a no-op success when the Deployment already runs that template (also after the
  controller renumbered the revisions: the annotations say which ReplicaSet it went back to). It
  refuses when the revision it would go back to runs the very version being rolled back.

``mode: argo-rollout`` (``argoproj.io/v1alpha1`` Rollout, as ``kubectl argo rollouts`` does it;
all patches ``application/merge-patch+json``, status patches to the ``/status`` subresource with
a fallback to the main resource when that answers 404):

- ``apply_step``: the first step is observed only (Argo sets the first weight itself when the image
  changes; ``promote_first_step: true`` promotes there too); each later step is one promote, as
  ``kubectl argo rollouts promote`` does it (``promote.go`` ``getPatches``): annotations recording
  the action key and the step index it promoted from (so a repeat after a crash does not skip a
  second pause), then the status patch: after an inconclusive step analysis
  ``{"pauseConditions": null, "controllerPause": false, "currentStepIndex": i+1}``, with pause
  conditions ``{"pauseConditions": null}``, else ``{"pauseConditions": null, "currentStepIndex":
  i+1}`` (the unified spec+status patch to the main resource when ``/status`` is 404), then
  ``{"spec": {"paused": false}}`` when the spec is paused. "Promoted" is reported only once the
  rollout's step index went past where it was (read again until ``wait_s``); otherwise the action
  fails saying where the rollout stands.
- ``finalize``: promote-full as ``promote --full`` does: ``{"status": {"promoteFull": true}}`` while
  ``currentPodHash`` differs from ``stableRS`` (else nothing to do), then unpause a paused spec.
- ``rollback``: abort, ``{"status": {"abort": true}}`` (safe to repeat).

Requests time out after ``timeout_s``; no answer, 429 and 5xx are retried ``retries`` times with
backoff. Results carry the last response body (redacted, capped) as ``output``.
"""

from __future__ import annotations

import asyncio
import copy
import math
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Self
from urllib.parse import quote

import aiohttp

from guardrail.adapters.deploy import format_weight, parse_adapter_config
from guardrail.adapters.deploy.rest import (
    JsonApi,
    Reply,
    check_base_url,
    check_name_template,
    check_timing,
    one_line,
    policy_of,
    render_name,
)
from guardrail.domain.errors import ConfigError
from guardrail.domain.model import Step
from guardrail.ports import ActionResult, DeployTarget
from guardrail.secrets import redact_text, secret_field, secret_values

Mode = Literal["deployment", "argo-rollout"]

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
ROLLBACK_DEPLOY = "guardrail.dev/rollback-deploy-id"
ROLLBACK_TO = "guardrail.dev/rollback-to-replicaset"
PROMOTED_BY = "guardrail.dev/promoted-by"
PROMOTED_FROM = "guardrail.dev/promoted-from-step"
MAX_WAIT_S = 840.0  # below the engine's last-resort guard around an adapter call

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _name_problem(kind: str, value: str) -> str | None:
    if kind == "namespace":
        if len(value) <= 63 and _LABEL.match(value):
            return None
        return f"namespace {value!r} is not a valid DNS-1123 label (lower case a-z, 0-9, '-', at most 63)"
    if len(value) <= 253 and _SUBDOMAIN.match(value):
        return None
    return f"name {value!r} is not a valid DNS-1123 subdomain (lower case a-z, 0-9, '-', '.')"


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    api_url: str
    namespace: str = "default"  # template: {service}, {environment}
    name: str = "{service}"  # template: {service}, {environment}
    mode: Mode = "deployment"
    token: str | None = secret_field(default=None)
    token_file: str | None = None  # read at each action (projected tokens rotate)
    ca_file: str | None = None
    insecure_skip_tls_verify: bool = False
    timeout_s: float = 10.0  # per request
    retries: int = 3  # extra attempts after the first, for no answer / 429 / 5xx
    backoff_s: float = 0.5  # before the first retry; doubled each time, with jitter
    backoff_max_s: float = 10.0  # longest wait between attempts (a Retry-After may ask for more)
    deadline_s: float = 120.0  # one request, its retries and waits included
    wait_s: float = 300.0  # deployment mode: how long apply_step / finalize wait for the rollout
    poll_s: float = 2.0
    promote_first_step: bool = False  # argo-rollout mode: promote at the first step too

    def __post_init__(self) -> None:
        url = check_base_url("api_url", self.api_url)
        for key in ("namespace", "name"):
            template = getattr(self, key)
            check_name_template(key, template)
            if "{" not in template:
                problem = _name_problem(key, template)
                if problem:
                    raise ConfigError(problem, field=key)
        if self.token is not None and not self.token:
            raise ConfigError("must not be empty (leave it out to send no token)", field="token")
        if self.token is not None and self.token_file is not None:
            raise ConfigError("set token or token_file, not both", field="token_file")
        if self.token_file is not None and not self.token_file:
            raise ConfigError("must be a file path (or left out)", field="token_file")
        if self.ca_file is not None:
            if not self.ca_file:
                raise ConfigError("must be a file path (or left out)", field="ca_file")
            if self.insecure_skip_tls_verify:
                raise ConfigError(
                    "set ca_file or insecure_skip_tls_verify, not both", field="insecure_skip_tls_verify"
                )
            if url.scheme != "https":
                raise ConfigError("applies to an https:// api_url only", field="ca_file")
        check_timing(self.timeout_s, self.retries, self.backoff_s, self.backoff_max_s, self.deadline_s)
        if not 0 <= self.wait_s <= MAX_WAIT_S:
            raise ConfigError(
                f"must be between 0 and {MAX_WAIT_S:g} seconds, got {self.wait_s}", field="wait_s"
            )
        if not self.poll_s > 0:
            raise ConfigError(f"must be a number of seconds > 0, got {self.poll_s}", field="poll_s")


class _Failed(Exception):
    """Ends an action early with a failed result (internal control flow, never escapes)."""

    def __init__(self, detail: str, reply: Reply | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reply = reply


def _strip_hash(template: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(template)
    labels = (out.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
    return out


def _images(template: dict[str, Any]) -> list[str]:
    containers = ((template or {}).get("spec") or {}).get("containers") or []
    return [str(c.get("image", "?")) for c in containers if isinstance(c, dict)]


def _revision(obj: dict[str, Any]) -> int | None:
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(REVISION)
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def _selector(selector: dict[str, Any]) -> str:
    """A Deployment's ``spec.selector`` as a ``labelSelector`` query value."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def _runs_version(template: dict[str, Any], version: str) -> bool:
    return bool(version) and any(
        img.endswith(":" + version) or img.endswith("@" + version) for img in _images(template)
    )


# kubectl's annotationsToSkip (kubernetes/kubectl pkg/polymorphichelpers/rollback.go): kept from
# the Deployment, never copied from the ReplicaSet when rolling back
ANNOTATIONS_TO_SKIP = frozenset(
    {
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        "deployment.kubernetes.io/revision-history",
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
        "deprecated.deployment.rollback.to",
    }
)


def _restored_annotations(deployment: dict[str, Any], replicaset: dict[str, Any]) -> dict[str, str]:
    """The Deployment's annotations after ``kubectl rollout undo``: the skip list's from the
    Deployment, everything else from the ReplicaSet (so ``kubernetes.io/change-cause`` reverts)."""
    out = {k: v for k, v in deployment.items() if k in ANNOTATIONS_TO_SKIP}
    out.update({k: v for k, v in replicaset.items() if k not in ANNOTATIONS_TO_SKIP})
    return out


class KubernetesDeployAdapter:
    name = "kubernetes"
    config_type: ClassVar[type[KubernetesConfig]] = KubernetesConfig

    def __init__(
        self,
        config: KubernetesConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self._sleep = sleep
        self._secrets = secret_values(config)
        self._file_token: str | None = None
        self._ssl: ssl.SSLContext | bool | None = None
        self._api = JsonApi(
            config.api_url,
            headers={"Accept": "application/json"},
            timeout_s=config.timeout_s,
            policy=policy_of(config.retries, config.backoff_s, config.backoff_max_s, config.deadline_s),
            secrets=self._all_secrets,
            session=session,
            sleep=sleep,
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Self:
        return cls(parse_adapter_config(KubernetesConfig, config, name="kubernetes"))

    def __repr__(self) -> str:
        return f"KubernetesDeployAdapter({self.config!r})"

    async def close(self) -> None:
        await self._api.close()

    def _all_secrets(self) -> list[str]:
        return [*self._secrets, *([self._file_token] if self._file_token else [])]

    # --- the port ---------------------------------------------------------------------------------

    async def apply_step(self, target: DeployTarget, step: Step, index: int, total: int) -> ActionResult:
        if self.config.mode == "argo-rollout":
            return await self._run(target, "apply_step", lambda h: self._argo_promote(h, target, index))
        return await self._run(target, "apply_step", lambda h: self._deployment_wait(h, step))

    async def finalize(self, target: DeployTarget) -> ActionResult:
        if self.config.mode == "argo-rollout":
            return await self._run(target, "finalize", lambda h: self._argo_status(h, "promoteFull"))
        return await self._run(target, "finalize", lambda h: self._deployment_wait(h, None))

    async def rollback(self, target: DeployTarget, reason: str) -> ActionResult:
        if self.config.mode == "argo-rollout":
            return await self._run(target, "rollback", lambda h: self._argo_status(h, "abort"))
        return await self._run(target, "rollback", lambda h: self._deployment_undo(h, target))

    # --- plumbing ---------------------------------------------------------------------------------

    async def _run(
        self, target: DeployTarget, method: str, body: Callable[[_Call], Awaitable[ActionResult]]
    ) -> ActionResult:
        cfg = self.config
        namespace = render_name(cfg.namespace, target.service, target.environment)
        name = render_name(cfg.name, target.service, target.environment)
        for kind, value in (("namespace", namespace), ("name", name)):
            problem = _name_problem(kind, value)
            if problem:
                return ActionResult(
                    ok=False, detail=f"{problem} (from the {kind} template {getattr(cfg, kind)!r})"
                )
        try:
            headers = self._headers(method, target)
            ssl_context = self._ssl_context()
        except _Failed as e:
            return ActionResult(ok=False, detail=redact_text(e.detail, self._all_secrets()))
        call = _Call(self, namespace, name, headers, ssl_context)
        try:
            result = await body(call)
        except _Failed as e:
            reply = e.reply
            result = ActionResult(
                ok=False,
                detail=e.detail,
                output=reply.text if reply else "",
                data={"history": reply.history} if reply else {},
            )
        secrets = self._all_secrets()
        return ActionResult(
            ok=result.ok,
            detail=one_line(redact_text(result.detail, secrets)),
            output=redact_text(result.output, secrets),
            data={"object": call.object_ref(), **result.data},
        )

    def _headers(self, method: str, target: DeployTarget) -> dict[str, str]:
        headers = {"User-Agent": f"guardrail ({method}; {one_line(target.action_key, 200)})"}
        token = self.config.token
        if self.config.token_file is not None:
            try:
                token = Path(self.config.token_file).read_text().strip()
            except OSError as e:
                raise _Failed(
                    f"cannot read token_file {self.config.token_file!r}: {e.strerror or e}"
                ) from None
            if not token:
                raise _Failed(f"token_file {self.config.token_file!r} is empty")
            self._file_token = token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if self._ssl is None:
            cfg = self.config
            if cfg.insecure_skip_tls_verify:
                self._ssl = False
            elif cfg.ca_file is not None:
                try:
                    self._ssl = ssl.create_default_context(cafile=cfg.ca_file)
                except (OSError, ssl.SSLError) as e:
                    raise _Failed(f"cannot load ca_file {cfg.ca_file!r}: {e}") from None
            else:
                self._ssl = True
        return self._ssl

    # --- Deployment ---------------------------------------------------------------------------------

    async def _deployment_wait(self, call: _Call, step: Step | None) -> ActionResult:
        """Poll until ``step`` (None: the whole rollout) is in effect, or fail."""
        cfg = self.config
        deadline = time.monotonic() + cfg.wait_s
        polls = 0
        while True:
            polls += 1
            reply = await call.get(call.deployment_path())
            dep = reply.json or {}
            spec, status = dep.get("spec") or {}, dep.get("status") or {}
            replicas = int(spec.get("replicas", 1))
            goal = _goal(step, replicas)
            done, problem, progress = _rollout_state(dep, goal, replicas)
            data = {
                "generation": (dep.get("metadata") or {}).get("generation"),
                "observed_generation": status.get("observedGeneration"),
                "replicas": replicas,
                "updated": status.get("updatedReplicas", 0),
                "available": status.get("availableReplicas", 0),
                "images": _images(spec.get("template") or {}),
                "polls": polls,
            }
            what = "rollout complete" if goal is None else f"at least {goal} of {replicas} replicas updated"
            if done:
                return ActionResult(
                    ok=True,
                    detail=f"Deployment {call.ref()}: {what} ({progress}; images {', '.join(data['images'])})",
                    output=reply.text,
                    data=data,
                )
            if problem is None and spec.get("paused"):
                problem = "the Deployment is paused (kubectl rollout resume) before reaching this step"
            if problem is not None:
                return ActionResult(
                    ok=False,
                    detail=f"Deployment {call.ref()}: {problem} ({progress})",
                    output=reply.text,
                    data=data,
                )
            left = deadline - time.monotonic()
            if left <= 0:
                return ActionResult(
                    ok=False,
                    detail=f"Deployment {call.ref()}: not {what} after {cfg.wait_s:g}s: {progress}",
                    output=reply.text,
                    data=data,
                )
            await self._sleep(min(cfg.poll_s, left))

    async def _deployment_undo(self, call: _Call, target: DeployTarget) -> ActionResult:
        reply = await call.get(call.deployment_path())
        dep = reply.json or {}
        meta, spec = dep.get("metadata") or {}, dep.get("spec") or {}
        if spec.get("paused"):
            raise _Failed(
                f"Deployment {call.ref()} is paused; like kubectl rollout undo, guardrail does not roll back "
                f"a paused Deployment (resume it: kubectl rollout resume deployment/{call.name} "
                f"-n {call.namespace})",
                reply,
            )
        current = _strip_hash(spec.get("template") or {})
        selector = _selector(spec.get("selector") or {})
        if not selector:
            raise _Failed(f"Deployment {call.ref()} has no label selector to find its ReplicaSets", reply)
        rs_reply = await call.get(call.replicasets_path(), params={"labelSelector": selector})
        uid = meta.get("uid")
        owned = [
            rs
            for rs in (rs_reply.json or {}).get("items") or []
            if any(
                ref.get("uid") == uid and ref.get("controller")
                for ref in (rs.get("metadata") or {}).get("ownerReferences") or []
            )
        ]
        annotations = meta.get("annotations") or {}
        if annotations.get(ROLLBACK_DEPLOY) == target.deploy_id:
            to = annotations.get(ROLLBACK_TO)
            rs = next((r for r in owned if (r.get("metadata") or {}).get("name") == to), None)
            if rs is not None and _strip_hash((rs.get("spec") or {}).get("template") or {}) == current:
                return ActionResult(
                    ok=True,
                    detail=f"Deployment {call.ref()} was already rolled back to ReplicaSet {to} for deploy "
                    f"{target.deploy_id} and still runs its template: nothing to do",
                    output=reply.text,
                    data={"replicaset": to, "images": _images(current), "changed": False},
                )
            raise _Failed(
                f"Deployment {call.ref()} was rolled back to ReplicaSet {to} for deploy {target.deploy_id}, "
                "but its template has changed since; not touching it",
                reply,
            )
        ranked = sorted(
            ((rev, rs) for rs in owned if (rev := _revision(rs)) is not None),
            key=lambda p: p[0],
            reverse=True,
        )
        if len(ranked) < 2:
            raise _Failed(
                f"Deployment {call.ref()} has no previous revision to roll back to "
                f"({len(ranked)} ReplicaSet(s) with a revision, selector {selector})",
                rs_reply,
            )
        revision, previous = ranked[1]
        rs_name = (previous.get("metadata") or {}).get("name", "?")
        template = _strip_hash((previous.get("spec") or {}).get("template") or {})
        images = _images(template)
        data = {"revision": revision, "replicaset": rs_name, "images": images}
        if template == current:
            return ActionResult(
                ok=True,
                detail=f"Deployment {call.ref()} already runs the template of revision {revision} "
                f"({', '.join(images)}): nothing to do",
                output=reply.text,
                data={**data, "changed": False},
            )
        if _runs_version(template, target.version) and not _runs_version(current, target.version):
            raise _Failed(
                f"Deployment {call.ref()}: the previous revision {revision} ({', '.join(images)}) runs "
                f"{target.version}, the version being rolled back; someone rolled back already? not touching it",
                rs_reply,
            )
        restored = _restored_annotations(
            annotations, (previous.get("metadata") or {}).get("annotations") or {}
        )
        restored.update({ROLLBACK_DEPLOY: target.deploy_id, ROLLBACK_TO: rs_name})
        ops: list[dict[str, Any]] = [
            {"op": "replace", "path": "/spec/template", "value": template},
            # "add" replaces an existing member and creates a missing one (RFC 6902 4.1)
            {"op": "add", "path": "/metadata/annotations", "value": restored},
        ]
        patched = await call.patch(call.deployment_path(), ops, JSON_PATCH)
        return ActionResult(
            ok=True,
            detail=f"Deployment {call.ref()} rolled back to revision {revision} (ReplicaSet {rs_name}, "
            f"{', '.join(images)}); the controller now rolls it out",
            output=patched.text,
            data={**data, "changed": True, "history": patched.history},
        )

    # --- Argo Rollouts ------------------------------------------------------------------------------

    async def _argo_promote(self, call: _Call, target: DeployTarget, index: int) -> ActionResult:
        reply = await call.get(call.rollout_path())
        ro = reply.json or {}
        annotations = (ro.get("metadata") or {}).get("annotations") or {}
        status = ro.get("status") or {}
        step_index = status.get("currentStepIndex")
        summary = _argo_summary(ro)
        if index == 0 and not self.config.promote_first_step:
            return ActionResult(
                ok=True,
                detail=f"Rollout {call.ref()}: first step left to Argo Rollouts, not promoted ({summary})",
                output=reply.text,
                data={"promoted": False, "step_index": step_index},
            )
        if annotations.get(PROMOTED_BY) == target.action_key and str(step_index) != annotations.get(
            PROMOTED_FROM
        ):
            return ActionResult(
                ok=True,
                detail=f"Rollout {call.ref()}: already promoted by this action ({summary}): nothing to do",
                output=reply.text,
                data={"promoted": False, "step_index": step_index},
            )
        marks = {PROMOTED_BY: target.action_key, PROMOTED_FROM: str(step_index)}
        await call.patch(call.rollout_path(), {"metadata": {"annotations": marks}})
        spec_patch, status_patch, unified = argo_promote_patches(ro)
        history: list[str] = []
        if status_patch is not None:
            patched = await call.patch_status(status_patch, unified=unified)
            history += patched.history
            if patched.unified:
                spec_patch = None  # the unified patch carried the spec change too
        if spec_patch is not None:
            history += (await call.patch(call.rollout_path(), spec_patch)).history
        moved, last = await self._argo_moved(call, ro)
        now = last.json if isinstance(last.json, dict) else {}
        data = {
            "promoted": moved,
            "from_step_index": step_index,
            "to_step_index": (now.get("status") or {}).get("currentStepIndex"),
            "history": history,
        }
        if not moved:
            return ActionResult(
                ok=False,
                detail=f"Rollout {call.ref()}: promote sent, but the rollout did not move past step index "
                f"{_step_of(ro)} within {self.config.wait_s:g}s ({_argo_summary(now)})",
                output=last.text,
                data=data,
            )
        return ActionResult(
            ok=True,
            detail=f"Rollout {call.ref()}: promoted from step {step_index} ({_argo_summary(now)})",
            output=last.text,
            data=data,
        )

    async def _argo_moved(self, call: _Call, before: dict[str, Any]) -> tuple[bool, Reply]:
        """Whether the rollout left the step it was at (canary: its step index went up; otherwise
        no pause condition and not paused), looking until ``wait_s``."""
        cfg = self.config
        deadline = time.monotonic() + cfg.wait_s
        start = _step_of(before)
        canary = bool(_canary_steps(before))
        while True:
            reply = await call.get(call.rollout_path())
            now = reply.json if isinstance(reply.json, dict) else {}
            st, spec = now.get("status") or {}, now.get("spec") or {}
            if canary and _step_of(now) > start:
                return True, reply
            if not canary and not st.get("pauseConditions") and not spec.get("paused"):
                return True, reply
            left = deadline - time.monotonic()
            if left <= 0:
                return False, reply
            await self._sleep(min(cfg.poll_s, left))

    async def _argo_status(self, call: _Call, what: Literal["promoteFull", "abort"]) -> ActionResult:
        reply = await call.get(call.rollout_path(), required=False)
        if reply.status == 404:
            raise _Failed(_not_found(call, "Rollout", reply), reply)
        if what == "abort":  # safe whatever the rollout looks like; never skipped for a failed look
            patched = await call.patch_status({"status": {"abort": True}})
            return ActionResult(
                ok=True,
                detail=f"Rollout {call.ref()}: aborted (traffic back to stable) ({_argo_summary(patched.json or {})})",
                output=patched.text,
                data={"history": patched.history},
            )
        if not reply.ok:
            raise _Failed(_failure(reply), reply)
        ro = reply.json if isinstance(reply.json, dict) else {}
        # kubectl argo rollouts promote --full: promoteFull while the pods are not the stable ones,
        # then unpause the spec (the status patch first, as upstream; unified when /status is 404)
        st, spec = ro.get("status") or {}, ro.get("spec") or {}
        history: list[str] = []
        last: Reply | None = None
        unpause: dict[str, Any] | None = {"spec": {"paused": False}} if spec.get("paused") else None
        if st.get("currentPodHash") != st.get("stableRS") or not st.get("stableRS"):
            unified = {"spec": {"paused": False}, "status": {"promoteFull": True}}
            patched = await call.patch_status({"status": {"promoteFull": True}}, unified=unified)
            history += patched.history
            last = patched.reply
            if patched.unified:
                unpause = None
        if unpause is not None:
            last = await call.patch(call.rollout_path(), unpause)
            history += last.history
        if last is None:
            return ActionResult(
                ok=True,
                detail=f"Rollout {call.ref()}: already fully promoted ({_argo_summary(ro)}): nothing to do",
                output=reply.text,
                data={"history": history, "changed": False},
            )
        return ActionResult(
            ok=True,
            detail=f"Rollout {call.ref()}: promote-full sent ({_argo_summary(last.json or {})})",
            output=last.text,
            data={"history": history, "changed": True},
        )


def _canary_steps(ro: dict[str, Any]) -> list[Any]:
    return (((ro.get("spec") or {}).get("strategy") or {}).get("canary") or {}).get("steps") or []


def _step_of(ro: dict[str, Any]) -> int:
    """Argo's ``GetCurrentCanaryStep`` index: ``status.currentStepIndex``, 0 when unset."""
    raw = (ro.get("status") or {}).get("currentStepIndex")
    return raw if isinstance(raw, int) else 0


def argo_promote_patches(
    ro: dict[str, Any],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any]]:
    """(spec patch, status patch, unified patch) of ``kubectl argo rollouts promote`` (no flags):
    argoproj/argo-rollouts ``pkg/kubectl-argo-rollouts/cmd/promote/promote.go`` ``getPatches``."""
    spec, st = ro.get("spec") or {}, ro.get("status") or {}
    steps = _canary_steps(ro)
    canary = "canary" in (spec.get("strategy") or {})
    spec_patch = {"spec": {"paused": False}} if spec.get("paused") else None
    unified: dict[str, Any] = {"spec": {"paused": False}, "status": {"pauseConditions": None}}
    status_patch: dict[str, Any] | None = None
    index = _step_of(ro)
    following = index + 1 if index < len(steps) else index
    analysis = ((st.get("canary") or {}).get("currentStepAnalysisRunStatus") or {}).get("status")
    if canary and analysis == "Inconclusive" and st.get("pauseConditions") and st.get("controllerPause"):
        if steps:
            status_patch = {
                "status": {"pauseConditions": None, "controllerPause": False, "currentStepIndex": following}
            }
    elif st.get("pauseConditions"):
        status_patch = {"status": {"pauseConditions": None}}
    elif canary and steps:
        status_patch = {"status": {"pauseConditions": None, "currentStepIndex": following}}
        unified = {
            "spec": {"paused": False},
            "status": {"pauseConditions": None, "currentStepIndex": following},
        }
    return spec_patch, status_patch, unified


@dataclass(frozen=True, slots=True)
class _Patched:
    reply: Reply
    unified: bool  # the unified (spec and status) patch went to the main resource

    @property
    def json(self) -> Any:
        return self.reply.json

    @property
    def text(self) -> str:
        return self.reply.text

    @property
    def history(self) -> list[str]:
        return self.reply.history


class _Call:
    """One action's requests: its object, headers and TLS settings; raises _Failed on failure."""

    def __init__(
        self,
        adapter: KubernetesDeployAdapter,
        namespace: str,
        name: str,
        headers: dict[str, str],
        ssl_context: ssl.SSLContext | bool,
    ) -> None:
        self.adapter = adapter
        self.namespace = namespace
        self.name = name
        self.headers = headers
        self.ssl_context = ssl_context
        self.argo = adapter.config.mode == "argo-rollout"

    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def object_ref(self) -> str:
        return f"{'rollouts' if self.argo else 'deployments'}/{self.ref()}"

    def deployment_path(self) -> str:
        return f"/apis/apps/v1/namespaces/{quote(self.namespace)}/deployments/{quote(self.name)}"

    def replicasets_path(self) -> str:
        return f"/apis/apps/v1/namespaces/{quote(self.namespace)}/replicasets"

    def rollout_path(self) -> str:
        return f"/apis/argoproj.io/v1alpha1/namespaces/{quote(self.namespace)}/rollouts/{quote(self.name)}"

    async def _call(self, method: str, path: str, **kwargs: Any) -> Reply:
        return await self.adapter._api.call(
            method, path, headers=self.headers, ssl_context=self.ssl_context, **kwargs
        )

    async def get(self, path: str, *, params: dict[str, str] | None = None, required: bool = True) -> Reply:
        reply = await self._call("GET", path, params=params)
        if required and not reply.ok:
            kind = "Rollout" if self.argo else ("Deployment" if params is None else "ReplicaSet list")
            raise _Failed(_not_found(self, kind, reply) if reply.status == 404 else _failure(reply), reply)
        return reply

    async def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> Reply:
        reply = await self._call("PATCH", path, body=body, content_type=content_type)
        if not reply.ok:
            raise _Failed(_failure(reply), reply)
        return reply

    async def patch_status(self, body: dict[str, Any], *, unified: dict[str, Any] | None = None) -> _Patched:
        """A merge patch to the Rollout's /status subresource, or (``unified``, else the same body)
        to the Rollout itself when the cluster answers 404 there (a CRD without the status
        subresource), as ``kubectl argo rollouts`` does."""
        reply = await self._call(
            "PATCH", self.rollout_path() + "/status", body=body, content_type=MERGE_PATCH
        )
        fell_back = False
        if reply.status == 404:
            fell_back = True
            reply = await self._call(
                "PATCH", self.rollout_path(), body=unified or body, content_type=MERGE_PATCH
            )
            if reply.status == 404:
                raise _Failed(_not_found(self, "Rollout", reply), reply)
        if not reply.ok:
            raise _Failed(_failure(reply), reply)
        return _Patched(reply, fell_back and unified is not None)


def _not_found(call: _Call, kind: str, reply: Reply) -> str:
    hint = (
        "is the Argo Rollouts CRD installed and the name right?"
        if kind == "Rollout"
        else "check namespace, name and mode"
    )
    return f"{kind} {call.ref()} not found ({reply.outcome()}; {hint})"


def _failure(reply: Reply) -> str:
    said = reply.message()
    hint = {
        401: "the token was not accepted",
        403: "the token lacks RBAC permission for this",
        409: "conflict",
        415: "content type not accepted",
        422: "the API server rejected the patch",
    }.get(reply.status or 0, "")
    extra = "; ".join(p for p in (hint, said) if p)
    return reply.outcome() + (f": {extra}" if extra else "")


def _goal(step: Step | None, replicas: int) -> int | None:
    """How many replicas must be updated for ``step``; None means the whole rollout."""
    if step is None:
        return None
    if step.weight is not None:
        if step.weight >= 100:
            return None
        n = max(0, math.ceil(step.weight * replicas / 100 - 1e-9))
    elif step.servers is None:
        return None
    else:
        n = step.servers
    return None if n >= replicas else n


def _rollout_state(dep: dict[str, Any], goal: int | None, replicas: int) -> tuple[bool, str | None, str]:
    """(done, failure, progress) in the manner of ``kubectl rollout status``."""
    meta, status = dep.get("metadata") or {}, dep.get("status") or {}
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    if observed is None or (generation is not None and generation > observed):
        return False, None, f"waiting for the controller to observe generation {generation} (seen {observed})"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return (
                False,
                f"rollout exceeded its progress deadline: {one_line(cond.get('message', ''), 200)}",
                "",
            )
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    counts = f"{updated} updated, {available} available, {total} in all of {replicas} wanted"
    if goal is not None:
        if updated < goal:
            return False, None, f"{updated} of the {goal} replicas this step wants are updated ({counts})"
        return True, None, counts
    if updated < replicas:
        return False, None, f"{updated} of {replicas} replicas updated ({counts})"
    if total > updated:
        return False, None, f"{total - updated} old replica(s) pending termination ({counts})"
    if available < updated:
        return False, None, f"{available} of {updated} updated replicas available ({counts})"
    return True, None, counts


def _argo_summary(ro: dict[str, Any]) -> str:
    status = ro.get("status") or {}
    parts = [f"phase {status.get('phase', '?')}"]
    if status.get("currentStepIndex") is not None:
        parts.append(f"step index {status['currentStepIndex']}")
    weights = (status.get("canary") or {}).get("weights") or {}
    weight = (weights.get("canary") or {}).get("weight")
    if weight is not None:
        parts.append(f"canary weight {format_weight(weight)}%")
    if status.get("pauseConditions"):
        parts.append("paused")
    return ", ".join(parts)
