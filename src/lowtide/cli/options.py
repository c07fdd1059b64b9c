"""Options that several commands share, defined once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

#: Every group's context settings: `-h` as well as `--help`. Each group says so itself, not only
#: the root: click keeps a command's help option from the first context that asks for it, so a
#: group run on its own (a test of `convert`) would otherwise fix its commands to `--help` alone.
GROUP_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


def config_option(purpose: str = "") -> Callable[[F], F]:
    """``--config FILE`` (falling back to ``$LOWTIDE_CONFIG``), passed as ``config_path``."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="LOWTIDE_CONFIG",
        help=f"TOML config file [env LOWTIDE_CONFIG]{purpose}.",
    )


def database_url_option(action: str) -> Callable[[F], F]:
    return click.option(
        "--database-url", help=f"{action} this database instead of the configured one."
    )


def logging_options(fn: F) -> F:
    """``--log-level`` and ``--log-format``, for the long-running commands."""
    fn = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Log lines for people, or JSON for machines.",
    )(fn)
    return click.option("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR.")(fn)
