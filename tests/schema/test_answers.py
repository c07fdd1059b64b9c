"""Every answer of every operation, against the served document made strict (``strict.py``):
each status is documented, its required headers are sent, its media type is documented, and
its body has exactly the keys its schema declares (a key sent but not declared fails).

One server, with accounts set up to reach the statuses: alice with no limit in the way, bob
and dave (erin and frank in reserve) with every rate limit at one request a minute (429),
carol with room for one file (403); a backend that refuses connections keeps a batch in
progress so that it can be cancelled. Each operation is called under both prefixes; every
documented status of every operation must be seen, but for those in ``NOT_PROVOKED``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest

from lowtide.testing.harness import Lowtide, free_port
from tests.schema.strict import Json, problems, served, strict
from tests.support.batches import ALICE, BOB, chat_line, config_toml, jsonl

CAROL = "sk-test-carol-000001"
DAVE = "sk-test-dave-0000001"
# Limited like bob and dave, for a run of ``limits`` that has to be made again.
ERIN = "sk-test-erin-0000001"
FRANK = "sk-test-frank-000001"
TEST_URL = "/v1/chat/ds-test"
MAX_FILE_BYTES = 65_536
# A healthy server cannot be made to answer these: a full disk, a database that is down.
NOT_PROVOKED = {
    ("createFile", 507),
    ("createBatch", 507),
    ("retryBatch", 507),
    ("ready", 503),
}
_LIMITS = "".join(
    f"{kind}_per_minute = {{n}}\n" for kind in ("create", "retrieve", "list", "cancel", "upload")
)
CONFIG = f"""
[[api_keys]]
key = "{CAROL}"
account = "carol"

[[api_keys]]
key = "{DAVE}"
account = "dave"

[[api_keys]]
key = "{ERIN}"
account = "erin"

[[api_keys]]
key = "{FRANK}"
account = "frank"

[[backends]]
name = "refuses"
base_url = "http://127.0.0.1:{{port}}/v1"
models = ["fake-model"]

[account_defaults]
{_LIMITS.format(n=1_000_000)}
[accounts.bob]
{_LIMITS.format(n=1)}
[accounts.dave]
{_LIMITS.format(n=1)}
[accounts.erin]
{_LIMITS.format(n=1)}
[accounts.frank]
{_LIMITS.format(n=1)}
[accounts.carol]
max_files = 1

[limits]
test_batches_per_account = 1000000
max_file_bytes = {MAX_FILE_BYTES}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lowtide]:
    # A port nothing listens on: the backend refuses every connection.
    extra = CONFIG.replace("{port}", str(free_port()))
    lowtide = Lowtide(tmp_path_factory.mktemp("answers-server"), config_toml(None, extra=extra))
    lowtide.start()
    yield lowtide
    lowtide.stop()


class Checker:
    """Makes calls, and checks each answer against the strict document."""

    def __init__(self, server: Lowtide) -> None:
        self.url = server.url
        self.document = strict(served(server.url))
        self.http = httpx.Client(timeout=30)
        self.seen: set[tuple[str, int]] = set()
        self.failures: list[str] = []
        #: A batch of carol's with a failed line; she has no room for another file.
        self.carol_batch = ""

    def __call__(
        self, key: str | None, method: str, path: str, expect: int, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        headers.update(kwargs.pop("headers", {}))
        response = self.http.request(method, self.url + path, headers=headers, **kwargs)
        where = f"{method} {path} -> {response.status_code}"
        if response.status_code != expect:
            self.failures.append(f"{where}: expected {expect}: {response.text[:300]}")
        self.failures += [f"{where}: {problem}" for problem in self.check(method, path, response)]
        return response

    def check(self, method: str, path: str, response: httpx.Response) -> list[str]:
        status = response.status_code
        operation = self.operation(method.lower(), path)
        if operation is None:  # no route serves it: the shared answers of the document
            shared = "MethodNotAllowed" if status == 405 else "NotFound"
            documented = self.document["components"]["responses"][shared]
            self.seen.add(("*", status))
        elif str(status) not in operation["responses"]:
            return ["the status is not documented"]
        else:
            documented = operation["responses"][str(status)]
            self.seen.add((operation["operationId"], status))
        found = [
            f"the required header {name} is missing"
            for name, header in documented.get("headers", {}).items()
            if header.get("required") and name not in response.headers
        ]
        media = response.headers.get("content-type", "").split(";")[0]
        content = documented.get("content", {})
        if media not in content:
            return [*found, f"{media} is not a documented media type"]
        if media == "application/json":
            found += problems(self.document, content[media]["schema"], response.json())
        return found

    def operation(self, method: str, path: str) -> Json | None:
        parts = path.split("?")[0].split("/")
        for template, item in self.document["paths"].items():
            names = template.split("/")
            if len(names) == len(parts) and all(
                n == p or n.startswith("{") for n, p in zip(names, parts, strict=True)
            ):
                operation: Json | None = item.get(method)
                return operation
        return None

    def wait(self, path: str, statuses: set[str], key: str = ALICE) -> Json:
        deadline = time.monotonic() + 60
        while True:
            batch: Json = self.http.get(self.url + path, headers=_auth(key)).json()
            if batch["status"] in statuses or time.monotonic() > deadline:
                return batch
            time.sleep(0.1)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _upload(data: bytes, **fields: str) -> dict[str, Any]:
    return {"files": {"file": ("input.jsonl", data)}, "data": fields}


def _batch(file_id: str, endpoint: str = TEST_URL, window: str = "24h") -> dict[str, Any]:
    body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": window}
    return {"json": body}


TEST_LINES = jsonl([chat_line(i, "hi", model="batch-test-model", url=TEST_URL) for i in "ab"])
WRONG_URL = jsonl([chat_line("w", "x", model="batch-test-model", url="/v1/chat/completions")])
REFUSED = jsonl([chat_line("r", "x")])  # to the backend that refuses: stays in progress
OVER = b" " * ((1 << 20) + 1)


def files(call: Checker, p: str) -> str:
    """The Files API's answers; returns a file id of alice's."""
    file_id = call(ALICE, "POST", p + "/files", 200, **_upload(TEST_LINES, purpose="batch"))
    file_id = file_id.json()["id"]
    call(ALICE, "POST", p + "/files", 400, **_upload(TEST_LINES))
    call(None, "POST", p + "/files", 401, **_upload(TEST_LINES, purpose="batch"))
    call(ALICE, "POST", p + "/files", 415, json={"purpose": "batch"})
    big = b"\n" * (MAX_FILE_BYTES + 1)
    call(ALICE, "POST", p + "/files", 413, **_upload(big, purpose="batch"))
    key = {"headers": {"Idempotency-Key": f"answers-{p}"}}
    call(ALICE, "POST", p + "/files", 200, **_upload(TEST_LINES, purpose="batch"), **key)
    call(ALICE, "POST", p + "/files", 409, **_upload(REFUSED, purpose="batch"), **key)
    for path in ("/files", f"/files/{file_id}", f"/files/{file_id}/content"):
        call(ALICE, "GET", p + path, 200)
        call(ALICE, "GET", p + path, 400, content=b"{}")
        call(None, "GET", p + path, 401)
    call(ALICE, "GET", p + "/files?limit=0", 400)
    for path in ("/files/file-batch-none", "/files/file-batch-none/content"):
        call(ALICE, "GET", p + path, 404)
    spare = call(ALICE, "POST", p + "/files", 200, **_upload(TEST_LINES, purpose="batch"))
    call(ALICE, "DELETE", f"{p}/files/{spare.json()['id']}", 200)
    call(ALICE, "DELETE", f"{p}/files/{spare.json()['id']}", 404)
    call(ALICE, "DELETE", f"{p}/files/{file_id}", 400, content=b"{}")
    call(None, "DELETE", f"{p}/files/{file_id}", 401)
    return str(file_id)


def batches(call: Checker, p: str, file_id: str) -> None:
    """The Batches API's answers: a completed batch, a failed one (with errors), a cancelled
    one, and every refusal."""
    upload = _upload(WRONG_URL, purpose="batch")
    wrong = call(ALICE, "POST", p + "/files", 200, **upload).json()["id"]
    done = call(ALICE, "POST", p + "/batches", 200, **_batch(file_id)).json()["id"]
    failed = call(ALICE, "POST", p + "/batches", 200, **_batch(wrong)).json()["id"]
    call(ALICE, "POST", p + "/batches", 400, **_batch(file_id, window="1h"))
    call(None, "POST", p + "/batches", 401, **_batch(file_id))
    call(ALICE, "POST", p + "/batches", 413, content=OVER)
    key = {"headers": {"Idempotency-Key": f"answers-{p}"}}
    call(ALICE, "POST", p + "/batches", 200, **_batch(file_id), **key)
    call(ALICE, "POST", p + "/batches", 409, **_batch(wrong), **key)
    assert call.wait(f"{p}/batches/{done}", {"completed"})["status"] == "completed"
    assert call.wait(f"{p}/batches/{failed}", {"failed"})["status"] == "failed"
    for batch_id in (done, failed):
        call(ALICE, "GET", f"{p}/batches/{batch_id}", 200)
    call(ALICE, "GET", p + "/batches", 200)
    call(ALICE, "GET", p + "/batches?status=bogus", 400)
    call(ALICE, "GET", p + "/batches", 400, content=b"{}")
    call(None, "GET", p + "/batches", 401)
    call(ALICE, "GET", p + "/batches/batch_none", 404)
    call(ALICE, "GET", f"{p}/batches/{done}", 400, content=b"{}")
    call(None, "GET", f"{p}/batches/{done}", 401)
    refused = call(ALICE, "POST", p + "/files", 200, **_upload(REFUSED, purpose="batch"))
    body = _batch(refused.json()["id"], endpoint="/v1/chat/completions")
    running = call(ALICE, "POST", p + "/batches", 200, **body).json()["id"]
    call.wait(f"{p}/batches/{running}", {"in_progress"})
    controls(call, p, done, running, file_id)
    call(ALICE, "POST", f"{p}/batches/{running}/cancel", 200)
    assert call.wait(f"{p}/batches/{running}", {"cancelled"})["status"] == "cancelled"
    retried = call(ALICE, "POST", f"{p}/batches/{running}/retry", 200)  # its unrun line
    assert retried.json()["metadata"] == {"retry_of": running}
    call(ALICE, "POST", f"{p}/batches/{failed}/retry", 409)  # nothing ran: nothing to retry
    call(ALICE, "POST", f"{p}/batches/{running}/retry", 400, json={"codes": "batch_cancelled"})
    call(ALICE, "POST", f"{p}/batches/{done}/cancel", 409)
    call(ALICE, "POST", p + "/batches/batch_none/cancel", 404)
    call(ALICE, "POST", f"{p}/batches/{done}/cancel", 413, content=OVER)
    call(None, "POST", f"{p}/batches/{done}/cancel", 401)
    call(ALICE, "GET", p + "/backends", 200)
    call(ALICE, "GET", p + "/backends", 400, content=b"{}")
    call(None, "GET", p + "/backends", 401)


def controls(call: Checker, p: str, done: str, running: str, file_id: str) -> None:
    """The batch controls' answers (lowtide's extensions): a completed batch and one in
    progress (its backend refuses every connection)."""
    estimate = {"json": {"input_file_id": file_id, "endpoint": TEST_URL}}
    call(ALICE, "POST", p + "/batches/estimate", 200, **estimate)
    call(ALICE, "POST", p + "/batches/estimate", 400, json={"input_file_id": file_id})
    call(ALICE, "POST", p + "/batches/estimate", 413, content=OVER)
    call(None, "POST", p + "/batches/estimate", 401, **estimate)
    for query in ("", "?kind=output&after=1", "?kind=errors&contiguous=true"):
        call(ALICE, "GET", f"{p}/batches/{done}/results{query}", 200)
    call(ALICE, "GET", f"{p}/batches/{done}/results?kind=both", 400)
    call(ALICE, "GET", f"{p}/batches/{done}/results", 400, content=b"{}")
    call(ALICE, "GET", p + "/batches/batch_none/results", 404)
    call(None, "GET", f"{p}/batches/{done}/results", 401)
    for verb in ("pause", "pause", "resume", "resume"):
        paused = call(ALICE, "POST", f"{p}/batches/{running}/{verb}", 200).json()
        assert (paused["paused_at"] is None) == (verb == "resume"), paused
    for verb in ("pause", "resume", "retry"):
        call(ALICE, "POST", f"{p}/batches/{done if verb != 'retry' else running}/{verb}", 409)
        call(ALICE, "POST", f"{p}/batches/batch_none/{verb}", 404)
        call(ALICE, "POST", f"{p}/batches/{done}/{verb}", 413, content=OVER)
        call(None, "POST", f"{p}/batches/{done}/{verb}", 401)
    call(ALICE, "POST", f"{p}/batches/{done}/retry", 409)  # every line completed
    call(CAROL, "POST", f"{p}/batches/{call.carol_batch}/retry", 403)  # no room for its file


def limits(call: Checker, p: str, key: str) -> None:
    """429 on every operation: ``key`` may make one request a minute of each kind."""
    file_id = call(key, "POST", p + "/files", 200, **_upload(TEST_LINES, purpose="batch"))
    call(key, "POST", p + "/files", 429, **_upload(TEST_LINES, purpose="batch"))
    call(key, "POST", p + "/batches", 200, **_batch(file_id.json()["id"]))
    call(key, "POST", p + "/batches", 429, **_batch(file_id.json()["id"]))
    call(key, "GET", p + "/files", 200)
    for path in ("/files", "/batches"):
        call(key, "GET", p + path, 429)
    call(key, "GET", p + "/files/file-batch-none", 404)
    for path in ("/files/file-batch-none", "/files/x/content", "/batches/batch_none", "/backends"):
        call(key, "GET", p + path, 429)
    call(key, "DELETE", p + "/files/file-batch-none", 429)
    call(key, "POST", p + "/batches/batch_none/cancel", 404)
    call(key, "POST", p + "/batches/batch_none/cancel", 429)
    for verb in ("pause", "resume", "retry"):
        call(key, "POST", f"{p}/batches/batch_none/{verb}", 429)
    call(key, "GET", p + "/batches/batch_none/results", 429)
    call(key, "POST", p + "/batches/estimate", 429, json={"input_file_id": "x"})


def limits_within_a_minute(call: Checker, p: str, keys: tuple[str, ...]) -> None:
    """``limits`` with the first of ``keys`` whose run ends in the clock minute it began in.

    The rate limiter counts in fixed windows of a clock minute (``service/ratelimit.py``): a run
    that crosses a minute's end gets a call through that it expects refused. Such a run's
    failures are dropped, and the next key, whose counts start afresh, runs it again."""
    for key in keys:
        minute, failures = int(time.time() // 60), len(call.failures)
        limits(call, p, key)
        if int(time.time() // 60) == minute:
            return
        del call.failures[failures:]
    raise AssertionError(f"each of {len(keys)} runs of the limits crossed a minute's end")


def test_every_answer_is_what_the_document_declares(server: Lowtide) -> None:
    call = Checker(server)
    # Carol's one file: a batch of it that ends with a failed line (cancelled before it ran).
    carol_file = call(CAROL, "POST", "/v1/files", 200, **_upload(REFUSED, purpose="batch"))
    body = _batch(carol_file.json()["id"], endpoint="/v1/chat/completions")
    carol = f"/v1/batches/{call(CAROL, 'POST', '/v1/batches', 200, **body).json()['id']}"
    call.wait(carol, {"in_progress"}, CAROL)
    call(CAROL, "POST", carol + "/cancel", 200)
    assert call.wait(carol, {"cancelled"}, CAROL)["status"] == "cancelled"
    call.carol_batch = carol.rsplit("/", 1)[1]
    for p, limited in (("/v1", (BOB, ERIN)), ("/compatible-mode/v1", (DAVE, FRANK))):
        batches(call, p, files(call, p))
        limits_within_a_minute(call, p, limited)
        call(CAROL, "POST", p + "/files", 403, **_upload(TEST_LINES, purpose="batch"))
        call(ALICE, "PATCH", p + "/files", 405)
        call(ALICE, "GET", p + "/nowhere", 404)
    call(None, "GET", "/health", 200)
    call(None, "GET", "/ready", 200)
    documented = {
        (operation["operationId"], int(status))
        for item in call.document["paths"].values()
        for operation in item.values()
        for status in operation["responses"]
    }
    unseen = {
        (operation_id, status)
        for operation_id, status in documented - call.seen
        if (operation_id.removesuffix("CompatibleMode"), status) not in NOT_PROVOKED
    }
    assert not call.failures, "\n".join(call.failures)
    assert not unseen, sorted(unseen)
    assert {("*", 404), ("*", 405)} <= call.seen


def test_a_key_no_model_declares_fails_the_strict_document(server: Lowtide) -> None:
    """The check above bites: the server's own answer passes, the same with one key more
    (at the top or nested) does not."""
    call = Checker(server)
    file_id = call(ALICE, "POST", "/v1/files", 200, **_upload(TEST_LINES, purpose="batch"))
    call(ALICE, "POST", "/v1/batches", 200, **_batch(file_id.json()["id"]))
    page = json.loads(call(ALICE, "GET", "/v1/batches?limit=1", 200).content)
    assert not call.failures, call.failures
    document = call.document
    answer = document["paths"]["/v1/batches"]["get"]["responses"]["200"]
    schema = answer["content"]["application/json"]["schema"]
    assert page["data"] and not problems(document, schema, page)
    batch = page["data"][0]
    for changed in (
        {**page, "extra": 1},
        {**page, "data": [{**batch, "undeclared": 1}]},
        {**page, "data": [{**batch, "usage": {**batch["usage"], "extra": 1}}]},
        {**page, "data": [{**batch, "request_counts": {**batch["request_counts"], "x": 0}}]},
    ):
        assert problems(document, schema, changed), changed
