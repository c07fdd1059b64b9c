"""schemathesis against the real ``lowtide serve``, reading the server's own ``/openapi.json``
made strict (``strict.py``: an answer with a key its schema does not declare fails).

It runs every check (``--checks all``): no 5xx; every status, header, content type and body
as documented; invalid input refused and valid input accepted; 405 with an exact ``Allow``;
links followed from create to retrieve, cancel and delete; ``ignored_auth`` (every operation
refuses a missing or wrong key) and ``object_level_authorization`` (what alice created or listed,
bob's key cannot read). Settings are in ``schemathesis.toml`` beside this file.

The ``/v1`` and ``/compatible-mode/v1`` routes are the same routers under two prefixes, and are
tested in two passes: in one run schemathesis would take a file deleted under one prefix and
then read under the other for a "created resource not found", not knowing that both paths
name one object.

Beside it, against the same server: the patterns of the document judged value by value
against what the server takes, the body limit of every route, the ``Allow`` of 405s, and a
check that every operation is described.
"""

from __future__ import annotations

import http.client
import json
import random
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from lowtide.api.middleware import MAX_BODY
from lowtide.testing.children import unmeasured_env
from lowtide.testing.harness import HOST, Lowtide
from tests.schema.strict import served, strict
from tests.support.batches import ALICE, BOB, config_toml

# The server these tests fuzz is measured: its answers to the fuzzer's requests, its start and exit.
pytestmark = pytest.mark.measure_children

HERE = Path(__file__).parent
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# A fixed seed keeps `make test` deterministic; run the CLI by hand (docs/security.md) to
# explore more.
SEED = 20260601
# Each pass: the paths it takes, and its examples per operation (30 reach every check on
# every operation). The second pass runs the same routers under another prefix: a third of
# the examples proves the mount, its links and its checks there (at 30 it took 53 s).
PASSES = {
    "v1": (r"^/(v1/|health$|ready$)", 30),
    "compatible-mode": (r"^/compatible-mode/v1/", 10),
}
# Rate limits and the test model's live-batch limit would turn most requests into 429s.
GENEROUS_LIMITS = """
[account_defaults]
create_per_minute = 1000000
retrieve_per_minute = 1000000
list_per_minute = 1000000
cancel_per_minute = 1000000
upload_per_minute = 1000000

[limits]
test_batches_per_account = 1000000
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lowtide]:
    workdir = tmp_path_factory.mktemp("schemathesis-server")
    lowtide = Lowtide(workdir, config_toml(None, extra=GENEROUS_LIMITS))
    lowtide.start()
    yield lowtide
    lowtide.stop()


def _call(server: Lowtide, method: str, path: str, body: Any = None) -> int:
    request = urllib.request.Request(
        server.base_url + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def _documented(server: Lowtide, method: str, path: str, name: str) -> dict[str, Any]:
    """The schema the served document gives to a query parameter or a JSON body field."""
    with urllib.request.urlopen(server.url + "/openapi.json", timeout=10) as response:
        document = json.load(response)
    operation = document["paths"]["/v1" + path][method]
    for parameter in operation.get("parameters", []):
        if parameter["name"] == name:
            return dict(parameter["schema"])
    body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return dict(document["components"]["schemas"][body.rsplit("/", 1)[1]]["properties"][name])


@pytest.mark.parametrize(
    "value",
    [
        "",
        "20240229000000",
        "20000229120000",
        "20230229000000",
        "19000229000000",
        "20240230000000",
        "20240431000000",
        "20240131235959",
        "20240132000000",
        "20241301000000",
        "20240101240000",
        "20240101006000",
        "20240101000060",
        "00000101000000",
        "99991231235959",
        " 20240101000000",
        "20240101000000\n",
        "2024111000000",
        "202411100000",
    ],
)
def test_documented_time_filter_is_what_the_server_takes(server: Lowtide, value: str) -> None:
    schema = _documented(server, "get", "/batches", "create_after")
    status = _call(server, "GET", "/batches?" + urllib.parse.urlencode({"create_after": value}))
    assert jsonschema_rs.is_valid(schema, value) == (status == 200), status


@pytest.mark.parametrize(
    "value",
    [
        "",
        "validating",
        " failed , completed",
        ",,",
        "cancelled,",
        "\x1fcompleted\x1f",
        "\u3000expired",
        "validating failed",
        "Validating",
        "\ufeffcompleted",
        "x",
    ],
)
def test_documented_status_filter_is_what_the_server_takes(server: Lowtide, value: str) -> None:
    schema = _documented(server, "get", "/batches", "status")
    status = _call(server, "GET", "/batches?" + urllib.parse.urlencode({"status": value}))
    assert jsonschema_rs.is_valid(schema, value) == (status == 200), status


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a",
        ",".join("abcdefghijklmnopqrst"),
        ",".join("abcdefghijklmnopqrstu"),
        ",,,,a,,,,",
        ",".join("a" * 20) + ", ,,",
        " , ",
        "\x1f,a",
    ],
)
def test_documented_file_id_filter_is_what_the_server_takes(server: Lowtide, value: str) -> None:
    schema = _documented(server, "get", "/batches", "input_file_ids")
    query = urllib.parse.urlencode({"input_file_ids": value})
    status = _call(server, "GET", "/batches?" + query)
    assert jsonschema_rs.is_valid(schema, value) == (status == 200), status


# List filter values meant to meet every branch of the parsers: blanks that Python strips and a
# regex's \s does not (or the reverse: U+FEFF, U+200B are not blank), separators, statuses,
# other text; and lists of 19 or 20 items with some that are blank or not.
_PIECES = [",", ",", " ", "\t", "\x1f", "\x85", "\u3000", "\ufeff", "\u200b", "a", "file-x"]
_PIECES += ["completed", "in_progress", "Failed", "cancelled"]
_ODD_ITEMS = ["", " ", "\x1c", "\x1f", "\x85", "\u3000", "\ufeff", "\u200b", " \t "]


def _list_value(draw: random.Random, item: str) -> str:
    if draw.random() < 0.5:
        return "".join(draw.choices(_PIECES, k=draw.randrange(12)))
    items = [item] * draw.choice([19, 20]) + draw.choices(_ODD_ITEMS, k=draw.randrange(4))
    draw.shuffle(items)
    return ",".join(items)


@pytest.mark.parametrize(("name", "item"), [("status", "completed"), ("input_file_ids", "a")])
def test_documented_list_filters_are_what_the_server_takes(
    server: Lowtide, name: str, item: str
) -> None:
    schema = _documented(server, "get", "/batches", name)
    draw = random.Random(SEED)
    outcomes: dict[tuple[bool, bool], list[str]] = {}
    for _ in range(200):
        value = _list_value(draw, item)
        status = _call(server, "GET", "/batches?" + urllib.parse.urlencode({name: value}))
        documented = jsonschema_rs.is_valid(schema, value)
        outcomes.setdefault((documented, status == 200), []).append(value)
    assert set(outcomes) == {(True, True), (False, False)}, outcomes


@pytest.mark.parametrize(
    "value",
    [
        "24h",
        "336h",
        "1d",
        "14d",
        "100h",
        "23h",
        "337h",
        "0d",
        "15d",
        "024h",
        "24H",
        "1000h",
        " 24h",
        "24h\n",
    ],
)
def test_documented_completion_window_is_what_the_server_takes(server: Lowtide, value: str) -> None:
    schema = _documented(server, "post", "/batches", "completion_window")
    body = {"input_file_id": "file-x", "endpoint": "/v1/chat/ds-test", "completion_window": value}
    status = _call(server, "POST", "/batches", body)
    assert jsonschema_rs.is_valid(schema, value) == (status == 200), status


def _raw(
    server: Lowtide, method: str, path: str, body: bytes = b"", *, chunked: bool = False
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"}
        payload: Any = iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
        if not chunked:
            payload = body or None
        connection.request(method, path, body=payload, headers=headers, encode_chunked=chunked)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_every_route_bounds_the_body_it_takes(server: Lowtide) -> None:
    over = b" " * (MAX_BODY + 1)
    for method, path, chunked in [
        ("POST", "/v1/batches", False),
        ("POST", "/v1/batches", True),  # no Content-Length: counted as it is read
        ("POST", "/v1/batches/batch_x/cancel", False),  # a route that never reads its body
        ("POST", "/compatible-mode/v1/batches", True),
        ("PUT", "/v1/nowhere", False),
    ]:
        status, _, body = _raw(server, method, path, over, chunked=chunked)
        assert status == 413, (method, path, chunked)
        assert json.loads(body)["error"]["code"] == "body_too_large"
    status, _, body = _raw(server, "GET", "/v1/files", b"{}")
    assert status == 400 and "must not carry a body" in json.loads(body)["error"]["message"]


def test_405_names_every_method_the_path_serves(server: Lowtide) -> None:
    for path, allowed in [
        ("/v1/files", "GET, POST"),
        ("/compatible-mode/v1/files/file-batch-x", "GET, DELETE"),
        ("/v1/batches/batch_x/cancel", "POST"),
        ("/v1/batches/estimate", "POST"),  # not a batch id: GET /batches/{batch_id} is not it
    ]:
        status, headers, body = _raw(server, "PATCH", path)
        assert (status, headers["allow"]) == (405, allowed), path
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
    # A body on an unserved method is still a 405, not the 400 of a read with a body.
    assert _raw(server, "DELETE", "/v1/files", b"{}")[0] == 405


def test_every_operation_is_described(server: Lowtide) -> None:
    """A route added without an entry in ``lowtide.api.openapi`` would keep FastAPI's bare
    description (no errors, a 422 it never sends): schemathesis would test it half-blind."""
    with urllib.request.urlopen(server.url + "/openapi.json", timeout=10) as response:
        document = json.load(response)
    ids = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            ids.append(operation["operationId"])
            assert "422" not in operation["responses"], (method, path)
            assert "_" not in operation["operationId"], (method, path)  # FastAPI's own ids
            public = operation.get("security") == []
            assert public == (path in ("/health", "/ready")), (method, path)
            if not public:
                assert {"401", "429"} <= set(operation["responses"]), (method, path)
    assert len(ids) == len(set(ids)) == 32


def test_auth_document_holds_the_two_accounts() -> None:
    document = json.loads((HERE / "auth.json").read_text())
    keys = {
        entry["name"]: entry["fixedHeaders"][0]["value"].removeprefix("Bearer ")
        for entry in document["auth"]
    }
    assert keys == {"alice": ALICE, "bob": BOB}


@pytest.mark.slow
@pytest.mark.parametrize("prefix", PASSES)
def test_schemathesis_finds_no_failure(server: Lowtide, tmp_path: Path, prefix: str) -> None:
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(strict(served(server.url))))
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        str(document),
        "--url",
        server.url,
        "--checks",
        "all",
        "--include-path-regex",
        PASSES[prefix][0],
        "--max-examples",
        str(PASSES[prefix][1]),
        "--seed",
        str(SEED),
        # hypothesis describes strategies by parsing their source, and Python 3.11's AST
        # constructor is not thread-safe: several workers end in spurious errors ("AST
        # constructor recursion depth mismatch").
        "--workers",
        "1",
        "--request-timeout",
        "10",
    ]
    env = {
        **unmeasured_env(),
        "LOWTIDE_WFC_AUTH": str(HERE / "auth.json"),
        "LOWTIDE_SCHEMATHESIS_HOOKS": str(HERE / "hooks.py"),
        "NO_COLOR": "1",
    }
    # In a temporary directory: schemathesis keeps its hypothesis database in the current one.
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    if done.returncode != 0:
        pytest.fail((done.stdout + done.stderr)[-30_000:], pytrace=False)
