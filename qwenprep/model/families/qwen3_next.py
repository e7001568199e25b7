"""Qwen3-Next: Qwen3-Next-80B-A3B (Instruct, Thinking) and Qwen3-Coder-Next. Flat config, hybrid
layers (three Gated DeltaNet layers per full-attention layer: ``full_attention_interval`` 4 or
``layer_types``), ``partial_rotary_factor`` 0.25, routed experts plus a shared expert, MTP
weights under ``mtp.``. Native 262,144; 1M by YaRN factor 4 (the model cards)."""

from __future__ import annotations

from qwenprep.model.families.base import Family, ServeProfile, any_name_has, tensors_of
from qwenprep.model.families.hybrid_common import hybrid_invariants
from qwenprep.model.layouts import qwen3_next_tensors

FAMILY = Family(
    name="qwen3-next",
    title="Qwen3-Next (Qwen3-Next-80B-A3B, Qwen3-Coder-Next)",
    model_types=frozenset({"qwen3_next"}),
    schema="qwen3-next-config",
    native_context=262144,
    moe=True,
    tensors=tensors_of(qwen3_next_tensors),
    hybrid=True,
    invariants=hybrid_invariants,
    method="YaRN x4 (rope_scaling)",
    # vLLM 0.32 qwen3_next.py: Qwen3NextForCausalLM.hf_to_vllm_mapper drops "mtp." ("MTP
    # weights are loaded by the draft model, not this one"): a checkpoint saved without
    # them (transformers 5 has no MTP module) serves; MTP speculative decoding needs them.
    optional_prefixes=("mtp.",),
    experts_either_form=True,
    profiles=(
        ServeProfile("qwen3-coder-next", any_name_has("coder"), tool_parser="qwen3_coder"),
        ServeProfile("qwen3-next-thinking", any_name_has("thinking"), reasoning_parser="qwen3"),
        ServeProfile("qwen3-next", lambda v, n: True),
    ),
)
