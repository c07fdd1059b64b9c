"""The batch state machine (``lowtide.domain.status.MOVES``) holds in the database itself, on
SQLite and PostgreSQL alike: every move it allows can be made, any other is refused, whoever
tries it: the store's own statements or SQL typed by hand."""

from __future__ import annotations

import itertools
import sqlite3
import time

import asyncpg
import pytest

from lowtide.domain.status import MOVES, Status, sources
from lowtide.store import Store
from lowtide.store.postgres import PostgresStore
from lowtide.store.sqlite import SQLiteStore

from .test_store import NOW, batch_rec, file_rec, started

REFUSED = (sqlite3.IntegrityError, asyncpg.CheckViolationError)
PAIRS = list(itertools.permutations(Status, 2))


async def move_by_hand(store: Store, batch_id: str, status: Status) -> None:
    """``UPDATE batches SET status = ...`` on a connection of its own, as an operator would."""
    sql = "UPDATE batches SET status = {} WHERE id = {}"
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path, isolation_level=None)
        try:
            conn.execute(sql.format("?", "?"), (status.value, batch_id))
        finally:
            conn.close()
        return
    assert isinstance(store, PostgresStore)
    pg = await asyncpg.connect(store.url)
    try:
        await pg.execute(sql.format("$1", "$2"), status.value, batch_id)
    finally:
        await pg.close()


async def test_every_allowed_move_works_and_every_other_is_refused(store: Store) -> None:
    for n, (src, dst) in enumerate(PAIRS):
        batch_id = f"batch_{n}"
        await store.create_batch(batch_rec(batch_id, status=src))
        if dst in MOVES[src]:
            await move_by_hand(store, batch_id, dst)
            expected = dst
        else:
            with pytest.raises(REFUSED, match="batch"):
                await move_by_hand(store, batch_id, dst)
            expected = src
        batch = await store.get_batch(None, batch_id)
        assert batch is not None and batch.status == expected, (src, dst)
    # Staying in a status is no move: a statement may set it to what it is.
    await store.create_batch(batch_rec("batch_stay"))
    await move_by_hand(store, "batch_stay", Status.VALIDATING)


async def test_a_forbidden_move_by_the_store_changes_nothing(store: Store) -> None:
    await started(store, "batch_x", n=2)
    await store.request_cancel("alice", "batch_x", NOW)
    assert await store.claim_finalization("batch_x", "f", time.time(), 60.0) is not None
    output = file_rec("file-batch_output-x", purpose="batch_output")
    # A cancelling batch can only end cancelled: completing it is refused, atomically.
    with pytest.raises(REFUSED):
        await store.finish_finalization(
            "batch_x", "f", Status.COMPLETED, [output], "x", "y", NOW + 1
        )
    batch = await store.get_batch(None, "batch_x")
    assert batch is not None and (batch.status, batch.failed) == (Status.CANCELLING, 0)
    assert await store.get_file(None, output.id) is None
    assert await store.finish_finalization(
        "batch_x", "f", Status.CANCELLED, [output], "x", "y", NOW + 1
    )


async def test_the_store_moves_only_from_the_allowed_sources(store: Store) -> None:
    """Each status statement picks its batches by the sources MOVES gives: a batch in any other
    status is left alone (no error: it is simply not one of them)."""
    for n, src in enumerate(Status):
        await store.create_batch(batch_rec(f"batch_{n}", status=src, expires_at=NOW))
        await store.request_cancel("alice", f"batch_{n}", NOW)
    after_cancel = {b.id: b.status for b in await _all(store)}
    assert {s for s in Status if after_cancel[f"batch_{list(Status).index(s)}"] != s} == set(
        sources(Status.CANCELLING)
    )
    for n, src in enumerate(Status):
        await store.create_batch(batch_rec(f"batch_e{n}", status=src, expires_at=NOW))
    expired = set(await store.expire_due(NOW + 1))
    assert expired == {f"batch_e{list(Status).index(s)}" for s in sources(Status.FINALIZING)}


async def _all(store: Store) -> list:  # type: ignore[type-arg]
    from lowtide.domain.records import BatchFilter

    return await store.list_batches(None, BatchFilter(), after=None, limit=100)
