"""The streaming multipart parser of ``POST /files`` (``lowtide.api.upload``), fed through a
real Starlette request in chunks cut anywhere: the file's bytes come out whole and in order,
whether a chunk goes through the parser or, holding no CR, straight to the file."""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest
from starlette.requests import Request
from starlette.types import Message

from lowtide import errors
from lowtide.api.upload import MultipartUpload, parse_upload

BOUNDARY = "bNd4ry-7f3e"
DELIMITER = f"\r\n--{BOUNDARY}".encode()
JSONL = "".join(f'{{"custom_id": "r{i}", "text": "line {i} — é 你好"}}\n' for i in range(40))
CONTENTS = {
    "lf lines": JSONL.encode(),
    "crlf lines": JSONL.replace("\n", "\r\n").encode(),
    # Starts of the delimiter that do not finish it, and a delimiter of another boundary.
    "near misses": b"a\r\n--bNd4ry-7f3\nb\r\n-c\r\r\n--x\r\n--bNd4ry-7f3e-\n" * 5,
    "ends in cr": JSONL.encode() + b"\r",
    "ends in a dash": JSONL.encode() + b"\r\n-",
    "empty": b"",
}


def body(content: bytes, *, purpose_first: bool = True, closed: bool = True) -> bytes:
    purpose = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
    file_head = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    )
    if purpose_first:
        parts = [purpose.encode(), file_head.encode(), content, b"\r\n"]
    else:
        parts = [file_head.encode(), content, b"\r\n", purpose.encode()]
    parts.append(f"--{BOUNDARY}--\r\n".encode() if closed else b"")
    return b"".join(parts)


def request(chunks: Sequence[bytes]) -> Request:
    messages: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks
    ]
    messages.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> Message:
        return messages.pop(0)

    content_type = f"multipart/form-data; boundary={BOUNDARY}".encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/files",
        "query_string": b"",
        "headers": [(b"content-type", content_type)],
    }
    return Request(scope, receive)


async def received(chunks: Sequence[bytes]) -> tuple[bytes, MultipartUpload]:
    upload = parse_upload(request(chunks), max_bytes=1 << 30)
    return b"".join([chunk async for chunk in upload.chunks]), upload


def cut(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    edges = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def assert_whole(got: bytes, upload: MultipartUpload, content: bytes) -> None:
    assert got == content
    assert upload.complete and upload.has_file
    assert upload.fields == {"purpose": "batch"}
    assert upload.filename == "in.jsonl"


# Every cut of every body runs the parser's code thousands of times: unmeasured (the `untraced`
# mark), since the other tests here cover each of its lines and branches, and coverage's tracer
# would double the CPU.
@pytest.mark.untraced
@pytest.mark.parametrize("name", CONTENTS)
@pytest.mark.parametrize("purpose_first", [True, False])
async def test_the_file_comes_out_whole_wherever_the_body_is_cut(
    name: str, purpose_first: bool
) -> None:
    content = CONTENTS[name]
    data = body(content, purpose_first=purpose_first)
    for i in range(len(data) + 1):  # in two chunks, cut at every byte
        assert_whole(*await received(cut(data, [i])), content)
    for size in (1, 2, 7, 64, 1000):  # many chunks of one size
        assert_whole(*await received(cut(data, range(size, len(data), size))), content)


async def test_the_file_comes_out_whole_from_random_chunks_of_random_bytes() -> None:
    rnd = random.Random(11)
    pieces = [b"x", b"\n", b"\r", b"-", b"--", DELIMITER[:5], DELIMITER[:-1], "é".encode()]
    for _ in range(400):
        content = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 60)))
        data = body(content, purpose_first=rnd.random() < 0.5)
        cuts = [rnd.randint(0, len(data)) for _ in range(rnd.randint(1, 12))]
        assert_whole(*await received(cut(data, cuts)), content)


async def test_chunks_after_the_file_s_start_need_no_cr_to_be_stored() -> None:
    # The large middle chunks hold no CR: they skip the parser, and still come out in order.
    content = JSONL.encode() * 50
    data = body(content)
    start = data.index(content)
    cuts = [start + 10, *range(start + 100, start + len(content), 4096)]
    assert_whole(*await received(cut(data, cuts)), content)


async def test_a_body_cut_short_inside_the_file_is_refused() -> None:
    content = JSONL.encode() * 20
    data = body(content, closed=False)[: -len(DELIMITER) - 200]  # the file never ends
    with pytest.raises(errors.InvalidRequest, match="truncated"):
        await received(cut(data, range(500, len(data), 1000)))
