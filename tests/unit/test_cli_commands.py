"""The root command loads each command's module when that command is used, not all of them."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from lowtide.cli.commands import COMMANDS, cli


def test_every_command_loads_under_its_own_name() -> None:
    ctx = click.Context(cli, info_name="lowtide")
    assert cli.list_commands(ctx) == sorted(COMMANDS)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command), name
        assert command.name == name
    assert cli.get_command(ctx, "no-such-command") is None


def imported_by(*args: str) -> set[str]:
    """The modules ``lowtide ARGS`` imports (``-X importtime`` lists them on stderr)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lowtide", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}


@pytest.mark.parametrize(
    "args", [("convert", "--help"), ("batch", "wait", "--help"), ("files", "--help")]
)
def test_a_tool_command_loads_neither_the_settings_nor_the_store(args: tuple[str, ...]) -> None:
    imported = imported_by(*args)
    assert "lowtide.cli.commands" in imported  # the listing is there at all
    server_side = {"lowtide.settings", "lowtide.store", "lowtide.engine", "lowtide.api"}
    assert not imported & server_side


def test_the_server_command_loads_its_settings() -> None:
    assert "lowtide.settings" in imported_by("serve", "--help")
