"""The KV cache as vLLM's block pool: fixed-size blocks, a prefix cache by block key, LRU.

Every block is either held by running sequences (``ref`` > 0) or free. Free blocks sit in one
queue, least recently freed first; a free block may still hold a cached prompt block (it keeps
its key), and a request whose prompt starts with cached keys takes those blocks back instead of
computing them again. A new block is always taken from the head of the free queue: if that
block held a cached key, the key is evicted. Blocks of running sequences are never evicted.

A finished (or preempted) sequence frees its blocks in reverse order, as vLLM does, so that
the end of a prompt is evicted before its start, which more requests share.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True, eq=False)
class Block:
    id: int
    key: int | None = None  # set while the block holds a cached prompt block
    ref: int = 0  # running sequences holding it


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.num_blocks = num_blocks
        self._free: OrderedDict[int, Block] = OrderedDict((i, Block(i)) for i in range(num_blocks))
        self._cached: dict[int, Block] = {}
        self.evicted = 0  # cached blocks whose key was dropped to make room

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def cached_blocks(self) -> int:
        return len(self._cached)

    def usage(self) -> float:
        """The share of blocks held by running sequences (vLLM's kv_cache_usage_perc)."""
        return 1.0 - len(self._free) / self.num_blocks

    def cached_prefix(self, keys: Sequence[int]) -> list[Block]:
        """The blocks of the longest run of ``keys``, from the first, that is cached."""
        hits: list[Block] = []
        for key in keys:
            block = self._cached.get(key)
            if block is None:
                break
            hits.append(block)
        return hits

    def can_allocate(self, new: int, hits: Sequence[Block] = ()) -> bool:
        """Whether ``new`` fresh blocks can be had after taking ``hits`` (which may be free
        blocks themselves: taking them leaves fewer to allocate from)."""
        free_hits = sum(1 for block in hits if block.ref == 0)
        return new + free_hits <= len(self._free)

    def take(self, hits: Sequence[Block]) -> None:
        """Hold cached blocks for a sequence that reuses them."""
        for block in hits:
            if block.ref == 0:
                del self._free[block.id]
            block.ref += 1

    def allocate(self, n: int) -> list[Block]:
        """``n`` fresh blocks from the head of the free queue, evicting what they cached."""
        if n > len(self._free):
            raise RuntimeError(f"asked for {n} blocks with {len(self._free)} free")
        out = []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            if block.key is not None:
                del self._cached[block.key]
                block.key = None
                self.evicted += 1
            block.ref = 1
            out.append(block)
        return out

    def register(self, block: Block, key: int) -> None:
        """Cache a computed prompt block under its key (unless another block has it already:
        two requests that computed the same block in one step keep one copy cached)."""
        if key not in self._cached and block.key is None:
            block.key = key
            self._cached[key] = block

    def release(self, blocks: Sequence[Block]) -> None:
        """A sequence gives its blocks back; those no one else holds join the free queue."""
        for block in reversed(blocks):
            block.ref -= 1
            if block.ref == 0:
                self._free[block.id] = block
