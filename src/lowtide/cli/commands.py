"""``lowtide``: serve the API, and tools around it.

Each command's module is imported when that command runs (or when ``--help`` lists it): a
client command such as ``lowtide batch wait`` needs neither the settings models nor the store,
and importing everything cost about half a second of CPU on every call (``python -X importtime
-m lowtide batch list``).
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from lowtide import __version__
from lowtide.cli import EXIT_INTERRUPTED
from lowtide.cli.options import GROUP_SETTINGS

#: Command name -> "module:attribute" of its click command.
COMMANDS: dict[str, str] = {
    "backends": "lowtide.cli.client:backends_command",
    "backup": "lowtide.cli.backup:backup_command",
    "batch": "lowtide.cli.client:batch_group",
    "convert": "lowtide.cli.convert:convert_group",
    "db": "lowtide.cli.db:db_group",
    "files": "lowtide.cli.client:files_group",
    "keys": "lowtide.cli.keys:keys_group",
    "run": "lowtide.cli.run:run_command",
    "serve": "lowtide.cli.serve:serve",
    "worker": "lowtide.cli.worker:worker",
}


class _Commands(click.Group):
    """The root group: loads each command on first use, and Ctrl-C during a command exits with
    ``EXIT_INTERRUPTED``, not click's 1.

    Click turns a ``KeyboardInterrupt`` into "Aborted!" and 1 before ``lowtide.cli.commands``'s
    guard could see it, so it is caught here, where the command runs.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attribute = target.split(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo(err=True)  # close the terminal's ^C echo
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


@click.group(cls=_Commands, context_settings=GROUP_SETTINGS)
@click.version_option(__version__, prog_name="lowtide")
def cli() -> None:
    """lowtide: a self-hosted Batch API for LLM requests.

    \b
    Start the server (SQLite and a local directory, the test model ready):
        lowtide serve
    """
