"""Claims pending requests and sends them to backends, never over a backend's ceiling.

One claim loop: it asks the router how many slots a batch's model has free, claims requests
in one statement, and starts a task for each free slot. Batches are served earliest deadline
first. Results go to the ``ResultSink``, which commits them in groups.

Claims run ahead of the free slots: up to one ceiling's worth of claimed requests wait in a
queue per batch, and a request that finishes starts the next one at once. A claim is a write
transaction with an fsync (several milliseconds, more while the group commits queue on the
same writer), and without the queue every slot stayed empty for that long between two
requests: the engine ran at a fraction of a fast backend's speed, and 256 slots of a 200 ms
backend did 1.3x the ideal makespan (see docs/performance.md for the figures before and after).

A task that finishes a request takes the next queued one of the same model itself (a slot is
released and acquired again for each request, so ceilings, pauses and the choice of backend
work per request as before): tasks live as long as work keeps coming, not one per request.
New tasks start only where free slots outnumber the running ones (``_start_ready``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

import orjson

from lowtide import errors, metrics
from lowtide.backends.base import Reply, Unreachable
from lowtide.backends.shaping import Plan, Shaping
from lowtide.blobs import BlobStore
from lowtide.domain.work import FAILED, RETRY, SUCCEEDED, ActiveBatch, Claim, Outcome
from lowtide.engine import outcomes
from lowtide.engine.budgets import Charge
from lowtide.engine.events import wait_event
from lowtide.engine.limits import Ticket
from lowtide.engine.router import Router, Slot
from lowtide.engine.sink import ResultSink
from lowtide.store import Store

logger = logging.getLogger(__name__)

_MAX_CLAIM = 512  # requests claimed in one statement
_ACTIVE_REFRESH = 0.5  # seconds between reloads of the list of active batches


class Dispatcher:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        router: Router,
        sink: ResultSink,
        *,
        owner: str,
        lease: float,
        policy: outcomes.RetryPolicy,
        poll_interval: float,
        outage_grace: float = 120.0,
        on_outcome: Callable[[ActiveBatch, Outcome], None] | None = None,
        shaping: Shaping | None = None,
    ) -> None:
        self.store, self.blobs, self.router, self.sink = store, blobs, router, sink
        self.owner, self.lease, self.policy = owner, lease, policy
        self.poll_interval = poll_interval
        self.outage_grace = outage_grace
        #: When (monotonic) reads of request lines from the object store began to fail.
        self._unreadable_since: float | None = None
        self.on_outcome = on_outcome
        #: What each backend's bodies need: defaults, overrides, its dialect.
        self.shaping = shaping or Shaping()
        self.tasks: set[asyncio.Task[None]] = set()
        self._meters: dict[tuple[str, str], Meters] = {}
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self._active: list[ActiveBatch] = []
        self._active_loaded = 0.0
        # Set by wake(): the list above may hold a batch that no longer runs (cancelled,
        # paused, stopped by a cap), so nothing more is started from it until it is read again.
        self._stale = False
        # Claimed ahead of the free slots (see the module docstring), per batch; and counts
        # per model of those queued and of those in flight.
        self._ready: dict[ActiveBatch, deque[Claim]] = {}
        self._queued: Counter[str] = Counter()
        self._in_flight: Counter[str] = Counter()

    def wake(self) -> None:
        """Something changed (a new batch, a cancel): look again at once."""
        self._active_loaded = 0.0
        self._stale = True
        self._wake.set()
        self._slot_freed.set()  # the claim loop may be waiting for a slot: it looks now

    def committed(self, group: Sequence[Outcome]) -> None:
        """A group commit touched these outcomes' batches: one with a cap may have been
        stopped by it (the trigger judges the caps as it adds to the counters), so look at the
        running batches again."""
        capped = {b.id for b in self._active if b.capped}
        if capped and any(o.batch_id in capped for o in group):
            self.wake()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._slot_freed.set()

    async def run(self) -> None:
        while not self._stopping:
            claimed, starved = await self._round()
            if claimed:
                await asyncio.sleep(0)
            elif starved:
                await self._wait_for_slot()
            else:
                await self._idle()

    async def _wait_for_slot(self) -> None:
        # A slot frees when a request finishes, or when a paused backend's pause ends.
        timeout = min(self.poll_interval, self.router.next_unpause() or self.poll_interval)
        if await wait_event(self._slot_freed, timeout):
            # Let a few more requests finish so one claim statement fills several slots.
            await asyncio.sleep(0.002)

    async def _idle(self) -> None:
        timeout = self.poll_interval
        retry_at = await self.store.next_retry_at()
        if retry_at is not None:
            timeout = min(timeout, max(0.0, retry_at - time.time()))
        if (unpause := self.router.next_unpause()) is not None:
            timeout = min(timeout, unpause)
        await wait_event(self._wake, timeout)

    async def _round(self) -> tuple[int, bool]:
        claimed, starved = 0, False
        # Models whose claim came back full this round: the batches after, which come later
        # in the serving order, claim nothing for them until the next round (else they would
        # take the places claimed ahead while the first batch's claims were already started).
        full: set[str] = set()
        for batch in await self._batches():
            if self._stopping:
                break
            self._start_ready(batch)
            want = 0 if batch.model in full else self._wanted(batch.model)
            if want > 0:
                claims = await self.store.claim_requests(
                    batch.id, self.owner, min(want, _MAX_CLAIM), time.time(), self.lease
                )
                self._ready.setdefault(batch, deque()).extend(claims)
                self._queued[batch.model] += len(claims)
                claimed += len(claims)
                if len(claims) == min(want, _MAX_CLAIM):
                    full.add(batch.model)
                self._start_ready(batch)
            starved = starved or self.router.free(batch.model) <= 0
        return claimed, starved

    def _wanted(self, model: str) -> int:
        """How many requests of ``model`` to claim now: enough for its free slots and one
        ceiling's worth ahead, but only when a slot would stay empty or the queue is half
        gone, so that claims are few and large."""
        free = self.router.free(model)
        ceiling = free + self._in_flight[model]
        queued = self._queued[model]
        if free <= queued and queued > ceiling // 2:
            return 0
        return free + ceiling - queued

    def _start_ready(self, batch: ActiveBatch) -> None:
        """Start queued requests of ``batch`` while its model has free slots."""
        ready = self._ready.get(batch)
        free = self.router.free(batch.model)
        while ready and free > 0 and not self._stopping:
            self._start(batch, *self._take(batch))
            free -= 1

    def _take(self, batch: ActiveBatch) -> tuple[Claim, Slot]:
        """The next queued request of ``batch``, with a slot acquired for it (one is free;
        the router picks the backend by the request's prefix group)."""
        claim = self._ready[batch].popleft()
        slot = self.router.acquire(batch.model, claim.prefix_group)
        assert slot is not None, "took no more than the free slots"
        self._queued[batch.model] -= 1
        self._in_flight[batch.model] += 1
        return claim, slot

    def _next(self, model: str) -> tuple[ActiveBatch, Claim, Slot] | None:
        """A slot of ``model`` freed: the next queued request for the task that freed it,
        earliest deadline first; None if none waits, no slot is free or we stop (or the
        batches must be read again first: the claim loop then starts what waits)."""
        if self._stopping or self._stale:
            return None
        for batch in self._active:
            if batch.model == model and self._ready.get(batch):
                if self.router.free(model) <= 0:
                    return None
                claim, slot = self._take(batch)
                self._start_ready(batch)  # more slots free than this one (a pause ended)
                return batch, claim, slot
        return None

    async def _batches(self) -> list[ActiveBatch]:
        now = time.monotonic()
        if now - self._active_loaded > _ACTIVE_REFRESH:
            self._stale = False
            self._active = await self.store.active_batches()
            # A wake() during the read above asks for another: it may have missed the change.
            self._active_loaded = 0.0 if self._stale else now
            self._give_back(set(self._active))
        return self._active

    def _give_back(self, active: set[ActiveBatch]) -> None:
        """Return the queued requests of batches no longer in progress (cancelled, expired):
        a retry outcome with no attempt used puts each back to pending at once."""
        for batch in [b for b in self._ready if b not in active]:
            for claim in self._ready.pop(batch):
                self._queued[batch.model] -= 1
                self.sink.add(_give_back_claim(claim, 0.0))

    def _start(self, batch: ActiveBatch, claim: Claim, slot: Slot) -> None:
        task = asyncio.create_task(self._send(batch, claim, slot))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, batch: ActiveBatch, claim: Claim, slot: Slot) -> None:
        """Send ``claim``, then the next queued requests of its model while a slot is free
        for them (``_next``), each with a slot of its own."""
        work: tuple[ActiveBatch, Claim, Slot] | None = (batch, claim, slot)
        while work is not None:
            batch, claim, slot = work
            meters = self._meters_for(slot.backend.name, batch.model)
            meters.in_flight.inc()
            try:
                outcome = await self._attempt(batch, claim, slot, meters)
            except Exception:
                # Whatever went wrong, the claim must go back: a lease nobody commits would be
                # kept alive by our heartbeat and stall the batch for as long as we run.
                logger.exception("dispatch of %s line %d failed", batch.id, claim.line)
                outcome = _give_back_claim(claim, 1.0)
            finally:
                self.router.release(slot)
                self._in_flight[batch.model] -= 1
                meters.in_flight.dec()
                self._slot_freed.set()
            self.sink.add(outcome)
            if self.on_outcome is not None:
                self.on_outcome(batch, outcome)
            work = self._next(batch.model)

    def _meters_for(self, backend: str, model: str) -> Meters:
        meters = self._meters.get((backend, model))
        if meters is None:
            meters = self._meters[backend, model] = Meters(backend, model)
        return meters

    async def _attempt(
        self, batch: ActiveBatch, claim: Claim, slot: Slot, meters: Meters
    ) -> Outcome:
        try:
            raw = await self.blobs.read_range(batch.input_blob_key, claim.offset, claim.length)
        except errors.StorageError as exc:
            return self._unreadable(claim, exc, meters)
        self._storage_back()
        plan = self.shaping.plan(slot.backend, batch.model, batch.endpoint)
        body = _request_body(raw, plan)
        # With an rpm/tpm budget, wait (holding the slot) until it has room for this request.
        charge = await slot.budget.acquire(body, batch.id) if slot.budget is not None else None
        if slot.capacity() == 0 or slot.held():
            # Our share of a fleet-wide ceiling ran out while the line was read (this worker
            # stalled): another worker may hold the slot now; or a 429 with Retry-After came
            # back for another request meanwhile: nothing goes to the backend before then.
            if charge is not None and slot.budget is not None:
                slot.budget.unsent(charge)
            return _give_back_claim(claim, 0.0)
        meters.dispatched.inc()
        ticket = slot.limiter.sent()
        started = time.monotonic()
        try:
            reply = await slot.backend.send(_backend_path(batch.endpoint), body)
        except Unreachable as exc:
            self._no_answer(slot, ticket, exc)
            outcome = self._unreachable(slot, claim, exc, started)
            meters.count(outcome)
            return plan.recorded(outcome, body)
        latency = time.monotonic() - started
        if slot.health.answered():
            self._slot_freed.set()  # it was down: every slot is free again, not just this one
        meters.latency.observe(latency)
        if reply.status == 429:
            meters.rate_limited.inc()
        if reply.retry_after is not None and reply.status in (429, 503):
            self._pause(slot, reply.retry_after, reply.status)
        outcome = outcomes.from_reply(claim, reply, self.policy, plan.final)
        self._feedback(slot, ticket, charge, reply, outcome, latency)
        meters.count(outcome)
        return plan.recorded(outcome, body)

    def _feedback(
        self,
        slot: Slot,
        ticket: Ticket,
        charge: Charge | None,
        reply: Reply,
        outcome: Outcome,
        latency: float,
    ) -> None:
        """Tell the backend's limiter and budget what came of a request: a latency sample,
        an overload, the tokens it really counted."""
        if reply.status in (429, 503):
            if slot.limiter.overloaded(ticket):
                metrics.CONCURRENCY_CUTS.labels(slot.backend.name).inc()
        elif 200 <= reply.status < 300:
            slot.limiter.answered(ticket, latency, outcome.output_tokens)
        else:
            slot.limiter.done(ticket)
        if charge is None or slot.budget is None:
            return
        if reply.status == 429:
            slot.budget.refused(charge, reply.retry_after)
        else:
            slot.budget.answered(charge, reply.status, outcome.input_tokens, outcome.output_tokens)

    def _no_answer(self, slot: Slot, ticket: Ticket, exc: Unreachable) -> None:
        # A timeout is the backend saying it has too much; a refused connection says nothing
        # of its load (health.py deals with it). The budget keeps its charge: the request may
        # have reached the backend.
        if exc.code == "upstream_timeout":
            if slot.limiter.overloaded(ticket):
                metrics.CONCURRENCY_CUTS.labels(slot.backend.name).inc()
        else:
            slot.limiter.done(ticket)

    def _unreadable(self, claim: Claim, exc: errors.StorageError, meters: Meters) -> Outcome:
        """The object store did not give the line back. For up to ``outage_grace`` seconds of
        failing reads the line waits without spending an attempt, as for a backend outage: a
        short outage of the store costs lines nothing. Past it, attempts count, and a line
        whose bytes are gone for good ends as ``input_unavailable``."""
        metrics.INPUT_READ_FAILURES.inc()
        now = time.monotonic()
        if self._unreadable_since is None:
            self._unreadable_since = now
            logger.warning("cannot read request lines from the input files: %s", exc)
        failing = now - self._unreadable_since
        if failing < self.outage_grace:
            # Tried again sooner at first, then about as often as the outage is long so far.
            return _give_back_claim(claim, min(self.policy.max_delay, 0.5 + failing))
        message = "The request could not be read from the input file."
        outcome = outcomes.from_unreadable_input(claim, message, self.policy)
        meters.count(outcome)  # an attempt spent, though nothing was sent
        return outcome

    def _storage_back(self) -> None:
        if self._unreadable_since is not None:
            outage = time.monotonic() - self._unreadable_since
            logger.warning("request lines can be read again, after %.1f s", outage)
            self._unreadable_since = None

    def _unreachable(self, slot: Slot, claim: Claim, exc: Unreachable, sent_at: float) -> Outcome:
        """No answer. A few in a row and the backend is down, not the line (engine/health.py):
        for up to ``outage_grace`` seconds of outage the line waits for the backend without
        spending an attempt, so that an outage costs lines nothing. Past the grace, attempts
        count again: when the only lines left are ones that always fail, that looks exactly
        like an outage, and they must still end in the error file rather than wait for the
        window to expire.
        """
        health = slot.health
        health.unanswered(exc.message, sent_at)
        if health.up:
            return outcomes.from_unreachable(claim, exc, self.policy)
        if health.down_for() < self.outage_grace:
            # Claimable again at once: the router sends nothing to a paused backend anyway, and
            # a line held back until the pause's end would idle past a probe that found the
            # backend back sooner.
            return _give_back_claim(claim, 0.0)
        return outcomes.from_unreachable(claim, exc, self.policy)

    def _pause(self, slot: Slot, seconds: float, status: int) -> None:
        self.router.pause(slot, seconds)
        name = slot.backend.name
        metrics.PAUSES.labels(name).inc()
        metrics.PAUSE_SECONDS.labels(name).inc(seconds)
        logger.info(
            "backend %s paused for %.1fs (HTTP %d, Retry-After)",
            name,
            seconds,
            status,
            extra={"action": "backend_pause", "backend": name, "seconds": seconds},
        )

    def backend_changed(self, name: str, up: bool) -> None:
        """The health monitor saw a backend go down or come back: look again at once."""
        self._slot_freed.set()
        self._wake.set()

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for requests in flight, then cancel the rest
        (their leases are released by the caller, so they run again after a restart)."""
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)


class Meters:
    """The labelled metric children of one (backend, model), looked up once, not per request.

    ``count`` is called for each answer or silence of a request that was sent, and for a line
    whose input could not be read once that costs it an attempt; a claim given back unsent (its
    slot held by a Retry-After meanwhile, the store briefly unreadable) counts nowhere, so
    that every attempt sent is one of succeeded, failed or retried.
    """

    def __init__(self, backend: str, model: str) -> None:
        self.backend, self.model = backend, model
        self.dispatched = metrics.DISPATCHED.labels(backend, model)
        self.latency = metrics.LATENCY.labels(backend, model)
        self.in_flight = metrics.IN_FLIGHT.labels(backend)
        self.rate_limited = metrics.RATE_LIMITED.labels(backend)
        self.succeeded = metrics.SUCCEEDED.labels(backend, model)
        self.tokens_in = metrics.TOKENS.labels(model, "input")
        self.tokens_out = metrics.TOKENS.labels(model, "output")

    def count(self, outcome: Outcome) -> None:
        if outcome.kind == SUCCEEDED:
            self.succeeded.inc()
            self.tokens_in.inc(outcome.input_tokens)
            self.tokens_out.inc(outcome.output_tokens)
            return
        family = metrics.RETRIED if outcome.kind == RETRY else metrics.FAILED
        family.labels(self.backend, self.model, metrics.status_class(outcome.status_code)).inc()
        if outcome.kind == FAILED and outcome.attempts > 1:
            logger.warning(
                "batch %s line %d failed after %d attempts: %s",
                outcome.batch_id,
                outcome.line,
                outcome.attempts,
                outcome.error_code,
                extra={"action": "retries_exhausted", "batch_id": outcome.batch_id},
            )


def _give_back_claim(claim: Claim, wait: float) -> Outcome:
    """Back to pending after ``wait`` seconds, without spending an attempt."""
    return Outcome(
        claim.batch_id,
        claim.line,
        claim.epoch,
        RETRY,
        custom_id=claim.custom_id,
        attempts=claim.attempts,
        not_before=time.time() + wait,
    )


def _request_body(raw: bytes, plan: Plan) -> bytes:
    line = orjson.loads(raw)
    body = line["body"]
    if body.get("model") != plan.model:
        body["model"] = plan.model  # the backend may know the model by another name
    plan.shape(body)  # defaults, overrides, the backend's dialect (backends/shaping.py)
    return orjson.dumps(body)


def _backend_path(endpoint: str) -> str:
    # Backends are configured with a base URL ending in /v1, as the openai SDK expects.
    return endpoint.removeprefix("/v1")
