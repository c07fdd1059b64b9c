"""Every malformed input of the validator's corpus, sent through the API and the engine: each
gets its validation code and line (or a clear 4xx at upload), never a 500, a hang or a crash.

One server answers every case (module scope, on a module-scoped event loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
import pytest_asyncio

from lowtide.domain.validation import Limits
from tests.support.batches import config_toml
from tests.support.corpus_cases import MALFORMED, SERVED, Case, params

from .conftest import FAST_ENGINE, App, start_app, wait_for

# Cases built for non-default limits test the validator alone; the server uses the defaults.
CASES = [case for case in MALFORMED if case.limits == Limits()]
MODELS = ", ".join(f'"{m}"' for m in sorted(SERVED))
# A backend that serves the corpus's models and is never reached: validation fails first.
NOWHERE = (
    f'\n[[backends]]\nname = "nowhere"\nbase_url = "http://127.0.0.1:9/v1"\nmodels = [{MODELS}]\n'
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[App]:
    toml = config_toml(None, engine=FAST_ENGINE) + NOWHERE
    app = await start_app(tmp_path_factory.mktemp("corpus") / "lowtide", toml)
    yield app
    await app.close()


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", params(CASES))
async def test_malformed_input_fails_with_its_code_and_line(server: App, case: Case) -> None:
    c = server.client()
    try:
        upload = await c.files.create(file=(f"{case.name}.jsonl", case.content), purpose="batch")
    except openai.BadRequestError as exc:
        # Upload refuses only what is not UTF-8 text.
        assert "utf-8" in exc.body["message"]  # type: ignore[index]
        return
    batch = await c.batches.create(
        input_file_id=upload.id,
        endpoint=case.endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )
    batch = await wait_for(c, batch.id, statuses={"failed", "in_progress", "completed"})
    assert batch.status == "failed", batch
    first = batch.errors.data[0]
    assert (first.code, first.param, first.line) == (case.code, case.param, case.line)
    assert batch.request_counts.total == 0 and batch.output_file_id is None
