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
    here = Path(__file__).resolve().parents[1]  # the qwenprep package
    installed = here / name
    if installed.is_dir():
        return installed
    checkout = here.parent / SHIPPED[name]
    if (here.parent / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    raise InputError(
        f"qwenprep's {name} folder is missing (looked in {installed} and, for a "
        f"source checkout, {checkout}).",
        hint="reinstall qwenprep.",
    )


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
    """A Draft 2020-12 validator (strict integers) for one of the shipped schemas.

    It answers a valid instance by itself (is_valid_fast: the keywords the shipped schemas
    use, exactly as jsonschema reads them) and builds jsonschema's validator only for an
    instance that is not valid, or that uses a keyword it does not know: importing jsonschema
    took longer than every header check of the 480B does."""
    return _Validator(load_schema(name))


class _Unsure(Exception):
    """A keyword is_valid_fast does not implement: jsonschema decides."""


_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$defs",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "format",
        "deprecated",
        "readOnly",
        "writeOnly",
    }
)


def _is_type(instance: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(instance, dict)
    if kind == "array":
        return isinstance(instance, list)
    if kind == "string":
        return isinstance(instance, str)
    if kind == "integer":
        return _strict_integer(None, instance)
    if kind == "number":
        return isinstance(instance, (int, float)) and not isinstance(instance, bool)
    if kind == "boolean":
        return isinstance(instance, bool)
    if kind == "null":
        return instance is None
    raise _Unsure(kind)


def _equal(one: Any, two: Any) -> bool:
    """jsonschema's equality: True is not 1, lists and objects compared member by member."""
    if one is two:
        return True
    if isinstance(one, str) or isinstance(two, str):
        return bool(one == two)
    if isinstance(one, list) and isinstance(two, list):
        return len(one) == len(two) and all(_equal(a, b) for a, b in zip(one, two, strict=True))
    if isinstance(one, dict) and isinstance(two, dict):
        return one.keys() == two.keys() and all(_equal(v, two[k]) for k, v in one.items())
    if isinstance(one, bool) or isinstance(two, bool):
        return type(one) is type(two) and one == two
    return bool(one == two)


def _number(instance: Any) -> bool:
    return isinstance(instance, (int, float)) and not isinstance(instance, bool)


def is_valid_fast(root: dict[str, Any], schema: Any, instance: Any) -> bool:
    """Whether INSTANCE is valid against SCHEMA (inside ROOT, for local $refs), for the Draft
    2020-12 keywords qwenprep's schemas use; _Unsure for any other keyword."""
    if schema is True:
        return True
    if schema is False:
        return False
    if not isinstance(schema, dict):
        raise _Unsure("schema")
    for key, value in schema.items():
        if key in _ANNOTATIONS or (key == "$id" and schema is root):
            continue
        if not _keyword(root, schema, key, value, instance):
            return False
    return True


def _keyword(
    root: dict[str, Any], schema: dict[str, Any], key: str, value: Any, instance: Any
) -> bool:
    valid = is_valid_fast
    if key == "type":
        kinds = value if isinstance(value, list) else [value]
        return any(_is_type(instance, k) for k in kinds)
    if key == "enum":
        return any(_equal(e, instance) for e in value)
    if key == "const":
        return _equal(value, instance)
    if key == "$ref":
        if not isinstance(value, str) or not value.startswith("#/"):
            raise _Unsure(key)
        target: Any = root
        for part in value[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise _Unsure(key)
            target = target[part]
        return valid(root, target, instance)
    if key in ("allOf", "anyOf", "oneOf"):
        results = [valid(root, sub, instance) for sub in value]
        return (
            all(results)
            if key == "allOf"
            else any(results)
            if key == "anyOf"
            else results.count(True) == 1
        )
    if key == "not":
        return not valid(root, value, instance)
    if key == "if":
        branch = "then" if valid(root, value, instance) else "else"
        return branch not in schema or valid(root, schema[branch], instance)
    if key in ("then", "else"):
        return True  # judged with "if"
    if key == "properties":
        return not isinstance(instance, dict) or all(
            valid(root, sub, instance[k]) for k, sub in value.items() if k in instance
        )
    if key == "additionalProperties":
        if "patternProperties" in schema:
            raise _Unsure(key)
        named = schema.get("properties", {})
        return not isinstance(instance, dict) or all(
            valid(root, value, v) for k, v in instance.items() if k not in named
        )
    if key == "required":
        return not isinstance(instance, dict) or all(k in instance for k in value)
    if key == "items":
        if "prefixItems" in schema:
            raise _Unsure(key)
        return not isinstance(instance, list) or all(valid(root, value, v) for v in instance)
    if key in ("minItems", "maxItems"):
        return not isinstance(instance, list) or (
            len(instance) >= value if key == "minItems" else len(instance) <= value
        )
    if key in ("minLength", "maxLength"):
        return not isinstance(instance, str) or (
            len(instance) >= value if key == "minLength" else len(instance) <= value
        )
    if key == "pattern":
        import re

        return not isinstance(instance, str) or re.search(value, instance) is not None
    if key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if not _number(instance):
            return True
        return bool(
            instance >= value
            if key == "minimum"
            else instance <= value
            if key == "maximum"
            else instance > value
            if key == "exclusiveMinimum"
            else instance < value
        )
    raise _Unsure(key)


class _Validator:
    """validator()'s answer: iter_errors yields nothing at once for an instance
    is_valid_fast accepts; everything else is jsonschema's validator's, built on first use."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self._real: Any = None

    def _jsonschema(self) -> Any:
        if self._real is None:
            self._real = _strict_class()(self.schema)
        return self._real

    def iter_errors(self, instance: Any) -> Any:
        try:
            if is_valid_fast(self.schema, self.schema, instance):
                return iter(())
        except (_Unsure, RecursionError, TypeError):
            pass
        return self._jsonschema().iter_errors(instance)

    def is_valid(self, instance: Any) -> bool:
        return next(iter(self.iter_errors(instance)), None) is None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._jsonschema(), name)
