"""Qwen3.5 / Qwen3.6: the vision-language hybrid releases (Qwen3.5-397B-A17B, -122B-A10B,
-35B-A3B, the dense -27B/-9B/-4B/..., Qwen3.6-35B-A3B).

Everything textual sits under ``text_config`` (``qwen3_5_text`` / ``qwen3_5_moe_text``), with
transformers-5 ``rope_parameters`` carrying ``mrope_section``, ``mrope_interleaved``,
``partial_rotary_factor`` and ``rope_theta``; hybrid layers as Qwen3-Next (``layer_types``,
three Gated DeltaNet layers per full-attention layer). Native 262,144; the model cards claim up
to 1,010,000 tokens by YaRN (factor 4 over 262,144), written into
``text_config.rope_parameters`` with every existing key kept (docs/qwen-line.md). Text-only
checkpoints (``qwen3_5_moe_text`` at the top level, ``Qwen3_5MoeForCausalLM``) are the same
family without the nesting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qwenprep.model.families.base import Family, ServeProfile, tensors_of
from qwenprep.model.families.hybrid_common import hybrid_invariants, mrope_invariants
from qwenprep.model.layouts import qwen3_5_tensors

MOE_TYPES = frozenset({"qwen3_5_moe", "qwen3_5_moe_text"})
DENSE_TYPES = frozenset({"qwen3_5", "qwen3_5_text"})


def _invariants(view: Any) -> list[Any]:
    return hybrid_invariants(view) + mrope_invariants(view)


def _vl(view: Any, names: Sequence[str]) -> bool:
    """A vision-language checkpoint (text under text_config): serve its language model only."""
    return bool(view.nested)


# vLLM >= 0.12 has --language-model-only (MultiModalConfig.language_model_only, seen in 0.32's
# engine/arg_utils.py): the vision tower is not built and no image processor is loaded, which
# is what a text-only long-context deployment wants. Reasoning: the model cards serve Qwen3.5
# with --reasoning-parser qwen3; tool use with --tool-call-parser qwen3_coder.
_TEXT_ONLY = ("--language-model-only",)
_TEXT_ONLY_WHY = (
    "a text-only long-context deployment: vLLM then builds no vision tower and loads no image "
    "processor (MultiModalConfig.language_model_only), and qwenprep's KV plan counts no vision "
    "encoder; without it vLLM also loads the vision encoder and takes image inputs, in GPU "
    "memory the plan did not count"
)


def _profiles(kind: str) -> tuple[ServeProfile, ...]:
    return (
        ServeProfile(
            f"{kind}-vl-text-only",
            _vl,
            reasoning_parser="qwen3",
            tool_parser="qwen3_coder",
            flags=_TEXT_ONLY,
            flags_why=_TEXT_ONLY_WHY,
        ),
        ServeProfile(kind, lambda v, n: True, reasoning_parser="qwen3", tool_parser="qwen3_coder"),
    )


def _text_only_prefix(view: Any) -> tuple[tuple[str, str], ...]:
    """vLLM 0.32 qwen3_5.py, Qwen3_5ForCausalLMBase.hf_to_vllm_mapper (the text-only
    Qwen3_5ForCausalLM / Qwen3_5MoeForCausalLM): "model.language_model." -> "model." ("Some
    community text-only checkpoints keep the extraneous `model.language_model.` prefix
    inherited from the VL training stack"). A vision-language config's loader
    (Qwen3VLForConditionalGeneration's mapper) reads that prefix as its own layout already."""
    return () if view.nested else (("model.language_model.", "model."),)


def _family(name: str, title: str, model_types: frozenset[str], moe: bool) -> Family:
    """One of the two Qwen3.5/3.6 families: everything but the name, title, model types and
    whether the MLP is routed experts is shared."""
    return Family(
        name=name,
        title=title,
        model_types=model_types,
        schema="qwen3_5-config",
        native_context=262144,
        moe=moe,
        tensors=tensors_of(qwen3_5_tensors, whole_config=True),
        hybrid=True,
        invariants=_invariants,
        method="YaRN x4 (text_config.rope_parameters)",
        profiles=_profiles(name),
        # vLLM 0.32 qwen3_5.py: both the text-only (Qwen3_5ForCausalLMBase) and the
        # vision-language (Qwen3_5ForConditionalGeneration) mappers drop "mtp."
        optional_prefixes=("mtp.",),
        loader_renames=_text_only_prefix,
        experts_either_form=moe,
    )


FAMILY = _family(
    "qwen3.5-moe",
    "Qwen3.5/3.6-MoE (Qwen3.5-397B-A17B, -122B-A10B, -35B-A3B, Qwen3.6-35B-A3B)",
    MOE_TYPES,
    moe=True,
)
FAMILY_DENSE = _family(
    "qwen3.5", "Qwen3.5 dense (Qwen3.5-27B, -9B, -4B, -2B, -0.8B)", DENSE_TYPES, moe=False
)


def qwen3_5_35b_a3b_config() -> dict[str, Any]:
    """Qwen/Qwen3.5-35B-A3B's config.json as public copies and tests built from it give it
    (reconstructed: key order, token ids and the vision block's minor keys are not confirmed;
    docs/qwen-line.md). Qwen3.6-35B-A3B has the same shape."""
    layers = 40
    text = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_output_gate": True,
        "bos_token_id": 248044,
        "dtype": "bfloat16",
        "eos_token_id": 248044,
        "full_attention_interval": 4,
        "head_dim": 256,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "layer_types": [
            "full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)
        ],
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
        "linear_value_head_dim": 128,
        "mamba_ssm_dtype": "float32",
        "max_position_embeddings": 262144,
        "model_type": "qwen3_5_moe_text",
        "moe_intermediate_size": 512,
        "mtp_num_hidden_layers": 1,
        "mtp_use_dedicated_embeddings": False,
        "num_attention_heads": 16,
        "num_experts": 256,
        "num_experts_per_tok": 8,
        "num_hidden_layers": layers,
        "num_key_value_heads": 2,
        "output_router_logits": False,
        "partial_rotary_factor": 0.25,
        "rms_norm_eps": 1e-06,
        "rope_parameters": {
            "mrope_interleaved": True,
            "mrope_section": [11, 11, 10],
            "partial_rotary_factor": 0.25,
            "rope_theta": 10000000,
            "rope_type": "default",
        },
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": 512,
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": 248320,
    }
    return {
        "architectures": ["Qwen3_5MoeForConditionalGeneration"],
        "image_token_id": 248056,
        "model_type": "qwen3_5_moe",
        "text_config": text,
        "tie_word_embeddings": False,
        "transformers_version": "4.57.0.dev0",
        "video_token_id": 248057,
        "vision_config": {
            "deepstack_visual_indexes": [],
            "depth": 27,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": 1152,
            "in_channels": 3,
            "initializer_range": 0.02,
            "intermediate_size": 4304,
            "model_type": "qwen3_5_moe",
            "num_heads": 16,
            "num_position_embeddings": 2304,
            "out_hidden_size": 2048,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "vision_end_token_id": 248054,
        "vision_start_token_id": 248053,
    }


def qwen3_5_35b_a3b_fp8_config() -> dict[str, Any]:
    """Qwen/Qwen3.5-35B-A3B-FP8's config.json (Qwen3.6-35B-A3B-FP8 has the same shape): the BF16
    release's with a top-level block-FP8 quantization_config
    (qwenprep.model.layouts.hybrid_fp8_quantization_config; which modules it lists is not confirmed
    from the release itself: docs/qwen-line.md, "FP8 releases")."""
    from qwenprep.model.layouts import hybrid_fp8_quantization_config

    cfg = qwen3_5_35b_a3b_config()
    cfg["quantization_config"] = hybrid_fp8_quantization_config(cfg)
    return cfg


def tiny_qwen3_5_moe_config() -> dict[str, Any]:
    """The 35B-A3B config, key for key and in its order, shrunk to kilobytes of weights: 4
    layers (three Gated DeltaNet, one full attention), hidden 64, 2 heads x 32 (1 KV head),
    partial rotary 0.25 (8 rotary dims: M-RoPE sections [2, 1, 1]), 4 experts + a shared
    expert, a one-block vision tower with 4-pixel patches, vocab 576. The DeltaNet heads stay
    128 wide (vLLM's CPU kernel accepts no other head size, as for the tiny Qwen3-Next)."""
    cfg = qwen3_5_35b_a3b_config()
    text = cfg["text_config"]
    text.update(
        bos_token_id=512,
        eos_token_id=514,
        head_dim=32,
        hidden_size=64,
        layer_types=["linear_attention"] * 3 + ["full_attention"],
        linear_num_key_heads=1,
        linear_num_value_heads=1,
        moe_intermediate_size=16,
        num_attention_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        num_hidden_layers=4,
        num_key_value_heads=1,
        shared_expert_intermediate_size=16,
        vocab_size=576,
    )
    text["rope_parameters"] = dict(text["rope_parameters"], mrope_section=[2, 1, 1])
    cfg["vision_config"].update(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        num_position_embeddings=16,
        out_hidden_size=64,
        patch_size=4,
    )
    cfg.update(
        image_token_id=520, video_token_id=521, vision_end_token_id=519, vision_start_token_id=518
    )
    return cfg
