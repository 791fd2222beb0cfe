"""Settings: the documented example loads and documents every key, GUARDRAIL_* overrides, errors
that name the key; and the GitHub Actions example only calls the CLI in ways its parser accepts."""

from __future__ import annotations

import dataclasses
import re
import shlex
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from guardrail.cli import parser
from guardrail.config import Settings, load_settings
from guardrail.domain.errors import ConfigError
from guardrail.plugins import DEPLOY_ADAPTERS, load_deploy_adapter, plugin_class

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "guardrail.example.yaml"
WORKFLOW = ROOT / "examples" / "github-actions.yml"


def _model(tp: Any) -> type[BaseModel] | None:
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _nested(tp: Any, where: str) -> list[tuple[type[BaseModel], str, str]]:
    """(model, path of the model, how a value reaches it: "" direct, "list", "dict") inside type ``tp``."""
    sub = _model(tp)
    if sub is not None:
        return [(sub, where, "")]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return [n for a in args for n in _nested(a, where)]
    if origin in (list, tuple, set, frozenset) and args and _model(args[0]):
        return [(_model(args[0]), f"{where}[]", "list")]  # type: ignore[list-item]
    if origin is dict and len(args) == 2 and _model(args[1]):
        return [(_model(args[1]), f"{where}.*", "dict")]  # type: ignore[list-item]
    return []


def undocumented(model: type[BaseModel], data: Any) -> list[str]:
    """Keys of ``model`` (recursively: nested models, lists and dicts of models) never shown in
    ``data``. A key counts as shown when it appears at least once for its model, e.g. ``marker_keys``
    in one adapter preset, or a PrometheusQueries key under ``queries``."""
    seen: dict[type[BaseModel], set[str]] = {}
    first_path: dict[type[BaseModel], str] = {}

    def visit(m: type[BaseModel], value: Any, path: str) -> None:
        first_path.setdefault(m, path)
        shown = seen.setdefault(m, set())
        value = value if isinstance(value, dict) else {}
        for name, field in m.model_fields.items():
            where = f"{path}.{name}" if path else name
            if name in value:
                shown.add(name)
            for sub, sub_path, via in _nested(field.annotation, where):
                v = value.get(name)
                entries = (v or []) if via == "list" else (v or {}).values() if via == "dict" else [v]
                entries = [e for e in entries if isinstance(e, dict)] or [{}]
                for e in entries:
                    visit(sub, e, sub_path)

    visit(model, data, "")
    return [
        f"{first_path[m]}.{name}".lstrip(".")
        for m in first_path
        for name in m.model_fields
        if name not in seen[m]
    ]


def comment_blocks(text: str) -> dict[str, str]:
    """Dotted path of each mapping key (outside lists) -> the comment lines right above it."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            block = []
            continue
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        above, block = block, []
        m = re.match(r"(- )?([\w.-]+):", stripped)
        if m is None or m.group(1):
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        out[".".join(k for _, k in stack)] = " ".join(above)
    return out


def leaf_fields(model: type[BaseModel], path: str = "") -> dict[str, Any]:
    """Dotted path -> default of every field that is not itself a model."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        where = f"{path}.{name}" if path else name
        sub = _model(field.annotation)
        if sub is not None:
            out.update(leaf_fields(sub, where))
        else:
            out[where] = field.get_default(call_default_factory=True)
    return out


# --- the example configuration -------------------------------------------------------------------------


def test_the_example_loads_with_its_presets():
    s = load_settings(EXAMPLE, env={})
    assert s.database_url.startswith("postgresql+asyncpg://")
    assert {t.name: t.scopes for t in s.tokens} == {
        "github-actions": ["ci"], "on-call": ["operator", "read"], "dashboard": ["read"]}
    checkout = s.adapters["checkout-deploy"]
    assert checkout.type == "command"
    assert checkout.config["apply_step"] == "./deploy-production.sh --weight {weight} -- {version}"
    assert checkout.config["rollback"] == "./deploy-production.sh --weight 100 -- {previous_version}"
    assert checkout.marker_keys == []
    webhook = s.adapters["payments-deploy"]
    assert webhook.type == "webhook"
    assert {"url", "secret"} <= set(webhook.config)


def test_the_example_documents_every_setting():
    """A new key in Settings fails here until the example shows it."""
    data = yaml.safe_load(EXAMPLE.read_text())
    assert undocumented(Settings, data) == []


def test_the_documentation_check_notices_a_missing_key():
    data = yaml.safe_load(EXAMPLE.read_text())
    del data["server"]["wait_max_s"]
    for t in data["tokens"]:
        t.pop("scopes")
    data["adapters"]["checkout-deploy"].pop("marker_keys")  # the webhook preset still shows it
    assert undocumented(Settings, data) == ["server.wait_max_s", "tokens[].scopes"]
    data["adapters"]["payments-deploy"].pop("marker_keys")
    assert "adapters.*.marker_keys" in undocumented(Settings, data)


def test_the_example_states_every_default_correctly():
    """Each setting's comment says ``Default: <value>``, and the value is the real default."""
    comments = comment_blocks(EXAMPLE.read_text())
    wrong = {}
    for path, default in leaf_fields(Settings).items():
        m = re.search(r"Default: (\S+)", comments.get(path, ""))
        if m is None:
            wrong[path] = f"no 'Default:' in the comment above it: {comments.get(path)!r}"
            continue
        stated = None if m.group(1) == "none" else yaml.safe_load(m.group(1))
        if stated != default:
            wrong[path] = f"says {stated!r}, is {default!r}"
    assert wrong == {}


def test_the_example_presets_build_and_show_every_adapter_setting():
    s = load_settings(EXAMPLE, env={})
    shown = set()
    for name, preset in s.adapters.items():
        load_deploy_adapter(preset.type, preset.config)  # the adapter accepts its config as written
        config_type = plugin_class(DEPLOY_ADAPTERS, preset.type).config_type
        fields = {f.name for f in dataclasses.fields(config_type)}
        assert fields - set(preset.config) == set(), name
        assert set(preset.marker_keys) <= fields, name
        shown.add(preset.type)
    assert shown == {"command", "webhook"}


# --- environment overrides -----------------------------------------------------------------------------


def test_env_overrides_nested_keys_with_numbers_and_booleans_parsed():
    s = load_settings(EXAMPLE, env={
        "GUARDRAIL_SERVER__PORT": "9090",
        "GUARDRAIL_ANALYSIS__ALPHA": "0.005",
        "GUARDRAIL_ANALYSIS__ON_INCONCLUSIVE": "rollback",
        "GUARDRAIL_ENGINE__TICK_S": "1",
        "GUARDRAIL_ALLOW_MARKER_ADAPTERS": "true",
        "GUARDRAIL_DATABASE_URL": "postgresql+asyncpg://guardrail:pw@db.example.com:5432/guardrail",
    })
    assert s.server.port == 9090
    assert s.server.host == "0.0.0.0"  # the rest of the file stays
    assert s.analysis.alpha == 0.005 and s.analysis.on_inconclusive == "rollback"
    assert s.analysis.pass_alpha == 0.02
    assert s.engine.tick_s == 1.0
    assert s.allow_marker_adapters is True
    assert s.database_url == "postgresql+asyncpg://guardrail:pw@db.example.com:5432/guardrail"


def test_env_sets_a_list_as_yaml_replacing_the_file_list():
    s = load_settings(EXAMPLE, env={"GUARDRAIL_TOKENS": "[{name: a, token: b, scopes: [read]}]"})
    assert [(t.name, t.token.get_secret_value(), t.scopes) for t in s.tokens] == [("a", "b", ["read"])]


def test_env_alone_without_a_file():
    s = load_settings(env={"GUARDRAIL_SERVER__HOST": "0.0.0.0", "GUARDRAIL_ADAPTERS__DEPLOY__TYPE": "noop"})
    assert s.server.host == "0.0.0.0" and s.server.port == 8080
    assert s.adapters["deploy"].type == "noop"


def test_guardrail_config_in_the_env_names_the_file():
    assert load_settings(env={"GUARDRAIL_CONFIG": str(EXAMPLE)}).server.public_url.startswith("https://")


def test_the_cli_client_variables_are_not_settings():
    """GUARDRAIL_URL / GUARDRAIL_TOKEN are for `guardrail mark/wait`: a shell exporting them can still
    run `guardrail serve`."""
    s = load_settings(EXAMPLE, env={
        "GUARDRAIL_URL": "https://guardrail.example.com", "GUARDRAIL_TOKEN": "tok",
        "GUARDRAIL_TEST_DATABASE_URL": "postgresql+asyncpg://x/y", "GUARDRAIL_REQUIRE_INTEGRATION": "1",
        "GUARDRAIL_DEMO_DIR": "/tmp/demo", "GUARDRAIL_ACTION_KEY": "k", "GUARDRAIL_DEPLOY_ID": "d",
    })
    assert s == load_settings(EXAMPLE, env={})


def test_an_empty_file_gives_the_defaults(tmp_path: Path):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert load_settings(tmp_path / "empty.yaml", env={}) == Settings()


# --- errors name the key -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "field"),
    [
        ("server: {prot: 9090}\n", {}, "server.prot"),
        ("databse_url: sqlite+aiosqlite:///x.db\n", {}, "databse_url"),
        ("", {"GUARDRAIL_SERVER__PROT": "9090"}, "server.prot"),
        ("server: {port: eighty}\n", {}, "server.port"),
        ("", {"GUARDRAIL_SERVER__PORT": "70000"}, "server.port"),
        ("analysis: {alpha: 0.7}\n", {}, "analysis.alpha"),
        ("analysis: {on_inconclusive: shrug}\n", {}, "analysis.on_inconclusive"),
        ("tokens: [{name: ci, token: t, scopes: [admin]}]\n", {}, "tokens.0.scopes.0"),
        ("tokens: [{name: ci, scopes: [ci]}]\n", {}, "tokens.0.token"),
        ("adapters: {deploy: {config: {}}}\n", {}, "adapters.deploy.type"),
        ("server: 8080\n", {}, "server"),
        ("", {"GUARDRAIL_SERVER__PORT__HTTP": "1"}, "server.port"),
        ("server: {port: 8080}\n", {"GUARDRAIL_SERVER__PORT__HTTP": "1"}, "server.port.http"),
        ("prometheus: {url: prometheus:9090}\n", {}, "prometheus.url"),
        ("database_url: mysql://db/guardrail\n", {}, "database_url"),
        ("", {"GUARDRAIL_DATABASE_URL": "mysql+aiomysql://db/guardrail"}, "database_url"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, env: dict[str, str], field: str):
    path = tmp_path / "guardrail.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_settings(path, env=env)
    assert e.value.field == field
    assert field.split(".")[-1] in str(e.value) or field in str(e.value)


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u:pw@db:5432/g", "postgresql+asyncpg://u:pw@db:5432/g"),
        ("postgres://u:pw@db/g", "postgresql+asyncpg://u:pw@db/g"),
        ("postgresql+asyncpg://db/g", "postgresql+asyncpg://db/g"),
        ("sqlite:///var/guardrail.db", "sqlite+aiosqlite:///var/guardrail.db"),
        ("sqlite+aiosqlite:///g.db", "sqlite+aiosqlite:///g.db"),
    ],
)
def test_database_urls_are_normalised_in_one_place(given: str, used: str):
    """Issue 14 item 8: serve (the settings), db upgrade and draft (the store's engine) agree."""
    from guardrail.adapters.db.engine import parse_url

    assert load_settings(env={"GUARDRAIL_DATABASE_URL": given}).database_url == used
    assert parse_url(given).render_as_string(hide_password=False) == used


def test_a_database_url_is_described_with_its_password_hidden_and_its_file_absolute(tmp_path: Path):
    from guardrail.config import describe_database_url

    assert describe_database_url("postgres://u:pw@db:5432/g") == "postgresql+asyncpg://u:***@db:5432/g"
    assert describe_database_url("postgresql://db/g") == "postgresql+asyncpg://db/g"
    assert describe_database_url("sqlite:////srv/g.db") == "sqlite+aiosqlite:////srv/g.db"
    relative = describe_database_url("sqlite+aiosqlite:///guardrail.db")
    assert relative == f"sqlite+aiosqlite:///{Path('guardrail.db').resolve()}"


def test_a_bad_database_url_says_what_is_accepted(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"sqlite\+aiosqlite:// or postgresql\+asyncpg://"):
        load_settings(env={"GUARDRAIL_DATABASE_URL": "mysql://db/guardrail"})


@pytest.mark.parametrize(
    ("text", "message"),
    [(None, "does not exist"), ("server: [8080\n", "not valid YAML"), ("- a\n- b\n", "mapping at the top level")],
)
def test_file_errors_name_the_config(tmp_path: Path, text: str | None, message: str):
    path = tmp_path / "guardrail.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message) as e:
        load_settings(path, env={})
    assert e.value.field == "config"
    assert str(path) in str(e.value)


# --- the GitHub Actions example ------------------------------------------------------------------------

_SEPARATORS = {"(", ")", "|", "||", "&&", ";", ";;", "&", "then", "do", "else", "if", "!", "time"}


def guardrail_invocations(script: str) -> list[list[str]]:
    """The arguments of every ``guardrail`` command in a shell script (continuations joined)."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        tokens = list(lex)
        for i, tok in enumerate(tokens):
            if tok == "guardrail" and (i == 0 or tokens[i - 1] in _SEPARATORS):
                args = []
                for t in tokens[i + 1 :]:
                    if t in _SEPARATORS:
                        break
                    args.append(t)
                found.append(args)
    return found


# values the workflow's shell variables take at run time, for the parser (the others stay as written)
SAMPLE_VALUES = {"change_type": "feature"}


def _sample(arg: str, env: dict[str, str] | None = None) -> str:
    """A variable's sample value, or the value the workflow's env gives it; else the argument."""
    m = re.fullmatch(r"\$\{?(\w+)\}?", arg)
    return {**(env or {}), **SAMPLE_VALUES}.get(m.group(1), arg) if m else arg


def _run_scripts(workflow: dict[str, Any]) -> list[str]:
    return [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]


def test_the_workflow_example_is_valid_yaml_with_jobs_and_steps():
    wf = yaml.safe_load(WORKFLOW.read_text())
    assert {"push", "workflow_dispatch"} <= set(wf.get("on", wf.get(True)))  # YAML 1.1 reads `on` as true
    for name, job in wf["jobs"].items():
        assert job["runs-on"] and job["steps"], name
        for step in job["steps"]:
            assert ("run" in step) != ("uses" in step), step
    deploy = wf["jobs"]["deploy"]
    assert deploy["env"] == {"GUARDRAIL_URL": "${{ secrets.GUARDRAIL_URL }}",
                             "GUARDRAIL_TOKEN": "${{ secrets.GUARDRAIL_TOKEN }}",
                             "GUARDRAIL_MARKER_FILE": ".github/guardrail-marker.yml",
                             "GUARDRAIL_WAIT_TIMEOUT_S": "3600"}
    # no ${{ }} expansion inside scripts: untrusted text (commit messages) reaches them via env only
    assert [s for s in _run_scripts(wf) if "${{" in s] == []


def test_every_guardrail_call_in_the_workflow_is_accepted_by_the_cli_parser():
    wf = yaml.safe_load(WORKFLOW.read_text())
    calls = [args for script in _run_scripts(wf) for args in guardrail_invocations(script)]
    env = {k: v for k, v in wf["jobs"]["deploy"]["env"].items() if "${{" not in v}
    by_command: dict[str, list[Any]] = {}
    for args in calls:
        try:
            ns = parser().parse_args([_sample(a, env) for a in args])
        except SystemExit:
            pytest.fail(f"the CLI rejects: guardrail {shlex.join(args)}")
        by_command.setdefault(ns.command, []).append(ns)
    assert {"mark", "wait", "status"} <= set(by_command), calls
    [mark] = by_command["mark"]
    assert (mark.environment, mark.strategy, mark.adapter) == ("production", "canary", "checkout-deploy")
    assert mark.idempotency_key == "gh-$GITHUB_RUN_ID-$GITHUB_RUN_ATTEMPT"
    assert mark.file == ".github/guardrail-marker.yml"  # the marker file: where the metrics come from
    assert all(getattr(mark, k) for k in ("service", "version", "previous_version", "commit", "commit_time",
                                          "author", "change_type", "description"))
    [wait] = by_command["wait"]
    assert (wait.id, wait.timeout) == ("$DEPLOY_ID", 3600)


def test_every_change_type_the_workflow_picks_is_one_the_cli_accepts():
    scripts = "\n".join(_run_scripts(yaml.safe_load(WORKFLOW.read_text())))
    assert "--change-type \"$change_type\"" in scripts
    picked = set(re.findall(r"\bchange_type=(\w+)", scripts))
    assert len(picked) >= 2
    for value in picked:
        assert parser().parse_args(["mark", "--change-type", value]).change_type == value


def test_the_invocation_finder_sees_substitutions_and_skips_arguments():
    script = 'pip install guardrail\nID=$(guardrail mark \\\n  --service "a b")\nif x; then guardrail wait "$ID"; fi\n'
    assert guardrail_invocations(script) == [["mark", "--service", "a b"], ["wait", "$ID"]]


# --- deploy policy (guardrail.domain.policy) -----------------------------------------------------------


def _policy_settings(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "guardrail.yaml"
    path.write_text(text)
    return load_settings(path, env=env or {})


def test_the_default_policy_warns_on_friday_afternoons_and_the_checklist_in_production_and_blocks_nothing():
    from guardrail.domain.policy import CHECKS

    s = Settings()
    p = s.policy.to_policy()
    assert p.enabled and p.environments == ("prod*",)
    assert p.base["friday_afternoon"] == "warn" and p.friday_start_s == 12 * 3600
    assert {p.base[item] for item in ("tests_passed", "review_approved", "rollback_plan_documented")} == {"warn"}
    assert set(p.base) == set(CHECKS) and "block" not in p.base.values()
    assert p.freezes == () and p.peak_hours == () and p.rules == ()
    assert {t.value for t in p.fast_track_change_types} == {"security", "bugfix"}


def test_the_config_knows_the_same_checks_as_the_domain():
    from guardrail.config import PolicyChecklist, PolicyWindowActions
    from guardrail.domain.policy import CHECKLIST, WINDOW_CHECKS

    assert tuple(PolicyWindowActions.model_fields) == WINDOW_CHECKS
    assert tuple(PolicyChecklist.model_fields) == tuple(CHECKLIST)


POLICY_YAML = """
policy:
  zone: Europe/Berlin
  teams:
    - {name: berlin, zone: Europe/Berlin}
  peak_hours:
    - {name: lunch, zone: Europe/Berlin, start: "12:00", end: "14:00"}
  freezes:
    - {start: 2025-12-22, end: 2026-01-05, zone: Europe/Berlin, reason: year-end}
    - {start: "2025-06-01T00:00:00+02:00", end: 2025-06-02T00:00:00Z, reason: migration weekend}
  actions: {freeze: block}
  rules:
    - {environments: [production], change_types: [feature], checklist: {tests_passed: block}}
    - {environments: ["staging*"], actions: {freeze: warn, peak_hours: off}}
"""


def _check(result: Any, name: str) -> str:
    (c,) = [c for c in result.checks if c.name == name]
    return c.status


def test_a_policy_section_becomes_the_domain_policy(tmp_path: Path):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from guardrail.domain.model import ChangeType, Strategy
    from guardrail.domain.policy import PolicyFacts, evaluate_policy
    from guardrail.domain.records import Marker

    policy = _policy_settings(tmp_path, POLICY_YAML).policy.to_policy()
    berlin = ZoneInfo("Europe/Berlin")
    facts = PolicyFacts(monitoring_configured=True, rollback_configured=True)

    def run(env: str, when: datetime, **kw: Any) -> Any:
        m = Marker(service="s", environment=env, version="2", previous_version="1", commit="c",
                   strategy=Strategy.CANARY, change_type=ChangeType.FEATURE, **kw)
        return evaluate_policy(m, policy, at=when.timestamp(), facts=facts)

    # a bare date with a zone is midnight there; the freeze ends exclusive at 2026-01-05 00:00 Berlin
    assert _check(run("production", datetime(2025, 12, 22, 0, 0, tzinfo=berlin)), "freeze") == "block"
    assert _check(run("production", datetime(2026, 1, 5, 0, 0, tzinfo=berlin)), "freeze") == "pass"
    # an offset and a YAML timestamp: 2025-06-01 00:00 +02:00 until 2025-06-02 00:00 UTC
    assert _check(run("production", datetime(2025, 6, 2, 1, 59, tzinfo=berlin)), "freeze") == "block"
    tuesday_lunch = datetime(2025, 6, 3, 12, 30, tzinfo=berlin)
    r = run("production", tuesday_lunch, checklist={"tests_passed": False})
    assert _check(r, "peak_hours") == "warn" and _check(r, "tests_passed") == "block"
    r = run("staging-eu", datetime(2025, 12, 23, 12, 30, tzinfo=berlin), checklist={"tests_passed": False})
    assert _check(r, "freeze") == "warn" and _check(r, "peak_hours") == "skipped"  # unquoted off
    assert _check(r, "tests_passed") == "skipped" and not r.blocked


def test_env_overrides_reach_the_policy(tmp_path: Path):
    s = _policy_settings(tmp_path, POLICY_YAML, env={
        "GUARDRAIL_POLICY__ACTIONS__FRIDAY_AFTERNOON": "block",
        "GUARDRAIL_POLICY__CHECKLIST__ONCALL_AVAILABLE": "off",
        "GUARDRAIL_POLICY__FRIDAY_AFTERNOON_START": '"13:30"',
    })
    p = s.policy.to_policy()
    assert p.base["friday_afternoon"] == "block" and p.base["oncall_available"] == "off"
    assert p.friday_start_s == 13 * 3600 + 30 * 60
    assert load_settings(env={"GUARDRAIL_POLICY__ENABLED": "false"}).policy.to_policy().enabled is False


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("policy: {zone: Europe/Berln}\n", "policy.zone", "IANA name such as UTC, Europe/Berlin"),
        ("policy: {teams: [{name: a, zone: CEST}]}\n", "policy.teams.0.zone", "IANA name"),
        ("policy: {friday_afternoon_start: '25:00'}\n", "policy.friday_afternoon_start",
         "'25:00' is not a time of day; write HH:MM"),
        ("policy: {friday_afternoon_start: 12:00}\n", "policy.friday_afternoon_start", 'in quotes, e.g. "12:00"'),
        ("policy: {peak_hours: [{zone: UTC, start: '09:00', end: '24:30'}]}\n", "policy.peak_hours.0.end",
         "or 24:00 as an end"),
        ("policy: {peak_hours: [{zone: UTC, start: '09:00', end: '09:00'}]}\n", "policy.peak_hours.0",
         "the same time"),
        ("policy: {checklist: {tests_pased: block}}\n", "policy.checklist",
         "unknown checklist item 'tests_pased'; known: tests_passed, review_approved"),
        ("policy: {rules: [{checklist: {tests: block}}]}\n", "policy.rules.0.checklist", "known: tests_passed"),
        ("policy: {rules: [{actions: {friday: block}}]}\n", "policy.rules.0.actions", "known: freeze, friday"),
        ("policy: {actions: {freeze: deny}}\n", "policy.actions.freeze", "'off', 'warn' or 'block'"),
        ("policy: {checklist: {tests_passed: true}}\n", "policy.checklist.tests_passed", "off, warn or block"),
        ("policy: {rules: [{checklist: {review_approved: must}}]}\n", "policy.rules.0.checklist.review_approved",
         "'off', 'warn' or 'block'"),
        ("policy: {fast_track_change_types: [hotfix]}\n", "policy.fast_track_change_types.0", "security"),
        ("policy: {rules: [{environments: []}]}\n", "policy.rules.0.environments", "globs"),
        ("policy: {freezes: [{start: 2025-12-22T00:00:00, end: 2026-01-05T00:00:00, reason: x}]}\n",
         "policy.freezes.0", "has no UTC offset; add one"),
        ("policy: {freezes: [{start: 2026-01-05, end: 2025-12-22, zone: UTC, reason: x}]}\n",
         "policy.freezes.0", "must be after start"),
        ("policy: {freezes: [{start: 2025-12-22, end: 2026-01-05, zone: UTC}]}\n", "policy.freezes.0.reason",
         "Field required"),
    ],
)
def test_policy_errors_name_the_key_and_what_is_accepted(tmp_path: Path, text: str, field: str, message: str):
    with pytest.raises(ConfigError) as e:
        _policy_settings(tmp_path, text)
    assert e.value.field == field
    assert message in str(e.value)


# --- llm -----------------------------------------------------------------------------------------------


def test_llm_is_off_by_default_with_the_documented_defaults():
    llm = load_settings(env={}).llm
    assert (llm.enabled, llm.base_url, llm.model, llm.api_key_env) == (False, None, "gpt-4o-mini", "OPENAI_API_KEY")
    assert (llm.timeout_s, llm.max_retries, llm.temperature, llm.redact_fields) == (30, 1, 0, [])


def test_llm_settings_come_from_the_environment_too():
    env = {
        "GUARDRAIL_LLM__ENABLED": "true",
        "GUARDRAIL_LLM__BASE_URL": "http://127.0.0.1:8000/v1",
        "GUARDRAIL_LLM__REDACT_FIELDS": "[author, owner]",
        "GUARDRAIL_LLM__TIMEOUT_S": "2.5",
    }
    llm = load_settings(env=env).llm
    assert (llm.enabled, llm.base_url, llm.redact_fields, llm.timeout_s) == (
        True, "http://127.0.0.1:8000/v1", ["author", "owner"], 2.5)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("BASE_URL", "127.0.0.1:8000/v1", "http:// or https://"),
        ("TIMEOUT_S", "0", "greater than 0"),
        ("MAX_RETRIES", "-1", "greater than or equal to 0"),
        ("API_KEY_ENV", "'my key'", "environment variable name"),
        ("MODEL", "' '", "must name a model"),
    ],
)
def test_a_bad_llm_setting_names_its_key(key: str, value: str, message: str):
    with pytest.raises(ConfigError, match=message) as e:
        load_settings(env={f"GUARDRAIL_LLM__{key}": value})
    assert e.value.field == f"llm.{key.lower()}"


def test_the_llm_key_is_read_from_the_named_variable_and_its_absence_names_it():
    llm = load_settings(env={"GUARDRAIL_LLM__ENABLED": "true", "GUARDRAIL_LLM__API_KEY_ENV": "LOCAL_LLM_KEY"}).llm
    assert llm.api_key({"LOCAL_LLM_KEY": "anything"}) == "anything"
    for env in ({}, {"LOCAL_LLM_KEY": " "}):
        with pytest.raises(ConfigError, match="environment variable LOCAL_LLM_KEY") as e:
            llm.api_key(env)
        assert e.value.field == "llm.api_key_env"


def test_start_up_check_leaves_a_required_adapter_key_to_the_marker_when_the_preset_allows_it():
    """Issue 14 item 4: a preset may leave a required key to markers (marker_keys); anything else missing
    is a problem named by its config path, before any marker arrives."""
    from guardrail.main import check_settings

    allowed = Settings.model_validate({"adapters": {"hook": {"type": "webhook", "marker_keys": ["url"]}}})
    missing = Settings.model_validate({"adapters": {"hook": {"type": "webhook"}}})
    assert check_settings(allowed, env={}) == []
    assert [path for path, _ in check_settings(missing, env={})] == ["adapters.hook.config.url"]
