"""The file-bytes port. Keys are built by lowtide from ids, never from user input."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class BlobWriter(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def writelines(self, lines: Sequence[bytes]) -> None:
        """Write the parts one after the other, without first joining them into one copy."""

    @property
    def size(self) -> int: ...


class BlobStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise if the storage cannot be reached."""

    def writer(self, key: str) -> AbstractAsyncContextManager[BlobWriter]:
        """Write a blob; it is published atomically when the block exits cleanly,
        and nothing of it is visible if the block raises."""

    async def read_range(self, key: str, offset: int, length: int) -> bytes: ...

    def stream(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]: ...

    async def delete(self, key: str) -> None: ...

    async def exists(self, key: str) -> bool: ...
