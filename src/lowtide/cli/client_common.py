"""What ``lowtide batch`` and ``lowtide files`` share: the connection to a server (an
``openai.OpenAI`` from ``--base-url`` / ``--api-key``, its failures as one-line errors), the
``--json`` option, and how results reach stdout, stderr and files.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast
from urllib.parse import urlsplit

import click
from rich.console import Console
from rich.table import Table

from lowtide.cli.atomic import atomic_file
from lowtide.cli.progress import stderr_console

if TYPE_CHECKING:
    import openai

__all__ = [
    "DEFAULT_BASE_URL",
    "download_file",
    "json_option",
    "new_table",
    "note",
    "print_json",
    "stdout_console",
    "when",
    "with_client",
]

DEFAULT_BASE_URL: Final = "http://127.0.0.1:8000/v1"

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------------- connection


def _base_url(url: str) -> str:
    # "http://host:8000" means lowtide's "/v1"; any other path is kept (e.g. Model Studio's
    # "/compatible-mode/v1").
    return url.rstrip("/") + "/v1" if urlsplit(url).path in ("", "/") else url.rstrip("/")


def _make_client(base_url: str, api_key: str | None) -> openai.OpenAI:
    import openai  # imported here: it takes half a second, and `lowtide convert` needs none of it

    # A lowtide server without keys accepts any; the SDK insists on one.
    return openai.OpenAI(base_url=_base_url(base_url), api_key=api_key or "EMPTY")


@contextmanager
def _api_errors(base_url: str, api_key: str | None) -> Iterator[None]:
    """Every failure as one line on stderr and exit code 1, never a traceback."""
    import openai

    try:
        yield
    except openai.AuthenticationError as exc:
        if api_key:
            raise click.ClickException(f"401: {_error_message(exc)}") from exc
        # No key was given, so the SDK's placeholder was refused: "incorrect key" would mislead.
        raise click.ClickException(
            f"401: {_base_url(base_url)} needs an API key: pass --api-key or set "
            "LOWTIDE_API_KEY (or OPENAI_API_KEY)."
        ) from exc
    except openai.APIStatusError as exc:
        raise click.ClickException(f"{exc.status_code}: {_error_message(exc)}") from exc
    except openai.APIConnectionError as exc:
        raise click.ClickException(f"cannot reach {_base_url(base_url)}: {exc}") from exc
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or ''}: {exc.strerror or exc}") from exc


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return str(exc.message)


def with_client(fn: F) -> F:
    """Add ``--base-url`` / ``--api-key`` and pass an ``openai.OpenAI`` as ``client``.

    The command returns its exit code (None is 0).
    """

    @click.option(
        "--base-url",
        envvar=["LOWTIDE_BASE_URL", "OPENAI_BASE_URL"],
        default=DEFAULT_BASE_URL,
        show_default=True,
        help="Server URL [env LOWTIDE_BASE_URL, else OPENAI_BASE_URL]; '/v1' is added to a "
        "URL with no path.",
    )
    @click.option(
        "--api-key",
        envvar=["LOWTIDE_API_KEY", "OPENAI_API_KEY"],
        show_envvar=False,
        help="API key [env LOWTIDE_API_KEY, else OPENAI_API_KEY].",
    )
    @functools.wraps(fn)
    def wrapper(base_url: str, api_key: str | None, **kwargs: Any) -> None:
        with _api_errors(base_url, api_key):
            code = fn(_make_client(base_url, api_key), **kwargs)
        if code:
            raise click.exceptions.Exit(code)

    return cast(F, wrapper)


# --------------------------------------------------------------------------- output


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def stdout_console() -> Console:
    # Wide when piped, so that ids are never cut; markup and highlighting off: cells are data.
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=200)


def note(message: str) -> None:
    stderr_console().print(message, markup=False, soft_wrap=True)


def when(epoch: int | None) -> str:
    return "" if not epoch else datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def download_file(client: openai.OpenAI, file_id: str | None, path: Path) -> int:
    """Write the file to ``path`` (an empty file when there is none); returns its line count."""
    lines = 0
    with atomic_file(path) as out:
        if file_id:
            with client.files.with_streaming_response.content(file_id) as response:
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    lines += chunk.count(b"\n")
    return lines


def new_table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=True, overflow="ignore")
    return table
