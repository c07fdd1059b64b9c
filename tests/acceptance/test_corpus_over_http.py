"""Every malformed input of the validator's corpus, sent through the real server: each gets its
validation code and line (or a clear 4xx at upload), never a 500, a hang or a crash."""

from __future__ import annotations

import time

import openai
import pytest

from lowtide.domain.validation import Limits
from tests.unit.corpus_cases import MALFORMED, SERVED

from .conftest import ALICE, client

# Cases built for non-default limits test the validator alone; the server uses the defaults.
CASES = [case for case in MALFORMED if case.limits == Limits()]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from lowtide.testing.harness import Lowtide

    from .conftest import config_toml

    workdir = tmp_path_factory.mktemp("corpus")
    models = ", ".join(f'"{m}"' for m in sorted(SERVED))
    backend = (
        '\n[[backends]]\nname = "nowhere"\nbase_url = "http://127.0.0.1:9/v1"\n'
        f"models = [{models}]\n"
    )
    srv = Lowtide(workdir, config_toml(None) + backend)
    srv.start()
    yield srv
    srv.stop()


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_malformed_input_fails_with_its_code_and_line(server, case):
    c = client(server, ALICE)
    try:
        upload = c.files.create(file=(f"{case.name}.jsonl", case.content), purpose="batch")
    except openai.BadRequestError as exc:
        # Upload refuses only what is not UTF-8 text (section 13 point 8).
        assert "utf-8" in exc.body["message"]
        return
    batch = c.batches.create(
        input_file_id=upload.id,
        endpoint=case.endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )
    deadline = time.monotonic() + 60
    while batch.status == "validating":
        assert time.monotonic() < deadline, "validation hung"
        time.sleep(0.05)
        batch = c.batches.retrieve(batch.id)
    assert batch.status == "failed", batch
    first = batch.errors.data[0]
    assert (first.code, first.param, first.line) == (case.code, case.param, case.line)
    assert batch.request_counts.total == 0 and batch.output_file_id is None
