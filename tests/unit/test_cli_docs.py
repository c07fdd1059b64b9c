"""docs/cli.md is every command's ``--help`` as it is now, and every command has an example."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import click

SCRIPT = Path(__file__).parents[2] / "scripts" / "gen_cli_docs.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_docs_are_current():
    gen = _generator()
    assert gen.DOCS.read_text(encoding="utf-8") == gen.render(), (
        "docs/cli.md is not current: run `.venv/bin/python scripts/gen_cli_docs.py`"
    )


def test_every_command_help_has_an_example():
    gen = _generator()
    missing = [
        ctx.command_path
        for ctx, command in gen.commands(gen.cli, "lowtide")
        if not isinstance(command, click.Group) and "Example" not in command.get_help(ctx)
    ]
    assert missing == []
