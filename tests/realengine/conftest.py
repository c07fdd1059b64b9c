"""The real-engine tier: lowtide in front of a real inference server, llama.cpp's (through
llama-cpp-python), serving a tiny random model the tests write themselves.

The answers are nonsense; what is real is the server's HTTP behaviour: its token counts, its
``max_tokens`` handling, its context-length errors and its 500s. The server is installed by
``scripts/ensure-llama-server`` (``make install-dev``) into ``.venv-llama``. Where it is
missing the tier is skipped, except on CI or with ``LOWTIDE_REQUIRE_LLAMA=1``, where that
is a failure: there the build is always possible.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lowtide.testing.harness import Lowtide
from tests.realengine import tiny_model
from tests.realengine.llama_server import VENV, LlamaServer, installed_python

# The checks of result lines live in a helper module: show their values when they fail.
pytest.register_assert_rewrite("tests.realengine.lines")

KEY = "sk-realengine-0001"  # lowtide's key, for the openai SDK
BACKEND_KEY = "sk-llama-backend-0001"  # the llama server's own key, which lowtide must send
MODEL = "tiny"  # as batch lines name it
ALIAS = "tiny-random-llama"  # as the llama server knows it (lowtide's model_aliases)


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    python = installed_python()
    if python is None:
        reason = (
            f"llama.cpp's server is not installed in {VENV}: run scripts/ensure-llama-server "
            "(make install-dev does; the first build needs a C/C++ compiler and ~8 minutes)"
        )
        if os.environ.get("CI") or os.environ.get("LOWTIDE_REQUIRE_LLAMA") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("llama")
    model = tiny_model.write(workdir / "tiny.gguf")
    server = LlamaServer(python, model, workdir, alias=ALIAS, api_key=BACKEND_KEY)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def config_toml(
    llama: LlamaServer,
    *,
    max_attempts: int = 3,
    max_concurrency: int = 4,
    record_sent_body: bool = False,
) -> str:
    return f"""
[[api_keys]]
key = "{KEY}"
account = "real"

[[backends]]
name = "llama"
base_url = "{llama.base_url}"
api_key = "{BACKEND_KEY}"
dialect = "llamacpp"
models = ["{MODEL}"]
model_aliases = {{ "{MODEL}" = "{ALIAS}" }}
max_concurrency = {max_concurrency}
timeout = 60

[models."{MODEL}"]
input_price = 1.0
output_price = 2.0
currency = "USD"

[billing]
batch_discount = 0.5

[engine]
max_attempts = {max_attempts}
retry_base_delay = 0.05
retry_max_delay = 0.2
record_sent_body = {str(record_sent_body).lower()}
"""


LowtideFactory = Callable[..., Lowtide]


@pytest.fixture
def make_lowtide(tmp_path: Path, llama: LlamaServer) -> Iterator[LowtideFactory]:
    started: list[Lowtide] = []

    def make(**options: Any) -> Lowtide:
        workdir = tmp_path / f"lowtide{len(started)}"
        workdir.mkdir()
        server = Lowtide(workdir, config_toml(llama, **options))
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()
