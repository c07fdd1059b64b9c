"""A corpus of batch input files for the validator, built in code.

Most cases are malformed: each names its bytes, the batch endpoint and the FIRST error expected
(code, param, line; line None for a file-level error). A few are tricky but valid (``code`` None):
a BOM, CRLF, blank lines, huge integers... Building them here, rather than storing files, keeps
the 7 MB and 50,001-line cases out of the repository and makes each case readable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from lowtide.domain.validation import TEST_ENDPOINT, TEST_MODEL, Limits

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RESPONSES = "/v1/responses"
SERVED = frozenset({"qwen-plus", "qwen-max", "text-embedding-v4"})

MB = 1024 * 1024
BOM = b"\xef\xbb\xbf"


def served(model: str) -> bool:
    """The backends' answer; the test model must never reach them."""
    assert model != TEST_MODEL, "the validator must treat the test model itself"
    return model in SERVED


class _Missing:
    """Marks a key to delete in ``request(...)``."""


MISSING = _Missing()

_DEFAULT_MODEL = {TEST_ENDPOINT: TEST_MODEL, EMBEDDINGS: "text-embedding-v4"}
_INPUT = {
    CHAT: ("messages", [{"role": "user", "content": "What is 2+2?"}]),
    TEST_ENDPOINT: ("messages", [{"role": "user", "content": "What is 2+2?"}]),
    COMPLETIONS: ("prompt", "Once upon a time"),
    EMBEDDINGS: ("input", "The food was delicious."),
    RESPONSES: ("input", "Tell me a joke."),
}


def request(i: int = 1, *, url: object = CHAT, **changes: object) -> dict[str, object]:
    """A valid request for ``url``; ``changes`` override keys, ``body_<key>`` body keys.

    ``url`` may be anything (MISSING, an int...): the body is then the chat one.
    """
    kind = url if isinstance(url, str) and url in _INPUT else CHAT
    key, value = _INPUT[kind]
    body: dict[str, object] = {"model": _DEFAULT_MODEL.get(kind, "qwen-plus"), key: value}
    obj: dict[str, object] = {"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}
    for name, new in changes.items():
        target, name = (body, name[5:]) if name.startswith("body_") else (obj, name)
        target[name] = new
    for target in (obj, body):
        for name in [name for name, new in target.items() if new is MISSING]:
            del target[name]
    return obj


def line(obj: object) -> bytes:
    return orjson.dumps(obj)


def jsonl(*lines: bytes | dict[str, object], end: bytes = b"\n") -> bytes:
    """A file of these lines (dicts are dumped), each ended by ``end``."""
    return b"".join((item if isinstance(item, bytes) else line(item)) + end for item in lines)


def good(n: int, *, start: int = 1, url: str = CHAT) -> list[bytes]:
    return [line(request(i, url=url)) for i in range(start, start + n)]


def many(n: int, url: str = CHAT) -> bytes:
    """``n`` valid chat lines, fast (a %-template, not n dumps)."""
    template = (
        b'{"custom_id":"req-%d","method":"POST","url":"' + url.encode() + b'",'
        b'"body":{"model":"' + _DEFAULT_MODEL.get(url, "qwen-plus").encode() + b'",'
        b'"messages":[{"role":"user","content":"hi"}]}}\n'
    )
    return b"".join(template % i for i in range(1, n + 1))


@dataclass(frozen=True)
class Case:
    name: str
    content: bytes
    code: str | None  # None: the file is valid
    param: str | None = None
    line: int | None = None
    endpoint: str = CHAT
    limits: Limits = field(default_factory=Limits)
    requests: int | None = None  # how many RequestLine entries, when worth checking
    errors: int | None = None  # how many errors, when worth checking


#: A case of this many lines or more runs no code of lowtide that the small cases do not.
MANY_LINES = 10_000


def params(cases: Iterable[Case]) -> list[Any]:
    """``cases`` for ``parametrize``, named. Those of ``MANY_LINES`` lines or more run without
    coverage's tracer (the ``untraced`` mark), which costs them about twice the CPU and
    adds no line or branch that the small cases miss."""
    return [
        pytest.param(
            case,
            id=case.name,
            marks=[pytest.mark.untraced] if case.content.count(b"\n") >= MANY_LINES else [],
        )
        for case in cases
    ]


def _bad_json() -> Iterable[Case]:
    """invalid_json_line: anything orjson refuses, or JSON that is not an object."""
    ok = line(request(1))
    valid = ok.replace(b"What is 2+2?", b"%s")

    def bad(name: str, text: bytes, at: int = 2) -> Case:
        return Case(
            name, jsonl(ok, text) if at == 2 else jsonl(text), "invalid_json_line", None, at
        )

    yield bad("bad_utf8_ff", valid.replace(b"req-1", b"req-2") % b"\xff\xfe")
    yield bad("truncated_utf8_sequence", valid.replace(b"req-1", b"req-2") % b"\xe2\x82")
    yield bad("overlong_utf8", valid.replace(b"req-1", b"req-2") % b"\xc0\xaf")
    yield bad("utf8_encoded_surrogate", valid.replace(b"req-1", b"req-2") % b"\xed\xa0\x80")
    yield bad("lone_surrogate_escape", valid.replace(b"req-1", b"req-2") % b"\\ud800")
    yield bad("raw_control_char_in_string", valid.replace(b"req-1", b"req-2") % b"a\x01b")
    yield bad("nul_byte_after_object", ok.replace(b"req-1", b"req-2") + b"\x00")
    yield bad("utf16_file", line(request(1)).decode().encode("utf-16"), at=1)
    for name, literal in [("nan", b"NaN"), ("infinity", b"Infinity"), ("minus_inf", b"-Infinity")]:
        yield bad(name, line(request(2)).replace(b'"model"', b'"temperature":%s,"model"' % literal))
    # orjson refuses a float that overflows to infinity (unlike json.loads, which gives inf).
    yield bad("float_1e400", line(request(2)).replace(b'"model"', b'"temperature":1e400,"model"'))
    yield bad("trailing_comma_object", line(request(2))[:-1] + b",}")
    yield bad("trailing_comma_array", line(request(2)).replace(b"}]", b"},]"))
    yield bad("line_comment", b"// the requests follow", at=1)
    yield bad("block_comment", line(request(2)).replace(b"{", b"{/* c */", 1))
    yield bad("concatenated_objects", line(request(2)) + line(request(3)))
    yield bad("trailing_garbage", line(request(2)) + b" x")
    yield bad("single_quotes", line(request(2)).replace(b'"', b"'"))
    yield bad("unquoted_keys", line(request(2)).replace(b'"custom_id"', b"custom_id"))
    yield bad("truncated_object", line(request(2))[:-7])
    yield bad("pretty_printed", orjson.dumps(request(1), option=orjson.OPT_INDENT_2), at=1)
    yield bad("bom_not_at_start", BOM + line(request(2)))
    yield Case("double_bom", BOM + jsonl(BOM + ok), "invalid_json_line", None, 1)
    for name, text in [
        ("array", b'[{"custom_id": "req-2"}]'),
        ("string", b'"req-2"'),
        ("number", b"42"),
        ("null", b"null"),
        ("true", b"true"),
        ("empty_array", b"[]"),
    ]:
        yield bad(f"not_an_object_{name}", text)
    deep = b"[" * 10_000 + b"]" * 10_000
    yield bad("nested_10000_top_level", deep)
    yield bad("nested_10000_in_body", line(request(2)).replace(b'"What is 2+2?"', deep))
    yield Case(
        "csv_text",
        b"custom_id,method,url,model,prompt\nreq-1,POST,/v1/chat/completions,qwen-plus,hi\n",
        "invalid_json_line",
        None,
        1,
        errors=2,
    )
    yield Case(
        "html_page",
        b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n",
        "invalid_json_line",
        None,
        1,
        errors=2,
    )


def _too_large() -> Iterable[Case]:
    big = line(request(2, body_messages=[{"role": "user", "content": "x" * (7 * MB)}]))
    yield Case(
        "line_7mb",
        jsonl(good(1)[0], big, good(1, start=3)[0]),
        "line_too_large",
        None,
        2,
        requests=2,
    )
    yield Case("line_7mb_no_newline_at_eof", jsonl(good(1)[0]) + big, "line_too_large", None, 2)
    yield Case("line_7mb_of_spaces", jsonl(good(1)[0], b" " * (7 * MB)), "line_too_large", None, 2)
    small = Limits(max_line_bytes=200)
    pad = line(request(2))
    exact = pad[:-2] + b" " * (200 - len(pad)) + b"}}"
    assert len(exact) == 200
    yield Case(
        "line_over_custom_limit",
        jsonl(exact[:-2] + b" }}"),
        "line_too_large",
        None,
        1,
        limits=small,
    )
    yield Case(
        "line_at_custom_limit_crlf", jsonl(exact, end=b"\r\n"), None, limits=small, requests=1
    )
    yield Case(
        "line_over_custom_limit_crlf",
        jsonl(b" " + exact, end=b"\r\n"),
        "line_too_large",
        None,
        1,
        limits=small,
    )


def _missing() -> Iterable[Case]:
    for key in ("custom_id", "method", "url", "body"):
        yield Case(
            f"missing_{key}",
            jsonl(request(1, **{key: MISSING})),
            "missing_required_parameter",
            key,
            1,
        )
    yield Case("empty_object", jsonl(b"{}"), "missing_required_parameter", "custom_id", 1)
    yield Case(
        "missing_method_and_url",
        jsonl(request(1, method=MISSING, url=MISSING)),
        "missing_required_parameter",
        "method",
        1,
    )
    # A missing key is reported before a wrongly typed one, whatever their order in the line.
    yield Case(
        "missing_body_and_custom_id_int",
        jsonl(request(1, custom_id=5, body=MISSING)),
        "missing_required_parameter",
        "body",
        1,
    )


def _wrong_types() -> Iterable[Case]:
    for name, value in [
        ("int", 1),
        ("null", None),
        ("list", ["a"]),
        ("object", {"a": 1}),
        ("bool", True),
        ("float", 1.5),
        ("empty", ""),
        ("newline", "a\nb"),
        ("nul", "a\x00b"),
        ("del", "a\x7f"),
        ("tab", "a\tb"),
        ("too_long", "x" * 513),
    ]:
        yield Case(
            f"custom_id_{name}",
            jsonl(good(1)[0], request(2, custom_id=value)),
            "invalid_request",
            "custom_id",
            2,
        )
    for key, value in [
        ("method", 1),
        ("method", None),
        ("url", 7),
        ("url", ["/v1/embeddings"]),
        ("body", "hi"),
        ("body", []),
        ("body", None),
    ]:
        yield Case(
            f"{key}_{type(value).__name__}",
            jsonl(request(1, **{key: value})),
            "invalid_request",
            key,
            1,
        )
    yield Case(
        "custom_id_and_method_wrong",
        jsonl(request(1, custom_id=1, method=2)),
        "invalid_request",
        "custom_id",
        1,
    )


def _method_and_url() -> Iterable[Case]:
    yield Case("method_get", jsonl(request(1, method="GET")), "invalid_method", "method", 1)
    yield Case("method_lowercase", jsonl(request(1, method="post")), "invalid_method", "method", 1)
    yield Case(
        "get_and_unknown_url",
        jsonl(request(1, method="GET", url="/v2/x")),
        "invalid_method",
        "method",
        1,
    )
    for name, url in [
        ("typo", "/v1/chat/completion"),
        ("query", f"{CHAT}?x=1"),
        ("absolute", f"https://api.openai.com{CHAT}"),
        ("empty", ""),
        ("no_v1", "/chat/completions"),
        ("trailing_slash", f"{CHAT}/"),
    ]:
        yield Case(f"url_{name}", jsonl(good(1)[0], request(2, url=url)), "url_not_found", "url", 2)


def _test_model() -> Iterable[Case]:
    yield Case(
        "test_model_on_chat_url",
        jsonl(request(1, body_model=TEST_MODEL)),
        "mismatched_test_url",
        "url",
        1,
    )
    yield Case(
        "real_model_on_test_url",
        jsonl(request(1, url=TEST_ENDPOINT, body_model="qwen-plus")),
        "mismatched_test_url",
        "url",
        1,
        endpoint=TEST_ENDPOINT,
    )
    yield Case(
        "no_model_on_test_url",
        jsonl(request(1, url=TEST_ENDPOINT, body_model=MISSING)),
        "mismatched_test_url",
        "url",
        1,
        endpoint=TEST_ENDPOINT,
    )
    yield Case(
        "test_line_in_chat_batch",
        jsonl(good(1)[0], request(2, url=TEST_ENDPOINT)),
        "invalid_url",
        "url",
        2,
    )
    yield Case(
        "test_model_missing_messages",
        jsonl(request(1, url=TEST_ENDPOINT, body_messages=MISSING)),
        "invalid_request",
        "body.messages",
        1,
        endpoint=TEST_ENDPOINT,
    )
    yield Case(
        "test_file_101_lines",
        jsonl(*good(101, url=TEST_ENDPOINT)),
        "too_many_tasks",
        None,
        None,
        endpoint=TEST_ENDPOINT,
        requests=100,
        errors=1,
    )
    padded = [
        line(
            request(i, url=TEST_ENDPOINT, body_messages=[{"role": "user", "content": "x" * 12_000}])
        )
        for i in range(1, 91)
    ]
    yield Case(
        "test_file_over_1mb",
        jsonl(*padded),
        "file_too_large",
        None,
        None,
        endpoint=TEST_ENDPOINT,
        requests=90,
        errors=1,
    )
    yield Case(
        "test_file_of_2mb_spaces",
        b" " * (2 * MB) + b"\n",
        "file_too_large",
        None,
        None,
        endpoint=TEST_ENDPOINT,
        errors=2,
    )


def _body() -> Iterable[Case]:
    yield Case("mixed_urls", jsonl(*good(2), request(3, url=EMBEDDINGS)), "invalid_url", "url", 3)
    yield Case(
        "chat_line_in_embeddings_batch",
        jsonl(request(1, url=EMBEDDINGS), request(2)),
        "invalid_url",
        "url",
        2,
        endpoint=EMBEDDINGS,
    )
    for name, value in [("missing", MISSING), ("null", None), ("empty", ""), ("int", 4)]:
        yield Case(
            f"model_{name}", jsonl(request(1, body_model=value)), "invalid_request", "body.model", 1
        )
    yield Case(
        "model_and_messages_missing",
        jsonl(request(1, body_model=MISSING, body_messages=MISSING)),
        "invalid_request",
        "body.model",
        1,
    )
    shapes: list[tuple[str, object]] = [
        ("missing", MISSING),
        ("empty", []),
        ("string", "hi"),
        ("null", None),
    ]
    for name, shape in shapes:
        yield Case(
            f"messages_{name}",
            jsonl(request(1, body_messages=shape)),
            "invalid_request",
            "body.messages",
            1,
        )
    for url, key in [(EMBEDDINGS, "input"), (RESPONSES, "input"), (COMPLETIONS, "prompt")]:
        for name, value in [("missing", MISSING), ("null", None), ("empty", "")]:
            yield Case(
                f"{url.rsplit('/', 1)[1]}_{key}_{name}",
                jsonl(request(1, url=url, **{f"body_{key}": value})),
                "invalid_request",
                f"body.{key}",
                1,
                endpoint=url,
            )
    # Chat input on an embeddings batch is not enough: embeddings need "input".
    yield Case(
        "embeddings_with_messages",
        jsonl(request(1, url=EMBEDDINGS, body_input=MISSING, body_messages=[{}])),
        "invalid_request",
        "body.input",
        1,
        endpoint=EMBEDDINGS,
    )


def _stream_and_models() -> Iterable[Case]:
    yield Case(
        "stream_true",
        jsonl(good(1)[0], request(2, body_stream=True)),
        "streaming_unsupported",
        "body.stream",
        2,
        requests=1,
    )
    yield Case(
        "stream_one", jsonl(request(1, body_stream=1)), "streaming_unsupported", "body.stream", 1
    )
    yield Case(
        "stream_true_and_unknown_model",
        jsonl(request(1, body_stream=True, body_model="gpt-9")),
        "streaming_unsupported",
        "body.stream",
        1,
    )
    yield Case(
        "unknown_model", jsonl(request(1, body_model="gpt-9")), "model_not_found", "body.model", 1
    )
    yield Case(
        "model_wrong_case",
        jsonl(request(1, body_model="Qwen-Plus")),
        "model_not_found",
        "body.model",
        1,
    )
    yield Case(
        "mixed_models",
        jsonl(*good(2), request(3, body_model="qwen-max")),
        "mismatched_model",
        "body.model",
        3,
        requests=2,
    )
    # An unserved first line does not set the batch's model; the first served one does.
    yield Case(
        "unserved_then_two_models",
        jsonl(request(1, body_model="gpt-9"), request(2), request(3, body_model="qwen-max")),
        "model_not_found",
        "body.model",
        1,
        requests=1,
        errors=2,
    )


def _duplicates() -> Iterable[Case]:
    yield Case(
        "duplicate_adjacent",
        jsonl(request(1), request(1)),
        "duplicate_custom_id",
        "custom_id",
        2,
        requests=1,
    )
    far = many(40_001) + jsonl(request(1))
    yield Case(
        "duplicate_40000_apart",
        far,
        "duplicate_custom_id",
        "custom_id",
        40_002,
        requests=40_001,
        errors=1,
    )
    # A line that fails still claims its custom_id.
    yield Case(
        "duplicate_of_invalid_line",
        jsonl(request(1, method="GET"), request(1)),
        "invalid_method",
        "method",
        1,
        errors=2,
    )
    yield Case(
        "triplicate",
        jsonl(request(1), request(2), request(1), request(1)),
        "duplicate_custom_id",
        "custom_id",
        3,
        errors=2,
        requests=2,
    )


def _file_level() -> Iterable[Case]:
    yield Case("zero_bytes", b"", "empty_file", None, None, errors=1)
    yield Case("only_newlines", b"\n" * 50, "empty_file", None, None, errors=1)
    yield Case("only_whitespace_crlf", b" \r\n\t\r\n\r\n   ", "empty_file", None, None)
    yield Case("only_bom", BOM, "empty_file", None, None)
    yield Case("only_bom_and_newlines", BOM + b"\n\n", "empty_file", None, None)
    yield Case("lines_50001", many(50_001), "too_many_tasks", None, None, requests=50_000, errors=1)
    yield Case(
        "file_over_custom_limit",
        jsonl(*good(20)),
        "file_too_large",
        None,
        None,
        limits=Limits(max_file_bytes=1000),
        requests=20,
        errors=1,
    )
    yield Case(
        "file_too_large_and_too_many",
        jsonl(*good(20)),
        "file_too_large",
        None,
        None,
        limits=Limits(max_file_bytes=1000, max_lines=10),
        requests=10,
        errors=2,
    )


def _line_numbers() -> Iterable[Case]:
    ok = good(3)
    yield Case(
        "error_after_blank_lines",
        b"\n\n" + jsonl(ok[0]) + b"  \n\r\n" + jsonl(request(9, method="GET")),
        "invalid_method",
        "method",
        6,
        requests=1,
    )
    yield Case(
        "error_after_crlf_lines",
        jsonl(*ok, request(4, url="/x"), end=b"\r\n"),
        "url_not_found",
        "url",
        4,
        requests=3,
    )
    yield Case("error_after_bom", BOM + jsonl(ok[0], b"[]"), "invalid_json_line", None, 2)


def _valid() -> Iterable[Case]:
    ok = good(3)
    yield Case("valid_plain", jsonl(*ok), None, requests=3)
    yield Case("valid_bom", BOM + jsonl(*ok), None, requests=3)
    yield Case("valid_crlf", jsonl(*ok, end=b"\r\n"), None, requests=3)
    yield Case(
        "valid_blank_lines",
        b"\n" + jsonl(ok[0]) + b"\n \t\n" + jsonl(*ok[1:]) + b"\n",
        None,
        requests=3,
    )
    yield Case("valid_no_final_newline", jsonl(*ok)[:-1], None, requests=3)
    yield Case("valid_crlf_no_final_newline", jsonl(*ok, end=b"\r\n")[:-2], None, requests=3)
    yield Case("valid_cr_cr_lf", jsonl(*ok, end=b"\r\r\n"), None, requests=3)
    yield Case(
        "valid_surrounding_spaces",
        b"  " + ok[0] + b"  \n" + b"\t" + ok[1] + b"\n",
        None,
        requests=2,
    )
    yield Case(
        "valid_vertical_tab_line_is_blank", jsonl(ok[0], b"\x0b\x0c", ok[1]), None, requests=2
    )
    # orjson reads integers beyond 64 bits as floats (it does not reject them); the line is
    # valid, and the engine forwards its original bytes, so nothing is rounded on the wire.
    yield Case(
        "valid_int_2_pow_70",
        jsonl(line(request(1)).replace(b'"model"', b'"seed":%d,"model"' % 2**70)),
        None,
        requests=1,
    )
    yield Case("valid_uint64_max", jsonl(request(1, body_seed=2**64 - 1)), None, requests=1)
    yield Case(
        "valid_duplicate_json_keys_last_wins",
        jsonl(line(request(1))[:-1] + b',"custom_id":"other"}'),
        None,
        requests=1,
    )
    yield Case(
        "valid_unicode_custom_ids",
        jsonl(
            request(1, custom_id="caf\u00e9-\U0001f600"),
            request(2, custom_id="no\u00a0break"),
            request(3, custom_id="x\u2028y"),
            request(4, custom_id="z" * 512),
        ),
        None,
        requests=4,
    )
    yield Case("valid_stream_false", jsonl(request(1, body_stream=False)), None, requests=1)
    yield Case(
        "valid_test_model",
        jsonl(*good(100, url=TEST_ENDPOINT)),
        None,
        endpoint=TEST_ENDPOINT,
        requests=100,
    )
    for url in (COMPLETIONS, EMBEDDINGS, RESPONSES):
        yield Case(
            f"valid_{url.rsplit('/', 1)[1]}",
            jsonl(*good(2, url=url)),
            None,
            endpoint=url,
            requests=2,
        )
    yield Case(
        "valid_input_arrays",
        jsonl(request(1, url=EMBEDDINGS, body_input=["a", "b"])),
        None,
        endpoint=EMBEDDINGS,
        requests=1,
    )
    yield Case("valid_50000_lines", many(50_000), None, requests=50_000)


def build() -> list[Case]:
    cases = [
        case
        for group in (
            _bad_json,
            _too_large,
            _missing,
            _wrong_types,
            _method_and_url,
            _test_model,
            _body,
            _stream_and_models,
            _duplicates,
            _file_level,
            _line_numbers,
            _valid,
        )
        for case in group()
    ]
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


CASES = build()
MALFORMED = [case for case in CASES if case.code is not None]
VALID = [case for case in CASES if case.code is None]
