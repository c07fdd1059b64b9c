"""Reading the settings from a TOML file, the environment and the command line."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lowtide import errors
from lowtide.settings.describe import describe_errors
from lowtide.settings.root import Settings

CONFIG_ENV = "LOWTIDE_CONFIG"


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (``path``, else ``$LOWTIDE_CONFIG``, else none) and apply overrides.

    ``overrides`` are ``server`` keys given on the command line (host, port, data_dir).
    """
    path = path or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    raw: dict[str, Any] = _read_toml(path) if path else {}
    server = dict(raw.get("server", {}))
    server.update({k: v for k, v in overrides.items() if v is not None})
    raw["server"] = server
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        problems = "\n".join(f"  {problem}" for problem in describe_errors(exc, raw))
        raise errors.ConfigError(f"invalid configuration{where}:\n{problems}") from exc


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise errors.ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise errors.ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
