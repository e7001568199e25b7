"""The arithmetic of time: parameters by role, FLOPs and bytes, and the prefill and decode
estimates of one layout from GPU peaks (docs/time.md). qwenprep.planning.timing builds the plan's
time view (context table, layouts, recommendation) from them.

Pure arithmetic: nothing here prints, reads files or exits. Every time is an ESTIMATE and says
which kind: a floor at the GPU's datasheet peak (no real run is faster), and a typical range at
the efficiency band ``EFFICIENCY_BAND`` measured in public long-context prefill runs.

Prefill of one request of N tokens:

- linear FLOPs = 2 x (active matmul parameters) x N + 2 x (lm_head parameters), the active
  parameters counted from the safetensors headers: every weight outside the routed experts plus
  top_k / num_experts of the routed ones (shared experts are outside them), without the
  embedding table (a lookup) and with the lm_head once (vLLM computes logits for the last
  prompt token only);
- attention FLOPs = 2 x full-attention layers x query heads x head_dim x N x (N + 1): QK^T and
  PV over the N (N + 1) / 2 causal pairs, 2 FLOPs per multiply-add. Linear-attention layers of
  hybrid models are linear in N: their projections are in the parameters, their recurrent state
  update is not counted (docs/time.md says why it is small).

Decode of one token is bound by memory: each GPU reads its share of the weights the token
touches and the KV cache of the whole context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import compress, repeat
from operator import gt, not_, or_
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from qwenprep.planning.catalog import GPUS_PER_NODE, INTER_NODE_SOURCE, peer_gb_s

if TYPE_CHECKING:
    from qwenprep.engines.vllm.kv import ModelShape
    from qwenprep.planning.catalog import GPUSpec

# Measured long-context prefill, as a fraction of the floor's peak (docs/time.md "Efficiency"):
# low: NVIDIA's GH200 NVL32 Llama 3.1 405B TTFT at 122,880 tokens; high: FlashAttention-3's
# best BF16 forward on H100 (75 % of peak), which no whole-model prefill exceeds on that GPU.
EFFICIENCY_BAND = (0.35, 0.75)
EFFICIENCY_SOURCE = (
    "docs/time.md: 0.35 = NVIDIA GH200 NVL32 blog, Llama 3.1 405B TTFT 7.5 s at "
    "122,880 tokens on 32 GPUs; 0.75 = FlashAttention-3 paper (arXiv:2407.08608),"
    " 740 TFLOPS BF16 forward on H100"
)
MAX_NUM_SEQS = 256  # vLLM's default --max-num-seqs caps the requests decoded together


# --------------------------------------------------------------------------- parameters


_SCALE_SUFFIXES = ("_scale_inv", "_scale", ".scale")


def _is_scale(name: str) -> bool:
    return name.endswith(_SCALE_SUFFIXES)


@dataclass(frozen=True)
class ParamCounts:
    """Weight elements and bytes by role, from safetensors headers (or config arithmetic)."""

    total: int = 0  # weight elements; quantisation scales are not parameters
    routed_experts: int = 0  # elements under .mlp.experts.
    embedding: int = 0  # embed_tokens
    lm_head: int = 0  # lm_head (0 when the embeddings are tied)
    total_bytes: int = 0
    routed_expert_bytes: int = 0
    embedding_bytes: int = 0
    source: str = "safetensors headers"


def tally_tensors(
    tensors: Iterable[tuple[str, Sequence[int], int]], source: str = "safetensors headers"
) -> ParamCounts:
    """ParamCounts of (name, shape, nbytes) triples as safetensors headers list them."""
    rows = list(tensors)
    if not rows:
        return ParamCounts(source=source)
    names, shapes, sizes = zip(*rows, strict=True)
    return tally_columns(list(names), list(shapes), list(sizes), source)


def tally_columns(
    names: Sequence[str],
    shapes: Sequence[Sequence[int]],
    sizes: Sequence[int],
    source: str = "safetensors headers",
) -> ParamCounts:
    """tally_tensors over three columns (name, shape, bytes of each tensor), at C speed for
    the 480B's 60k tensors: elements per tensor, masks for quantisation scales (not parameters)
    and for the routed-expert, embedding and lm_head names, and sums under the masks (for
    booleans, `a > b` is `a and not b`)."""
    try:
        counts = list(map(math.prod, shapes))  # headers' shapes are integers already
    except TypeError:
        counts = []
    if not counts or set(map(type, counts)) - {int}:  # else read as integers, one by one
        counts = [math.prod(int(x) for x in s) for s in shapes]
    scale = list(map(str.endswith, names, repeat(_SCALE_SUFFIXES)))
    routed = list(map(str.__contains__, names, repeat(".mlp.experts.")))
    emb = list(map(gt, map(str.endswith, names, repeat("embed_tokens.weight")), routed))
    head = list(map(gt, map(str.endswith, names, repeat("lm_head.weight")), map(or_, routed, emb)))
    weights = list(map(not_, scale))
    return ParamCounts(
        sum(compress(counts, weights)),
        sum(compress(counts, map(gt, routed, scale))),
        sum(compress(counts, map(gt, emb, scale))),
        sum(compress(counts, map(gt, head, scale))),
        sum(sizes),
        sum(compress(sizes, routed)),
        sum(compress(sizes, emb)),
        source,
    )


def params_from_config(shape: ModelShape) -> ParamCounts:
    """Qwen3 / Qwen3-MoE parameter arithmetic from the config alone (every layer alike, untied
    lm_head), for checkpoints whose headers were not read. Labelled by its source."""
    h, d = shape.hidden_size, shape.head_dim
    attn = h * shape.num_attention_heads * d * 2 + h * shape.num_kv_heads * d * 2
    norms = 2 * h + 2 * d
    routed = shape.num_experts * 3 * h * shape.moe_intermediate_size
    mlp = shape.num_experts * h if shape.num_experts else 3 * h * shape.intermediate_size
    emb = shape.vocab_size * h
    layers = shape.num_layers
    total = layers * (attn + norms + mlp + routed) + h + 2 * emb
    wbytes = 1 if shape.quant_method == "fp8" else shape.dtype_bytes
    return ParamCounts(
        total,
        layers * routed,
        emb,
        emb,
        (total - 2 * emb) * wbytes + 2 * emb * shape.dtype_bytes,
        layers * routed * wbytes,
        emb * shape.dtype_bytes,
        "config.json arithmetic (safetensors headers not read)",
    )


@dataclass(frozen=True)
class ModelCost:
    """What the FLOP and byte counts need from one model."""

    active_params: int  # the model's active parameters (all but (1 - k/E) of routed experts)
    per_token_params: int  # active matmul parameters every prompt token meets
    routed_active_params: int  # the routed-expert part of per_token_params
    lm_head_params: int
    full_attention_layers: int
    heads: int
    head_dim: int
    fp8_weights: bool
    dense_bytes: int  # weights outside routed experts read per decode step (no embedding table)
    routed_expert_bytes: int
    experts: int
    top_k: int
    source: str
    hidden_size: int = 0  # the activations pipeline stages pass on are N x hidden_size
    layers: int = 0  # every decoder layer all-reduces twice under TP


def model_cost(shape: ModelShape) -> ModelCost:
    p: ParamCounts = shape.params if shape.params is not None else params_from_config(shape)
    e, k = shape.num_experts, shape.experts_per_token
    routed_active = p.routed_experts * k // e if e and k else p.routed_experts
    active = p.total - p.routed_experts + routed_active
    tied = p.lm_head == 0
    lm_head = p.embedding if tied else p.lm_head
    per_token = active - p.embedding - p.lm_head
    dense_bytes = p.total_bytes - p.routed_expert_bytes - (0 if tied else p.embedding_bytes)
    return ModelCost(
        active,
        per_token,
        routed_active,
        lm_head,
        shape.full_attention_layers,
        shape.num_attention_heads,
        shape.head_dim,
        shape.quant_method == "fp8",
        dense_bytes,
        p.routed_expert_bytes,
        e,
        k,
        p.source,
        shape.hidden_size,
        shape.num_layers,
    )


def linear_flops(cost: ModelCost, n: int) -> int:
    """2 x active matmul parameters x N, plus the lm_head for the last prompt token."""
    return 2 * cost.per_token_params * n + 2 * cost.lm_head_params


def attention_flops(n: int, full_attention_layers: int, heads: int, head_dim: int) -> int:
    """Causal attention over N tokens in the full-attention layers only:
    2 x layers x heads x head_dim x N x (N + 1) (QK^T and PV, N (N + 1) / 2 pairs each)."""
    return 2 * full_attention_layers * heads * head_dim * n * (n + 1)


# --------------------------------------------------------------------------- layouts and time


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int = 1
    dp: int = 1
    ep: bool = True
    gpus_per_node: int = GPUS_PER_NODE  # stages are packed onto nodes in order

    @property
    def attention_gpus(self) -> int:
        """GPUs one request's attention and KV cache are spread over."""
        return self.tp * self.pp

    @property
    def expert_group(self) -> int:
        """GPUs a layer's routed experts are spread over (EP spans TP x DP, as in vLLM)."""
        return self.tp * self.dp if self.ep else self.tp

    @property
    def attention_on_one_gpu(self) -> bool:
        return self.attention_gpus == 1


def _rates(gpu: GPUSpec, cost: ModelCost, kv_fp8: bool) -> tuple[float, str, float, str]:
    """(linear FLOP/s, its dtype, attention FLOP/s, its dtype) per GPU. FP8 weights run their
    GEMMs at the FP8 rate where the GPU has FP8 tensor cores (vLLM's block-FP8 W8A8 path); on
    GPUs without (A100) vLLM dequantises (weight-only FP8) and they run at the BF16 rate.
    Attention runs in the KV-cache dtype: bf16, or fp8 with --kv-cache-dtype fp8 on FP8 GPUs."""
    fp8 = gpu.fp8_tflops
    lin = ("fp8", fp8) if cost.fp8_weights and fp8 else ("bf16", gpu.bf16_tflops)
    att = ("fp8", fp8) if kv_fp8 and fp8 else ("bf16", gpu.bf16_tflops)
    return lin[1] * 1e12, lin[0], att[1] * 1e12, att[0]


# Per-request fixed cost of a prefill: what a short prompt's time to first token costs beyond its
# FLOPs (HTTP, tokenising, scheduling, the first sampling). Measured: Qwen2.5-72B-Instruct on
# 2x H100 with vLLM, 128-token prompts, TTFT 41.1 ms (tenstorrent/tt-inference-server#143),
# of which the FLOPs at peak are 9.4 ms (2 x 72.7e9 x 128 / (2 x 989e12)): about 30 ms.
FIXED_REQUEST_SECONDS = 0.03
FIXED_REQUEST_SOURCE = (
    "TTFT of a 128-token prompt, Qwen2.5-72B-Instruct on 2x H100, vLLM: 41.1 ms "
    "(github.com/tenstorrent/tt-inference-server/issues/143) less its 9.4 ms of FLOPs at peak"
)
# Pipeline stages pass two tensors of N x hidden_size per boundary, the hidden states and the
# residual (vLLM 0.32 qwen3_moe.py Qwen3MoeModel.make_empty_intermediate_tensors), in the
# activation dtype (bf16), each TP rank sending 1/TP of them and all-gathering at the receiver
# (vLLM 0.32 distributed/parallel_state.py GroupCoordinator.send_tensor_dict, all_gather_group).
PP_TENSORS = 2
ACTIVATION_BYTES = 2
# Under TP every decoder layer all-reduces the N x hidden_size activations twice: after the
# attention's o_proj and after the MLP's down_proj (vLLM 0.32 layers/linear.py
# RowParallelLinear.forward, reduce_results) or the MoE block (fused_moe/runner/moe_runner.py
# _maybe_reduce_final_output), not overlapped with the GEMMs. A ring moves 2 (TP - 1) / TP of the
# tensor each way per GPU; with in-switch reduction (NVLS) about 1x. NCCL reaches 370 of NVLink's
# 450 GB/s line rate (protocol overhead ~20 %; NCCL maintainer, NVIDIA/nccl-tests#212).
ALLREDUCES_PER_LAYER = 2
ALLREDUCE_FRACTION = 370 / 450
ALLREDUCE_SOURCE = (
    "vLLM 0.32 RowParallelLinear.forward (reduce_results) after o_proj and down_proj, "
    "moe_runner._maybe_reduce_final_output after the MoE: 2 per layer; ring 2(TP-1)/TP of "
    "N x hidden x 2 bytes per GPU each way, 1x with NVLink SHARP; floor at the one-way line "
    "rate, typical at NCCL's 370/450 of it (github.com/NVIDIA/nccl-tests/issues/212)"
)
PP_SOURCE = (
    "vLLM 0.32 scheduler.py Scheduler._update_after_schedule schedules a prefill's next chunk "
    "while the last is in flight: chunks pipeline through the stages; fill and drain cost "
    "(PP - 1) x the slowest chunk's stage time (a proportionate flow shop)"
)


def vllm_chunk_tokens(gpu: GPUSpec | None) -> int:
    """vLLM's default --max-num-batched-tokens for its OpenAI server, the prefill chunk size:
    16384 on GPUs of 160 GiB or more, 8192 on other GPUs of 70 GiB or more but A100s, else 2048
    (vLLM 0.32 engine/arg_utils.py EngineArgs.get_batch_defaults)."""
    if gpu is None:
        return 8192
    if gpu.memory_gib >= 160:
        return 16384
    return 8192 if gpu.memory_gib >= 70 and "A100" not in gpu.name else 2048


@dataclass(frozen=True)
class PrefillTerms:
    """The prefill floor's terms, seconds at peak (docs/time.md "What the floor adds")."""

    compute: float  # the FLOPs at the GPUs' peak, every stage busy
    pp_bubble: float  # pipeline fill and drain: (PP - 1) x the slowest chunk's stage time
    pp_transfer: float  # activations over the stage boundaries, the last chunk's path
    fixed: float  # per request
    tp_allreduce: float  # TP all-reduces at the line rate, the fewest bytes (NVLS where it has it)
    tp_allreduce_ring: float  # the same by a ring, at NCCL's achieved rate (the band's slow end)
    chunk_tokens: int
    chunks: int
    dynamic_chunking: bool
    cross_node_boundaries: int

    @property
    def scaled(self) -> float:
        """The part that runs at the efficiency band (kernels), the rest is added as is."""
        return self.compute + self.pp_bubble

    @property
    def total(self) -> float:
        return self.compute + self.pp_bubble + self.pp_transfer + self.fixed + self.tp_allreduce

    def to_dict(self) -> dict[str, Any]:
        return {
            "compute_seconds": six_digits(self.compute),
            "pp_bubble_seconds": six_digits(self.pp_bubble),
            "pp_transfer_seconds": six_digits(self.pp_transfer),
            "fixed_seconds": six_digits(self.fixed),
            "tp_allreduce_seconds": six_digits(self.tp_allreduce),
            "tp_allreduce_ring_typical_seconds": six_digits(self.tp_allreduce_ring),
            "chunk_size": self.chunk_tokens,
            "chunks": self.chunks,
            "dynamic_chunking": self.dynamic_chunking,
            "cross_node_boundaries": self.cross_node_boundaries,
            "sources": {
                "pp_bubble": PP_SOURCE,
                "pp_transfer": INTER_NODE_SOURCE,
                "fixed": FIXED_REQUEST_SOURCE,
                "tp_allreduce": ALLREDUCE_SOURCE,
            },
        }


@dataclass(frozen=True)
class PrefillEstimate:
    flops: int
    linear_flops: int
    attention_flops: int
    seconds_at_peak: float | None  # the floor: every term of `terms`
    seconds_typical: tuple[float, float] | None
    attention_on_one_gpu: bool
    linear_dtype: str | None
    attention_dtype: str | None
    terms: PrefillTerms | None = None
    efficiency_band: tuple[float, float] = EFFICIENCY_BAND

    @property
    def attention_share(self) -> float:
        return self.attention_flops / self.flops if self.flops else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "flops": self.flops,
            "linear_flops": self.linear_flops,
            "attention_flops": self.attention_flops,
            "attention_share": round(self.attention_share, 4),
            "seconds_at_peak": six_digits(self.seconds_at_peak),
            "seconds_typical": (
                [six_digits(self.seconds_typical[0]), six_digits(self.seconds_typical[1])]
                if self.seconds_typical
                else None
            ),
            "efficiency_band": list(self.efficiency_band),
            "efficiency_source": EFFICIENCY_SOURCE,
            "attention_on_one_gpu": self.attention_on_one_gpu,
            "linear_dtype": self.linear_dtype,
            "attention_dtype": self.attention_dtype,
            "terms": self.terms.to_dict() if self.terms else None,
        }


def six_digits(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.6g}")


def efficiency_band(gpu: GPUSpec) -> tuple[float, float]:
    """EFFICIENCY_BAND, its high end raised on a GPU whose measured prefills run closer to peak."""
    return EFFICIENCY_BAND[0], gpu.efficiency_high or EFFICIENCY_BAND[1]


def _cross_node_boundaries(layout: Layout) -> int:
    """Stage boundaries whose two sides sit on different nodes (stage s on GPUs s*TP ...)."""
    gpn = layout.gpus_per_node
    return sum((s * layout.tp - 1) // gpn != (s * layout.tp) // gpn for s in range(1, layout.pp))


def tp_allreduce_seconds(
    cost: ModelCost, n: int, c: int, layout: Layout, gpu: GPUSpec, ring: bool = False
) -> float:
    """The TP all-reduces of one N-token prefill at the one-way link rate: 2 per layer of
    N x hidden x 2 bytes, 2 (TP - 1) / TP of them per GPU by a ring (RING, or a GPU without
    NVLink SHARP, or TP across nodes, at the inter-node link), 1x in the switch. Under PP each
    stage reduces its layers while the others work (/ PP), plus fill and drain of one chunk C."""
    tp, across = layout.tp, layout.tp > layout.gpus_per_node
    share = 2 * (tp - 1) / tp if ring or across or not gpu.nvlink_sharp else min(1.0, tp - 1)
    per_token = ALLREDUCES_PER_LAYER * cost.layers * cost.hidden_size * ACTIVATION_BYTES * share
    tokens = n / layout.pp + c * (layout.pp - 1) / layout.pp
    return per_token * tokens / (peer_gb_s(gpu, across) * 1e9)


def prefill(
    cost: ModelCost,
    n: int,
    layout: Layout,
    gpu: GPUSpec | None,
    *,
    kv_fp8: bool = False,
    chunk: int | None = None,
    dynamic_chunking: bool = False,
    fixed_seconds: float = FIXED_REQUEST_SECONDS,
) -> PrefillEstimate:
    """FLOPs of one N-token prefill and its floor on LAYOUT at GPU's peak, term by term: the
    compute (the part outside routed experts and the attention on the request's attention GPUs
    (TP x PP), the routed experts on the whole expert group (x PP stages)); under PP, the
    pipeline's fill and drain and the activations crossing stage boundaries, in chunks of CHUNK
    tokens (vLLM's default for the GPU when None; DYNAMIC_CHUNKING: SGLang's chunks sized so each
    takes as long as the first); and a fixed cost per request. The typical range runs the
    compute and the bubble at the GPU's efficiency band and adds the rest as is."""
    lin = linear_flops(cost, n)
    att = attention_flops(n, cost.full_attention_layers, cost.heads, cost.head_dim)
    if gpu is None:
        return PrefillEstimate(
            lin + att, lin, att, None, None, layout.attention_on_one_gpu, None, None
        )
    lin_rate, lin_dt, att_rate, att_dt = _rates(gpu, cost, kv_fp8)
    routed_share = cost.routed_active_params / cost.per_token_params if cost.per_token_params else 0

    def seconds(lin_f: float, att_f: float) -> float:
        routed = lin_f * routed_share
        return (
            (lin_f - routed) / (layout.attention_gpus * lin_rate)
            + routed / (layout.expert_group * layout.pp * lin_rate)
            + att_f / (layout.attention_gpus * att_rate)
        )

    routed_all = 2 * cost.routed_active_params * n
    compute = (
        (lin - routed_all) / (layout.attention_gpus * lin_rate)
        + routed_all / (layout.expert_group * layout.pp * lin_rate)
        + att / (layout.attention_gpus * att_rate)
    )
    c = min(chunk or vllm_chunk_tokens(gpu), n)
    chunks = -(-n // c)
    per_tok = 2 * cost.per_token_params
    hd = 2 * cost.full_attention_layers * cost.heads * cost.head_dim
    # the slowest chunk: the first under dynamic chunking (each chunk sized to take as long),
    # else the last, whose C queries meet all N keys: C (2N - C + 1) / 2 causal pairs
    att_chunk = hd * c * (c + 1) if dynamic_chunking else hd * c * (2 * n - c + 1)
    bubble = (layout.pp - 1) * seconds(per_tok * c, att_chunk)
    cross = _cross_node_boundaries(layout)
    per_rank = PP_TENSORS * c * cost.hidden_size * ACTIVATION_BYTES / layout.tp
    hops = [
        per_rank / (peer_gb_s(gpu, across) * 1e9)
        for across in [True] * cross + [False] * (layout.pp - 1 - cross)
    ]
    # the last chunk's path through every boundary, plus any time the busiest link, carrying
    # every chunk, needs beyond the compute
    transfer = sum(hops) + max(0.0, chunks * max(hops, default=0.0) - compute)
    ar, ring = (tp_allreduce_seconds(cost, n, c, layout, gpu, r) for r in (False, True))
    parts = (compute, bubble, transfer, fixed_seconds, ar, ring / ALLREDUCE_FRACTION)
    terms = PrefillTerms(*parts, c, chunks, dynamic_chunking, cross)
    lo, hi = efficiency_band(gpu)
    rest = terms.pp_transfer + terms.fixed  # + the all-reduces, at NCCL's rate
    return PrefillEstimate(
        lin + att,
        lin,
        att,
        terms.total,
        (terms.scaled / hi + rest + ar / ALLREDUCE_FRACTION, terms.scaled / lo + rest + parts[5]),
        layout.attention_on_one_gpu,
        lin_dt,
        att_dt,
        terms,
        (lo, hi),
    )


# Decode's typical rate: a measured fraction of the HBM bandwidth. Qwen2.5-72B-Instruct on 2x H100
# with vLLM decoded at 30.9 ms per token alone (128-token prompt; tenstorrent/tt-inference-server
# #143); each GPU reads its half of the 71.5e9 bf16 weights outside the embedding table, 71.5 GB,
# in 21.3 ms at 3.35 TB/s: 0.69 of the bandwidth.
DECODE_HBM_FRACTION = 0.69
DECODE_SOURCE = (
    "Qwen2.5-72B-Instruct on 2x H100, vLLM: 30.9 ms per output token alone "
    "(github.com/tenstorrent/tt-inference-server/issues/143) against 21.3 ms to read each "
    "GPU's 71.5 GB of weights at 3.35 TB/s"
)


@dataclass(frozen=True)
class DecodeEstimate:
    seconds_per_token_at_peak: float | None  # one request alone
    tokens_per_second_per_request: float | None  # the ceiling: the HBM bandwidth
    tokens_per_second_aggregate: float | None  # all concurrent requests together, ceiling
    concurrent_requests: int
    bytes_per_gpu_per_token: int  # read by one GPU for one request's token
    bound: str | None  # "memory" or "compute" for the single request
    # the typical rates: the bytes at DECODE_HBM_FRACTION of the bandwidth (or the FLOPs at the
    # prefill band's high end when compute binds)
    tokens_per_second_per_request_typical: float | None = None
    tokens_per_second_aggregate_typical: float | None = None

    def to_dict(self) -> dict[str, Any]:
        def band(typ: float | None, top: float | None) -> list[float | None] | None:
            return None if typ is None or top is None else [six_digits(typ), six_digits(top)]

        return {
            "seconds_per_token_at_peak": six_digits(self.seconds_per_token_at_peak),
            "tokens_per_second_per_request": six_digits(self.tokens_per_second_per_request),
            "tokens_per_second_aggregate": six_digits(self.tokens_per_second_aggregate),
            "concurrent_requests": self.concurrent_requests,
            "bytes_per_gpu_per_token": self.bytes_per_gpu_per_token,
            "bound": self.bound,
            "band": {
                "per_request": band(
                    self.tokens_per_second_per_request_typical,
                    self.tokens_per_second_per_request,
                ),
                "aggregate": band(
                    self.tokens_per_second_aggregate_typical, self.tokens_per_second_aggregate
                ),
                "hbm_fraction": DECODE_HBM_FRACTION,
                "source": DECODE_SOURCE,
            },
        }


def decode_step(
    cost: ModelCost,
    n: int,
    layout: Layout,
    gpu: GPUSpec,
    kv_bytes_per_token: int,
    batch: int,
    *,
    kv_fp8: bool = False,
    typical: bool = False,
) -> tuple[float, str, int]:
    """(seconds, bound, bytes per GPU) of one decode step with BATCH requests of N tokens on each
    attention group. Memory: the weights outside the routed experts / TP, the routed experts the
    step's tokens touch (1 - (1 - k/E)^tokens of them, uniform routing) / the expert group, and
    BATCH x N x KV_BYTES_PER_TOKEN (per GPU, all layers). Compute: 2 FLOPs per active parameter
    and token, 4 x layers x heads x head_dim x N per token of attention. PP stages run one after
    another for a token, so PP divides neither. At the peaks (the ceiling), or TYPICAL: the bytes
    at DECODE_HBM_FRACTION of the bandwidth, the FLOPs at the GPU's prefill band's high end."""
    tokens = batch * (layout.dp if layout.ep else 1)
    touched = 1.0
    if cost.experts and cost.top_k:
        touched = 1.0 - (1.0 - cost.top_k / cost.experts) ** tokens
    mem = (
        cost.dense_bytes / layout.tp
        + cost.routed_expert_bytes * touched / layout.expert_group
        + batch * n * kv_bytes_per_token
    )
    lin_rate, _, att_rate, _ = _rates(gpu, cost, kv_fp8)
    dense_params = cost.per_token_params - cost.routed_active_params + cost.lm_head_params
    flops_lin = (
        2 * dense_params * batch / layout.tp
        + 2 * cost.routed_active_params * tokens / layout.expert_group
    )
    flops_att = 4 * cost.full_attention_layers * cost.heads * cost.head_dim * n * batch / layout.tp
    t_mem = mem / (gpu.hbm_tb_s * 1e12)
    t_comp = flops_lin / lin_rate + flops_att / att_rate
    bound = "memory" if t_mem >= t_comp else "compute"
    if typical:
        t_mem, t_comp = t_mem / DECODE_HBM_FRACTION, t_comp / efficiency_band(gpu)[1]
    return max(t_mem, t_comp), bound, int(mem)


def decode(
    cost: ModelCost,
    n: int,
    layout: Layout,
    gpu: GPUSpec | None,
    kv_bytes_per_token: int,
    max_concurrency: float,
    fits: bool,
    *,
    kv_fp8: bool = False,
) -> DecodeEstimate:
    """One request alone, and every request the cache holds at N (floor(concurrency) per DP rank,
    at most vLLM's 256 sequences) decoding together, each at the ceiling (HBM bandwidth) and at
    the typical rate. None where nothing fits or the GPU is unknown."""
    per_rank = min(int(math.floor(max_concurrency)), MAX_NUM_SEQS) if fits else 0
    total = per_rank * layout.dp
    if gpu is None or not fits:
        return DecodeEstimate(None, None, None, total, 0, None)

    def steps(batch: int, typical: bool = False) -> tuple[float, str, int]:
        return decode_step(
            cost, n, layout, gpu, kv_bytes_per_token, batch, kv_fp8=kv_fp8, typical=typical
        )

    one, bound, nbytes = steps(1)
    one_typ = steps(1, True)[0]
    agg = agg_typ = None
    if per_rank:
        agg, agg_typ = total / steps(per_rank)[0], total / steps(per_rank, True)[0]
    return DecodeEstimate(one, 1.0 / one, agg, total, nbytes, bound, 1.0 / one_typ, agg_typ)
