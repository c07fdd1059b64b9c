"""``lowtide convert``: CSV <-> JSONL, driven through click's CliRunner."""

from __future__ import annotations

import base64
import csv
import io
import json
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from lowtide.cli.convert import (
    RESULT_COLUMNS,
    RequestTemplate,
    convert_group,
    parse_params,
    result_row,
)


def run(*args: str | Path) -> Result:
    return CliRunner().invoke(convert_group, [str(arg) for arg in args])


def write_csv(path: Path, rows: list[list[str]], *, bom: bool = False) -> Path:
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def read_result_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def hosted_script(src: Path, dst: Path, model: str, system: str | None) -> None:
    """The CSV->JSONL script of Model Studio's batch documentation; the Qwen Cloud one is the
    same without the system message."""
    with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
        for row in csv.reader(fin):
            messages = [{"role": "user", "content": row[1]}]
            if system is not None:
                messages.insert(0, {"role": "system", "content": system})
            body = {"model": model, "messages": messages}
            request = {
                "custom_id": row[0],
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
            fout.write(json.dumps(request, separators=(",", ":"), ensure_ascii=False) + "\n")


ROWS = [
    ["1", "What is 2+2?"],
    ["2", "你好，世界 — ça va? 🎉"],
    ["3", 'quotes "inside", a comma\nand a newline'],
]


# --------------------------------------------------------------------------- csv-to-jsonl


@pytest.mark.parametrize("system", [None, "You are a helpful assistant."])
def test_default_output_matches_the_hosted_script_byte_for_byte(
    tmp_path: Path, system: str | None
) -> None:
    src = write_csv(tmp_path / "in.csv", ROWS)
    hosted_script(src, tmp_path / "expected.jsonl", "qwen-plus", system)
    system_option = () if system is None else ("--system", system)

    result = run(
        "csv-to-jsonl", src, "-o", tmp_path / "out.jsonl", "--model", "qwen-plus", *system_option
    )

    assert result.exit_code == 0, result.output
    expected = (tmp_path / "expected.jsonl").read_bytes()
    assert (tmp_path / "out.jsonl").read_bytes() == expected
    assert "你好".encode() in expected  # non-ASCII kept, not \u-escaped
    assert "wrote 3 request(s)" in result.stderr


def test_stdout_is_the_default_output_and_system_comes_first(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ROWS[:1])

    result = run("csv-to-jsonl", src, "--model", "m", "--system", "Be brief.")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["body"] == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+2?"},
        ],
    }


def test_header_mode_picks_columns_by_name_or_index(tmp_path: Path) -> None:
    rows = [["question", "extra", "id"], ["Hi?", "x", "a"], ["Bye?", "y", "b"]]
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.jsonl"

    by_name = run(
        "csv-to-jsonl",
        src,
        "-o",
        out,
        "--model",
        "m",
        "--header",
        "--id-column",
        "id",
        "--text-column",
        "question",
    )
    assert by_name.exit_code == 0, by_name.output
    lines = read_jsonl(out)
    assert [line["custom_id"] for line in lines] == ["a", "b"]
    assert lines[0]["body"]["messages"] == [{"role": "user", "content": "Hi?"}]

    by_index = run(
        "csv-to-jsonl",
        src,
        "-o",
        out,
        "--model",
        "m",
        "--header",
        "--id-column",
        "2",
        "--text-column",
        "0",
    )
    assert by_index.exit_code == 0, by_index.output
    assert read_jsonl(out) == lines


def test_a_column_name_needs_a_header_and_must_exist(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", [["id", "text"], ["1", "x"]])

    no_header = run("csv-to-jsonl", src, "--model", "m", "--id-column", "id")
    unknown = run("csv-to-jsonl", src, "--model", "m", "--header", "--id-column", "nope")

    assert no_header.exit_code == 2
    assert "--header" in no_header.stderr
    assert unknown.exit_code == 2
    assert "'nope' is not in the header: id, text" in unknown.stderr


@pytest.mark.parametrize(
    ("url", "key"),
    [("/v1/embeddings", "input"), ("/v1/completions", "prompt"), ("/v1/responses", "input")],
)
def test_other_endpoints_put_the_text_in_their_body_key(tmp_path: Path, url: str, key: str) -> None:
    src = write_csv(tmp_path / "in.csv", [["e1", "some text"]])

    result = run("csv-to-jsonl", src, "--model", "emb", "--url", url)

    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout)
    body = {"model": "emb", key: "some text"}
    assert line == {"custom_id": "e1", "method": "POST", "url": url, "body": body}


def test_system_becomes_instructions_for_responses_and_is_refused_for_embeddings(
    tmp_path: Path,
) -> None:
    src = write_csv(tmp_path / "in.csv", [["r1", "hi"]])

    responses = run("csv-to-jsonl", src, "--model", "m", "--url", "/v1/responses", "--system", "S")
    embeddings = run(
        "csv-to-jsonl", src, "--model", "m", "--url", "/v1/embeddings", "--system", "S"
    )

    assert json.loads(responses.stdout)["body"] == {
        "model": "m",
        "instructions": "S",
        "input": "hi",
    }
    assert embeddings.exit_code == 2
    assert "does not apply to /v1/embeddings" in embeddings.stderr


def test_params_are_typed_as_json_when_they_parse(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", [["1", "hi"]])

    result = run(
        "csv-to-jsonl",
        src,
        "--model",
        "m",
        "--param",
        "temperature=0.2",
        "--param",
        "max_tokens=100",
        "--param",
        'stop=["x"]',
        "--param",
        "user=alice",
        "--param",
        "enable_thinking=false",
        "--param",
        "seed=007",
    )

    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)["body"]
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 100
    assert body["stop"] == ["x"]
    assert body["user"] == "alice"
    assert body["enable_thinking"] is False
    assert body["seed"] == "007"  # not JSON: kept as the string typed


def test_parse_params_edge_cases() -> None:
    assert parse_params(["a=NaN", "b=", "c=x=y", 'd={"k": 1}']) == {
        "a": "NaN",  # a number Python reads but JSON does not: kept as a string
        "b": "",
        "c": "x=y",
        "d": {"k": 1},
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_params(["novalue"])


def test_params_cannot_override_what_the_converter_sets(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", [["1", "hi"]])

    result = run("csv-to-jsonl", src, "--model", "m", "--param", "model=other")
    bad_pair = run("csv-to-jsonl", src, "--model", "m", "--param", "temperature")

    assert result.exit_code == 2
    assert "cannot set model" in result.stderr
    assert bad_pair.exit_code == 2
    assert "KEY=VALUE" in bad_pair.stderr
    with pytest.raises(ValueError, match="messages"):
        RequestTemplate("m", params={"messages": []})


def test_bom_is_dropped_from_the_first_cell_and_header_name(tmp_path: Path) -> None:
    plain = write_csv(tmp_path / "plain.csv", [["x1", "hi"]], bom=True)
    headed = write_csv(tmp_path / "headed.csv", [["id", "text"], ["x1", "hi"]], bom=True)
    assert plain.read_bytes().startswith(b"\xef\xbb\xbf")

    first = run("csv-to-jsonl", plain, "--model", "m")
    second = run("csv-to-jsonl", headed, "--model", "m", "--header", "--id-column", "id")

    assert json.loads(first.stdout)["custom_id"] == "x1"
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["custom_id"] == "x1"


def test_blank_rows_are_skipped(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("1,a\n\n2,b\n", encoding="utf-8")

    result = run("csv-to-jsonl", src, "--model", "m")

    assert [json.loads(line)["custom_id"] for line in result.stdout.splitlines()] == ["1", "2"]


def test_stdin_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        convert_group, ["csv-to-jsonl", "-", "--model", "m"], input="7,hi\n"
    )

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["custom_id"] == "7"


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([["1", "a"], ["2"]], False, "row 2: has 1 column(s), needs at least 2"),
        ([["1", "a"], ["2", "b"], ["1", "c"]], False, "row 3: duplicate custom_id '1'"),
        ([["1", "a"], ["  ", "b"]], False, "row 2: empty custom_id in column 0"),
        ([["id", "text"], ["1", "a"], ["", "b"]], True, "row 3: empty custom_id"),
    ],
)
def test_bad_rows_are_errors_naming_the_row(
    tmp_path: Path, rows: list[list[str]], header: bool, message: str
) -> None:
    src = write_csv(tmp_path / "in.csv", rows)
    out = tmp_path / "out.jsonl"

    result = run(
        "csv-to-jsonl", src, "-o", out, "--model", "m", "--header" if header else "--no-header"
    )

    assert result.exit_code == 1
    assert f"{src}: {message}" in result.stderr
    assert not out.exists()  # no half-written file left behind
    assert list(tmp_path.glob(".out.jsonl.*")) == []


def test_undecodable_bytes_name_their_line(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    good = "".join(f"r{number},ok\n" for number in range(5000)).encode()
    src.write_bytes(good + b"x,\xff bad\n")  # well past the first 8 KB block

    result = run("csv-to-jsonl", src, "--model", "m", "-o", tmp_path / "out.jsonl")

    assert result.exit_code == 1
    assert f"{src}: line 5001: not UTF-8 text (byte 3 of the line)" in result.stderr


def test_an_unterminated_quote_is_an_error_not_a_merged_row(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text('1,a\n2,"oops\n3,c\n', encoding="utf-8")

    result = run("csv-to-jsonl", src, "--model", "m", "-o", tmp_path / "out.jsonl")

    assert result.exit_code == 1
    assert "row 2: cannot read CSV" in result.stderr


def test_an_output_directory_that_does_not_exist(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", [["1", "a"]])
    out = tmp_path / "no-dir" / "out.jsonl"

    result = run("csv-to-jsonl", src, "--model", "m", "-o", out)

    assert result.exit_code == 1
    assert f"{out}: No such file or directory" in result.stderr


def test_rows_count_physical_records_across_quoted_newlines(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", [["1", "two\nlines"], ["1", "dup"]])

    result = run("csv-to-jsonl", src, "--model", "m")

    assert "row 2: duplicate custom_id '1'" in result.stderr


def test_a_failed_run_keeps_an_existing_output_file(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", [["1", "a"], ["1", "b"]])
    out = tmp_path / "out.jsonl"
    out.write_text("previous\n")

    result = run("csv-to-jsonl", src, "-o", out, "--model", "m")

    assert result.exit_code == 1
    assert out.read_text() == "previous\n"


def test_missing_input_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run("csv-to-jsonl", tmp_path / "nope.csv", "--model", "m")

    assert result.exit_code == 2
    assert "does not exist" in result.stderr


# --------------------------------------------------------------------------- jsonl-to-csv

OK_LINE: dict[str, Any] = {
    "id": "batch_req_123",
    "custom_id": "request-2",
    "response": {
        "status_code": 200,
        "request_id": "req_123",
        "body": {
            "id": "chatcmpl-123",
            "object": "chat.completion",
            "created": 1711652795,
            "model": "gpt-3.5-turbo-0125",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello, 世界."},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 22, "completion_tokens": 2, "total_tokens": 24},
        },
    },
    "error": None,
}
OPENAI_HTTP_ERROR: dict[str, Any] = {
    "id": "batch_req_2",
    "custom_id": "too-long",
    "response": {
        "status_code": 400,
        "request_id": "req_2",
        "body": {
            "error": {
                "message": "context too long",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        },
    },
    "error": None,
}
EXPIRED: dict[str, Any] = {
    "id": "batch_req_3",
    "custom_id": "request-3",
    "response": None,
    "error": {"code": "batch_expired", "message": "This request could not be executed."},
}
DS_ERROR: dict[str, Any] = {
    "id": "u-4",
    "custom_id": "ds",
    "response": None,
    "error": {"error_code": "InvalidParameter", "error_message": "bad input"},
}
EMBEDDING: dict[str, Any] = {
    "custom_id": "emb",
    "response": {
        "status_code": 200,
        "request_id": "r5",
        "body": {
            "object": "list",
            "model": "text-embedding-v4",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3, 0.4]}],
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        },
    },
    "error": None,
}


def convert_results(tmp_path: Path, *records: Any, extra: tuple[str | Path, ...] = ()) -> Result:
    src = write_jsonl(tmp_path / "results.jsonl", list(records))
    return run("jsonl-to-csv", src, "-o", tmp_path / "out.csv", *extra)


def test_openai_output_line(tmp_path: Path) -> None:
    result = convert_results(tmp_path, OK_LINE)

    assert result.exit_code == 0, result.output
    assert read_result_csv(tmp_path / "out.csv") == [
        {
            "custom_id": "request-2",
            "model": "gpt-3.5-turbo-0125",
            "request_id": "req_123",
            "status_code": "200",
            "error_code": "",
            "error_message": "",
            "created": "1711652795",
            "content": "Hello, 世界.",
            "usage": '{"prompt_tokens":22,"completion_tokens":2,"total_tokens":24}',
        }
    ]
    assert "wrote 1 row(s)" in result.stderr
    assert "0 with errors" in result.stderr


def test_header_row_and_plain_utf8_by_default(tmp_path: Path) -> None:
    convert_results(tmp_path, OK_LINE)

    data = (tmp_path / "out.csv").read_bytes()
    assert data.startswith(b"custom_id,model,request_id,")
    assert next(csv.reader(io.StringIO(data.decode()))) == list(RESULT_COLUMNS)


def test_error_lines_of_every_shape(tmp_path: Path) -> None:
    results = write_jsonl(tmp_path / "out.jsonl", [OK_LINE])
    errors = write_jsonl(tmp_path / "err.jsonl", [OPENAI_HTTP_ERROR, EXPIRED, DS_ERROR])

    result = run("jsonl-to-csv", results, errors, "-o", tmp_path / "out.csv")

    assert result.exit_code == 0, result.output
    rows = {row["custom_id"]: row for row in read_result_csv(tmp_path / "out.csv")}
    assert list(rows) == ["request-2", "too-long", "request-3", "ds"]
    assert rows["too-long"]["status_code"] == "400"
    assert rows["too-long"]["error_code"] == "context_length_exceeded"
    assert rows["too-long"]["error_message"] == "context too long"
    assert rows["request-3"]["error_code"] == "batch_expired"
    assert rows["request-3"]["status_code"] == rows["request-3"]["model"] == ""
    assert rows["ds"]["error_code"] == "InvalidParameter"
    assert rows["ds"]["error_message"] == "bad input"
    assert "wrote 4 row(s)" in result.stderr
    assert "3 with errors" in result.stderr


def test_lowtide_error_line_prefers_the_top_level_error() -> None:
    line = {**OPENAI_HTTP_ERROR, "error": {"code": "http_400", "message": "top"}}

    row = result_row(line)

    assert (row.error_code, row.error_message, row.failed) == ("http_400", "top", True)


def test_embedding_content_is_the_vector_length() -> None:
    packed = base64.b64encode(struct.pack("<3f", 1.0, 2.0, 3.0)).decode()
    base64_line = json.loads(json.dumps(EMBEDDING))
    base64_line["response"]["body"]["data"][0]["embedding"] = packed

    assert result_row(EMBEDDING).content == "4"
    assert result_row(base64_line).content == "3"
    assert result_row(EMBEDDING).model == "text-embedding-v4"


def test_completions_and_responses_content() -> None:
    completion = {"response": {"status_code": 200, "body": {"choices": [{"text": "done"}]}}}
    responses_body = {
        "output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "Hel"}]},
            {"type": "message", "content": [{"type": "output_text", "text": "lo"}]},
        ]
    }
    response = {"response": {"status_code": 200, "body": responses_body}}

    assert result_row(completion).content == "done"
    assert result_row(response).content == "Hello"


@pytest.mark.parametrize(
    "record",
    [
        [],
        1,
        "text",
        None,
        {"response": []},
        {"response": {"body": "oops", "status_code": "500"}},
        {"response": {"body": {"choices": []}}},
        {"response": {"body": {"choices": [1]}}},
        {"response": {"body": {"choices": [{"message": None}]}}},
        {"response": {"body": {"output": [None, {"content": "x"}]}}},
        {"response": {"body": {"data": [{"embedding": "not base64!"}]}}},
        {"response": {"status_code": 502, "body": {"error": "plain string"}}},
        {"custom_id": 7, "error": ["odd"]},
    ],
)
def test_never_crashes_on_odd_shapes(record: Any) -> None:
    row = result_row(record)

    assert len(row) == len(RESULT_COLUMNS)
    assert all(isinstance(cell, str) for cell in row)
    assert row.failed


def test_invalid_json_line_names_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "results.jsonl"
    src.write_text(json.dumps(OK_LINE) + "\n\n" + "{not json\n", encoding="utf-8")

    result = run("jsonl-to-csv", src, "-o", tmp_path / "out.csv")

    assert result.exit_code == 1
    assert f"{src}: line 3: not valid JSON" in result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_input_file_orders_rows_and_reports_gaps(tmp_path: Path) -> None:
    def ok(custom_id: str) -> dict[str, Any]:
        return {**OK_LINE, "custom_id": custom_id}

    results = write_jsonl(tmp_path / "out.jsonl", [ok("c"), ok("stray"), ok("a")])
    errors = write_jsonl(tmp_path / "err.jsonl", [{**EXPIRED, "custom_id": "b"}])
    batch = [{"custom_id": cid} for cid in ["a", "b", "missing", "c"]]
    batch_input = write_jsonl(tmp_path / "in.jsonl", batch)
    out = tmp_path / "out.csv"

    result = run("jsonl-to-csv", results, errors, "--input", batch_input, "-o", out)

    assert result.exit_code == 0, result.output
    rows = read_result_csv(out)
    assert [row["custom_id"] for row in rows] == ["a", "b", "c", "stray"]
    assert rows[1]["error_code"] == "batch_expired"
    assert "1 input request(s) have no result" in result.stderr
    assert "1 result(s) not in the input" in result.stderr


def test_input_ordering_handles_a_bom_and_duplicate_result_ids(tmp_path: Path) -> None:
    results = tmp_path / "out.jsonl"
    lines = [
        {**OK_LINE, "custom_id": "x"},
        {**EXPIRED, "custom_id": "y"},
        {**EXPIRED, "custom_id": "x"},
    ]
    results.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in lines).encode())
    batch_input = write_jsonl(tmp_path / "in.jsonl", [{"custom_id": "y"}, {"custom_id": "x"}])

    result = run("jsonl-to-csv", results, "--input", batch_input, "-o", tmp_path / "o.csv")

    assert result.exit_code == 0, result.output
    rows = read_result_csv(tmp_path / "o.csv")
    assert [(row["custom_id"], row["status_code"]) for row in rows] == [
        ("y", ""),
        ("x", "200"),
        ("x", ""),
    ]


def test_excel_flag_writes_a_bom(tmp_path: Path) -> None:
    convert_results(tmp_path, OK_LINE, extra=("--excel",))

    data = (tmp_path / "out.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbfcustom_id,")
    assert data.count(b"\xef\xbb\xbf") == 1
    assert "世界".encode() in data


def test_csv_to_stdout(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "results.jsonl", [OK_LINE])

    result = run("jsonl-to-csv", src)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].startswith("request-2,gpt-3.5-turbo-0125,req_123,200,")


@pytest.mark.parametrize("command", ["csv-to-jsonl", "jsonl-to-csv"])
def test_help_shows_an_example(command: str) -> None:
    result = run(command, "--help")

    assert result.exit_code == 0
    assert f"  lowtide convert {command} " in result.stdout


# --------------------------------------------------------------------------- streaming


# Unmeasured (the `untraced` mark): the small conversions run the same code, and coverage's
# tracer would double the CPU of these 50 MB.
@pytest.mark.slow
@pytest.mark.untraced
def test_a_50_mb_csv_converts_in_flat_memory(tmp_path: Path) -> None:
    src = tmp_path / "big.csv"
    text = "lorem ipsum, dolor sit amet " * 180  # ~5 KB per row, quoted (it has commas)
    with src.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        for number in range(10_000):
            writer.writerow([f"req-{number}", f"{number} {text}"])
    assert src.stat().st_size > 50_000_000
    out = tmp_path / "big.jsonl"

    tracemalloc.start()
    try:
        result = run("csv-to-jsonl", src, "-o", out, "--model", "m")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.exit_code == 0, result.output
    assert out.stat().st_size > src.stat().st_size
    assert peak < 4_000_000, f"peak {peak / 1e6:.1f} MB"


@pytest.mark.slow
@pytest.mark.untraced  # as above
def test_results_with_input_ordering_convert_in_flat_memory(tmp_path: Path) -> None:
    body = {**OK_LINE["response"]["body"], "choices": [{"message": {"content": "x" * 5_000}}]}
    results = tmp_path / "out.jsonl"
    batch_input = tmp_path / "in.jsonl"
    with results.open("w") as out_handle, batch_input.open("w") as in_handle:
        for number in range(5_000):
            line = {"custom_id": f"r{number}", "response": {"status_code": 200, "body": body}}
            out_handle.write(json.dumps(line) + "\n")
            in_handle.write(json.dumps({"custom_id": f"r{4_999 - number}"}) + "\n")

    tracemalloc.start()
    try:
        result = run("jsonl-to-csv", results, "--input", batch_input, "-o", tmp_path / "o.csv")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.exit_code == 0, result.output
    assert peak < 4_000_000, f"peak {peak / 1e6:.1f} MB"
