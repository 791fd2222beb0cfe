"""Fakes of the remote deploy targets, each an aiohttp server on loopback that speaks the documented
wire format, keeps state in memory and records every request: a small Kubernetes API (apps/v1
Deployments and ReplicaSets, Argo Rollouts) and a small GitHub Deployments API."""

from __future__ import annotations

import asyncio
import copy
import json
import math
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from guardrail.adapters.deploy.kubernetes import HASH_LABEL, REVISION


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def action(self) -> str:
        """The adapter method named in the User-Agent: ``guardrail (rollback; key)``."""
        m = re.search(r"\((\w+);", self.headers.get("User-Agent", ""))
        return m.group(1) if m else ""


class Recorder:
    """Shared behaviour: record, check the bearer token, answer scripted failures, stall on demand,
    echo the Authorization header in answers (a leaky server) when ``echo`` is set."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.requests: list[Seen] = []
        self.script: list[int] = []  # statuses answered (in order) before the real handling
        self.always: int | None = None  # answer every request with this status
        self.slow = False  # hold every answer until released (or 10 s)
        self.echo = False
        self.release = asyncio.Event()
        self.server: TestServer | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._entry)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server(ssl=ssl_context)

    async def close(self) -> None:
        self.release.set()
        if self.server is not None:
            await self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def answer(self, request: web.Request, status: int, doc: Any) -> web.Response:
        if self.echo and isinstance(doc, dict):
            doc = {"echo": request.headers.get("Authorization", ""), **doc}
        return web.json_response(doc, status=status)

    async def _entry(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            Seen(request.method, request.path, dict(request.query), dict(request.headers), body)
        )
        if self.slow:
            await asyncio.wait_for(self.release.wait(), 10)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self.answer(request, 401, self.error(401, "Unauthorized"))
        status = self.always or (self.script.pop(0) if self.script else None)
        if status is not None:
            return self.answer(request, status, self.error(status, "scripted failure"))
        return await self.handle(request, body)

    def error(self, status: int, message: str) -> dict[str, Any]:
        return {"message": message}

    async def handle(self, request: web.Request, body: bytes) -> web.Response:
        raise NotImplementedError


# --- Kubernetes --------------------------------------------------------------------------------------

NS, NAME, UID = "production", "checkout", "uid-checkout"
VERSIONS = {1: "2.3.8", 2: "2.3.9", 3: "2.4.0"}


def pod_template(version: str, pod_hash: str | None = None) -> dict[str, Any]:
    labels = {"app": "checkout", "tier": "web"}
    if pod_hash:
        labels[HASH_LABEL] = pod_hash
    return {
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "app", "image": f"registry.example.com/checkout:{version}"}]},
    }


def replicaset(revision: int, version: str, owner_uid: str = UID, app: str = "checkout") -> dict[str, Any]:
    pod_hash = f"h{revision}{owner_uid[-3:]}"
    template = pod_template(version, pod_hash)
    template["metadata"]["labels"]["app"] = app
    return {
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{app}-{pod_hash}",
            "namespace": NS,
            "labels": dict(template["metadata"]["labels"]),
            "annotations": {REVISION: str(revision)},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "Deployment", "uid": owner_uid, "controller": True}
            ],
        },
        "spec": {"replicas": 0, "template": template},
    }


def deployment(version: str = "2.4.0", revision: int = 3) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "apiVersion": "apps/v1",
        "metadata": {
            "name": NAME,
            "namespace": NS,
            "uid": UID,
            "generation": 5,
            "resourceVersion": "1000",
            "annotations": {REVISION: str(revision)},
        },
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "checkout"}},
            "template": pod_template(version),
        },
        "status": {
            "observedGeneration": 5,
            "replicas": 4,
            "updatedReplicas": 4,
            "availableReplicas": 4,
            "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
        },
    }


def rollout() -> dict[str, Any]:
    return {
        "kind": "Rollout",
        "apiVersion": "argoproj.io/v1alpha1",
        "metadata": {"name": NAME, "namespace": NS, "generation": 2, "resourceVersion": "500"},
        "spec": {
            "replicas": 4,
            "strategy": {
                "canary": {
                    "steps": [
                        {"setWeight": 10},
                        {"pause": {}},
                        {"setWeight": 50},
                        {"pause": {}},
                        {"setWeight": 100},
                    ]
                }
            },
        },
        "status": {
            "phase": "Paused",
            "currentStepIndex": 1,
            "pauseConditions": [{"reason": "CanaryPauseStep", "startTime": "2024-05-01T10:00:00Z"}],
            "canary": {"weights": {"canary": {"weight": 10}, "stable": {"weight": 90}}},
            "stableRS": "5d8f9c7b6",
            "currentPodHash": "7f6b5c4d3",
        },
    }


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"bad pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 (add, replace, remove, test) over objects; ValueError when an op does not apply."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _pointer(op["path"])
        node = doc
        for p in parents:
            if not isinstance(node, dict) or p not in node:
                raise ValueError(f"path {op['path']} does not exist")
            node = node[p]
        if not isinstance(node, dict):
            raise ValueError(f"path {op['path']} is not in an object")
        kind = op["op"]
        if kind == "add":
            node[last] = op["value"]
        elif kind == "replace":
            if last not in node:
                raise ValueError(f"replace: {op['path']} does not exist")
            node[last] = op["value"]
        elif kind == "remove":
            if last not in node:
                raise ValueError(f"remove: {op['path']} does not exist")
            del node[last]
        elif kind == "test":
            if node.get(last) != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
        else:
            raise ValueError(f"unsupported op {kind}")
    return doc


def merge_patch(doc: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(doc) if isinstance(doc, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeKubernetes(Recorder):
    """``deployments`` and ``rollouts`` by (namespace, name); ``replicasets`` a list. With
    ``status_subresource`` off, ``/status`` answers 404 and the main resource takes status changes
    (a CRD installed without the subresource); with it on, the main resource ignores them."""

    DEP = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)$")
    RS = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/replicasets$")
    RO = re.compile(r"^/apis/argoproj.io/v1alpha1/namespaces/([^/]+)/rollouts/([^/]+?)(/status)?$")

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {(NS, NAME): deployment()}
        self.replicasets: list[dict[str, Any]] = [
            replicaset(1, VERSIONS[1]),
            replicaset(2, VERSIONS[2]),
            replicaset(3, VERSIONS[3]),
            replicaset(9, "9.9.9", owner_uid="uid-impostor"),  # same labels, another owner
            replicaset(8, "1.0.0", app="cart"),  # owned, but other labels: not listed
        ]
        self.rollouts: dict[tuple[str, str], dict[str, Any]] = {(NS, NAME): rollout()}
        self.status_subresource = True
        self.argo_frozen = False  # the Argo controller makes no progress (pods not ready)

    def error(self, status: int, message: str) -> dict[str, Any]:
        reason = {401: "Unauthorized", 404: "NotFound", 415: "UnsupportedMediaType", 422: "Invalid"}
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "reason": reason.get(status, "InternalError"),
            "code": status,
        }

    def patches(self) -> list[Seen]:
        return [r for r in self.requests if r.method == "PATCH"]

    async def handle(self, request: web.Request, body: bytes) -> web.Response:
        path = request.path
        if m := self.DEP.match(path):
            return self._deployment(request, (m[1], m[2]), body)
        if (m := self.RS.match(path)) and request.method == "GET":
            selector = request.query.get("labelSelector", "")
            items = [
                rs
                for rs in self.replicasets
                if rs["metadata"]["namespace"] == m[1] and _matches(selector, rs["metadata"]["labels"])
            ]
            return self.answer(request, 200, {"kind": "ReplicaSetList", "items": items})
        if m := self.RO.match(path):
            return self._rollout(request, (m[1], m[2]), bool(m[3]), body)
        return self.answer(request, 404, self.error(404, f"the server could not find {path}"))

    def _patched(
        self, request: web.Request, obj: dict[str, Any], body: bytes
    ) -> dict[str, Any] | web.Response:
        ctype = request.headers.get("Content-Type", "")
        try:
            doc = json.loads(body)
            if ctype == "application/json-patch+json":
                return json_patch(obj, doc)
            if ctype == "application/merge-patch+json":
                return merge_patch(obj, doc)
        except (ValueError, KeyError, TypeError) as e:
            return self.answer(request, 422, self.error(422, f"the patch does not apply: {e}"))
        return self.answer(
            request, 415, self.error(415, f"the body of the request was in an unknown format - {ctype}")
        )

    def _deployment(self, request: web.Request, key: tuple[str, str], body: bytes) -> web.Response:
        dep = self.deployments.get(key)
        if dep is None:
            return self.answer(request, 404, self.error(404, f'deployments.apps "{key[1]}" not found'))
        if request.method == "GET":
            return self.answer(request, 200, dep)
        if request.method != "PATCH":
            return self.answer(request, 405, self.error(405, "method not allowed"))
        new = self._patched(request, dep, body)
        if isinstance(new, web.Response):
            return new
        if new["spec"] != dep["spec"]:
            new["metadata"]["generation"] += 1
        new["metadata"]["resourceVersion"] = str(int(dep["metadata"]["resourceVersion"]) + 1)
        self.deployments[key] = new
        return self.answer(request, 200, new)

    def _rollout(self, request: web.Request, key: tuple[str, str], status: bool, body: bytes) -> web.Response:
        ro = self.rollouts.get(key)
        if ro is None or (status and not self.status_subresource):
            return self.answer(request, 404, self.error(404, f"rollouts.argoproj.io {key[1]!r} not found"))
        if request.method == "GET":
            return self.answer(request, 200, ro)
        if request.method != "PATCH":
            return self.answer(request, 405, self.error(405, "method not allowed"))
        new = self._patched(request, ro, body)
        if isinstance(new, web.Response):
            return new
        if status:  # the status subresource takes status only
            new = {**ro, "status": new.get("status", {})}
        elif self.status_subresource:  # the main resource ignores status changes
            new["status"] = ro["status"]
        self.rollouts[key] = self._argo_controller(new)
        return self.answer(request, 200, self.rollouts[key])

    def _argo_controller(self, ro: dict[str, Any]) -> dict[str, Any]:
        """What the Argo Rollouts controller does next (argoproj/argo-rollouts ``rollout/canary.go``,
        in short): abort; promote fully; nothing while ``spec.paused``, a pause condition or a
        ``controllerPause`` holds it (or while ``argo_frozen``: pods not ready); else a released
        pause or analysis step is left, setWeight steps are carried out, and it pauses at the next
        pause step (or is Healthy past the last step)."""
        st = ro["status"]
        steps = ro["spec"]["strategy"]["canary"]["steps"]
        last = len(steps)
        if st.get("abort"):
            st.update(phase="Degraded", pauseConditions=None)
            st["canary"]["weights"] = {"canary": {"weight": 0}, "stable": {"weight": 100}}
        elif st.get("promoteFull"):
            st.update(
                phase="Healthy",
                currentStepIndex=last,
                pauseConditions=None,
                stableRS=st.get("currentPodHash"),
            )
            st["canary"]["weights"] = {"canary": {"weight": 100}, "stable": {"weight": 0}}
        elif not (
            st.get("pauseConditions")
            or ro["spec"].get("paused")
            or st.get("controllerPause")
            or self.argo_frozen
        ):
            index = st.get("currentStepIndex") or 0
            if index < last and ("pause" in steps[index] or "analysis" in steps[index]):
                index += 1  # the pause (or the inconclusive analysis) was released
            weight = st["canary"]["weights"]["canary"]["weight"]
            while index < last and "setWeight" in steps[index]:
                weight = steps[index]["setWeight"]
                index += 1
            st["currentStepIndex"] = index
            st["canary"]["weights"] = {"canary": {"weight": weight}, "stable": {"weight": 100 - weight}}
            if index < last:
                st.update(phase="Paused", pauseConditions=[{"reason": "CanaryPauseStep"}])
            else:
                st.update(phase="Healthy", pauseConditions=None, stableRS=st.get("currentPodHash"))
        if st.get("pauseConditions") is None:
            st.pop("pauseConditions", None)
        return ro

    def settle_deployment(self) -> None:
        """The Deployment controller after a template change: the ReplicaSet whose template matches
        becomes the newest revision (its number bumped past every other), and the rollout completes."""
        dep = self.deployments[(NS, NAME)]
        owned = [
            rs
            for rs in self.replicasets
            if rs["metadata"]["ownerReferences"][0]["uid"] == UID
            and rs["metadata"]["labels"]["app"] == "checkout"
        ]
        top = max(int(rs["metadata"]["annotations"][REVISION]) for rs in owned)
        for rs in owned:
            template = copy.deepcopy(rs["spec"]["template"])
            template["metadata"]["labels"].pop(HASH_LABEL, None)
            if template == dep["spec"]["template"] and int(rs["metadata"]["annotations"][REVISION]) != top:
                rs["metadata"]["annotations"][REVISION] = str(top + 1)
                dep["metadata"]["annotations"][REVISION] = str(top + 1)
        dep["status"]["observedGeneration"] = dep["metadata"]["generation"]


# --- GitHub --------------------------------------------------------------------------------------------


class FakeGitHub(Recorder):
    """``/repos/{owner}/{repo}/deployments`` (list with sha/environment filters, create) and
    ``.../deployments/{id}/statuses`` for the repositories in ``repos``; ``refs`` are the commits
    that exist. Creating with a ref not in ``refs`` answers 422 as GitHub does.

    Rate limits as GitHub documents them (github/docs
    ``content/rest/using-the-rest-api/rate-limits-for-the-rest-api.md`` at 21143d5a, "Checking the
    status of your rate limit" and "Exceeding the rate limit"): every answer carries
    ``x-ratelimit-limit/remaining/used/reset/resource``; while the primary limit is spent
    (``primary_until``, wall time from ``clock``) every request gets ``primary_status`` (403 or 429)
    with ``x-ratelimit-remaining: 0`` and the reset time, and a request sent before the reset is
    counted in ``sent_while_limited``. ``secondary`` answers the next requests with a secondary
    limit each: ``(status, retry_after or None)``, message "You have exceeded a secondary rate
    limit"."""

    def __init__(self, token: str, repo: str = "acme/shop", refs: tuple[str, ...] = ("abc1234",)) -> None:
        super().__init__(token)
        self.repos = {repo}
        self.refs = set(refs)
        self.deployments: list[dict[str, Any]] = []
        self.statuses: dict[int, list[dict[str, Any]]] = {}
        self.lose_create_answers = 0  # create the deployment, then answer 502 (a lost answer)
        self.clock: Callable[[], float] = time.time
        self.primary_until: float | None = None
        self.primary_status = 403
        self.secondary: list[tuple[int, int | None]] = []
        self.sent_while_limited = 0
        self.forbidden = False  # a token without the permission: a plain 403

    def rate_headers(self, remaining: int, reset: float) -> dict[str, str]:
        return {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": str(remaining),
            "x-ratelimit-used": str(5000 - remaining),
            "x-ratelimit-reset": str(math.ceil(reset)),
            "x-ratelimit-resource": "core",
        }

    def limited(self) -> web.Response | None:
        now = self.clock()
        if self.primary_until is not None and now < self.primary_until:
            self.sent_while_limited += 1
            doc = self.error(403, "API rate limit exceeded for installation ID 1234.")
            return web.json_response(
                doc, status=self.primary_status, headers=self.rate_headers(0, self.primary_until)
            )
        if self.secondary:
            status, retry_after = self.secondary.pop(0)
            headers = self.rate_headers(4000, now + 3600)
            if retry_after is not None:
                headers["retry-after"] = str(retry_after)
            doc = self.error(
                status,
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            )
            return web.json_response(doc, status=status, headers=headers)
        if self.forbidden:
            return web.json_response(
                self.error(403, "Resource not accessible by integration"),
                status=403,
                headers=self.rate_headers(4000, now + 3600),
            )
        return None

    def error(self, status: int, message: str) -> dict[str, Any]:
        return {"message": message, "documentation_url": "https://docs.github.com/rest"}

    def created(self) -> list[Seen]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/deployments")]

    def status_posts(self) -> list[Seen]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/statuses")]

    async def handle(self, request: web.Request, body: bytes) -> web.Response:
        limited = self.limited()
        if limited is not None:
            return limited
        m = re.match(r"^/repos/([^/]+/[^/]+)/deployments(?:/(\d+)/statuses)?$", request.path)
        if not m or m[1] not in self.repos:
            return self.answer(request, 404, self.error(404, "Not Found"))
        if request.headers.get("Accept") != "application/vnd.github+json":
            return self.answer(request, 415, self.error(415, "Unsupported 'Accept' header"))
        if m[2] is None and request.method == "GET":
            found = [
                d
                for d in reversed(self.deployments)  # newest first
                if d["sha"] == request.query.get("sha", d["sha"])
                and d["environment"] == request.query.get("environment", d["environment"])
            ]
            return web.json_response(found[: int(request.query.get("per_page", "30"))])
        if m[2] is None and request.method == "POST":
            doc = json.loads(body)
            if doc.get("ref") not in self.refs:
                return self.answer(
                    request,
                    422,
                    {
                        "message": f"No ref found for: {doc.get('ref')}",
                        "documentation_url": "https://docs.github.com/rest/deployments",
                    },
                )
            deployment_id = 1000 + len(self.deployments)
            created = {
                "id": deployment_id,
                "sha": doc["ref"],
                "ref": doc["ref"],
                "environment": doc.get("environment", "production"),
                "description": doc.get("description"),
                "payload": doc.get("payload", {}),
                "task": "deploy",
            }
            self.deployments.append(created)
            self.statuses[deployment_id] = []
            if self.lose_create_answers:
                self.lose_create_answers -= 1
                return self.answer(request, 502, self.error(502, "Server Error"))
            return self.answer(request, 201, created)
        if m[2] is not None and request.method == "POST":
            deployment_id = int(m[2])
            if deployment_id not in self.statuses:
                return self.answer(request, 404, self.error(404, "Not Found"))
            doc = json.loads(body)
            if doc.get("state") not in {
                "error",
                "failure",
                "inactive",
                "in_progress",
                "queued",
                "pending",
                "success",
            }:
                return self.answer(request, 422, self.error(422, "Validation Failed"))
            if len(doc.get("description") or "") > 140:
                return self.answer(request, 422, self.error(422, "description is too long (maximum is 140)"))
            status = {"id": len(self.statuses[deployment_id]) + 1, **doc}
            self.statuses[deployment_id].append(status)
            return self.answer(request, 201, status)
        return self.answer(request, 405, self.error(405, "Method Not Allowed"))
