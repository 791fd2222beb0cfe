"""The nginx deploy adapter with shell scripts standing in for ``nginx -t`` and ``nginx -s reload``
(nginx itself is not needed): the file it writes, and what happens when the check fails."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from guardrail.adapters.deploy.nginx import NginxDeployAdapter, split_weights
from guardrail.domain.errors import ConfigError
from guardrail.domain.model import Step
from tests.contract.test_deploy_adapters import target


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    return tmp_path / "conf.d" / "checkout-upstream.conf"


def adapter(
    tmp_path: Path, conf: Path, *, check: str = "exit 0\n", reload: str = "exit 0\n", **extra: Any
) -> NginxDeployAdapter:
    conf.parent.mkdir(exist_ok=True)
    return NginxDeployAdapter.from_config(
        {
            "path": str(conf),
            "stable": "checkout-v1:8080",
            "canary": "checkout-v2:8080",
            "check_command": script(tmp_path / "check.sh", check) + " -t",
            "reload_command": script(tmp_path / "reload.sh", reload) + " -s reload",
            **extra,
        }
    )


def servers(conf: Path) -> list[str]:
    return [line.strip() for line in conf.read_text().splitlines() if line.strip().startswith("server ")]


async def test_a_step_writes_a_weighted_upstream(tmp_path: Path, conf: Path) -> None:
    result = await adapter(tmp_path, conf).apply_step(target(), Step(weight=10), 0, 3)
    assert result.ok, result
    text = conf.read_text()
    assert text.splitlines()[0].startswith("# Written by guardrail (apply_step) for deploy dep-1")
    assert text.endswith(
        "upstream checkout {\n    server checkout-v1:8080 weight=9;\n    server checkout-v2:8080 weight=1;\n}\n"
    )
    assert result.data["canary_percent"] == "10"


@pytest.mark.parametrize(
    ("weight", "expected"),
    [
        (12.5, ["server checkout-v1:8080 weight=7;", "server checkout-v2:8080 weight=1;"]),
        (50, ["server checkout-v1:8080 weight=1;", "server checkout-v2:8080 weight=1;"]),
        (0, ["server checkout-v1:8080 weight=1;", "server checkout-v2:8080 down;"]),
        (100, ["server checkout-v1:8080 down;", "server checkout-v2:8080 weight=1;"]),
    ],
)
async def test_weights_are_smallest_integers_and_0_or_100_percent_marks_a_server_down(
    tmp_path: Path, conf: Path, weight: float, expected: list[str]
) -> None:
    """nginx rejects weight=0: the server that gets nothing is marked down instead."""
    assert (await adapter(tmp_path, conf).apply_step(target(), Step(weight=weight), 0, 3)).ok
    assert servers(conf) == expected


def test_split_weights_keeps_the_share() -> None:
    for percent in (1, 5, 10, 12.5, 25, 33.3, 50, 75, 99.9):
        stable, canary = split_weights(percent)
        assert stable > 0 and canary > 0
        assert abs(100 * canary / (stable + canary) - percent) < 1e-9


async def test_finalize_sends_all_traffic_to_the_canary_and_rollback_to_stable(
    tmp_path: Path, conf: Path
) -> None:
    a = adapter(tmp_path, conf, server_options="max_fails=3 fail_timeout=10s")
    assert (await a.finalize(target())).ok
    assert servers(conf) == [
        "server checkout-v1:8080 down max_fails=3 fail_timeout=10s;",
        "server checkout-v2:8080 weight=1 max_fails=3 fail_timeout=10s;",
    ]
    assert (await a.rollback(target(), "errors")).ok
    assert (await a.rollback(target(), "errors")).ok  # safe to repeat
    assert servers(conf)[1] == "server checkout-v2:8080 down max_fails=3 fail_timeout=10s;"
    assert "(rollback)" in conf.read_text().splitlines()[0]


async def test_a_failed_check_restores_the_previous_file(tmp_path: Path, conf: Path) -> None:
    good = adapter(tmp_path, conf)
    assert (await good.apply_step(target(), Step(weight=10), 0, 3)).ok
    before = conf.read_bytes()
    reloads = tmp_path / "reloads"
    bad = adapter(
        tmp_path,
        conf,
        check='echo "nginx: [emerg] host not found in upstream \\"checkout-v2:8080\\""\nexit 1\n',
        reload=f'echo reload >> "{reloads}"\n',
    )
    result = await bad.apply_step(target(), Step(weight=50), 1, 3)
    assert not result.ok
    assert "check command" in result.detail and "exited 1" in result.detail
    assert "[emerg] host not found" in result.detail and "previous file was restored" in result.detail
    assert conf.read_bytes() == before
    assert not reloads.exists()  # nginx is not reloaded with a file that failed the check


async def test_a_failed_check_of_a_first_file_removes_it(tmp_path: Path, conf: Path) -> None:
    result = await adapter(tmp_path, conf, check="exit 1\n").rollback(target(), "errors")
    assert not result.ok and "new file was removed" in result.detail
    assert not conf.exists()


async def test_a_failed_reload_restores_the_previous_file(tmp_path: Path, conf: Path) -> None:
    assert (await adapter(tmp_path, conf).apply_step(target(), Step(weight=10), 0, 3)).ok
    before = conf.read_bytes()
    result = await adapter(
        tmp_path, conf, reload="echo 'nginx: [error] invalid PID number'\nexit 1\n"
    ).finalize(target())
    assert not result.ok and result.detail.startswith("reload command") and "invalid PID" in result.detail
    assert conf.read_bytes() == before


async def test_the_file_is_replaced_atomically_keeping_its_mode(tmp_path: Path, conf: Path) -> None:
    """The check sees the complete new file; no temp file is left; the file keeps its permissions."""
    conf.parent.mkdir()
    conf.write_text("# old\n")
    conf.chmod(0o640)
    seen = tmp_path / "seen.conf"
    a = adapter(tmp_path, conf, check=f'cat "$GUARDRAIL_UPSTREAM_FILE" > "{seen}"\n')
    assert (await a.apply_step(target(), Step(weight=10), 0, 3)).ok
    assert seen.read_text() == conf.read_text() and "weight=9" in seen.read_text()
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    assert sorted(os.listdir(conf.parent)) == [conf.name]


async def test_marker_values_cannot_inject_nginx_config(tmp_path: Path, conf: Path) -> None:
    hostile = "2.4.0;\n}\nupstream evil { server attacker:80;"
    assert (await adapter(tmp_path, conf).apply_step(target(version=hostile), Step(weight=10), 0, 3)).ok
    lines = conf.read_text().splitlines()
    config_lines = [line for line in lines if not line.startswith("#")]
    assert len(lines) == 6 and lines[0].startswith("# ") and lines[1].startswith("# ")
    assert config_lines[0] == "upstream checkout {" and "attacker" not in "".join(config_lines)


async def test_a_step_counting_servers_fails_without_touching_the_file(tmp_path: Path, conf: Path) -> None:
    result = await adapter(tmp_path, conf).apply_step(target(), Step(servers=2), 1, 3)
    assert not result.ok and "splits traffic by weight" in result.detail
    assert not conf.exists()


async def test_a_missing_check_program_fails_and_restores(tmp_path: Path, conf: Path) -> None:
    a = NginxDeployAdapter.from_config(
        {"path": str(conf), "stable": "a:1", "canary": "b:1", "check_command": f"{tmp_path}/no-nginx -t"}
    )
    conf.parent.mkdir()
    result = await a.rollback(target(), "errors")
    assert not result.ok and "could not start" in result.detail and not conf.exists()


async def test_an_unwritable_directory_is_a_failed_result(tmp_path: Path) -> None:
    a = NginxDeployAdapter.from_config(
        {"path": str(tmp_path / "missing-dir" / "up.conf"), "stable": "a:1", "canary": "b:1"}
    )
    result = await a.finalize(target())
    assert not result.ok and "cannot write" in result.detail


def test_config_is_checked_at_construction(tmp_path: Path) -> None:
    base = {"path": str(tmp_path / "up.conf"), "stable": "a:8080", "canary": "b:8080"}
    for bad, key in [
        ({**base, "canary": "a:8080"}, "canary"),
        ({**base, "stable": "a:8080; include /etc/passwd"}, "stable"),
        ({**base, "server_options": "weight=5"}, "server_options"),
        ({**base, "upstream": "{version}"}, "upstream"),
        ({**base, "check_command": "nginx -t 'unclosed"}, "check_command"),
        ({**base, "timeout_s": 0}, "timeout_s"),
    ]:
        with pytest.raises(ConfigError) as e:
            NginxDeployAdapter.from_config(bad)
        assert e.value.field == f"adapter.config.{key}", (bad, e.value)
