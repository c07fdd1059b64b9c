"""lowtide.testing is for tests, benchmarks and scripts: nothing a user runs loads it.

import-linter's "Product code never imports lowtide.testing" contract (pyproject.toml) checks
the import statements; these tests check what a process really loads, and that the contract
names every top-level module of lowtide.
"""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import lowtide

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = "Product code never imports lowtide.testing"

# Imports every module of lowtide outside lowtide.testing (the server, the CLI, the engine,
# the stores...), then prints the lowtide.testing modules that came along: none, or which.
IMPORT_ALL = """
import importlib, pkgutil, sys
import lowtide

def walk(path, prefix):
    # Not pkgutil.walk_packages: it imports every package it passes, lowtide.testing too.
    count = 0
    for m in pkgutil.iter_modules(path, prefix):
        if m.name in ("lowtide.testing", "lowtide.__main__"):
            continue
        module = importlib.import_module(m.name)
        count += 1 + (walk(module.__path__, m.name + ".") if m.ispkg else 0)
    return count

count = walk(lowtide.__path__, "lowtide.")
print(count, sorted(m for m in sys.modules if m.startswith("lowtide.testing")))
"""


def test_no_product_module_loads_lowtide_testing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    count, loaded = done.stdout.split(" ", 1)
    assert int(count) > 50, done.stdout  # the walk found the product's modules
    assert loaded.strip() == "[]"


def test_the_cli_loads_no_test_support() -> None:
    # -X importtime lists every module the process imported, on stderr; the root's --help
    # loads every command to list it.
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lowtide", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()]
    assert "lowtide.cli" in imported  # the listing is there at all
    assert not [name for name in imported if name.startswith("lowtide.testing")]


def test_the_import_contract_names_every_top_level_module() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c["name"] == CONTRACT]
    assert contract["forbidden_modules"] == ["lowtide.testing"]
    top_level = {f"lowtide.{m.name}" for m in pkgutil.iter_modules(lowtide.__path__)}
    assert set(contract["source_modules"]) == top_level - {"lowtide.testing"}


def test_each_test_tier_imports_only_its_own_conftest() -> None:
    # A tier's conftest holds its fixtures; what tiers share is in tests/support.
    crossing = []
    for module in sorted((ROOT / "tests").glob("*/**/*.py")):
        tier = module.relative_to(ROOT / "tests").parts[0]
        for line in module.read_text().splitlines():
            imported = re.match(r"from tests\.(\w+)\.conftest import", line)
            if imported and imported.group(1) != tier:
                crossing.append(f"{module.relative_to(ROOT)}: {line}")
    assert crossing == []
