"""The UTF-8 check of uploads (``lowtide.service.files.Utf8Check``): a character may be cut
by the end of a chunk, or by the end of one of the slices a chunk is checked in."""

from __future__ import annotations

import random

import pytest

from lowtide.service.files import Utf8Check

TEXT = "plain, é, 你好, 😀, \u0800, \U0010ffff, end".encode()
INVALID = [
    b"\xff",  # never in UTF-8
    b"\x80",  # a continuation byte with no start
    b"\xc3",  # cut short at the end of the file
    b"\xe4\xbd",
    b"\xf0\x9f\x98",
    b"\xc0\xaf",  # overlong
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",  # a surrogate
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xc3a",  # a start byte followed by ASCII
]


def checked(*chunks: bytes) -> bool:
    check = Utf8Check()
    for chunk in chunks:
        check.feed(chunk)
    return check.finish()


def test_valid_text_cut_anywhere_in_two_or_three_chunks() -> None:
    for i in range(len(TEXT) + 1):
        assert checked(TEXT[:i], TEXT[i:]), i
        for j in range(i, len(TEXT) + 1):
            assert checked(TEXT[:i], TEXT[i:j], TEXT[j:]), (i, j)


@pytest.mark.parametrize("bad", INVALID)
def test_invalid_bytes_are_found_wherever_the_chunks_end(bad: bytes) -> None:
    data = TEXT + bad + (b"" if bad in (b"\xc3", b"\xe4\xbd", b"\xf0\x9f\x98") else TEXT)
    assert not checked(data)
    for i in range(len(data) + 1):
        assert not checked(data[:i], data[i:]), i
    assert not checked(*(data[i : i + 1] for i in range(len(data))))  # a byte at a time


def test_characters_cut_by_the_check_s_own_slices() -> None:
    # Large chunks are checked in slices: put a character across every slice boundary.
    for shift in range(4):
        data = b"a" * (Utf8Check._SLICE - shift) + "😀".encode() * 10_000
        assert checked(data)
        assert not checked(data + b"\xe4")
        bad = bytearray(data)
        bad[Utf8Check._SLICE] = 0x41  # breaks the character that straddles the boundary
        assert not checked(bytes(bad))


def test_an_ascii_chunk_after_a_cut_character_is_still_checked() -> None:
    assert not checked(b"x\xc3", b"plain ascii")
    assert not checked(b"x\xc3", b"plain ascii", b"\xa9")
    assert checked(b"x\xc3", b"\xa9 plain ascii")


def test_agrees_with_python_s_decoder_on_random_input() -> None:
    rnd = random.Random(5)
    pieces = [b"a", b"\n", "é".encode(), "你".encode(), "😀".encode(), *INVALID]
    for _ in range(3000):
        data = b"".join(rnd.choice(pieces[:5] if rnd.random() < 0.5 else pieces) for _ in range(20))
        cuts = sorted(rnd.randint(0, len(data)) for _ in range(rnd.randint(0, 5)))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        try:
            data.decode("utf-8")
            expected = True
        except UnicodeDecodeError:
            expected = False
        assert checked(*chunks) == expected, chunks
