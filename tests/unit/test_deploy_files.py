"""The files under deploy/ parse, and say what docs/operations.md promises of them.

The systemd unit is checked by ``systemd-analyze verify`` where it is installed (it reports
lines it cannot parse on stderr, but exits 0: so its output must be empty), and always by a
parse of its sections and of its ``ExecStart`` by lowtide's own command line. The container
files are built and run by tests/deploy/test_containers.py, where a container engine runs.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from lowtide.cli.commands import cli
from lowtide.settings import load_settings

DEPLOY = Path(__file__).parents[2] / "deploy"
UNIT = DEPLOY / "lowtide.service"
#: What ``lowtide serve`` gives uvicorn to close its connections after the engine's drain.
UVICORN_GRACE = 5

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections of key → values (a key may repeat), as systemd reads them."""
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"line {number}: continued lines are not parsed here"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep, f"line {number} is not key=value in a section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"{key} is set {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    """A systemd time span in the forms used here: ``30``, ``30s``, ``2min``."""
    for suffix, factor in (("min", 60), ("s", 1)):
        if value.endswith(suffix):
            return float(value.removesuffix(suffix)) * factor
    return float(value)


def test_unit_runs_lowtide_as_its_user_with_a_state_directory_and_a_drain() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    assert one(unit, "Service", "User") == "lowtide"
    assert one(unit, "Service", "StateDirectory") == "lowtide"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Service", "ProtectSystem") == "strict"
    grace = load_settings(DEPLOY / "lowtide.toml").engine.shutdown_grace
    assert seconds(one(unit, "Service", "TimeoutStopSec")) > grace + UVICORN_GRACE
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_unit_exec_start_is_a_command_line_lowtide_accepts() -> None:
    unit = parse_unit(UNIT.read_text())
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert Path(argv[0]).name == "lowtide"
    root = click.Context(cli, **cli.context_settings)
    command = cli.get_command(root, argv[1])
    assert command is not None and argv[1] == "serve"
    # Under its parent, as the command line runs it (click keeps a command's help option from
    # the first context that asks: a context without the parent's would change docs/cli.md).
    ctx = command.make_context("serve", argv[2:], parent=root)  # refuses unknown options
    config = ctx.params["config_path"]
    assert config == Path("/etc/lowtide/lowtide.toml")
    # The config the unit reads keeps its data in the unit's state directory.
    settings = load_settings(DEPLOY / "lowtide.toml")
    assert settings.server.data_dir == Path("/var/lib") / one(unit, "Service", "StateDirectory")
    assert settings.server.host == "127.0.0.1"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this lowtide.
    here = Path(sys.executable).parent / "lowtide"
    text = UNIT.read_text().replace("/opt/lowtide/bin/lowtide", str(here))
    assert str(here) in text
    unit = tmp_path / "lowtide.service"
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""


def test_fleet_config_points_at_the_compose_services() -> None:
    settings = load_settings(DEPLOY / "fleet.toml")
    assert settings.server.resolved_database_url().startswith("postgresql://lowtide@db:5432/")
    assert settings.server.resolved_storage_url().startswith("s3://")
    assert settings.s3.endpoint_url == "http://s3:9000"


def test_compose_file_runs_every_lowtide_process_on_fleet_toml() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"db", "s3", "bucket", "api", "worker"}
    grace = load_settings(DEPLOY / "fleet.toml").engine.shutdown_grace
    for name in ("bucket", "api", "worker"):
        service = services[name]
        assert service["environment"]["LOWTIDE_CONFIG"] == "/etc/lowtide/fleet.toml"
        assert "./fleet.toml:/etc/lowtide/fleet.toml:ro" in service["volumes"]
        assert seconds(service["stop_grace_period"]) > grace + UVICORN_GRACE
    assert services["api"]["command"][:2] == ["serve", "--api-only"]
    assert services["worker"]["command"][0] == "worker"


def test_every_toml_block_of_the_vllm_walk_through_is_a_valid_config(tmp_path: Path) -> None:
    text = (DEPLOY.parent / "docs" / "vllm.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "docs/vllm.md has no TOML block"
    for number, block in enumerate(blocks):
        path = tmp_path / f"block{number}.toml"
        path.write_text(block)
        settings = load_settings(path)
        assert settings.backends, f"block {number} configures no backend"
