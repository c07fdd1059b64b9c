"""The configuration reference lists every setting, and no setting it lists is gone; the
files and tests the docs name exist."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from lowtide.settings import Settings

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs" / "configuration.md"
# A path of the repository named in the docs (`tests/inprocess/test_accounts.py`), and the
# test after it if any (`...py::test_every_route_hides_other_accounts_objects_as_404`).
NAMED_PATH = re.compile(
    r"\b((?:tests|bench|scripts|src|deploy)/[\w./-]+\.(?:py|sql|md|toml|sh))(?:::(\w+))?"
)


def _model_of(annotation: object) -> type[BaseModel] | None:
    """The settings model inside ``Section``, ``list[Section]`` or ``dict[str, Section]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.GenericAlias) or typing.get_origin(annotation):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def setting_names() -> set[str]:
    names = set()
    for section, field in Settings.model_fields.items():
        model = _model_of(field.annotation)
        assert model is not None, section
        names |= {f"{section}.{key}" for key in model.model_fields}
    return names


def test_every_setting_is_documented():
    documented = set(re.findall(r"^\| `([a-z_0-9]+\.[a-z_0-9]+)` \|", DOCS.read_text(), re.M))
    assert setting_names() - documented == set(), "settings missing from docs/configuration.md"
    assert documented - setting_names() == set(), "docs/configuration.md lists unknown settings"


def test_the_files_and_tests_the_docs_name_exist():
    missing = []
    for doc in [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for path, test in NAMED_PATH.findall(doc.read_text()):
            target = ROOT / path
            if not target.exists():
                missing.append(f"{doc.name}: {path}")
            elif test and not re.search(rf"^(async )?def {test}\(", target.read_text(), re.M):
                missing.append(f"{doc.name}: {path}::{test}")
    assert missing == []
