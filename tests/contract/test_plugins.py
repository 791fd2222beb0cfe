"""Plugin loading by entry points, typed plugin configs and secret redaction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from guardrail.adapters.deploy.command import CommandConfig, CommandDeployAdapter
from guardrail.adapters.deploy.noop import NoopDeployAdapter
from guardrail.adapters.deploy.webhook import WebhookDeployAdapter
from guardrail.domain.errors import ConfigError
from guardrail.plugins import (
    DEPLOY_ADAPTERS,
    known_deploy_adapters,
    known_plugins,
    load_deploy_adapter,
    load_plugin,
    parse_config,
    redact_deploy_adapter_config,
)
from guardrail.ports import DeployAdapter
from guardrail.secrets import REDACTED, redact_config, redact_text, secret_field


def test_known_deploy_adapters_lists_the_registered_names() -> None:
    assert {"noop", "command", "webhook"} <= set(known_deploy_adapters())
    assert known_deploy_adapters() == sorted(known_deploy_adapters())


def test_an_unknown_adapter_name_fails_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError) as e:
        load_deploy_adapter("kubernetes-ish", {})
    assert e.value.field == "adapter.name"
    assert "'kubernetes-ish'" in str(e.value)
    assert all(name in str(e.value) for name in ("noop", "command", "webhook"))


def test_adapters_load_by_name_through_entry_points() -> None:
    noop = load_deploy_adapter("noop", None)
    command = load_deploy_adapter("command", {"apply_step": "./deploy.sh {version}", "rollback": "./undo.sh"})
    webhook = load_deploy_adapter("webhook", {"url": "https://deploys.example.com/hook"})
    assert isinstance(noop, NoopDeployAdapter)
    assert isinstance(command, CommandDeployAdapter)
    assert isinstance(webhook, WebhookDeployAdapter)
    assert all(isinstance(a, DeployAdapter) for a in (noop, command, webhook))


def test_a_bad_adapter_config_names_the_key_and_what_is_accepted() -> None:
    with pytest.raises(ConfigError) as e:
        load_deploy_adapter("noop", {"fail_on": ["apply_step", "explode"]})
    assert e.value.field == "adapter.config.fail_on"
    assert "'explode'" in str(e.value) and "'rollback'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_deploy_adapter("command", {"rollback": "./undo.sh"})
    assert e.value.field == "adapter.config.apply_step" and "required" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_deploy_adapter("command", {"apply_step": "x", "rollback": "y", "env": {"PORT": 8080}})
    assert e.value.field == "adapter.config.env" and "env.PORT" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_deploy_adapter("noop", ["fail_on"])  # type: ignore[arg-type]
    assert e.value.field == "adapter.config"


def test_a_group_without_plugins_says_so() -> None:
    assert known_plugins("guardrail.nothing_here") == []
    with pytest.raises(ConfigError, match="none installed"):
        load_plugin("guardrail.nothing_here", "x", {})
    assert known_plugins(DEPLOY_ADAPTERS) == known_deploy_adapters()


def test_loaded_configs_are_frozen_and_typed() -> None:
    adapter = load_deploy_adapter("command", {"apply_step": "a", "rollback": "b", "timeout_s": 30})
    assert isinstance(adapter, CommandDeployAdapter)
    assert adapter.config.timeout_s == 30.0 and isinstance(adapter.config.timeout_s, float)
    with pytest.raises(AttributeError):
        adapter.config.timeout_s = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        adapter.config.env["X"] = "y"  # type: ignore[index]
    built = CommandConfig(apply_step="a", rollback="b", env={"A": "1"})
    with pytest.raises(TypeError):
        built.env["A"] = "2"  # type: ignore[index]


@dataclass(frozen=True, slots=True)
class _Config:
    host: str
    password: str = secret_field(default="")
    tokens: Mapping[str, str] = secret_field(default_factory=dict)
    port: int = 5432
    tags: tuple[str, ...] = field(default=())


def test_redact_config_hides_secret_fields_without_an_instance() -> None:
    raw = {"host": "db", "password": "hunter2", "tokens": {"a": "t1"}, "port": 1, "pasword": "typo"}
    assert redact_config(_Config, raw) == {
        "host": "db",
        "password": REDACTED,
        "tokens": {"a": REDACTED},
        "port": 1,
        "pasword": REDACTED,  # unknown keys too: it may be a misspelled secret
    }
    assert redact_config(CommandDeployAdapter, {"secret_env": {"K": "v"}, "timeout_s": 3}) == {
        "secret_env": {"K": REDACTED},
        "timeout_s": 3,
    }
    assert "hunter2" not in repr(_Config(host="db", password="hunter2"))


def test_wrong_types_quote_the_value_only_for_non_secret_fields() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(_Config, {"host": "db", "password": 1234567}, field_prefix="x.config", owner="test")
    assert e.value.field == "x.config.password" and "1234567" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config(_Config, {"host": "db", "port": True}, field_prefix="x.config", owner="test")
    assert "an integer" in str(e.value) and "True" in str(e.value)
    assert parse_config(_Config, {"host": "db", "tags": ["a"]}, field_prefix="x", owner="t").tags == ("a",)


def test_redact_text_replaces_every_secret_longest_first() -> None:
    assert redact_text("token abc and abcdef", ["abc", "abcdef", ""]) == "token *** and ***"
    assert redact_text("nothing here", []) == "nothing here"


def test_command_config_repr_hides_secret_env() -> None:
    config = CommandConfig(apply_step="a", rollback="b", secret_env={"TOKEN": "hunter2"})
    assert "hunter2" not in repr(config) and "TOKEN" not in repr(config)


def test_adapter_configs_are_redacted_by_adapter_name() -> None:
    config = {"url": "https://h/x", "secret": "k3y", "secret_headers": {"Authorization": "Bearer t"}}
    assert redact_deploy_adapter_config("webhook", config) == {
        "url": "https://h/x",
        "secret": REDACTED,
        "secret_headers": {"Authorization": REDACTED},
    }
    assert redact_deploy_adapter_config("no-such-adapter", {"token": "t", "x": None}) == {
        "token": REDACTED,
        "x": None,
    }
