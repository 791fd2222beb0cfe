"""The ``guardrail`` command: run the server, post markers from CI, wait for verdicts, override.

Exit codes of ``guardrail wait``: 0 promoted, 1 rolled back (or rollback failed), 2 error, 3 timeout.
Exit codes of ``guardrail backtest``: 0 it would have passed, 1 it would have failed (rolled back),
2 error, inconclusive, or no decision before the end of the data.
Server address and token come from ``--url``/``--token`` or ``GUARDRAIL_URL``/``GUARDRAIL_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from guardrail.domain.errors import GuardrailError

EXIT_PROMOTED, EXIT_ROLLED_BACK, EXIT_ERROR, EXIT_TIMEOUT = 0, 1, 2, 3
DEFAULT_STRATEGY = "canary"  # what `mark` sends when neither --strategy nor the -f file says
TERMINAL = {"promoted": EXIT_PROMOTED, "rolled_back": EXIT_ROLLED_BACK, "rollback_failed": EXIT_ROLLED_BACK}


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        detail = body.get("detail") if isinstance(body, dict) else str(body)
        field = body.get("field") if isinstance(body, dict) else None
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list) and len(errors) > 1:  # every problem, one a line
            text = f"HTTP {status}: {len(errors)} problems:" + "".join(
                f"\n  - {e.get('detail')}" + (f" (field: {e['field']})" if e.get("field") else "")
                for e in errors
                if isinstance(e, dict)
            )
        else:
            text = f"HTTP {status}: {detail}" + (f" (field: {field})" if field else "")
        super().__init__(text)
        self.status = status


class Client:
    """A small client of guardrail's API, with a timeout on every call."""

    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        self.base = url.rstrip("/") + "/api/v1"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(headers=self.headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        assert self._session is not None
        try:
            async with self._session.request(
                method,
                self.base + path,
                json=json_body,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
            ) as r:
                try:
                    body = await r.json(content_type=None)
                except (json.JSONDecodeError, aiohttp.ContentTypeError):
                    body = {"detail": (await r.text())[:300]}
                if r.status >= 400:
                    raise ApiError(r.status, body)
                return body
        except aiohttp.ClientError as e:
            raise GuardrailError(f"cannot reach guardrail at {self.base}: {e}") from None
        except TimeoutError:
            raise GuardrailError(
                f"no answer from guardrail at {self.base} within {timeout or self.timeout:.0f} s"
            ) from None


# --- commands ----------------------------------------------------------------------------------------


class _MarkerLoader(yaml.SafeLoader):
    """YAML without implicit timestamps: an unquoted ``commit_time: 2024-05-01T12:00:00Z`` stays the
    text the API parses (a ``datetime`` would not even serialize to JSON)."""


_MarkerLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _load_marker(args: argparse.Namespace) -> dict[str, Any]:
    marker: dict[str, Any] = {}
    if args.file:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        try:
            loaded = yaml.load(text, Loader=_MarkerLoader)  # YAML is a superset of JSON
        except yaml.YAMLError as e:
            raise GuardrailError(f"{args.file}: not valid YAML or JSON: {e}") from None
        if not isinstance(loaded, dict):
            raise GuardrailError(f"{args.file}: a marker file holds one mapping")
        marker.update(loaded)
    for key in (
        "service",
        "environment",
        "version",
        "previous_version",
        "commit",
        "commit_time",
        "author",
        "change_type",
        "strategy",
        "description",
    ):
        v = getattr(args, key)
        if v is not None:
            marker[key] = v
    if args.change:
        marker["changes"] = [*marker.get("changes", []), *args.change]
    if args.adapter:
        marker["adapter"] = {
            "name": args.adapter,
            **(
                {"config": marker["adapter"]["config"]}
                if isinstance(marker.get("adapter"), dict) and "config" in marker["adapter"]
                else {}
            ),
        }
    if args.db_migrations is not None:
        marker["db_migrations"] = {"applied": True, "description": args.db_migrations}
    if args.on_inconclusive is not None:
        marker["analysis"] = {**(marker.get("analysis") or {}), "on_inconclusive": args.on_inconclusive}
    if args.metrics_source is not None:
        metrics = marker.get("metrics") if isinstance(marker.get("metrics"), dict) else {}
        marker["metrics"] = {**metrics, "source": args.metrics_source}
    if args.checklist:
        checklist = marker.get("checklist") if isinstance(marker.get("checklist"), dict) else {}
        marker["checklist"] = {**checklist, **dict(args.checklist)}
    marker.setdefault("strategy", DEFAULT_STRATEGY)
    return marker


_YES, _NO = ("true", "yes", "y", "1", "on"), ("false", "no", "n", "0", "off")


def _checklist_arg(text: str) -> tuple[str, bool]:
    """``tests_passed`` (done) or ``tests_passed=yes|no`` (true/false, y/n, 1/0 also)."""
    name, sep, answer = text.partition("=")
    if not name.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r}: name a checklist item, e.g. tests_passed or tests_passed=no"
        )
    if not sep or answer.strip().lower() in _YES:
        return name.strip(), True
    if answer.strip().lower() in _NO:
        return name.strip(), False
    raise argparse.ArgumentTypeError(
        f"{text!r}: the answer for {name.strip()} must be yes or no, not {answer!r}"
    )


async def cmd_mark(args: argparse.Namespace, client: Client) -> int:
    marker = _load_marker(args)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    d = await client.call("POST", "/deploys", json_body=marker, headers=headers)
    print(d["id"])
    print(
        f"{d['service']} {d['version']} -> {d['environment']}: {d['state']}, step {d['step']['description']}",
        file=sys.stderr,
    )
    if d.get("outlook"):
        print(f"outlook: {d['outlook']['sentence']}", file=sys.stderr)
    for check in (d.get("policy") or {}).get("checks", []):
        if check.get("status") in ("warn", "overridden"):
            what = "warning" if check["status"] == "warn" else check["status"]
            print(f"policy {what}: {check['name']}: {check['detail']}", file=sys.stderr)
    return 0


def _line(d: dict[str, Any]) -> str:
    step = d.get("step") or {}
    verdict = (d.get("verdict") or {}).get("decision", "-")
    where = step.get("summary") or (  # an older server has no summary
        f"step {step.get('index', -1) + 1}/{step.get('total', '?')} {step.get('description', '')}"
    )
    return (
        f"{d['id']}  {d['service']} {d['version']} ({d['environment']}): {d['state']}, "
        f"{where}, verdict {verdict}"
    )


async def cmd_wait(args: argparse.Namespace, client: Client) -> int:
    deadline = time.monotonic() + args.timeout
    seen_seq = 0
    d = await client.call("GET", f"/deploys/{args.id}")
    print(_line(d), file=sys.stderr)
    while True:
        events = (await client.call("GET", f"/deploys/{args.id}/events", params={"after": str(seen_seq)}))[
            "events"
        ]
        for e in events:
            seen_seq = max(seen_seq, e["seq"])
            if e["kind"] != "verdict" or not e["message"].startswith("CONTINUE"):
                print(f"  {_ts(e['wall_time'])}  {e['kind']:<14} {e['message'][:200]}", file=sys.stderr)
        if d["state"] in TERMINAL:
            print(_line(d), file=sys.stderr)
            print(d["state"])
            return TERMINAL[d["state"]]
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"timed out after {args.timeout:.0f} s; deploy is {d['state']}", file=sys.stderr)
            return EXIT_TIMEOUT
        poll = min(left, args.poll)
        d = await client.call(
            "GET", f"/deploys/{args.id}/wait", params={"timeout": str(max(1, math.ceil(poll)))}, timeout=poll + 30
        )


def _ts(t: float | None) -> str:
    return "--:--:--" if t is None else datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


async def cmd_status(args: argparse.Namespace, client: Client) -> int:
    if args.id:
        d = await client.call("GET", f"/deploys/{args.id}")
        if args.json:
            print(json.dumps(d, indent=2))
            return 0
        print(_line(d))
        if d.get("reason"):
            print(f"  reason: {d['reason']}")
        for ev in (d.get("verdict") or {}).get("evidence", []):
            print(f"  {ev['metric']:<12} {ev['detail']}")
        for rule in (d.get("verdict") or {}).get("rules", []):
            print(f"  {'alert':<12} {rule['sentence']}")
        if d.get("outlook") and d["state"] not in TERMINAL:
            print(f"  {'outlook':<12} {d['outlook']['sentence']}")
        return 0
    params = {
        k: v
        for k, v in (
            ("service", args.service),
            ("environment", args.environment),
            ("state", args.state),
            ("limit", str(args.limit)),
        )
        if v
    }
    deploys = (await client.call("GET", "/deploys", params=params))["deploys"]
    if args.json:
        print(json.dumps(deploys, indent=2))
    for d in deploys if not args.json else []:
        print(_line(d))
    return 0


async def cmd_override(args: argparse.Namespace, client: Client) -> int:
    body: dict[str, Any] = {"reason": args.reason}
    if args.command == "promote" and args.full:
        body["full"] = True
    if args.command == "rollback" and args.force:
        body["force"] = True
    d = await client.call("POST", f"/deploys/{args.id}/{args.command}", json_body=body)
    print(_line(d))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from guardrail.config import load_settings
    from guardrail.main import serve

    serve(load_settings(args.config), insecure_no_auth=args.insecure_no_auth)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """``config check``: what ``serve`` checks at start-up, without starting (exit 0 ok, 2 problems)."""
    from guardrail.config import ConfigProblems, load_settings
    from guardrail.main import check_settings, startup_line

    settings = load_settings(args.config)
    problems = check_settings(settings)
    if problems:
        raise ConfigProblems(problems)
    print(f"config OK: {startup_line(settings)}")
    if not settings.tokens:
        print("note: no tokens: `guardrail serve` refuses to start unless given --insecure-no-auth", file=sys.stderr)
    return 0


def _database(args: argparse.Namespace) -> tuple[Any, str]:
    """The settings (with ``--database-url`` applied) and where the database URL came from."""
    from guardrail.config import load_settings, normalize_database_url

    settings = load_settings(args.config)
    if args.database_url:
        url = normalize_database_url(args.database_url)
        return settings.model_copy(update={"database_url": url}), "--database-url"
    if os.environ.get("GUARDRAIL_DATABASE_URL"):
        return settings, "GUARDRAIL_DATABASE_URL"
    config = args.config or os.environ.get("GUARDRAIL_CONFIG")
    if config:
        return settings, f"database_url in {config}"
    return settings, "the default: no --config, GUARDRAIL_CONFIG or --database-url"


def cmd_db(args: argparse.Namespace) -> int:
    from guardrail.adapters.db.migrate import upgrade
    from guardrail.config import describe_database_url, normalize_database_url

    if args.database_url:  # the config is not read at all
        url, origin = normalize_database_url(args.database_url), "--database-url"
    else:
        settings, origin = _database(args)
        url = settings.database_url
    print(f"database {describe_database_url(url)} ({origin})", file=sys.stderr)
    applied = asyncio.run(upgrade(url))
    if applied:
        print(f"applied {len(applied)} migration(s): {', '.join(applied)}; now at {applied[-1]} (the newest)")
    else:
        from guardrail.adapters.db.migrate import head_revision

        print(f"already at {head_revision()} (the newest): nothing to apply")
    return 0


def cmd_draft(args: argparse.Namespace) -> int:
    """Print (or write to -o) the newest stored draft of a deploy from the database's record (no
    server needed); ``--new`` (or ``--llm``, or no stored draft yet) drafts and stores a new version."""
    from guardrail.config import describe_database_url
    from guardrail.domain.errors import NotFoundError
    from guardrail.main import open_drafts

    settings, origin = _database(args)
    where = f"{describe_database_url(settings.database_url)} ({origin})"

    async def run() -> tuple[Any, bool]:
        drafts, close = await open_drafts(settings, where=where)
        try:
            if not (args.new or args.llm):
                try:
                    return await drafts.get(args.id, args.kind), False
                except NotFoundError:
                    pass  # none stored yet (or no such deploy: drafting says which)
            return await drafts.draft(args.id, args.kind, use_llm=bool(args.llm), trigger="cli"), True
        finally:
            await close()

    d, new = asyncio.run(run())
    source = f"{d.source}; {d.note}" if d.note else d.source
    what = (
        f"{args.kind} draft version {d.version} ({source}), "
        + ("drafted now and stored" if new else f"stored {_ts_date(d.created_at)}; --new drafts a new version")
    )
    if args.output and args.output != "-":
        Path(args.output).write_text(d.markdown)
        print(f"{what}; written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(d.markdown if d.markdown.endswith("\n") else d.markdown + "\n")
        sys.stdout.flush()
        print(f"-- {what}", file=sys.stderr)
    return 0


def _ts_date(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def cmd_demo(args: argparse.Namespace) -> int:
    from guardrail import demo

    return demo.main(args.dir, serve=args.serve, port=args.port)


def _time_arg(text: str) -> float:
    """RFC3339 (with Z or an offset) or unix seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither RFC3339 nor unix seconds") from None
    if dt.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: add Z or an offset like +02:00")
    return dt.timestamp()


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_backtest(args: argparse.Namespace) -> int:
    """What guardrail would have decided about a past deploy, from Prometheus data."""
    from guardrail.adapters.sources.prometheus import PrometheusMetricSource
    from guardrail.config import load_settings
    from guardrail.domain.model import Decision
    from guardrail.service.backtest import backtest, outcome

    settings = load_settings(args.config)
    url = args.prometheus_url or settings.prometheus.url
    if not url:
        raise GuardrailError("no Prometheus: pass --prometheus-url or set prometheus.url in the config")
    try:
        metrics = json.loads(args.metrics) if args.metrics else None
    except ValueError as e:
        raise GuardrailError(f"--metrics is not valid JSON: {e}") from None
    if metrics is not None and not isinstance(metrics, dict):
        raise GuardrailError("--metrics takes a JSON object like a marker's metrics: {\"overrides\": {...}}")
    source_overrides = {k: v for k, v in (("track_label", args.track_label), ("selector", args.selector)) if v}
    deploy_time = args.deploy_time if args.deploy_time is not None else args.start

    async def run() -> list:
        source = PrometheusMetricSource.from_settings(settings.prometheus.model_copy(update={"url": url}))
        try:
            return await backtest(
                source, service=args.service, environment=args.environment, version=args.version,
                baseline_version=args.baseline_version, start=args.start, end=args.end, interval_s=args.interval,
                deploy_time=deploy_time, weight=args.weight, defaults=settings.analysis, metrics=metrics,
                source_overrides=source_overrides, min_duration_s=args.min_duration, max_duration_s=args.max_duration,
            )
        finally:
            await source.close()

    timeline = asyncio.run(run())
    result = outcome(timeline, deploy_time=deploy_time, min_duration_s=args.min_duration)
    code = {Decision.PASS: 0, Decision.FAIL: 1}.get(result.decision, EXIT_ERROR)
    if args.json:
        print(json.dumps({
            "decision": result.decision.value, "decided_at": result.at, "exit_code": code,
            "timeline": [{"data_time": t, "decision": v.decision.value, "summary": v.summary} for t, v in timeline],
            "verdict": result.verdict.to_dict() if result.verdict else None,
        }, indent=2))
        return code
    print(f"backtest of {args.service} {args.version} against {args.baseline_version} ({args.environment}), "
          f"{_rfc3339(args.start)} to {_rfc3339(args.end)}, {args.interval:g} s windows")
    weight = f"{args.weight:g}% of the traffic" if args.weight is not None else (
        "an unknown share of the traffic (throughput not judged: pass --weight)")
    print(f"the canary had {weight} from {_rfc3339(deploy_time)}")
    if not timeline:
        print("no data after the deploy time: nothing to judge")
        return EXIT_ERROR
    print("decisions (data time, after the deploy):")
    last = None
    for i, (t, v) in enumerate(timeline):
        if v.decision is not last or i == len(timeline) - 1:
            print(f"  {_rfc3339(t)}  +{(t - deploy_time) / 60:6.1f} min  {v.decision.value}")
            last = v.decision
    words = {Decision.PASS: "PASS: guardrail would have promoted this step",
             Decision.FAIL: "FAIL: guardrail would have rolled back",
             Decision.INCONCLUSIVE: "INCONCLUSIVE: the analysis window ended without enough evidence (held for a human)",
             Decision.CONTINUE: "NO DECISION: the data ended before the judge could decide"}
    when = f" at {_rfc3339(result.at)} (+{(result.at - deploy_time) / 60:.1f} min)" if result.at is not None else ""
    print(f"result: {words[result.decision]}{when}")
    assert result.verdict is not None
    print("evidence:")
    for e in result.verdict.evidence:
        print(f"  - {e.metric} [{e.status.value}{', critical' if e.critical else ''}]: {e.detail}")
    if result.verdict.power:
        print(f"what more it would need: {result.verdict.power}")
    return code


# --- parser ------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="guardrail", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--url",
        default=os.environ.get("GUARDRAIL_URL", "http://127.0.0.1:8080"),
        help="guardrail server (env GUARDRAIL_URL)",
    )
    p.add_argument(
        "--token", default=os.environ.get("GUARDRAIL_TOKEN"), help="API token (env GUARDRAIL_TOKEN)"
    )
    # the same two flags after the subcommand (`guardrail status ID --url ...`); SUPPRESS: when not
    # given there, the value from before the subcommand (or the environment) stays
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", default=argparse.SUPPRESS, help="guardrail server (env GUARDRAIL_URL)")
    client.add_argument("--token", default=argparse.SUPPRESS, help="API token (env GUARDRAIL_TOKEN)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "serve", help="run the server (checks the whole config first; logs what it runs with in one line)"
    )
    s.add_argument("--config", help="guardrail.yaml (env GUARDRAIL_CONFIG)")
    s.add_argument(
        "--insecure-no-auth",
        dest="insecure_no_auth",
        action="store_true",
        help="run without API tokens (anyone who reaches the server can mark and roll back): local use only",
    )

    cf = sub.add_parser("config", help="configuration")
    cf_sub = cf.add_subparsers(dest="config_command", required=True)
    ck = cf_sub.add_parser(
        "check",
        help="check the config as serve does at start-up, every problem with its config path "
        "(exit 0 ok, 2 problems); for CI",
    )
    ck.add_argument("--config", help="guardrail.yaml (env GUARDRAIL_CONFIG)")

    m = sub.add_parser(
        "mark",
        parents=[client],
        help="post a deploy marker; prints the deploy id",
        description="Post a deploy marker; prints the deploy id, then (on stderr) the state, the outlook and "
        "any policy warnings. The server reports every problem of a marker at once.",
    )
    m.add_argument("-f", "--file", help="marker as YAML or JSON ('-' for stdin); flags override its fields")
    need = m.add_argument_group("required (as flags or in the -f file)")
    for key in ("service", "environment", "version", "previous_version", "commit"):
        need.add_argument(f"--{key.replace('_', '-')}", dest=key)
    need.add_argument(
        "--change-type", dest="change_type", choices=["feature", "bugfix", "infrastructure", "security"]
    )
    for key in ("commit_time", "author", "description"):
        m.add_argument(f"--{key.replace('_', '-')}", dest=key)
    m.add_argument(
        "--strategy",
        choices=["canary", "blue_green", "rolling", "all_at_once"],
        help=f"(default: {DEFAULT_STRATEGY}, 10%% -> 50%% -> 100%% unless the -f file gives steps)",
    )
    m.add_argument(
        "--checklist",
        action="append",
        type=_checklist_arg,
        metavar="ITEM[=yes|no]",
        help="a pre-deployment checklist answer (repeatable), e.g. --checklist tests_passed "
        "--checklist review_approved=yes; items: tests_passed, review_approved, migrations_tested_on_staging, "
        "rollback_plan_documented, monitoring_configured, oncall_available",
    )
    m.add_argument(
        "--metrics-source",
        dest="metrics_source",
        choices=["push", "prometheus"],
        help="push: CI or the app posts samples (the server's default); prometheus: the server pulls them "
        "(needs prometheus.url in its config)",
    )
    m.add_argument("--change", action="append", help="one line of the change list (repeatable)")
    m.add_argument("--adapter", help="deploy adapter preset configured on the server")
    m.add_argument(
        "--on-inconclusive",
        dest="on_inconclusive",
        choices=["hold", "rollback"],
        help="when a step's analysis window ends without a verdict: hold for a human, or roll back "
        "(default: the server's analysis.on_inconclusive); `mark` prints whether that is likely",
    )
    m.add_argument(
        "--db-migrations",
        dest="db_migrations",
        metavar="DESCRIPTION",
        help="the deploy includes database migrations: what they do",
    )
    m.add_argument(
        "--idempotency-key",
        dest="idempotency_key",
        default=os.environ.get("GITHUB_RUN_ID")
        and f"gh-{os.environ.get('GITHUB_RUN_ID')}-{os.environ.get('GITHUB_RUN_ATTEMPT', '1')}",
        help="CI retries with the same key create one deploy (default from GITHUB_RUN_ID)",
    )

    w = sub.add_parser(
        "wait", parents=[client], help="block until the deploy is promoted (exit 0) or rolled back (exit 1)"
    )
    w.add_argument("id")
    w.add_argument("--timeout", type=float, default=3600, help="seconds (exit 3 when reached)")
    w.add_argument("--poll", type=float, default=60, help="long-poll length in seconds")

    st = sub.add_parser("status", parents=[client], help="one deploy with its evidence, or the recent ones")
    st.add_argument("id", nargs="?")
    st.add_argument("--service")
    st.add_argument("--environment")
    st.add_argument("--state")
    st.add_argument("--limit", type=int, default=20)
    st.add_argument("--json", action="store_true")

    for name, text in (
        ("promote", "promote to the next step (--full: all the way)"),
        ("rollback", "roll back now"),
        ("pause", "hold promotion (rollback stays armed)"),
        ("resume", "resume a paused deploy"),
    ):
        o = sub.add_parser(name, parents=[client], help=text)
        o.add_argument("id")
        o.add_argument("--reason", required=True, help="recorded in the timeline with your token's name")
        if name == "promote":
            o.add_argument("--full", action="store_true")
        if name == "rollback":
            o.add_argument(
                "--force",
                action="store_true",
                help="roll back a promoted deploy even though a newer deploy of the service exists",
            )

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser(
        "upgrade", help="apply the migrations (creates the database when it does not exist); says which ran"
    )
    up.add_argument("--config", help="guardrail.yaml (env GUARDRAIL_CONFIG): its database_url")
    up.add_argument("--database-url", help="instead of the config's database_url")

    from guardrail.domain.drafts import DraftKind

    dr = sub.add_parser(
        "draft",
        help="print the newest stored draft of a document (post-mortem, rollback plan, checklist, ...) of a "
        "deploy from the server's database, drafting one when none is stored; --new drafts a new version",
    )
    dr.add_argument("kind", choices=[k.value for k in DraftKind])
    dr.add_argument("id", help="deploy id")
    dr.add_argument("--llm", action="store_true", help="ask the configured LLM (falls back to the offline templates)")
    dr.add_argument("-o", "--output", help="write the Markdown here instead of stdout")
    dr.add_argument("--new", action="store_true", help="draft and store a new version even if one is stored")
    dr.add_argument("--config", help="guardrail.yaml (env GUARDRAIL_CONFIG): database_url, llm")
    dr.add_argument("--database-url", dest="database_url", help="instead of the config's database_url")

    d = sub.add_parser("demo", help="run the end-to-end demo on SQLite")
    d.add_argument("--dir", default=None, help="work directory (default .demo)")
    d.add_argument(
        "--serve",
        action="store_true",
        help="afterwards keep the server running on the demo database until Ctrl-C, so the printed links work",
    )
    d.add_argument("--port", type=int, default=None, help="the server's port (default: a free one)")

    b = sub.add_parser(
        "backtest",
        help="what guardrail would have decided about a past deploy, from Prometheus data "
        "(exit 0 pass, 1 fail, 2 error/inconclusive/undecided)",
    )
    b.add_argument("--prometheus-url", help="default: prometheus.url of the config")
    b.add_argument("--config", help="guardrail.yaml (env GUARDRAIL_CONFIG): analysis defaults, query templates")
    b.add_argument("--service", required=True)
    b.add_argument("--version", required=True, help="the canary's version")
    b.add_argument("--baseline-version", dest="baseline_version", required=True)
    b.add_argument("--environment", default="production")
    b.add_argument("--from", dest="start", type=_time_arg, required=True, help="RFC3339 or unix seconds")
    b.add_argument("--to", dest="end", type=_time_arg, required=True, help="RFC3339 or unix seconds")
    b.add_argument("--deploy-time", dest="deploy_time", type=_time_arg,
                   help="when the canary got traffic (default --from); earlier windows are the baseline's history")
    b.add_argument("--interval", type=float, default=60, help="window, seconds (default 60)")
    b.add_argument("--weight", type=float, help="canary share of the traffic in percent (enables the throughput check)")
    b.add_argument("--min-duration", dest="min_duration", type=float, default=0.0,
                   help="seconds after the deploy time before a PASS counts (a step's min_duration_s)")
    b.add_argument("--max-duration", dest="max_duration", type=float,
                   help="analysis window in seconds (default: analysis.max_duration_s)")
    b.add_argument("--track-label", dest="track_label", help="label telling the tracks apart (track, version, ...)")
    b.add_argument("--selector", help='series selector template, e.g. {job="$service"}')
    b.add_argument("--metrics", help="JSON like a marker's metrics object: {\"overrides\": {...}, \"custom\": [...]}")
    b.add_argument("--json", action="store_true", help="the timeline and the final verdict as JSON")
    return p


async def _run_client(args: argparse.Namespace) -> int:
    async with Client(args.url, args.token) as client:
        if args.command == "mark":
            return await cmd_mark(args, client)
        if args.command == "wait":
            return await cmd_wait(args, client)
        if args.command == "status":
            return await cmd_status(args, client)
        return await cmd_override(args, client)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "db":
            return cmd_db(args)
        if args.command == "config":
            return cmd_config(args)
        if args.command == "demo":
            return cmd_demo(args)
        if args.command == "draft":
            return cmd_draft(args)
        if args.command == "backtest":
            return cmd_backtest(args)
        return asyncio.run(_run_client(args))
    except (GuardrailError, ApiError, OSError) as e:
        print(f"guardrail: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
