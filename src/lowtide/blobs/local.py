"""File bytes in a local directory.

A blob is written to ``.tmp/`` and renamed into place after an fsync, so a reader sees a whole
blob or none (design invariant 3). Keys come from ids (``[A-Za-z0-9_-]`` and ``/``), and are
checked again here so that no key can ever point outside the root.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from lowtide import errors

_KEY_RE = re.compile(r"[A-Za-z0-9_\-]+(/[A-Za-z0-9_.\-]+)*")
_OPEN_FILES = 64  # input files kept open for range reads while batches dispatch
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
#: Bytes written between two background flushes of a blob being written (see ``_LocalWriter``).
WRITEBACK_EVERY = 32 * 1024 * 1024
# Background flushes only wait on the disk, so a couple of threads serve every writer; a
# writer has at most one flush queued or running at a time.
_WRITEBACK = ThreadPoolExecutor(max_workers=2, thread_name_prefix="blob-writeback")


class _LocalWriter:
    """Writes a blob's bytes to its temporary file.

    Writes land in the page cache; the disk gets them when the blob is published, whose fsync
    would then wait for all of them at once (a fifth of a 500 MB upload). So every
    ``WRITEBACK_EVERY`` bytes an ``fdatasync`` is started in a background thread, not awaited:
    the disk writes while more bytes arrive, and the final fsync has only the tail left. It
    does not replace that fsync: a blob is published only once the whole file is on disk.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._size = 0
        self._flushed_at = 0  # ``size`` when the last background flush started
        self._flush: Future[None] | None = None

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                # Writes land in the page cache and take microseconds; the fsync that can
                # block is done off the event loop when the blob is published.
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            raise _storage_error(exc) from exc
        self._grew(len(data))

    async def writelines(self, lines: Sequence[bytes]) -> None:
        # One writev per _IOV_MAX lines: they go from the store's buffers to the page cache
        # without being joined into one bytes object first (a copy of the whole file, a
        # sixth of finalising a batch before this).
        for start in range(0, len(lines), _IOV_MAX):
            chunk = lines[start : start + _IOV_MAX]
            try:
                written = os.writev(self._fd, chunk)
            except OSError as exc:
                raise _storage_error(exc) from exc
            self._grew(written)
            expected = sum(map(len, chunk))
            if written < expected:  # a short write (a signal, a disk filling up): finish it
                await self.write(b"".join(chunk)[written:])

    @property
    def size(self) -> int:
        return self._size

    def _grew(self, written: int) -> None:
        self._size += written
        if self._size - self._flushed_at < WRITEBACK_EVERY:
            return
        if self._flush is not None:
            if not self._flush.done():
                return  # the disk is still busy with the previous flush: no queue of them
            self._check_flush(self._flush)
        self._flushed_at = self._size
        self._flush = _WRITEBACK.submit(os.fdatasync, self._fd)

    async def flushed(self) -> None:
        """Wait for the background flush, raising its error: the kernel reports a failed
        write-back to one fsync only, which may be that flush and not the final one."""
        if self._flush is not None:
            if not self._flush.done():
                with contextlib.suppress(OSError):  # raised as a storage error just below
                    await asyncio.wrap_future(self._flush)
            self._check_flush(self._flush)

    @staticmethod
    def _check_flush(flush: Future[None]) -> None:
        exc = flush.exception()
        if isinstance(exc, OSError):
            raise _storage_error(exc) from exc
        if exc is not None:
            raise exc

    def close(self) -> None:
        """Close the file once no flush uses its descriptor any more (a descriptor closed
        under a running flush could be reused for another file before it ends)."""
        if self._flush is None or self._flush.done():
            _close_quietly(self._fd)
        else:
            fd = self._fd
            self._flush.add_done_callback(lambda _: _close_quietly(fd))


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._tmp = self.root / ".tmp"
        self._fds: OrderedDict[str, int] = OrderedDict()

    async def open(self) -> None:
        self._tmp.mkdir(parents=True, exist_ok=True)
        # Temporary files left by a crash were never published: nothing refers to them.
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)

    async def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    async def ping(self) -> None:
        if not self._tmp.is_dir():
            raise errors.StorageError(f"storage directory {self.root} is not reachable")

    def _path(self, key: str) -> Path:
        if not _KEY_RE.fullmatch(key) or ".." in key:
            raise errors.StorageError(f"invalid blob key {key!r}")
        return self.root / key

    @asynccontextmanager
    async def writer(self, key: str) -> AsyncIterator[_LocalWriter]:
        final = self._path(key)
        tmp = self._tmp / f"{secrets.token_hex(8)}.part"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise _storage_error(exc) from exc
        writer = _LocalWriter(fd)
        try:
            yield writer
            await writer.flushed()
            await asyncio.to_thread(_publish, fd, tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            writer.close()
        self._forget_fd(key)

    async def read_range(self, key: str, offset: int, length: int) -> bytes:
        fd = self._fd_for(key)
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise errors.StorageError(f"blob {key} is shorter than expected")
        return data

    def _fd_for(self, key: str) -> int:
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
            return fd
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError as exc:
            raise errors.StorageError(f"blob {key} is missing") from exc
        self._fds[key] = fd
        if len(self._fds) > _OPEN_FILES:
            _, oldest = self._fds.popitem(last=False)
            os.close(oldest)
        return fd

    def _forget_fd(self, key: str) -> None:
        fd = self._fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    async def stream(self, key: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        try:
            fh = await asyncio.to_thread(open, self._path(key), "rb")
        except FileNotFoundError as exc:
            raise errors.StorageError(f"blob {key} is missing") from exc
        try:
            while chunk := await asyncio.to_thread(fh.read, chunk_size):
                yield chunk
        finally:
            fh.close()

    async def delete(self, key: str) -> None:
        # Open descriptors keep the bytes readable for range reads already under way (POSIX
        # unlink semantics), so deleting an input file does not break a running batch.
        self._path(key).unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        return self._path(key).exists()


def _publish(fd: int, tmp: Path, final: Path) -> None:
    try:
        os.fsync(fd)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise _storage_error(exc) from exc


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _storage_error(exc: OSError) -> errors.StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return errors.StorageFull()
    return errors.StorageError(f"storage failed: {exc.strerror}")
