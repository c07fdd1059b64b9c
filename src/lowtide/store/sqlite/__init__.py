"""The SQLite store (one process): ``db`` holds the connections and the writer thread,
``control`` the control plane's methods and ``engine`` the engine's. The statements are in
``sql/sqlite/queries.sql``; the schema is brought up to date when the store opens."""

from __future__ import annotations

from lowtide.store.sqlite.backends import BackendStatus
from lowtide.store.sqlite.control import ControlPlane
from lowtide.store.sqlite.controls import ControlWork
from lowtide.store.sqlite.engine import EngineWork
from lowtide.store.sqlite.offload import OffloadWork


class SQLiteStore(ControlWork, ControlPlane, EngineWork, BackendStatus, OffloadWork):
    """The ``Store`` on one SQLite file."""


__all__ = ["SQLiteStore"]
