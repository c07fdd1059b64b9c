"""Use cases of the Files API: upload (streamed), retrieve, list, download, delete."""

from __future__ import annotations

import codecs
import hashlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from lowtide import errors
from lowtide.blobs import BlobStore
from lowtide.domain import ids
from lowtide.domain.accounts import FILE_KIND, IdempotencyClaim, IdempotencyRecord
from lowtide.domain.records import BatchFilter, FileRecord, JsonDict
from lowtide.domain.status import Status
from lowtide.service.idempotency import TTL_SECONDS, Attempt, check_key
from lowtide.settings import Settings
from lowtide.store import Store, rows

UPLOAD_PURPOSES = frozenset(
    {"batch", "assistants", "fine-tune", "vision", "user_data", "evals", "file-extract"}
)
_MAX_FILENAME = 255
EXPIRY_SECONDS = (3600, 30 * 86400)  # least, most: an upload's expires_after[seconds]


class Upload(Protocol):
    """An upload as the API parsed it: the file's bytes as a stream, then the form fields.

    ``fields``, ``filename`` and ``has_file`` are complete only once ``chunks`` has been
    consumed, because a client may send the ``purpose`` field after the file.
    """

    chunks: AsyncIterator[bytes]
    fields: dict[str, str]
    filename: str | None
    has_file: bool


class _Digest(Protocol):
    """A ``hashlib`` hash object."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


class FileService:
    def __init__(self, settings: Settings, store: Store, blobs: BlobStore) -> None:
        self.settings, self.store, self.blobs = settings, store, blobs

    async def upload(self, account: str, upload: Upload) -> FileRecord:
        record, _ = await self._receive(account, upload, None)
        await self._insert(record, None)
        return record

    async def upload_idempotent(
        self, account: str, upload: Upload, idempotency_key: str | None
    ) -> JsonDict:
        """``POST /files``: ``upload``, once per ``Idempotency-Key``; the answer is the file
        object. The upload's parameters (its bytes among them) are known only once the body
        is read, so a retry is read through too, hashed, and compared."""
        key = check_key(idempotency_key)
        if key is None:
            return (await self.upload(account, upload)).to_api()
        since = int(time.time()) - TTL_SECONDS
        held = await self.store.find_idempotency(account, FILE_KIND, key, since)
        if held is not None:
            params = await self._hash_only(upload)
            return Attempt.start(account, FILE_KIND, key, params).replay(held)
        record, params = await self._receive(account, upload, hashlib.sha256())
        attempt = Attempt.start(account, FILE_KIND, key, params)
        response = record.to_api()
        held = await self._insert(record, attempt.claim(response))
        if held is not None:  # a retry running at the same time got there first
            await self.blobs.delete(record.blob_key)
            return attempt.replay(held)
        return response

    async def _receive(
        self, account: str, upload: Upload, digest: _Digest | None
    ) -> tuple[FileRecord, JsonDict]:
        """Store the upload's bytes (fed to ``digest`` too, when given); returns the record
        to insert and the parameters an idempotency key is compared on."""
        room = await self._room(account)
        file_id = ids.new_input_file_id()
        key = rows.input_blob_key(file_id)
        async with self.blobs.writer(key) as writer:
            write = writer.write if digest is None else _feeding(digest, writer.write)
            utf8 = await _copy_checked(upload.chunks, write, self._max_bytes(), room)
            purpose, filename, expires = self._check_fields(upload, utf8)
            size = writer.size
        now = int(time.time())
        record = FileRecord(
            id=file_id,
            account=account,
            purpose=purpose,
            filename=filename,
            bytes=size,
            created_at=now,
            blob_key=key,
            expires_at=now + expires if expires else None,
        )
        return record, _upload_params(purpose, filename, expires, digest)

    async def _hash_only(self, upload: Upload) -> JsonDict:
        """Read a retried upload without storing it: the parameters to compare."""
        sha256 = hashlib.sha256()

        async def update(chunk: bytes) -> None:
            sha256.update(chunk)

        # Nothing is stored, so the account's quota does not apply (a retry must not fail
        # for want of room the first upload already took).
        utf8 = await _copy_checked(upload.chunks, update, self._max_bytes(), sys.maxsize)
        purpose, filename, expires = self._check_fields(upload, utf8)
        return _upload_params(purpose, filename, expires, sha256)

    async def _insert(
        self, record: FileRecord, claim: IdempotencyClaim | None
    ) -> IdempotencyRecord | None:
        try:
            return await self.store.create_file(record, claim)
        except BaseException:
            await self.blobs.delete(record.blob_key)
            raise

    async def _room(self, account: str) -> int:
        """Bytes the account may still store; refuses at once when its file count is full.

        Two uploads running at the same time may both fit alone and overshoot together by
        at most one file: quotas bound storage, they are not a billing ledger.
        """
        limits = self.settings.limits_for(account)
        count, used = await self.store.file_usage(account)
        if count >= limits.max_files:
            raise errors.QuotaExceeded(
                f"Upload file number exceed limit: the account keeps {count} files, "
                f"the quota is {limits.max_files}. Delete files to make room.",
                param="file",
            )
        return max(0, limits.max_bytes - used)

    def _max_bytes(self) -> int:
        return self.settings.limits.max_file_bytes

    def _check_fields(self, upload: Upload, utf8: bool) -> tuple[str, str, int | None]:
        if not upload.has_file:
            raise errors.InvalidRequest(
                "Missing required parameter: 'file'.",
                param="file",
                code="missing_required_parameter",
            )
        purpose = upload.fields.get("purpose")
        if not purpose:
            raise errors.InvalidRequest(
                "Missing required parameter: 'purpose'.",
                param="purpose",
                code="missing_required_parameter",
            )
        if purpose not in UPLOAD_PURPOSES:
            raise errors.InvalidValue(
                f"Invalid value: '{purpose}'. Supported values are: "
                + ", ".join(f"'{p}'" for p in sorted(UPLOAD_PURPOSES))
                + ".",
                param="purpose",
            )
        if purpose == "batch" and not utf8:
            raise errors.InvalidRequest(
                "Invalid file for Batch API. Must be utf-8 encoded", param="file"
            )
        return purpose, _clean_filename(upload.filename), _expiry(upload.fields)

    async def get(self, account: str, file_id: str) -> FileRecord:
        record = (
            await self.store.get_file(account, file_id) if ids.is_well_formed(file_id) else None
        )
        if record is None:
            raise errors.NotFound(f"No such File object: {file_id}", param="id")
        return record

    async def list(
        self, account: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> tuple[list[FileRecord], bool]:
        """One page of files, and whether there are more."""
        if order not in ("asc", "desc"):
            raise errors.InvalidValue(
                "Invalid value for 'order': expected 'asc' or 'desc'.", param="order"
            )
        if not 1 <= limit <= 10_000:
            raise errors.InvalidValue("'limit' must be between 1 and 10000.", param="limit")
        found = await self.store.list_files(
            account, purpose=purpose, after=after, limit=limit + 1, order=order
        )
        return found[:limit], len(found) > limit

    async def content(self, account: str, file_id: str) -> tuple[FileRecord, AsyncIterator[bytes]]:
        record = await self.get(account, file_id)
        # Open the stream now so that a missing blob is an error before any byte is sent.
        if not await self.blobs.exists(record.blob_key):
            raise errors.NotFound(
                f"The content of file {file_id} is no longer available.", param="id"
            )
        return record, self.blobs.stream(record.blob_key)

    async def delete(self, account: str, file_id: str) -> FileRecord:
        record = await self.get(account, file_id)
        deleted = await self.store.delete_file(account, file_id)
        if deleted is None:
            raise errors.NotFound(f"No such File object: {file_id}", param="id")
        # The store queued the bytes for deletion with the row. An input file of a batch that
        # is still validating or running keeps them (the engine reads request bodies from it):
        # the retention sweeper deletes them once the batch ends. Otherwise they go now.
        if not await self._in_use(account, file_id):
            await self.blobs.delete(record.blob_key)
            await self.store.forget_blob_deletions([record.blob_key])
        return record

    async def _in_use(self, account: str, file_id: str) -> bool:
        live = (Status.VALIDATING, Status.IN_PROGRESS, Status.CANCELLING, Status.FINALIZING)
        found = await self.store.list_batches(
            account, BatchFilter(statuses=live, input_file_ids=(file_id,)), after=None, limit=1
        )
        return bool(found)


def _feeding(
    digest: _Digest, write: Callable[[bytes], Awaitable[None]]
) -> Callable[[bytes], Awaitable[None]]:
    """``write``, feeding ``digest`` on the way (SHA-256 runs at more than 1 GB/s: an upload
    hashed while it streams costs a small fraction of receiving it)."""

    async def hashing_write(chunk: bytes) -> None:
        digest.update(chunk)
        await write(chunk)

    return hashing_write


def _upload_params(
    purpose: str, filename: str, expires: int | None, digest: _Digest | None
) -> JsonDict:
    """What an idempotency key is compared on: the bytes (by digest) and the form fields."""
    return {
        "sha256": digest.hexdigest() if digest is not None else None,
        "purpose": purpose,
        "filename": filename,
        "expires_after": expires,
    }


async def _copy_checked(
    chunks: AsyncIterator[bytes],
    write: Callable[[bytes], Awaitable[None]],
    max_bytes: int,
    room: int,
) -> bool:
    """Copy the upload to storage, refusing it past ``max_bytes`` or past the account's
    ``room``; True if it is UTF-8."""
    check, size = Utf8Check(), 0
    async for chunk in chunks:
        size += len(chunk)
        if size > room:
            raise errors.QuotaExceeded(
                "Upload file capacity exceed limit: this file does not fit in the account's "
                f"storage quota ({room} bytes left). Delete files to make room.",
                param="file",
            )
        if size > max_bytes:
            raise errors.PayloadTooLarge(
                f"The file exceeds the maximum size of {max_bytes} bytes.", param="file"
            )
        check.feed(chunk)
        await write(chunk)
    return check.finish()


class Utf8Check:
    """Whether a stream of chunks is UTF-8, a character being free to straddle two chunks.

    Checking is the biggest CPU cost of an upload after the copies themselves, so it avoids
    Python-level work: an ASCII chunk is recognised at C speed (``bytes.isascii``), and any
    other is decoded in slices by ``codecs.utf_8_decode`` straight from a memoryview (the
    incremental decoder of ``codecs`` copies each input once more, in Python). A slice of
    16 KiB keeps the decoded text in the CPU cache.
    """

    _SLICE = 16384

    def __init__(self) -> None:
        self.ok = True
        #: The start of a character cut by the end of the previous chunk (at most 3 bytes).
        self._carry = b""

    def feed(self, chunk: bytes) -> None:
        if not self.ok or (not self._carry and chunk.isascii()):
            return
        try:
            self._decode(chunk)
        except UnicodeDecodeError:
            self.ok = False

    def finish(self) -> bool:
        """True if every chunk was UTF-8 and the last one did not end inside a character."""
        return self.ok and not self._carry

    def _decode(self, chunk: bytes) -> None:
        view, start = memoryview(chunk), 0
        if self._carry:
            start = self._complete_carry(view)
        end = len(view)
        while start < end:
            stop = min(start + self._SLICE, end)
            # With final=False a character cut at ``stop`` is left unread, not an error: the
            # next slice starts at it (or, at the end of the chunk, it is carried over).
            _, used = codecs.utf_8_decode(view[start:stop], "strict", False)
            if stop == end:
                self._carry = bytes(view[start + used :])
                return
            start += used

    def _complete_carry(self, view: memoryview) -> int:
        """Decode the carried bytes with the head of ``view``; returns where ``view``'s own
        characters start."""
        carried = len(self._carry)
        head = self._carry + bytes(view[:3])  # a character is at most 4 bytes long
        _, used = codecs.utf_8_decode(head, "strict", False)
        if used < carried:  # still cut short: ``view`` is under 3 bytes long
            self._carry = head
            return len(view)
        self._carry = b""
        return used - carried


def _clean_filename(name: str | None) -> str:
    # The name is only ever shown back to the user; it never names anything on disk.
    base = (name or "upload.jsonl").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable())
    return base[:_MAX_FILENAME] or "upload.jsonl"


def _expiry(fields: dict[str, str]) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise errors.InvalidValue(
            "expires_after[anchor] must be 'created_at'.", param="expires_after.anchor"
        )
    try:
        value = int(seconds or "")
    except ValueError:
        value = -1
    low, high = EXPIRY_SECONDS
    if not low <= value <= high:
        raise errors.InvalidValue(
            f"expires_after[seconds] must be between {low} and {high}.",
            param="expires_after.seconds",
        )
    return value
