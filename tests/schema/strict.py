"""The served OpenAPI document, closed for the tests: no answer may carry a key its schema does
not declare.

The served document leaves answer objects open (no ``additionalProperties``), as OpenAI's does,
so that a client generated from it keeps working when a later version adds a field. The tests
close every object schema an answer can reach (``additionalProperties: false``), so that a key
the server sends but no model declares fails both schemathesis and ``test_answers.py``. Request
bodies stay open: the server ignores unknown fields, as the hosted APIs do.
"""

from __future__ import annotations

import copy
import json
import urllib.request
from typing import Any

import jsonschema_rs

Json = dict[str, Any]
_PREFIX = "#/components/schemas/"


def served(url: str) -> Json:
    with urllib.request.urlopen(url + "/openapi.json", timeout=10) as response:
        document: Json = json.load(response)
    return document


def strict(document: Json) -> Json:
    """A copy of ``document`` with every object schema of an answer closed."""
    document = copy.deepcopy(document)
    schemas = document["components"]["schemas"]
    seen: set[str] = set()
    answers = [
        response
        for item in document["paths"].values()
        for operation in item.values()
        for response in operation["responses"].values()
    ]
    answers += list(document["components"].get("responses", {}).values())
    for response in answers:
        for media in response.get("content", {}).values():
            _close(media.get("schema"), schemas, seen)
    return document


def _close(node: Any, schemas: Json, seen: set[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _close(item, schemas, seen)
        return
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(_PREFIX) and ref not in seen:
        seen.add(ref)
        _close(schemas[ref.removeprefix(_PREFIX)], schemas, seen)
    if "properties" in node:
        node.setdefault("additionalProperties", False)
    for value in node.values():
        _close(value, schemas, seen)


def validator(document: Json, schema: Json) -> jsonschema_rs.Draft202012Validator:
    """A validator of ``schema`` (a part of ``document``) that resolves its references."""
    root = {**schema, "components": {"schemas": document["components"]["schemas"]}}
    return jsonschema_rs.Draft202012Validator(root)


def problems(document: Json, schema: Json, value: Any) -> list[str]:
    return [
        f"{error.message} at /{'/'.join(map(str, error.instance_path))}"
        for error in validator(document, schema).iter_errors(value)
    ]
