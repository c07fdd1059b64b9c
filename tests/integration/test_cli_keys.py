"""``lowtide keys`` never makes a database by accident, and says which one it wrote to."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from lowtide.cli.commands import cli


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LOWTIDE_CONFIG", raising=False)
    return CliRunner()


def test_create_without_a_database_refuses_and_says_how_to_point_at_one(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(cli, ["keys", "create", "--account", "alice"])
    assert result.exit_code == 1
    assert "there is no database at lowtide-data/lowtide.db" in result.output
    assert "--config" in result.output and "--create-database" in result.output
    assert not (tmp_path / "lowtide-data").exists()


def test_list_and_revoke_refuse_a_missing_database_too(runner: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    for args in (["keys", "list"], ["keys", "revoke", "key_x"]):
        result = runner.invoke(cli, [*args, "--database-url", url])
        assert result.exit_code == 1 and "there is no database at" in result.output
    assert not (tmp_path / "elsewhere.db").exists()


def test_create_database_makes_one_and_names_it(runner: CliRunner, tmp_path: Path) -> None:
    made = runner.invoke(cli, ["keys", "create", "--account", "alice", "--create-database"])
    assert made.exit_code == 0, made.output
    database = Path("lowtide-data") / "lowtide.db"
    assert (tmp_path / database).exists()
    assert f"in {database}:" in made.stderr
    listed = runner.invoke(cli, ["keys", "list"])  # the same default lookup finds it now
    assert listed.exit_code == 0 and "alice" in listed.stdout


def test_the_config_file_says_where_the_database_is(runner: CliRunner, tmp_path: Path) -> None:
    config = tmp_path / "lowtide.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    refused = runner.invoke(cli, ["keys", "create", "--account", "a", "--config", str(config)])
    assert refused.exit_code == 1 and f"(from {config})" in refused.output
    (tmp_path / "data").mkdir()
    made = runner.invoke(
        cli, ["keys", "create", "--account", "a", "--config", str(config), "--create-database"]
    )
    assert made.exit_code == 0, made.output
    assert str(tmp_path / "data" / "lowtide.db") in made.stderr
