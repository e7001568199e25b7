"""Qwen3-MoE: Qwen3-Coder-480B-A35B and 30B-A3B, Qwen3-235B/30B (and their 2507 releases).
Flat config, every layer full attention, routed experts. Native 262,144; YaRN x4 to 1M."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qwenprep.model.families.base import Family, ServeProfile, any_name_has, tensors_of
from qwenprep.model.families.dca import dca_profile
from qwenprep.model.layouts import qwen3_moe_tensors

NAME_480B = "Qwen3-Coder-480B-A35B-Instruct"


def is_480b_shape(view: Any) -> bool:
    """The 480B's numbers (62 layers, 160 experts, hidden 6144), whatever the directory name."""
    return bool(
        view.num_layers == 62 and view.get("num_experts") == 160 and view.get("hidden_size") == 6144
    )


def _is_480b(view: Any, names: Sequence[str]) -> bool:
    return is_480b_shape(view) or any(NAME_480B.lower() in n.lower() for n in names)


FAMILY = Family(
    name="qwen3-moe",
    title="Qwen3-MoE (Qwen3-Coder-480B/30B, Qwen3-235B/30B)",
    model_types=frozenset({"qwen3_moe"}),
    schema="qwen3-config",
    native_context=262144,
    moe=True,
    tensors=tensors_of(qwen3_moe_tensors),
    experts_either_form=True,  # transformers 5 saves them one by one; vLLM reads both
    profiles=(
        # a 2507 release's config_1m.json (Dual Chunk Attention): vLLM < 0.11 only
        dca_profile("qwen3-2507-1m-dca"),
        # TP 8 + expert parallel: TP 8 alone fails FP8 block alignment (2560 / 8 = 320 is not
        # a multiple of 128), and data-parallel attention cannot hold one 1M sequence's KV
        ServeProfile(
            "qwen3-coder-480b",
            _is_480b,
            tp=8,
            ep=True,
            tool_parser="qwen3_coder",
            served_model_name=NAME_480B,
        ),
        ServeProfile("qwen3-coder", any_name_has("coder"), tool_parser="qwen3_coder"),
        ServeProfile("qwen3", lambda v, n: True),
    ),
)
