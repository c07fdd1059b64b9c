"""The engine's stepping logic: pure and synchronous, driven by a model clock it is handed.

A step, as vLLM V1's scheduler does it:

1. every running sequence (oldest first) gets room for one more token's KV; when no block is
   free, the most recently admitted running sequence is preempted (its blocks freed, itself put
   back at the head of the queue, to be recomputed later) until there is room;
2. unless something was preempted, waiting requests that have arrived by the step's start are
   admitted first come first served, while fewer than ``max_seqs`` run and the blocks their
   prompt needs beyond its cached prefix can be had (the head of the queue blocks the rest);
3. the step costs ``step_fixed_ms`` + ``step_per_seq_ms`` per sequence in it + the uncached
   prompt tokens of the admitted requests at ``prefill_tokens_per_s`` (a whole prompt is
   computed in the step that admits it);
4. every sequence in the step gets one output token; one that has ``max_tokens`` finishes
   and frees its blocks (its full prompt blocks stay cached until evicted).

The shell (``server``) calls ``step()`` once the real clock has reached ``next_step_at()``; tests
call it directly. Nothing here reads a clock.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from lowtide.testing.engine_sim.blocks import Block, BlockPool
from lowtide.testing.engine_sim.config import EngineConfig
from lowtide.testing.engine_sim.tokens import block_keys


@dataclass(slots=True, eq=False)
class Seq:
    """One request, from its arrival to its last token (times in model seconds)."""

    arrival: float
    prompt_len: int
    keys: tuple[int, ...]  # keys of the prompt's full blocks
    max_tokens: int
    tag: str = "default"
    budget_tokens: int = 0  # what the rpm/tpm budget charged for it
    rid: int = 0
    output: int = 0
    blocks: list[Block] = field(default_factory=list)
    cached_tokens: int | None = None  # prompt tokens found cached at its first admission
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    preemptions: int = 0

    @classmethod
    def of(
        cls,
        tokens: tuple[int, ...],
        max_tokens: int,
        arrival: float,
        block_size: int,
        *,
        tag: str = "default",
        budget_tokens: int = 0,
    ) -> Seq:
        keys = block_keys(tokens, block_size)
        return cls(arrival, len(tokens), keys, max_tokens, tag=tag, budget_tokens=budget_tokens)


@dataclass(frozen=True, slots=True)
class StepResult:
    start: float
    duration: float
    running: int  # sequences that got a token in this step
    admitted: int
    prefill_tokens: int
    preempted: int
    finished: list[Seq]

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(slots=True)
class Counters:
    steps: int = 0
    busy_s: float = 0.0  # model seconds spent in steps
    seq_s: float = 0.0  # running sequences x step seconds: busy_s x the mean batch
    admitted: int = 0
    finished: int = 0
    aborted: int = 0
    preemptions: int = 0
    prompt_tokens: int = 0
    prefill_tokens: int = 0  # prompt tokens computed (recomputations included)
    generation_tokens: int = 0
    prefix_queries: int = 0  # tokens looked up in the prefix cache (vLLM's definition)
    prefix_hits: int = 0  # of which found cached
    peak_running: int = 0
    # The most requests left waiting by a step although they had arrived by its start.
    peak_waiting: int = 0


class EngineCore:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.pool = BlockPool(config.num_blocks)
        self.waiting: deque[Seq] = deque()
        self.running: list[Seq] = []
        self.time = 0.0  # the end of the last step
        self.counters = Counters()
        self._ids = itertools.count(1)
        self._evicted_at_reset = 0

    # -- state

    @property
    def evicted_blocks(self) -> int:
        return self.pool.evicted - self._evicted_at_reset

    def idle(self) -> bool:
        return not self.running and not self.waiting

    def next_step_at(self) -> float | None:
        """When the next step starts (model s), or None with nothing to do."""
        if self.running:
            return self.time
        if self.waiting:
            return max(self.time, self.waiting[0].arrival)
        return None

    # -- requests

    def add(self, seq: Seq) -> Seq:
        """Queue a request; its ``arrival`` must not be earlier than the last one's."""
        if self.waiting and seq.arrival < self.waiting[-1].arrival:
            raise ValueError("requests must be added in the order of their arrival")
        seq.rid = next(self._ids)
        self.waiting.append(seq)
        return seq

    def abort(self, seq: Seq) -> None:
        """Drop a request whose client went away (vLLM aborts it too)."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.running:
            self.running.remove(seq)
            self.pool.release(seq.blocks)
            seq.blocks = []
        else:
            return
        self.counters.aborted += 1

    def reset(self, *, cache: bool = False) -> None:
        """Zero the counters; with ``cache``, also empty the KV cache (only when idle)."""
        if cache:
            if not self.idle():
                raise RuntimeError("the cache can only be emptied while nothing runs or waits")
            self.pool = BlockPool(self.config.num_blocks)
        self.counters = Counters(peak_running=len(self.running))
        self._evicted_at_reset = self.pool.evicted

    # -- the step

    def step(self) -> StepResult:
        start = self.next_step_at()
        if start is None:
            raise RuntimeError("step() with nothing running or waiting")
        preempted = self._grow_running()
        admitted, prefill = (0, 0) if preempted else self._admit(start)
        batch = len(self.running)
        if batch == 0:
            raise RuntimeError("a step with no sequence to run")  # every request fits: see config
        duration = self.config.step_seconds(batch, prefill)
        end = start + duration
        finished = self._emit_tokens(end)
        self.time = end
        c = self.counters
        c.steps += 1
        c.busy_s += duration
        c.seq_s += batch * duration
        c.prefill_tokens += prefill
        c.generation_tokens += batch
        c.peak_running = max(c.peak_running, batch)
        c.peak_waiting = max(c.peak_waiting, self._left_waiting(start))
        return StepResult(start, duration, batch, admitted, prefill, preempted, finished)

    def _left_waiting(self, start: float) -> int:
        """Requests that had arrived by the step's start and still wait after it: those the
        engine had no room for (not those that merely arrived while the step was computed)."""
        n = 0
        for seq in self.waiting:
            if seq.arrival > start:
                break
            n += 1
        return n

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.config.block_size)

    def _grow_running(self) -> int:
        """Room for one more token's KV for each running sequence; preemptions it took."""
        preempted = 0
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            need = self._blocks_for(seq.prompt_len + seq.output) - len(seq.blocks)
            while need > 0 and not self.pool.can_allocate(need):
                victim = self.running.pop()  # the most recently admitted
                self._preempt(victim)
                preempted += 1
                if victim is seq:
                    return preempted
            if need > 0:
                seq.blocks += self.pool.allocate(need)
            i += 1
        return preempted

    def _preempt(self, seq: Seq) -> None:
        # vLLM V1 recomputes a preempted request: it keeps its output so far, and computes
        # its prompt and that output again (from its cached prefix) when next admitted.
        self.pool.release(seq.blocks)
        seq.blocks = []
        seq.preemptions += 1
        self.counters.preemptions += 1
        self.waiting.appendleft(seq)

    def _admit(self, start: float) -> tuple[int, int]:
        """Admit waiting requests FCFS; returns (admitted, uncached prompt tokens)."""
        admitted = prefill = 0
        bs = self.config.block_size
        while (
            self.waiting
            and len(self.running) < self.config.max_seqs
            and self.waiting[0].arrival <= start
        ):
            seq = self.waiting[0]
            tokens = seq.prompt_len + seq.output
            # vLLM computes the last prompt token even when it is cached: it needs its logits.
            hits = self.pool.cached_prefix(seq.keys[: (seq.prompt_len - 1) // bs])
            new = self._blocks_for(tokens) - len(hits)
            if not self.pool.can_allocate(new, hits):
                break
            self.waiting.popleft()
            self.pool.take(hits)
            seq.blocks = hits + self.pool.allocate(new)
            for block, key in zip(seq.blocks[len(hits) :], seq.keys[len(hits) :], strict=False):
                self.pool.register(block, key)
            hit_tokens = len(hits) * bs
            if seq.admitted_at is None:
                seq.admitted_at = start
                seq.cached_tokens = hit_tokens
                self.counters.admitted += 1
                self.counters.prompt_tokens += seq.prompt_len
            self.counters.prefix_queries += tokens
            self.counters.prefix_hits += hit_tokens
            self.running.append(seq)
            admitted += 1
            prefill += tokens - hit_tokens
        return admitted, prefill

    def _emit_tokens(self, end: float) -> list[Seq]:
        finished: list[Seq] = []
        still: list[Seq] = []
        for seq in self.running:
            seq.output += 1
            if seq.first_token_at is None:
                seq.first_token_at = end
            if seq.output >= seq.max_tokens:
                seq.finished_at = end
                self.pool.release(seq.blocks)
                seq.blocks = []
                finished.append(seq)
            else:
                still.append(seq)
        self.running = still
        self.counters.finished += len(finished)
        return finished
