"""What a batch shows of its lines that ran on hosted Batch APIs (``offloaded``, docs/offload.md).

Read from the store when a batch is answered, and only where batch backends are configured: a
server without any pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from lowtide.domain.records import BatchRecord
from lowtide.settings import Settings
from lowtide.store import Store


async def mark_offloaded(settings: Settings, store: Store, batches: Sequence[BatchRecord]) -> None:
    """Set ``offloaded`` on the batches that have sent lines upstream."""
    if not batches or not settings.batch_backends():
        return
    shares = await store.offload_shares([b.id for b in batches])
    for batch in batches:
        found = shares.get(batch.id)
        if found is not None:
            batch.offloaded = found[0]
