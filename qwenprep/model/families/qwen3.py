"""Qwen3 dense (Qwen3-0.6B .. 32B): flat config, every layer full attention. Native 32,768
(the config says 40,960: 32,768 of context plus room for output); YaRN x4 to 131,072."""

from __future__ import annotations

from typing import Any

from qwenprep.model.families.base import Family, ServeProfile, any_name_has


def _tensors(view: Any) -> list[Any]:
    from qwenprep.model.layouts import qwen3_moe_tensors  # dense is the MoE layout without experts

    return list(qwen3_moe_tensors(view.text))


FAMILY = Family(
    name="qwen3",
    title="Qwen3 dense",
    model_types=frozenset({"qwen3"}),
    schema="qwen3-config",
    native_context=32768,
    tensors=_tensors,
    profiles=(
        ServeProfile("qwen3-coder", any_name_has("coder"), tool_parser="qwen3_coder"),
        ServeProfile("qwen3", lambda v, n: True),
    ),
)
