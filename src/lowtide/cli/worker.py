"""``lowtide worker``: an engine without the API, for the scale-out mode."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click
import prometheus_client

from lowtide import errors, metrics
from lowtide.cli.options import config_option, logging_options
from lowtide.logs import setup_logging
from lowtide.settings import load_settings

if TYPE_CHECKING:  # the server pulls in the whole stack: import it only when running
    from lowtide.server import Server

logger = logging.getLogger(__name__)


@click.command()
@config_option()
@logging_options
@click.option(
    "--metrics-port",
    type=int,
    help="Serve this worker's Prometheus metrics on http://HOST:PORT/metrics.",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Address for it.")
def worker(
    config_path: Path | None,
    log_level: str | None,
    log_format: str,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run an engine (validation, dispatch, finalisation) without the API.

    Any number of workers may run, on any machines, against one PostgreSQL database and one
    S3-compatible store (see docs/deployment.md). SIGTERM drains in-flight requests and exits.

    \b
    Example:
        lowtide worker --config fleet.toml
    """
    from lowtide.server import build_server

    try:
        settings = load_settings(config_path, log_level=log_level)
        setup_logging(settings.server.log_level, log_format)
        server = build_server(settings, with_engine=True)
    except errors.ConfigError as exc:
        raise click.ClickException(exc.message) from exc
    if server.engine is not None and server.engine.exclusive:
        raise click.ClickException(
            "lowtide worker needs a shared database (database_url = 'postgresql://...'); "
            "with SQLite, run 'lowtide serve', which includes the engine"
        )
    if metrics_port is not None:
        # A worker serves no API; its own counters still need a place to be scraped.
        prometheus_client.start_http_server(metrics_port, metrics_host, registry=metrics.REGISTRY)
    asyncio.run(_run(server))


async def _run(server: Server) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    logger.info("worker %s started", server.engine.owner if server.engine else "?")
    await stop.wait()
    logger.info("worker stopping: draining in-flight requests")
    await server.stop()
