"""``lowtide batch`` and ``lowtide files``: a client for a lowtide server, or for any
OpenAI-compatible Batch API (OpenAI, Model Studio), built on the official ``openai`` SDK.

Commands print what a script wants on stdout (an id, a table, or JSON with ``--json``) and
everything for people (progress, hints) on stderr. Commands that end with a batch in a
terminal state exit with its code (``lowtide.cli.progress.EXIT_CODES``).

The commands live in ``client_batches``, ``client_controls`` (lowtide's batch controls),
``client_files`` and ``client_backends``, what they share (the connection, ``--json``, output)
in ``client_common`` and ``extensions``; this module is what the rest of the CLI imports.
"""

from __future__ import annotations

from lowtide.cli.client_backends import backends_command
from lowtide.cli.client_batches import batch_group, endpoint_of, parse_since
from lowtide.cli.client_controls import estimate_command  # registers the controls' commands
from lowtide.cli.client_files import files_group

__all__ = [
    "backends_command",
    "batch_group",
    "endpoint_of",
    "estimate_command",
    "files_group",
    "parse_since",
]
