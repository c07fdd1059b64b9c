"""A mistake in the config file is reported in the file's own terms, with a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowtide import errors
from lowtide.settings import load_settings


def problems(tmp_path: Path, toml: str) -> list[str]:
    path = tmp_path / "lowtide.toml"
    path.write_text(toml)
    with pytest.raises(errors.ConfigError) as info:
        load_settings(path)
    head, *lines = info.value.message.splitlines()
    assert head == f"invalid configuration in {path}:"
    return [line.strip() for line in lines]


def test_a_misspelt_key_names_its_backend_and_the_key_meant(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
[[backends]]
name = "ok"
base_url = "http://127.0.0.1:8001/v1"
models = ["a"]

[[backends]]
name = "local-vllm"
base_url = "http://127.0.0.1:8002/v1"
models = ["b"]
max_concurency = 64
""",
    )
    assert found == [
        "[[backends]] \"local-vllm\" max_concurency: unknown key; did you mean 'max_concurrency'?"
    ]


def test_sections_tables_and_values_are_named_as_written(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
[server]
prot = 8000

[engine]
max_attempts = "five"

[models."qwen"]
input_prise = 1.0

[engin]
x = 1
""",
    )
    assert found == [
        "[server] prot: unknown key; did you mean 'port'?",
        "[models.\"qwen\"] input_prise: unknown key; did you mean 'input_price'?",
        "[engine] max_attempts: Input should be a valid integer, unable to parse string as an "
        "integer (got 'five')",
        "engin: unknown key; did you mean 'engine'?",
    ]


def test_a_backend_without_a_name_is_numbered(tmp_path: Path) -> None:
    found = problems(tmp_path, '[[backends]]\nbase_url = "x"\nmodels = ["a"]\n')
    assert found == ["[[backends]] #1 name: Field required"]


def test_a_key_with_nothing_close_lists_the_known_ones(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, "[billing]\nzzz = 1\n")
    assert found == "[billing] zzz: unknown key; known keys: batch_discount, currency"
