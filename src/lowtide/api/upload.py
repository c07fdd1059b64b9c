"""Streaming multipart parsing for ``POST /files``.

Starlette's ``request.form()`` spools the whole upload to a temporary file before the route
runs; for a 500 MB file that is a second full copy on disk. Here the body is parsed as it
arrives and the ``file`` part's bytes are handed straight to the blob writer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from lowtide import errors

_MAX_FIELD = 64 * 1024  # bytes of a non-file form field


class MultipartUpload:
    """An ``Upload`` (see ``lowtide.service.files``) fed by the parser's callbacks: file bytes
    are queued for ``chunks``, small fields are kept."""

    chunks: AsyncIterator[bytes]

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.has_file = False
        #: The closing boundary was seen: without it the body was cut short.
        self.complete = False
        self.file_data: list[bytes] = []
        #: The chunk given to the parser, and whether the file's data it held ran to its very
        #: end (then the parser holds nothing back): see ``_file_chunks``.
        self.parsing = b""
        self.data_to_end = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._field_value = bytearray()
        self._name: str | None = None
        self._in_file = False

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _end(self) -> None:
        self.complete = True

    def _part_begin(self) -> None:
        self._disposition, self._name, self._in_file = b"", None, False
        self._field_value.clear()

    def _header_end(self) -> None:
        if bytes(self._header_field).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._name = name
        if name == "file":
            if self.has_file:
                raise errors.InvalidRequest("Only one 'file' part may be sent.", param="file")
            self.has_file, self._in_file = True, True
            raw = options.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw is not None else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.file_data.append(bytes(data[start:end]))
            self.data_to_end = data is self.parsing and end == len(data)
            return
        self._field_value.extend(data[start:end])
        if len(self._field_value) > _MAX_FIELD:
            raise errors.PayloadTooLarge(
                f"Form field '{self._name}' is too large.", param=self._name, code="field_too_large"
            )

    def _part_end(self) -> None:
        self.data_to_end = False
        if self._name and not self._in_file:
            self.fields[self._name] = self._field_value.decode("utf-8", "replace")


def parse_upload(request: Request, max_bytes: int) -> MultipartUpload:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise errors.UnsupportedMediaType(
            "Files must be uploaded as multipart/form-data with a 'file' part."
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise errors.InvalidRequest("The multipart body has no boundary.")
    _refuse_oversized(request, max_bytes)
    upload = MultipartUpload()
    parser = MultipartParser(boundary, upload.callbacks())  # type: ignore[arg-type]
    upload.chunks = _file_chunks(request, parser, upload)
    return upload


def _refuse_oversized(request: Request, max_bytes: int) -> None:
    # 413 before reading the body, when the client says how big it is. The multipart
    # envelope adds a little; 1 MiB of slack covers it.
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + (1 << 20):
        raise errors.PayloadTooLarge(
            f"The file exceeds the maximum size of {max_bytes} bytes.", param="file"
        )


async def _file_chunks(
    request: Request, parser: MultipartParser, parts: MultipartUpload
) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if parts.data_to_end and chunk.find(b"\r") < 0:
                # The parser holds nothing back (the file's data ran to the very end of the
                # last chunk: no delimiter was begun) and every delimiter starts with CR, so
                # all of this chunk is the file's. One memchr, in place of the parser's
                # search for the delimiter and its callbacks: a tenth of the server's CPU
                # per upload. (A file with CRs in it is parsed as before.)
                yield chunk
                continue
            parts.parsing, parts.data_to_end = chunk, False
            parser.write(chunk)
            parts.parsing = b""  # not kept: a long-lived buffer in the heap costs page faults
            if parts.file_data:
                data, parts.file_data = parts.file_data, []
                yield b"".join(data)
        parser.finalize()
    except MultipartParseError as exc:
        raise errors.InvalidRequest(f"The multipart body is malformed: {exc}.") from exc
    except ClientDisconnect as exc:
        raise errors.InvalidRequest("The client closed the connection during the upload.") from exc
    if not parts.complete:
        raise errors.InvalidRequest(
            "The multipart body is truncated: its closing boundary is missing."
        )
    if parts.file_data:
        yield b"".join(parts.file_data)
        parts.file_data = []
