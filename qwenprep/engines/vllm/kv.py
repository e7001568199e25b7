"""The model shape and vLLM's KV-cache arithmetic on it, per vLLM version (docs/facts.md "KV-cache
arithmetic"); qwenprep.planning.capacity builds plans from them.

For a model whose layers all use full attention (Qwen3-MoE), vLLM 0.10 .. 0.33 does:

- ``page = 2 (K,V) x block_size x kv_heads_per_gpu x head_dim x dtype_bytes`` per layer and
  block, ``kv_heads_per_gpu = max(1, kv_heads // tp)`` (``FullAttentionSpec.page_size_bytes``);
- ``num_blocks = available // (page x layers_on_this_gpu)`` (``get_kv_cache_config_from_groups``
  / ``_get_kv_cache_config_uniform_type``; with PP the stage with most layers decides);
- ``concurrency = num_blocks / ceil(max_model_len / block_size)``
  (``get_max_concurrency_for_kv_cache_config``);
- the "GPU KV cache size: N tokens" line prints ``num_blocks x block_size`` up to 0.20 and
  ``int(concurrency x max_model_len)`` from 0.21 (``get_kv_cache_capacity``);
- one request must fit: ``ceil(L / block_size) x page x layers <= available``
  (``check_enough_kv_cache_memory``); from 0.29 the null block the pool always holds back is
  subtracted first;
- under decode context parallel (qwenprep.engines.vllm.dcp) a request takes ``cdiv(cdiv(L, dcp),
  block_size)`` blocks per rank, and the tokens line before 0.21 is multiplied by DCP.

What is *not* known before launch is the memory left for the cache when only the GPU size is
given: weights, peak activations, non-torch memory and (from 0.20) CUDA graphs come off
``total x gpu_memory_utilization``. :func:`overhead_estimate` states that estimate; with
``kv_memory`` (vLLM's ``--kv-cache-memory-bytes``, 0.10.2+) the numbers are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from qwenprep.errors import InputError, UsageError
from qwenprep.util.sizes import GiB, format_gib

if TYPE_CHECKING:
    from qwenprep.engines.vllm.kv_hybrid import HybridLayout, LinearAttention, QsaIndexer
    from qwenprep.planning.timecost import ParamCounts

KVDtype = Literal["auto", "fp8"]

CUDA_BLOCK_SIZE = 16
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
DEFAULT_MAX_NUM_SEQS = 256

_DTYPE_BYTES = {
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "bf16": 2,
    "fp16": 2,
    "float32": 4,
    "float": 4,
    "fp32": 4,
}


# --------------------------------------------------------------------------- version rules


@dataclass(frozen=True)
class VllmRule:
    """What changes with the vLLM version in the arithmetic above (built by
    qwenprep.planning.capacity.vllm_rule)."""

    version: str  # "0.32" as asked/found
    source: str  # "named", "installed", "default"
    gpu_memory_utilization: float
    tokens_from_concurrency: bool  # >= 0.21: printed tokens = int(concurrency x max_model_len)
    reserves_null_block: bool  # >= 0.29: one block held back when checking one request fits
    cuda_graphs_in_profile: bool  # >= 0.20: CUDA graph memory comes off the KV budget
    has_kv_cache_memory_bytes: bool  # >= 0.10.2: --kv-cache-memory-bytes exists
    note: str = ""
    extensible_kv_cache: bool = False  # >= 0.34: the KV cache is sized after warmup

    @property
    def name(self) -> str:
        parts = [
            f"gpu_memory_utilization {self.gpu_memory_utilization}",
            "tokens = int(concurrency x max_model_len)"
            if self.tokens_from_concurrency
            else "tokens = num_blocks x block_size",
            "null block held back" if self.reserves_null_block else "no null-block reserve",
            *(["KV cache sized after warmup (extensible)"] if self.extensible_kv_cache else []),
        ]
        return f"vLLM {self.version} rule ({self.source}): " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "source": self.source,
            "description": self.name,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "tokens_from_concurrency": self.tokens_from_concurrency,
            "reserves_null_block": self.reserves_null_block,
            "extensible_kv_cache": self.extensible_kv_cache,
            "note": self.note,
        }


# --------------------------------------------------------------------------- model shape


@dataclass(frozen=True)
class ModelShape:
    """What capacity planning needs from a checkpoint: its config numbers and weight bytes."""

    name: str
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    dtype_bytes: int
    max_position_embeddings: int
    native_context: int = 0  # before any YaRN extension (contexts.native_context)
    num_experts: int = 0
    moe_intermediate_size: int = 0
    intermediate_size: int = 0
    quant_block: tuple[int, int] | None = None
    weight_bytes: int | None = None  # all tensors, from the safetensors headers
    expert_weight_bytes: int = 0  # the part in routed experts (divided over EP ranks)
    weights_source: str = "unknown"
    experts_per_token: int = 0  # MoE routing top-k (num_experts_per_tok)
    attention_layers: int | None = None  # full-attention layers of a hybrid; None: every layer
    quant_method: str | None = None  # quantization_config.quant_method ("fp8", ...)
    params: ParamCounts | None = (
        None  # parameter counts from the headers (qwenprep.planning.timing)
    )
    linear: LinearAttention | None = (
        None  # Gated DeltaNet layers of a hybrid (qwenprep.engines.vllm.kv_hybrid)
    )
    indexer: QsaIndexer | None = (
        None  # indexed_attention's QSA indexer (qwenprep.engines.vllm.kv_hybrid)
    )

    @property
    def full_attention_layers(self) -> int:
        return self.num_layers if self.attention_layers is None else self.attention_layers

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any],
        *,
        name: str = "model",
        weight_bytes: int | None = None,
        expert_weight_bytes: int = 0,
        weights_source: str = "unknown",
        params: ParamCounts | None = None,
    ) -> ModelShape:
        from qwenprep.model.view import ModelView

        view = ModelView.of(config)
        cfg: dict[str, Any] = view.text

        def bad(key: str, v: object, wanted: str) -> InputError:
            return InputError(
                f"config.json: {key} is {v!r}; capacity planning needs {wanted}.",
                hint="run qwenprep validate PATH for every problem in it.",
                path=f"config.json:$.{key}",
            )

        def need(key: str, default: int | None = None) -> int:
            """A positive integer; DEFAULT when the key is absent or null. An optional count
            (DEFAULT 0) may also be 0."""
            v = cfg.get(key)
            if v is None and default is not None:
                return default
            least = 0 if default == 0 else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < least:
                raise bad(key, v, "a positive integer" if least else "a count (0 or more)")
            return v

        heads = need("num_attention_heads")
        hidden = need("hidden_size")
        kv = need("num_key_value_heads", heads)
        # never derived for Qwen3: 96 x 128 != 6144 on the 480B (docs/facts.md); Qwen2 has no key
        fam = view.family_name
        derive = cfg.get("head_dim") is None and fam is not None and view.family.derive_head_dim
        head_dim = hidden // heads if derive else need("head_dim")
        dtype_key = view.key_of("torch_dtype")
        dtype = cfg.get(dtype_key)
        if dtype is not None and not isinstance(dtype, str):
            raise bad(dtype_key, dtype, "a dtype name such as bfloat16")
        dtype = (dtype or "bfloat16").replace("torch.", "")
        qc = config.get("quantization_config", cfg.get("quantization_config"))
        if qc is not None and not isinstance(qc, dict):
            raise bad("quantization_config", qc, "an object")
        block: tuple[int, int] | None = None
        if qc and qc.get("quant_method") == "fp8" and qc.get("weight_block_size") is not None:
            wbs = qc["weight_block_size"]
            if not (
                isinstance(wbs, list)
                and len(wbs) == 2
                and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in wbs)
            ):
                raise bad(
                    "quantization_config.weight_block_size",
                    wbs,
                    "two positive integers [block_n, block_k]",
                )
            block = (wbs[0], wbs[1])
        experts_key = view.key_of("num_experts")
        from qwenprep.model.contexts import native_context

        layers = need("num_hidden_layers")
        attention_layers = _full_attention_layers(cfg, layers)
        from qwenprep.engines.vllm.kv_hybrid import linear_attention_of, qsa_indexer_of

        linear = linear_attention_of(cfg, layers, attention_layers)

        return cls(
            name=name,
            native_context=native_context(config),
            num_layers=layers,
            num_attention_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            hidden_size=hidden,
            vocab_size=need("vocab_size", 0),
            dtype_bytes=_DTYPE_BYTES.get(dtype, 2),
            max_position_embeddings=need("max_position_embeddings"),
            num_experts=need(experts_key, 0),
            moe_intermediate_size=need("moe_intermediate_size", 0),
            intermediate_size=need("intermediate_size", 0),
            quant_block=block,
            weight_bytes=weight_bytes,
            expert_weight_bytes=expert_weight_bytes,
            weights_source=weights_source,
            experts_per_token=need("num_experts_per_tok", 0),
            attention_layers=attention_layers,
            quant_method=str(qc.get("quant_method")) if qc and qc.get("quant_method") else None,
            params=params,
            linear=linear,
            indexer=qsa_indexer_of(cfg) if attention_layers else None,
        )


def _full_attention_layers(cfg: dict[str, Any], layers: int) -> int | None:
    """Full-attention layers of a hybrid config (``layer_types`` entries that hold a full KV
    cache, qwenprep.engines.vllm.kv_hybrid.ATTENTION_LAYER_TYPES, or every
    ``full_attention_interval``-th
    layer); None when every layer is full attention."""
    from qwenprep.engines.vllm.kv_hybrid import ATTENTION_LAYER_TYPES

    types = cfg.get("layer_types")
    if isinstance(types, list) and types:
        return sum(1 for t in types[:layers] if t in ATTENTION_LAYER_TYPES)
    interval = cfg.get("full_attention_interval")
    if isinstance(interval, int) and not isinstance(interval, bool) and interval > 0:
        return layers // interval
    return None


# --------------------------------------------------------------------------- KV arithmetic


def kv_dtype_bytes(shape: ModelShape, kv_cache_dtype: KVDtype) -> int:
    return 1 if kv_cache_dtype == "fp8" else shape.dtype_bytes


def kv_heads_per_gpu(shape: ModelShape, tp: int) -> int:
    return max(1, shape.num_kv_heads // tp)


def layers_per_gpu(shape: ModelShape, pp: int) -> int:
    """Layers with per-token KV on one GPU: the full-attention ones (every layer but a
    hybrid's linear-attention layers, which hold a fixed state instead:
    qwenprep.engines.vllm.kv_hybrid)."""
    return math.ceil(shape.full_attention_layers / pp)


def bytes_per_token_per_gpu(
    shape: ModelShape, *, tp: int = 1, pp: int = 1, kv_cache_dtype: KVDtype = "auto"
) -> int:
    per_layer = 2 * kv_heads_per_gpu(shape, tp) * shape.head_dim * kv_dtype_bytes(
        shape, kv_cache_dtype
    ) + (
        shape.indexer.bytes_per_token() if shape.indexer else 0
    )  # qwenprep.engines.vllm.kv_hybrid.QsaIndexer
    return per_layer * layers_per_gpu(shape, pp)


@dataclass(frozen=True)
class KVCapacity:
    context: int
    block_size: int
    bytes_per_block: int  # page x layers on one GPU
    available_bytes: int
    num_blocks: int
    kv_cache_tokens: int  # what vLLM prints as "GPU KV cache size: N tokens"
    max_concurrency: float  # what it prints as "Maximum concurrency for L tokens ...: X.XXx"
    needed_bytes: int  # KV for one request at the context
    fits: bool
    largest_context: int  # longest single request the cache holds (0: none)
    hybrid: HybridLayout | None = None  # the state layers' layout (vLLM 0.32 rule)


def kv_capacity(
    available_bytes: int,
    bytes_per_token: int,
    context: int,
    rule: VllmRule,
    *,
    block_size: int = CUDA_BLOCK_SIZE,
    dcp: int = 1,
) -> KVCapacity:
    """vLLM's numbers for one GPU with AVAILABLE bytes for the cache (see the module doc). DCP:
    decode context parallel size (qwenprep.engines.vllm.dcp: each rank holds 1/DCP of a request's
    tokens)."""
    if context <= 0:
        raise UsageError(f"context {context} must be positive.")
    bpb = bytes_per_token * block_size
    avail = max(0, int(available_bytes))
    num_blocks = avail // bpb
    blocks_per_req = dcp_blocks_per_request(context, block_size, dcp)
    concurrency = num_blocks / blocks_per_req
    tokens = (
        int(concurrency * context)
        if rule.tokens_from_concurrency
        else num_blocks * block_size * dcp
    )
    reserve = bpb if rule.reserves_null_block else 0
    needed = blocks_per_req * bpb
    usable = avail - reserve
    fits = avail > 0 and needed <= usable
    largest = max(0, usable // bpb) * block_size * dcp if usable > 0 else 0
    return KVCapacity(
        context, block_size, bpb, avail, num_blocks, tokens, concurrency, needed, fits, largest
    )


def dcp_blocks_per_request(context: int, block_size: int, dcp: int = 1) -> int:
    """Blocks one request of CONTEXT tokens takes on one rank of a DCP group: DCP-sharded
    layers keep ``cdiv(L, dcp)`` of its tokens per rank (``FullAttentionSpec.
    max_memory_usage_bytes``, vllm/v1/kv_cache_interface.py, 0.32 and 0.34:
    ``cdiv(cdiv(max_model_len, dcp_world_size), block_size) x page``)."""
    per_rank = -(-context // dcp)
    return -(-per_rank // block_size)


# --------------------------------------------------------------------------- the plan


ACTIVATION_FACTOR = 96  # calibrated: see overhead_estimate


def _overhead_terms(shape: ModelShape, rule: VllmRule) -> tuple[int, int, int, int]:
    """(activations, sampler logits, non-torch, CUDA graphs): see overhead_estimate."""
    act = DEFAULT_MAX_NUM_BATCHED_TOKENS * shape.hidden_size * 2 * ACTIVATION_FACTOR
    logits = DEFAULT_MAX_NUM_SEQS * shape.vocab_size * 4
    return act, logits, 2 * GiB, 1 * GiB if rule.cuda_graphs_in_profile else 0


def overhead_parts(shape: ModelShape, *, rule: VllmRule) -> tuple[int, int]:
    """overhead_estimate in two parts: (the profile run's transient peak: activations + sampler
    logits, what stays resident: non-torch + CUDA graphs). vLLM 0.34's extensible KV cache
    treats them differently (qwenprep.engines.vllm.kv_extensible)."""
    act, logits, non_torch, graphs = _overhead_terms(shape, rule)
    return act + logits, non_torch + graphs


def overhead_estimate(shape: ModelShape, *, tp: int, rule: VllmRule) -> tuple[int, str]:
    """Bytes per GPU that are neither weights nor KV cache, and how they were estimated.

    activations of the profile run: max_num_batched_tokens (8192) x hidden x 2 bytes x 96;
    sampler logits for max_num_seqs (256) x vocab x 4 bytes; 2 GiB of non-torch memory (CUDA
    context, NCCL, cuBLAS workspaces); 1 GiB of CUDA graphs from 0.20. The factor 96 is
    calibrated on the one real point known (docs/facts.md calibration 1: 8x H200, 140.4 GiB each as
    nvidia-smi reports, TP 8 + EP, the 480B FP8 model: vLLM reported 61.31 GiB of KV memory;
    this estimate gives 60.9 GiB there, a little on the safe side). It is a rough figure on
    purpose, and stated: --kv-memory replaces it with the real one.
    """
    act, logits, non_torch, graphs = _overhead_terms(shape, rule)
    total = act + logits + non_torch + graphs
    text = (
        f"activations {format_gib(act)} (8192 batched tokens x hidden {shape.hidden_size} x "
        f"2 bytes x {ACTIVATION_FACTOR}) + sampler logits {format_gib(logits)} (256 seqs x "
        f"vocab {shape.vocab_size} x 4 bytes) + non-torch 2.00 GiB"
        + (" + CUDA graphs 1.00 GiB" if graphs else "")
        + f" = {format_gib(total)} per GPU (estimate)"
    )
    return total, text


def weights_per_gpu(
    shape: ModelShape, *, tp: int, pp: int = 1, dp: int = 1, ep: bool = True
) -> int:
    """Tensor bytes per GPU: everything split over TP (and PP stages); with expert parallel the
    routed experts split over TP x DP instead. Replicated small tensors (norms, router) are
    counted as split too - an approximation under 0.1% for this model."""
    if shape.weight_bytes is None:
        return 0
    dense = shape.weight_bytes - shape.expert_weight_bytes
    experts = shape.expert_weight_bytes
    ep_size = tp * dp if ep else tp
    per_stage = dense / tp + experts / ep_size
    return int(math.ceil(per_stage / pp))
