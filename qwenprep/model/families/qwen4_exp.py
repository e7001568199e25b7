"""Qwen3.8-Flash-Next: ``model_type`` ``qwen4_exp`` (vision-language, text under ``text_config``)
and ``qwen4_exp_text`` (text only, at the top level).

transformers 5.19+ ``Qwen4ExpTextConfig`` (models/qwen4_exp/configuration_qwen4_exp.py): hybrid
layers (``layer_types`` mixes ``linear_attention``, Gated DeltaNet, with ``indexed_attention``,
full attention with the QSA sparse-attention indexer: ``indexer_n_heads``, ``indexer_kv_heads``,
``indexer_head_dim``, ``indexer_budget``, ``indexer_compress_ratio``; a checkpoint's
``full_attention`` entries are read as ``indexed_attention``), hyper-connections (``hc_count``,
``hc_lowrank``), per-layer n-gram embeddings (``ple_*``, ``ngram_*``), routed + shared experts,
RoPE in ``rope_parameters`` with ``partial_rotary_factor``. vLLM 0.32-0.34 serve it as
``Qwen4ExpForCausalLM`` / ``Qwen4ExpForConditionalGeneration`` (vllm/models/qwen4_exp/, CUDA and
ROCm only) with ``Qwen4ExpMTP`` as its draft. Native 262,144; users run 1M with YaRN factor 4
written into ``config.json`` (``text_config.rope_parameters`` for the nested releases).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qwenprep.model.families.base import Family, ServeProfile, tensors_of
from qwenprep.model.families.hybrid_common import hybrid_invariants
from qwenprep.model.layouts_qwen4 import qwen4_exp_tensors
from qwenprep.util.report import Check

MODEL_TYPES = frozenset({"qwen4_exp", "qwen4_exp_text"})

# transformers 5.19 Qwen4ExpTextConfig.__post_init__ rewrites "full_attention" entries to
# "indexed_attention" ("The real checkpoint contains full_attention entries for layers that are
# actually using an indexer"); validate_architecture then accepts only these two kinds. vLLM
# 0.34 models/qwen4_exp/nvidia/model.py (_QSA_LAYER_TYPES) builds Qwen4ExpQSAAttention (or plain
# Qwen3NextAttention without indexer_n_heads) for "indexed_attention".
ATTENTION_KINDS = ("indexed_attention", "full_attention")

_QSA_KEYS = (
    "indexer_n_heads",
    "indexer_kv_heads",
    "indexer_head_dim",
    "indexer_budget",
    "indexer_compress_ratio",
)


def _posint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def qsa_invariants(view: Any) -> list[Check]:
    """The indexer and hyper-connection rules transformers 5.19's
    Qwen4ExpTextConfig.validate_architecture enforces on load (a config breaking one does not
    load in transformers, hence not in vLLM): all five indexer_* keys or none, each positive,
    indexer_kv_heads 1, indexer_budget divisible by indexer_compress_ratio, the attention's
    rotary dims (head_dim x partial_rotary_factor) within indexer_head_dim; hc_count > 1
    (also vLLM 0.32-0.34 Qwen4ExpForConditionalGenerationConfig.verify_and_update_config)."""
    t = view.text
    checks: list[Check] = []
    hc = t.get("hc_count", 4)  # transformers' default
    if not (_posint(hc) and hc > 1):
        checks.append(
            Check(
                "invariant.hc_count",
                "fail",
                f"hc_count is {hc!r}; Qwen4Exp requires hc_count > 1 (transformers "
                "Qwen4ExpTextConfig.validate_architecture, vLLM's verify_and_update_config)",
                view.pointer("hc_count"),
            )
        )
    vals = {k: t.get(k) for k in _QSA_KEYS}
    if all(v is None for v in vals.values()):
        checks.append(
            Check(
                "invariant.indexer",
                "pass",
                "no indexer_* keys: indexed_attention layers run as plain full attention",
            )
        )
        return checks
    missing = [k for k, v in vals.items() if v is None]
    bad = [k for k, v in vals.items() if v is not None and not _posint(v)]
    problem = ""
    where = view.pointer(missing[0] if missing else bad[0] if bad else "indexer_kv_heads")
    if missing:
        problem = f"the indexer keys {missing} are missing (all five or none)"
    elif bad:
        problem = f"{bad} must be positive integers"
    elif vals["indexer_kv_heads"] != 1:
        problem = f"indexer_kv_heads is {vals['indexer_kv_heads']}; Qwen4-Exp QSA requires 1"
    elif vals["indexer_budget"] % vals["indexer_compress_ratio"]:
        problem = (
            f"indexer_budget {vals['indexer_budget']} is not divisible by "
            f"indexer_compress_ratio {vals['indexer_compress_ratio']}"
        )
        where = view.pointer("indexer_budget")
    else:
        rope = view.effective_rope()
        prf = rope.get("partial_rotary_factor", 1.0)
        head_dim = t.get("head_dim", 256)
        if isinstance(prf, (int, float)) and _posint(head_dim):
            rotary = int(head_dim * prf)
            if rotary > vals["indexer_head_dim"]:
                problem = (
                    f"the attention's rotary dims ({head_dim} x partial_rotary_factor {prf:g} = "
                    f"{rotary}) exceed indexer_head_dim {vals['indexer_head_dim']}"
                )
                where = view.pointer("indexer_head_dim")
    if problem:
        checks.append(
            Check(
                "invariant.indexer",
                "fail",
                problem + " (transformers Qwen4ExpTextConfig.validate_architecture refuses it)",
                where,
            )
        )
    else:
        checks.append(
            Check(
                "invariant.indexer",
                "pass",
                f"QSA indexer: {vals['indexer_n_heads']} heads x {vals['indexer_head_dim']}, "
                f"budget {vals['indexer_budget']}, compress ratio {vals['indexer_compress_ratio']}",
            )
        )
    return checks


def _text_only_prefix(view: Any) -> tuple[tuple[str, str], ...]:
    """vLLM 0.34 models/qwen4_exp/nvidia/model.py, Qwen4ExpForCausalLM.hf_to_vllm_mapper:
    "model.language_model." -> "model." (a text-only checkpoint saved from the VL stack)."""
    return () if view.nested else (("model.language_model.", "model."),)


def _vl(view: Any, names: Sequence[str]) -> bool:
    """A vision-language checkpoint (text under text_config): serve its language model only."""
    return bool(view.nested)


# vLLM 0.32-0.34 Qwen4ExpForConditionalGeneration honours --language-model-only
# (models/qwen4_exp/nvidia/model.py: the vision tower becomes a StageMissingLayer, and
# Qwen4ExpForConditionalGenerationConfig.verify_and_update_config strips the M-RoPE keys). No
# reasoning or tool parser is set: qwenprep has no model card saying which one the release uses.
_PROFILES = (
    ServeProfile("qwen3.8-flash-next-vl-text-only", _vl, flags=("--language-model-only",)),
    ServeProfile("qwen3.8-flash-next", lambda v, n: True),
)


def _invariants(view: Any) -> list[Check]:
    return hybrid_invariants(view, attention_kinds=ATTENTION_KINDS) + qsa_invariants(view)


FAMILY = Family(
    name="qwen3.8-flash-next",
    title="Qwen3.8-Flash-Next (qwen4_exp)",
    model_types=MODEL_TYPES,
    schema="qwen4_exp-config",
    native_context=262144,
    moe=True,
    hybrid=True,
    invariants=_invariants,
    method="YaRN x4 (rope_parameters; text_config.rope_parameters when nested)",
    tensors=tensors_of(qwen4_exp_tensors, whole_config=True),
    # vLLM 0.34 Qwen4ExpForCausalLM.load_weights drops "mtp." (the Qwen4ExpMTP draft loads it)
    optional_prefixes=("mtp.",),
    loader_renames=_text_only_prefix,
    # transformers 5 saves routed experts one by one; vLLM's FusedMoE loader reads either
    experts_either_form=True,
    profiles=_PROFILES,
)


def tiny_qwen4_exp_config(*, nested: bool = True) -> dict[str, Any]:
    """A tiny Qwen3.8-Flash-Next config (NOT the release's numbers, which qwenprep does not
    have: only FACTS' 40 layers at 3:1, 16 query / 2 KV heads of 256): 4 layers (three Gated
    DeltaNet, one indexed attention), hidden 64, 2 heads x 32 (1 KV head), partial rotary
    0.25 in rope_parameters, a QSA indexer of 2 heads x 32 (1 KV head, budget 8, compress
    ratio 4), hyper-connections 2 x rank 8, no PLE layers, 4 experts + a shared expert,
    Gated DeltaNet heads of 32 (vLLM runs Qwen4Exp on CUDA/ROCm only, so no CPU kernel
    constrains them). Keys
    are transformers 5.19 Qwen4ExpTextConfig's. NESTED: a qwen4_exp config with the text under
    text_config; else qwen4_exp_text at the top level."""
    text: dict[str, Any] = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 512,
        "dtype": "bfloat16",
        "eos_token_id": 514,
        "hc_count": 2,
        "hc_lowrank": 8,
        "head_dim": 32,
        "hidden_act": "silu",
        "hidden_size": 64,
        "indexer_budget": 8,
        "indexer_compress_ratio": 4,
        "indexer_head_dim": 32,
        "indexer_kv_heads": 1,
        "indexer_n_heads": 2,
        "initializer_range": 0.02,
        "layer_types": ["linear_attention"] * 3 + ["indexed_attention"],
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 32,
        "linear_num_key_heads": 1,
        "linear_num_value_heads": 1,
        "linear_value_head_dim": 32,
        "max_position_embeddings": 262144,
        "model_type": "qwen4_exp_text",
        "moe_intermediate_size": 16,
        "num_attention_heads": 2,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 4,
        "num_key_value_heads": 1,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {
            "partial_rotary_factor": 0.25,
            "rope_theta": 10000000,
            "rope_type": "default",
        },
        "shared_expert_intermediate_size": 16,
        "tie_word_embeddings": False,
        "vocab_size": 576,
    }
    if not nested:
        return {"architectures": ["Qwen4ExpForCausalLM"], **text}
    return {
        "architectures": ["Qwen4ExpForConditionalGeneration"],
        "image_token_id": 520,
        "model_type": "qwen4_exp",
        "text_config": text,
        "tie_word_embeddings": False,
        "video_token_id": 521,
        "vision_config": {
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "model_type": "qwen4_exp_vision",
            "num_heads": 2,
            "num_position_embeddings": 16,
            "out_hidden_size": 64,
            "patch_size": 4,
        },
        "vision_end_token_id": 519,
        "vision_start_token_id": 518,
    }
