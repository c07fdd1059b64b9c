"""The PostgreSQL store: the state shared by a fleet of API replicas and engine workers.

Same semantics as the SQLite store, made safe for many processes at once:

- work is claimed with ``FOR UPDATE SKIP LOCKED`` (requests, batches to validate or finalise,
  expiry, slot leases), so two workers never get the same thing and never wait on each other;
- a result is committed only if its request's ``lease_epoch`` (bumped by every claim) and
  ``state = leased`` still match: a worker whose lease was taken over changes nothing;
- statements that lock many request rows lock them in key order, so that commits, heartbeats
  and finalisation running at once cannot deadlock; a deadlock or serialisation failure that
  happens anyway is retried (``db._ATTEMPTS``);
- ``NOTIFY lowtide_wake`` wakes the engines of other processes; polling stays the safety net.

``db`` holds the pool, ``control`` the control plane's methods and ``engine`` the engine's.
The statements are in ``sql/postgres/queries.sql``; the schema is brought up to date at
``open()`` (``lowtide.store.migrations``).
"""

from __future__ import annotations

from lowtide.store.postgres.backends import BackendStatus
from lowtide.store.postgres.control import ControlPlane
from lowtide.store.postgres.controls import ControlWork
from lowtide.store.postgres.db import load_asyncpg
from lowtide.store.postgres.engine import EngineWork
from lowtide.store.postgres.offload import OffloadWork


class PostgresStore(ControlWork, ControlPlane, EngineWork, BackendStatus, OffloadWork):
    """The ``Store`` on a PostgreSQL database, shared by a fleet."""


__all__ = ["PostgresStore", "load_asyncpg"]
