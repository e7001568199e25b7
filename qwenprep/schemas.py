"""The JSON Schemas shipped with qwenprep (schemas/ in the repo, qwenprep/schemas in the wheel)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from qwenprep.errors import InputError


def schema_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "schemas", here.parent / "schemas"):
        if candidate.is_dir():
            return candidate
    raise InputError(f"qwenprep's schemas are missing (looked in {here / 'schemas'}).",
                     hint="reinstall qwenprep.")


def schema_path(name: str) -> Path:
    """A shipped schema by name ("manifest"), or a schema file by absolute path (a family
    module outside the package brings its own)."""
    if Path(name).is_absolute():
        return Path(name)
    if not name.endswith(".json"):
        name += ".schema.json"
    return schema_dir() / name


@cache
def load_schema(name: str) -> dict[str, Any]:
    with open(schema_path(name), encoding="utf-8") as f:
        obj: dict[str, Any] = json.load(f)
    return obj


def _strict_integer(checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


@cache
def _strict_class() -> Any:
    """Draft 2020-12 with one change: "integer" means a JSON integer literal. The draft counts
    262144.0 as an integer; qwenprep's patch, plan and serve do not (a float length is how
    hand edits go wrong), so validate must not either: one rule everywhere."""
    from jsonschema import Draft202012Validator, validators

    checker = Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer)
    return validators.extend(Draft202012Validator, type_checker=checker)


def validator(name: str) -> Any:
    """A Draft 2020-12 validator (strict integers) for one of the shipped schemas."""
    return _strict_class()(load_schema(name))
