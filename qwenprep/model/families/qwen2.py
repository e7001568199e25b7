"""Qwen2 / Qwen2.5 (qwen2): flat config, every layer full attention, q/k/v biases, no head_dim
key (hidden_size / heads, as transformers' Qwen2Config and vLLM derive it). Qwen2.5 dense:
native 32,768, YaRN x4 to 131,072 (model cards). Qwen2.5-7B/14B-Instruct-1M: config.json carries
dual_chunk_attention_config with max_position_embeddings 1010000; qwenprep takes the block's
original_max_position_embeddings (262,144) as native and treats 1M as DCA only
(qwenprep.model.families.dca: refused on vLLM >= 0.11, YaRN only with --yarn-on-dca)."""

from __future__ import annotations

from qwenprep.model.families.base import Family, ServeProfile, tensors_of
from qwenprep.model.families.dca import dca_profile
from qwenprep.model.layouts import qwen2_tensors

FAMILY = Family(
    name="qwen2",
    title="Qwen2 / Qwen2.5 (incl. Qwen2.5-1M)",
    model_types=frozenset({"qwen2"}),
    schema="qwen2-config",
    native_context=32768,
    tensors=tensors_of(qwen2_tensors),
    derive_head_dim=True,
    method="YaRN x4 (rope_scaling); -1M releases: DCA (vLLM < 0.11 only)",
    profiles=(
        dca_profile("qwen2.5-1m-dca"),
        ServeProfile("qwen2", lambda v, n: True),
    ),
)
