"""Mapping between offload chunks and their rows, shared by the SQL stores."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lowtide.domain.offload import BackendShare, Chunk, ChunkLine, Offloaded


def chunk_from_row(row: Mapping[str, Any]) -> Chunk:
    return Chunk(
        id=row["id"],
        batch_id=row["batch_id"],
        backend=row["backend"],
        state=row["state"],
        lines=row["lines"],
        price_factor=row["price_factor"],
        window=row["completion_window"],
        created_at=row["created_at"],
        bytes=row["bytes"],
        file_id=row["file_id"],
        upstream_id=row["upstream_id"],
        upstream_status=row["upstream_status"],
        output_file_id=row["output_file_id"],
        error_file_id=row["error_file_id"],
        creates=row["creates"],
        cancel_sent=bool(row["cancel_sent"]),
        recorded=row["recorded"],
        completed=row["completed"],
        failed=row["failed"],
        tokens=(
            row["input_tokens"],
            row["cached_tokens"],
            row["output_tokens"],
            row["reasoning_tokens"],
        ),
        error=row["error"],
        lease_owner=row["lease_owner"],
        lease_epoch=row["lease_epoch"],
        lease_until=row["lease_until"],
        updated_at=row["updated_at"],
    )


def insert_params(c: Chunk) -> tuple[Any, ...]:
    """The parameters of ``offload_insert_chunk``."""
    return (
        c.id,
        c.batch_id,
        c.backend,
        c.state,
        c.lines,
        c.price_factor,
        c.window,
        c.created_at,
        c.lease_owner,
        c.lease_epoch,
        c.lease_until,
        c.updated_at,
    )


def save_params(c: Chunk) -> tuple[Any, ...]:
    """The parameters of ``offload_save_chunk``."""
    return (
        c.state,
        c.bytes,
        c.file_id,
        c.upstream_id,
        c.upstream_status,
        c.output_file_id,
        c.error_file_id,
        c.creates,
        int(c.cancel_sent),
        c.recorded,
        c.completed,
        c.failed,
        *c.tokens,
        c.error,
        c.updated_at,
        c.id,
        c.lease_owner,
        c.lease_epoch,
    )


def chunk_line(row: Sequence[Any]) -> ChunkLine:
    line, custom_id, offset, length, attempts, epoch = row
    return ChunkLine(line, custom_id, offset, length, attempts, epoch)


def shares(found: Iterable[Sequence[Any]]) -> dict[str, tuple[Offloaded, int]]:
    """``offload_shares`` rows as each batch's ``Offloaded``, with the lines its open chunks
    recorded so far (not yet in their counts)."""
    by_batch: dict[str, tuple[list[BackendShare], list[int]]] = {}
    for row in found:
        batch_id, backend, factor, completed, failed, running, recorded, *tokens = row
        entry = by_batch.setdefault(batch_id, ([], [0]))
        entry[0].append(
            BackendShare(
                backend,
                int(completed),
                int(failed),
                int(running),
                (int(tokens[0]), int(tokens[1]), int(tokens[2]), int(tokens[3])),
                float(factor),
            )
        )
        entry[1][0] += int(recorded)
    return {b: (Offloaded(tuple(s)), r[0]) for b, (s, r) in by_batch.items()}
