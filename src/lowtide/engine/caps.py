"""The batch controls as the engine's parts use them (docs/extensions.md): whether a batch may
send, stopping a batch, and the caps.

The caps themselves need no call: the group commit judges them where it adds to a batch's
counters (``lowtide.domain.controls.cap_crossed``, the trigger ``batches_stop_at_caps`` in
both stores), so that whatever records outcomes (the dispatcher's sink, a hosted-batch
offload) stops a batch that crosses one, in the same transaction. A batch that stopped or is
paused leaves ``Store.active_batches``; an engine part that sends work without it asks
``may_send`` of the batch as it reads it.
"""

from __future__ import annotations

import logging
import time

from lowtide.domain import controls
from lowtide.domain.records import BatchRecord
from lowtide.domain.status import Status
from lowtide.store import Store

logger = logging.getLogger(__name__)

cap_crossed = controls.cap_crossed


def may_send(batch: BatchRecord) -> bool:
    """True while new requests of the batch may go out: in progress, not paused, and past no
    cap (a cap crossed and not yet recorded as a stop counts as one)."""
    return (
        batch.status == Status.IN_PROGRESS
        and batch.paused_at is None
        and cap_crossed(batch) is None
    )


async def stop(store: Store, batch_id: str, reason: str, now: int | None = None) -> bool:
    """Stop a batch like a cancel (nothing more is sent, requests in flight finish, the lines
    never sent end as ``batch_cancelled``), with ``reason`` as its ``stop_reason``. False if
    it could not be stopped (it was past ``in_progress``). The caps' own reasons
    (``max_cost``, ``max_error_rate``) give their lines ``batch_stopped`` instead."""
    stopped = await store.stop_batch(batch_id, reason, int(time.time()) if now is None else now)
    if stopped:
        logger.info(
            "batch %s stopped: %s",
            batch_id,
            reason,
            extra={"action": "batch_status", "batch_id": batch_id, "status": "cancelling"},
        )
    return stopped
