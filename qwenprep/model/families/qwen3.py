"""Qwen3 dense (Qwen3-0.6B .. 32B): flat config, every layer full attention. Native 32,768
(the config says 40,960: 32,768 of context plus room for output); YaRN x4 to 131,072."""

from __future__ import annotations

from qwenprep.model.families.base import Family, ServeProfile, any_name_has, tensors_of
from qwenprep.model.layouts import qwen3_moe_tensors

FAMILY = Family(
    name="qwen3",
    title="Qwen3 dense",
    model_types=frozenset({"qwen3"}),
    schema="qwen3-config",
    native_context=32768,
    tensors=tensors_of(qwen3_moe_tensors),  # dense is the MoE layout without experts
    profiles=(
        ServeProfile("qwen3-coder", any_name_has("coder"), tool_parser="qwen3_coder"),
        ServeProfile("qwen3", lambda v, n: True),
    ),
)
