"""``lowtide serve``: the API and the engine in one process."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from lowtide import __version__, errors
from lowtide.cli.options import config_option, logging_options
from lowtide.logs import setup_logging
from lowtide.settings import load_settings


@click.command()
@config_option()
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8000).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the database and files live (default ./lowtide-data).",
)
@logging_options
@click.option(
    "--api-only",
    is_flag=True,
    help="Serve the API without running the engine (batches wait for a worker).",
)
def serve(
    config_path: Path | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    log_level: str | None,
    log_format: str,
    api_only: bool,
) -> None:
    """Run the API and the engine in one process.

    \b
    Example:
        lowtide serve --config lowtide.toml --port 8000
    """
    import uvicorn

    from lowtide.api.serving import tune_serving
    from lowtide.server import build_server, check_exposure

    try:
        settings = load_settings(
            config_path, host=host, port=port, data_dir=data_dir, log_level=log_level
        )
        setup_logging(settings.server.log_level, log_format)
        check_exposure(settings)
        server = build_server(settings, with_engine=not api_only, engine_thread=True)
    except errors.ConfigError as exc:
        raise click.ClickException(exc.message) from exc
    tune_serving()  # cheaper uploads: malloc thresholds, uvicorn's body buffer (api/serving.py)
    config = uvicorn.Config(
        server.app,
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    # Port 0 asks the system for a free port, known once uvicorn binds: its own line names it.
    where = settings.server.port or "a free port (uvicorn's next line)"
    logging.getLogger(__name__).info(
        "lowtide %s on http://%s:%s (data in %s)",
        __version__,
        settings.server.host,
        where,
        settings.server.data_dir,
    )
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler that was in
    # place before it started: make that a clean exit, since the drain already happened.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    web = uvicorn.Server(config)
    engine = server.engine_thread
    if engine is not None:
        # An API whose engine died would take batches that never run: stop serving instead
        # (uvicorn checks the flag every 100 ms), and exit non-zero so that a supervisor
        # restarts the process.
        engine.on_failure = lambda _exc: setattr(web, "should_exit", True)
    web.run()
    if engine is not None and engine.failure is not None:
        raise click.ClickException("the engine stopped working (see the log above)")
