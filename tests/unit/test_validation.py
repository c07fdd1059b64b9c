"""The input-file validator: the corpus, chunking, the error cap, limits and messages."""

from __future__ import annotations

import random
import time

import orjson
import pytest
from tests.support.corpus_cases import (
    BOM,
    CASES,
    CHAT,
    EMBEDDINGS,
    MALFORMED,
    MB,
    MISSING,
    Case,
    good,
    jsonl,
    line,
    many,
    params,
    request,
    served,
)

from lowtide.domain.validation import (
    ENDPOINTS,
    TEST_ENDPOINT,
    TEST_MODEL,
    BatchError,
    Limits,
    RequestLine,
    Validation,
    Validator,
)


def validate(
    content: bytes,
    endpoint: str = CHAT,
    limits: Limits = Limits(),  # noqa: B008 - frozen
    chunk: int | None = None,
    validator: type[Validator] = Validator,
) -> Validation:
    v = validator(endpoint, served, limits)
    if chunk is None:
        v.feed(content)
    else:
        for i in range(0, len(content), chunk):
            v.feed(content[i : i + chunk])
    return v.finish()


def run(case: Case, chunk: int | None = None) -> Validation:
    return validate(case.content, case.endpoint, case.limits, chunk)


def physical_lines(content: bytes) -> list[tuple[int, bytes]]:
    """(offset, text without \\r\\n) of each physical line, the way an editor numbers them."""
    start = len(BOM) if content.startswith(BOM) else 0
    out = []
    for text in content[start:].split(b"\n"):
        out.append((start, text.removesuffix(b"\r")))
        start += len(text) + 1
    return out


def check_invariants(case: Case, result: Validation) -> None:
    """What holds for every file: requests point at their lines, errors are well ordered."""
    lines = physical_lines(case.content)
    for request_line in result.requests:
        offset, text = lines[request_line.line - 1]
        assert request_line.offset == offset
        assert case.content[offset : offset + request_line.length] == text
        parsed = orjson.loads(text)
        assert parsed["custom_id"] == request_line.custom_id
    assert [r.line for r in result.requests] == sorted({r.line for r in result.requests})
    assert len({r.custom_id for r in result.requests}) == len(result.requests)
    file_level = [e for e in result.errors if e.line is None]
    assert result.errors[: len(file_level)] == file_level, "file-level errors come first"
    numbers = [e.line for e in result.errors[len(file_level) :] if e.line is not None]
    assert len(numbers) == len(result.errors) - len(file_level)
    assert numbers == sorted(set(numbers)), "one error per line, ordered by line"
    assert not {r.line for r in result.requests} & set(numbers)
    assert result.total_bytes == len(case.content)
    assert len(result.errors) <= case.limits.max_errors


# -- the corpus ---------------------------------------------------------------------------


def test_corpus_has_at_least_60_malformed_cases() -> None:
    assert len(MALFORMED) >= 60


@pytest.mark.parametrize("case", params(CASES))
def test_corpus_case(case: Case) -> None:
    result = run(case)
    if case.code is None:
        assert result.errors == []
        assert result.ok
    else:
        assert not result.ok
        first = result.errors[0]
        assert (first.code, first.param, first.line) == (case.code, case.param, case.line)
    if case.requests is not None:
        assert len(result.requests) == case.requests
    if case.errors is not None:
        assert len(result.errors) == case.errors
    check_invariants(case, result)


def _chunk_sizes(size: int) -> list[int]:
    # 1-byte feeding of a multi-megabyte case is slow in Python and proves nothing more.
    if size <= 20_000:
        return [1, 2, 3, 7, 64]
    if size <= 300_000:
        return [7, 1000, 4096]
    return [4096, 65_537, MB]


@pytest.mark.parametrize("case", params(CASES))
def test_corpus_case_is_chunking_independent(case: Case) -> None:
    whole = run(case)
    for chunk in _chunk_sizes(len(case.content)):
        assert run(case, chunk) == whole, f"chunk size {chunk}"


class _SlowOnly(Validator):
    """The validator without its fast path: the step-by-step checks alone."""

    def _fast_path(self, obj: object) -> str | None:
        return None


@pytest.mark.parametrize("case", params(CASES))
def test_fast_path_agrees_with_the_ordered_checks(case: Case) -> None:
    slow = validate(case.content, case.endpoint, case.limits, validator=_SlowOnly)
    assert run(case) == slow


# -- chunk boundaries -----------------------------------------------------------------------


def _mixed_file() -> bytes:
    """A file exercising every boundary: BOM, CRLF, blank lines, bad bytes, a long line."""
    return (
        BOM
        + jsonl(*good(3), end=b"\r\n")
        + b"\n  \n\r\n"
        + jsonl(request(4, method="GET"), b"\xff\xfe", request(5, body_stream=True))
        + jsonl(request(6, body_messages=[{"role": "user", "content": "y" * 3000}]))
        + jsonl(request(2), b"[1,2]", *good(3, start=7))
        + b"  "
        + line(request(10))
    )


def test_random_chunk_boundaries_give_identical_results() -> None:
    content = _mixed_file()
    whole = validate(content)
    assert [e.line for e in whole.errors] == [7, 8, 9, 11, 12]
    assert [r.line for r in whole.requests] == [1, 2, 3, 10, 13, 14, 15, 16]
    rng = random.Random(20240601)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(content)), rng.randint(1, 40)))
        v = Validator(CHAT, served)
        for start, end in zip([0, *cuts], [*cuts, len(content)], strict=True):
            v.feed(content[start:end])
        assert v.finish() == whole


def test_bom_split_across_chunks() -> None:
    content = BOM + jsonl(*good(2))
    for cut in range(1, 5):
        v = Validator(CHAT, served)
        v.feed(content[:cut])
        v.feed(b"")  # an empty chunk changes nothing
        v.feed(content[cut:])
        result = v.finish()
        assert result.ok
        assert result.requests[0].offset == 3


def test_partial_bom_file_is_content() -> None:
    result = validate(b"\xef\xbb")
    assert [(e.code, e.line) for e in result.errors] == [("invalid_json_line", 1)]


# -- numbering, cap, limits -----------------------------------------------------------------


def test_blank_lines_keep_physical_numbering() -> None:
    ok = good(3)
    content = b"\n" + ok[0] + b"\n\n   \n" + b"{}\n" + b"\r\n" + ok[1] + b"\n\n" + ok[2]
    result = validate(content)
    assert [r.line for r in result.requests] == [2, 7, 9]
    assert [(e.code, e.param, e.line) for e in result.errors] == [
        ("missing_required_parameter", "custom_id", 5)
    ]


def test_errors_are_capped_at_1000() -> None:
    content = jsonl(*[request(i, method="GET") for i in range(1, 1501)])
    result = validate(content)
    assert len(result.errors) == 1000
    assert [e.line for e in result.errors] == list(range(1, 1001))
    assert all(e.code == "invalid_method" for e in result.errors)


def test_file_level_errors_count_in_the_cap() -> None:
    content = jsonl(*[b"nope"] * 20)
    result = validate(content, limits=Limits(max_lines=10, max_errors=5))
    assert [(e.code, e.line) for e in result.errors] == [
        ("too_many_tasks", None),
        ("invalid_json_line", 1),
        ("invalid_json_line", 2),
        ("invalid_json_line", 3),
        ("invalid_json_line", 4),
    ]


def test_lines_past_the_cap_are_still_counted() -> None:
    content = jsonl(*[b"nope"] * 8) + many(8)
    result = validate(content, limits=Limits(max_lines=15, max_errors=3))
    assert [(e.code, e.line) for e in result.errors] == [
        ("too_many_tasks", None),
        ("invalid_json_line", 1),
        ("invalid_json_line", 2),
    ]


def test_lines_past_the_line_limit_are_checked_but_not_kept() -> None:
    content = many(12) + jsonl(request(13, method="GET"), request(1))
    result = validate(content, limits=Limits(max_lines=12))
    assert [(e.code, e.line) for e in result.errors] == [
        ("too_many_tasks", None),
        ("invalid_method", 13),
        ("duplicate_custom_id", 14),  # still found: ids up to the limit are remembered
    ]
    assert len(result.requests) == 12


def test_test_endpoint_limits_apply_only_to_it() -> None:
    content = many(150, url=TEST_ENDPOINT)
    result = validate(content, TEST_ENDPOINT)
    assert [e.code for e in result.errors] == ["too_many_tasks"]
    assert validate(many(150)).ok


def test_long_line_is_never_buffered_beyond_the_limit() -> None:
    limits = Limits(max_line_bytes=10_000)
    content = jsonl(good(1)[0], b'{"x":"' + b"a" * 100_000 + b'"}', good(1, start=2)[0])
    v = Validator(CHAT, served, limits)
    for i in range(0, len(content), 1024):
        v.feed(content[i : i + 1024])
        assert v._partial <= 10_001 or sum(map(len, v._pieces)) == 0
        assert sum(map(len, v._pieces)) <= 10_001
    result = v.finish()
    assert [(e.code, e.line) for e in result.errors] == [("line_too_large", 2)]
    assert "100,008 bytes" in result.errors[0].message
    assert [r.line for r in result.requests] == [1, 3]


def test_six_mb_line_in_1kib_chunks_is_linear() -> None:
    big = line(request(1, body_messages=[{"role": "user", "content": "x" * (6 * MB - 200)}]))
    assert len(big) < 6 * MB
    started = time.perf_counter()
    result = validate(jsonl(big), chunk=1024)
    assert time.perf_counter() - started < 5  # quadratic joining would take minutes
    assert result.ok
    assert result.requests[0].length == len(big)


# -- orjson's edge cases, pinned -------------------------------------------------------------


def test_orjson_big_numbers() -> None:
    # Integers beyond 64 bits become floats (not an error); a float overflowing to infinity
    # is an error. The validator inherits both: the first is valid, the second is not.
    assert orjson.loads(b"%d" % 2**70) == float(2**70)
    assert orjson.loads(b"%d" % (2**64 - 1)) == 2**64 - 1
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(b"1e400")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(b"[" * 1025 + b"]" * 1025)  # orjson's depth limit is 1024


# -- messages and the served-model contract ---------------------------------------------------


def first(content: bytes, endpoint: str = CHAT) -> BatchError:
    return validate(content, endpoint).errors[0]


def test_messages_verbatim() -> None:
    expected = {
        "invalid_json_line": "This line is not parseable as valid JSON.",
        "missing": "Missing required parameter: 'url'.",
        "url_not_found": (
            "The provided url '/v1/chat/completion' is not supported by the Batch API."
        ),
        "mismatched_test_url": "The provided URL '/v1/chat/completions' does not match the test "
        "model 'batch-test-model'. The test model is served on '/v1/chat/ds-test' only.",
        "real_model_on_test_url": "The provided URL '/v1/chat/ds-test' does not match the test "
        "model 'batch-test-model'. '/v1/chat/ds-test' serves only 'batch-test-model'; use the "
        "batch's endpoint.",
        "invalid_url": "The URL provided for this request does not match the batch endpoint.",
        "model": "Model parameter is required.",
        "messages": "Messages parameter is required.",
        "input": "Input parameter is required.",
        "prompt": "Prompt parameter is required.",
        "stream": "Chat Completions: Streaming is not supported in the Batch API.",
        "model_not_found": "The provided model 'gpt-9' is not supported by the Batch API.",
        "mismatched_model": "The model 'qwen-max' for this request does not match the rest of "
        "the batch. Each batch must contain requests for a single model.",
        "duplicate": "The custom_id 'req-1' for this request is a duplicate of another request. "
        "The custom_id parameter must be unique for each request in a batch.",
        "empty": "The input file is empty. Please ensure that the batch contains at least one "
        "request.",
        "method": "Only POST is supported, got 'GET'.",
    }
    got = {
        "invalid_json_line": first(b"x\n"),
        "missing": first(jsonl(request(url=MISSING))),
        "url_not_found": first(jsonl(request(url="/v1/chat/completion"))),
        "mismatched_test_url": first(jsonl(request(body_model=TEST_MODEL))),
        "real_model_on_test_url": first(
            jsonl(request(url=TEST_ENDPOINT, body_model="qwen-plus")), TEST_ENDPOINT
        ),
        "invalid_url": first(jsonl(request(url=EMBEDDINGS))),
        "model": first(jsonl(request(body_model=MISSING))),
        "messages": first(jsonl(request(body_messages=MISSING))),
        "input": first(jsonl(request(url=EMBEDDINGS, body_input=MISSING)), EMBEDDINGS),
        "prompt": first(
            jsonl(request(url="/v1/completions", body_prompt=MISSING)), "/v1/completions"
        ),
        "stream": first(jsonl(request(body_stream=True))),
        "model_not_found": first(jsonl(request(body_model="gpt-9"))),
        "mismatched_model": first(jsonl(request(1), request(2, body_model="qwen-max"))),
        "duplicate": first(jsonl(request(1), request(1))),
        "empty": first(b""),
        "method": first(jsonl(request(method="GET"))),
    }
    assert {key: error.message for key, error in got.items()} == expected


def test_type_messages_name_the_type() -> None:
    assert first(jsonl(request(custom_id=None))).message == (
        "Invalid type for 'custom_id': expected a string, but got null instead."
    )
    assert first(jsonl(request(body=[]))).message == (
        "Invalid type for 'body': expected an object, but got an array instead."
    )
    assert first(jsonl(request(url=3))).message == (
        "Invalid type for 'url': expected a string, but got an integer instead."
    )


def test_file_level_messages_name_the_limit() -> None:
    too_many = validate(many(101, url=TEST_ENDPOINT), TEST_ENDPOINT).errors[0]
    assert too_many.message == (
        "The input file has 101 requests, more than the limit of 100 requests for the test "
        "model 'batch-test-model'."
    )
    too_large = validate(jsonl(*good(20)), limits=Limits(max_file_bytes=1000)).errors[0]
    assert "more than the limit of 1,000 bytes per batch" in too_large.message


def test_echoed_values_are_cut() -> None:
    url = "/v1/" + "u" * 10_000
    message = first(jsonl(request(url=url))).message
    assert len(message) < 400
    assert "u" * 200 in message


def test_served_models_asked_once_per_model_never_for_the_test_model() -> None:
    asked: list[str] = []

    def counting(model: str) -> bool:
        asked.append(model)
        return served(model)

    content = jsonl(*good(50), *[request(i, body_model="gpt-9") for i in range(51, 60)])
    v = Validator(CHAT, counting)
    v.feed(content)
    assert len(v.finish().errors) == 9
    assert sorted(asked) == ["gpt-9", "qwen-plus"]
    # On the test endpoint the test model is served without asking (served() asserts it).
    assert validate(jsonl(*good(3, url=TEST_ENDPOINT)), TEST_ENDPOINT).model == TEST_MODEL


# -- the objects --------------------------------------------------------------------------


def test_validation_result_objects() -> None:
    result = validate(BOM + jsonl(*good(2)))
    assert result.ok
    assert result.model == "qwen-plus"
    assert result.requests[0] == RequestLine(1, "req-1", 3, len(good(1)[0]))
    error = first(b"[]\n")
    assert error.to_dict() == {
        "code": "invalid_json_line",
        "message": "This line is not parseable as valid JSON.",
        "param": None,
        "line": 1,
    }
    assert validate(b"").model is None


def test_feed_after_finish_is_an_error() -> None:
    v = Validator(CHAT, served)
    v.finish()
    with pytest.raises(RuntimeError):
        v.feed(b"{}")
    with pytest.raises(RuntimeError):
        v.finish()


def test_endpoints_order() -> None:
    assert ENDPOINTS == (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/chat/ds-test",
    )
