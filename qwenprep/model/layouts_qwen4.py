"""The tensor layout of a Qwen3.8-Flash-Next (qwen4_exp_text) checkpoint, for verify.

Names and shapes as transformers 5.19's Qwen4ExpForCausalLM holds them (its state dict, read on
the meta device for several configs) and vLLM 0.32-0.34's Qwen4ExpForCausalLM loads them
(vllm/models/qwen4_exp/nvidia/model.py, 0.34):

- linear_attention layers: the Gated DeltaNet with split input projections ``in_proj_qkv``
  [2 x key_dim + value_dim, H], ``in_proj_z`` [value_dim, H], ``in_proj_b`` / ``in_proj_a``
  [v_heads, H] (vLLM's packed_modules_mapping stacks qkv and z into ``in_proj_qkvz``), then
  conv1d, dt_bias, A_log, the gated norm and out_proj as Qwen3.5;
- indexed_attention layers: Qwen3-Next's gated attention (q_proj holds the output gate, 2 x
  heads x head_dim rows) plus, with indexer_n_heads, the QSA indexer's
  ``self_attn.indexer.index_qk_proj`` [(indexer_n_heads + indexer_kv_heads) x
  indexer_head_dim, H] and its ``q_layernorm`` / ``k_layernorm`` [indexer_head_dim];
- every layer: routed experts + shared expert (stored stacked by transformers 5, or one by one:
  vLLM reads either), and two hyper-connections ``attn_hyper_connection`` /
  ``mlp_hyper_connection``, each ``hc_norm`` [hc x H], ``input_mix_weight_down`` [hc_lowrank,
  hc x H], ``input_mix_weight_up`` [hc x H, hc_lowrank], ``block_inject_weight`` [hc, hc x H]
  (vLLM stacks down and block_inject: _EXTRA_WEIGHTS_MAPPER); the model's final
  ``hyper_connection_mixer`` has the first three (vLLM skips a block_inject_weight there).
  The hyper-connections' hc_norm stands where other families have input_layernorm,
  post_attention_layernorm and model.norm: this model has none of those;
- vLLM's mapper strips ``model.language_model.`` and drops ``mtp.`` (Qwen4ExpForCausalLM
  hf_to_vllm_mapper and load_weights), so MTP weights are optional.

Not derived (a ValueError says so): per-layer n-gram embeddings (``ple_layer_ids``: tables
sharded over ``split_ngram_parts`` files), quantized checkpoints, and the vision-language
``qwen4_exp`` layout (its vision tower).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from qwenprep.model.layouts import HybridBlocks, TensorSpec, layer_types_of, linear_writer

_ATTENTION = ("indexed_attention", "full_attention")  # transformers maps the second to the first


def _not_derived(what: str) -> ValueError:
    return ValueError(f"the tensor layout of {what} is not derived by qwenprep")


def qwen4_exp_tensors(config: dict[str, Any]) -> Iterator[TensorSpec]:
    """Every tensor of a text-only Qwen3.8-Flash-Next checkpoint for CONFIG (the module doc)."""
    if isinstance(config.get("text_config"), dict):
        raise _not_derived("a vision-language qwen4_exp checkpoint (its vision tower)")
    if config.get("ple_layer_ids"):
        raise _not_derived("Qwen3.8-Flash-Next's per-layer n-gram embeddings (ple_layer_ids)")
    if (config.get("quantization_config") or {}).get("quant_method"):
        raise _not_derived("a quantized Qwen3.8-Flash-Next checkpoint")
    b = HybridBlocks(config, linear_writer(False, 128, 128, frozenset()))
    hidden, w, lin = b.hidden, b.w, b.linear
    hc, rank = int(config.get("hc_count", 4)), int(config.get("hc_lowrank", 320))
    wide = hc * hidden
    qsa = config.get("indexer_n_heads") is not None

    def hyper(p: str, inject: bool = True) -> Iterator[TensorSpec]:
        yield w(f"{p}.hc_norm.weight", wide)
        yield w(f"{p}.input_mix_weight_down.weight", rank, wide)
        yield w(f"{p}.input_mix_weight_up.weight", wide, rank)
        if inject:
            yield w(f"{p}.block_inject_weight.weight", hc, wide)

    yield w("model.embed_tokens.weight", b.vocab, hidden)
    for i, kind in enumerate(layer_types_of(config)):
        p = f"model.layers.{i}"
        if kind == "linear_attention":
            yield from b.split_gdn(f"{p}.linear_attn")
        elif kind in _ATTENTION:
            yield from b.full_attention(p)
            if qsa:
                ix, dim = f"{p}.self_attn.indexer", int(config["indexer_head_dim"])
                rows = (int(config["indexer_n_heads"]) + int(config["indexer_kv_heads"])) * dim
                yield from lin(f"{ix}.index_qk_proj", rows, hidden)
                yield w(f"{ix}.q_layernorm.weight", dim)
                yield w(f"{ix}.k_layernorm.weight", dim)
        else:
            raise ValueError(
                f"layer_types[{i}] is {kind!r}; expected linear_attention or indexed_attention"
            )
        yield from b.experts_mlp(p, stacked=True)
        yield from hyper(f"{p}.attn_hyper_connection")
        yield from hyper(f"{p}.mlp_hyper_connection")
    yield from hyper("model.hyper_connection_mixer", inject=False)
    if not config.get("tie_word_embeddings", False):
        yield from lin("lm_head", b.vocab, hidden)
