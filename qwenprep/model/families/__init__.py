"""The family registry: one table of every model family qwenprep knows. Adding a family is a
module beside this one, a schema in schemas/, a fixture, and one line in REGISTRY."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qwenprep.errors import InputError
from qwenprep.model.families import qwen2, qwen3, qwen3_5, qwen3_moe, qwen3_next, qwen4_exp
from qwenprep.model.families.base import Family, ServeProfile

if TYPE_CHECKING:
    from qwenprep.model.view import ModelView

__all__ = ["Family", "ServeProfile", "REGISTRY", "family_of", "known_model_types", "register"]

REGISTRY: list[Family] = [
    qwen3_moe.FAMILY,
    qwen3.FAMILY,
    qwen3_next.FAMILY,
    qwen3_5.FAMILY,
    qwen3_5.FAMILY_DENSE,
    qwen4_exp.FAMILY,
    qwen2.FAMILY,
]


def register(family: Family) -> Family:
    """Add FAMILY to the table (a plugin or a test); its model types must be new."""
    taken = set(known_model_types()) & family.model_types
    if taken:
        raise ValueError(f"model types already registered: {sorted(taken)}")
    REGISTRY.append(family)
    return family


def unregister(family: Family) -> None:
    REGISTRY.remove(family)


def known_model_types() -> list[str]:
    return sorted(t for f in REGISTRY for t in f.model_types)


def lookup(model_type: object) -> Family | None:
    if not isinstance(model_type, str):
        return None
    for f in REGISTRY:
        if model_type in f.model_types:
            return f
    return None


def family_of(view: ModelView) -> Family:
    """The family of a config, by its model_type (the text config's, for nested configs).
    Unknown: an InputError naming what could not be mapped and the families known."""
    for mt in (view.model_type, view.text_model_type):
        f = lookup(mt)
        if f is not None:
            return f
    shown = repr(view.model_type)
    if view.nested and view.text_model_type != view.model_type:
        shown += f" (text_config.model_type {view.text_model_type!r})"
    raise InputError(
        f"config.json: model_type {shown} is not a model family qwenprep knows; it cannot map "
        "its context, RoPE and layer layout.",
        hint="qwenprep handles: "
        + ", ".join(f"{f.title} ({', '.join(sorted(f.model_types))})" for f in REGISTRY),
        path="config.json:$.model_type",
    )
