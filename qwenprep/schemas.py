"""The JSON Schemas shipped with qwenprep (schemas/ in the repo, qwenprep/schemas in the wheel),
and the one rule for finding any data that ships with it (shipped_dir)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from qwenprep.errors import InputError

# Data that ships inside the wheel under the package and lives at the repository root in a
# source checkout (an editable install runs from the checkout): package name -> checkout name.
# It mirrors pyproject.toml's [tool.hatch.build.targets.wheel.force-include]
# (tests/test_habits.py holds the two equal). Every such file is found through shipped_dir.
SHIPPED: dict[str, str] = {"schemas": "schemas", "_examples": "examples"}


def shipped_dir(name: str) -> Path:
    """The folder of shipped data NAME ("schemas", "_examples"): qwenprep/NAME in an installed
    wheel, else the repository's own folder when qwenprep runs from a source checkout."""
    here = Path(__file__).resolve().parent
    installed = here / name
    if installed.is_dir():
        return installed
    checkout = here.parent / SHIPPED[name]
    if (here.parent / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    raise InputError(f"qwenprep's {name} folder is missing (looked in {installed} and, for a "
                     f"source checkout, {checkout}).", hint="reinstall qwenprep.")


def schema_dir() -> Path:
    return shipped_dir("schemas")


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
