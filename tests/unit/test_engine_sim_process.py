"""``python -m lowtide.testing.engine_sim``: its flags, its ready line, and its end."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lowtide.testing.engine_sim import EngineConfig, SimEngineProcess
from lowtide.testing.engine_sim.cli import build_parser, config_from_args
from lowtide.testing.engine_sim.config import require_loopback
from lowtide.testing.harness import http_json

# The simulated engine's own command line and process are what these tests are about.
pytestmark = pytest.mark.measure_children


def test_every_setting_is_a_flag_and_json_comes_before_the_flags() -> None:
    args = build_parser().parse_args(
        ["--max-seqs", "32", "--speed", "2.5", "--config-json", '{"max_seqs": 8, "rpm": 60}']
    )
    config = config_from_args(args)
    assert config.max_seqs == 32 and config.speed == 2.5 and config.rpm == 60
    assert config.kv_tokens == EngineConfig().kv_tokens


def test_bad_settings_are_refused_with_a_clear_message() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lowtide.testing.engine_sim", "--max-seqs", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "max_seqs must be at least 1" in done.stderr
    with pytest.raises(ValueError, match="loopback"):
        require_loopback("10.0.0.1")


def test_the_process_prints_its_url_serves_and_ends_when_stopped() -> None:
    config = EngineConfig(max_seqs=4, max_model_len=2048, speed=100.0)
    with SimEngineProcess(config) as eng:
        assert eng.url.startswith("http://127.0.0.1:")
        models = http_json(eng.base_url + "/models")
        assert models["data"][0]["max_model_len"] == 2048
        answer = http_json(
            eng.base_url + "/chat/completions",
            {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 3},
        )
        assert answer["usage"]["completion_tokens"] == 3
        stats = eng.stats(records=True)
        assert stats["finished"] == 1 and len(stats["records"]) == 1
        assert stats["config"]["max_seqs"] == 4
        eng.reset(cache=True)
        assert eng.stats()["finished"] == 0
        proc = eng.proc
    assert proc is not None and proc.returncode is not None
