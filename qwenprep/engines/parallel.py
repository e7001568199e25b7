"""Parallel layouts vLLM refuses while it builds the model: attention heads vs TP, experts vs
TP/EP, FP8 weight blocks vs each TP shard. Pure checks on a ModelShape, used by `check` (as
report lines) and by `serve` (a refusal before launch)."""

from __future__ import annotations

from qwenprep.engines.vllm.kv import ModelShape
from qwenprep.util.report import Check


def parallel_checks(shape: ModelShape, *, tp: int, ep: bool, dp: int = 1) -> list[Check]:
    """What vLLM asserts while building Qwen3-MoE layers for TP/EP (read in its source:
    Qwen3MoeAttention, Qwen3MoeSparseMoeBlock, fp8_utils.validate_fp8_block_shape*)."""
    out: list[Check] = []
    h, kv = shape.num_attention_heads, shape.num_kv_heads
    if h % tp:
        out.append(
            Check(
                "parallel.heads",
                "fail",
                f"TP {tp} does not divide the {h} query heads (num_attention_heads); "
                f"vLLM asserts total_num_heads % tp_size == 0",
                "config.json:$.num_attention_heads",
            )
        )
    elif kv >= tp and kv % tp:
        out.append(
            Check(
                "parallel.heads",
                "fail",
                f"TP {tp} does not divide the {kv} KV heads (num_key_value_heads)",
                "config.json:$.num_key_value_heads",
            )
        )
    elif kv < tp and tp % kv:
        out.append(
            Check(
                "parallel.heads",
                "fail",
                f"TP {tp} is above the {kv} KV heads and not a multiple of them; vLLM "
                "can only replicate KV heads when tp % num_key_value_heads == 0",
                "config.json:$.num_key_value_heads",
            )
        )
    else:
        rep = f" (each KV head replicated {tp // kv}x)" if kv < tp else ""
        out.append(
            Check(
                "parallel.heads",
                "pass",
                f"TP {tp}: {h // tp} query and {max(1, kv // tp)} KV heads per GPU{rep}",
            )
        )

    if shape.num_experts:
        e = shape.num_experts
        if tp * (dp if ep else 1) == 1:
            out.append(Check("parallel.experts", "pass", f"one GPU holds all {e} experts"))
        elif tp > e:
            out.append(
                Check(
                    "parallel.experts",
                    "fail",
                    f"Tensor parallel size {tp} is greater than the number of experts "
                    f"{e} (vLLM refuses this)",
                    "config.json:$.num_experts",
                )
            )
        elif ep:
            ep_size = tp * dp
            if e % ep_size:
                out.append(
                    Check(
                        "parallel.experts",
                        "warn",
                        f"expert parallel over {ep_size} GPUs: {e} experts split "
                        f"unevenly ({e // ep_size} or {e // ep_size + 1} per GPU)",
                    )
                )
            else:
                out.append(
                    Check(
                        "parallel.experts",
                        "pass",
                        f"expert parallel: {e // ep_size} whole experts per GPU "
                        f"({e} over {ep_size})",
                    )
                )
        else:
            out.append(
                Check(
                    "parallel.experts",
                    "pass",
                    f"no expert parallel: each of the {e} experts is split over TP {tp}",
                )
            )

    block = shape.quant_block
    if block is None:
        out.append(Check("parallel.fp8_block", "skip", "not block-FP8 quantised"))
        return out
    bn, bk = block
    problems: list[str] = []
    if shape.num_experts and shape.moe_intermediate_size:
        if not ep and tp > 1:
            part = shape.moe_intermediate_size / tp
            if part != int(part) or int(part) % bn:
                problems.append(
                    f"The output_size of gate's and up's weight = {part:g} is not divisible by "
                    f"weight quantization block_n = {bn} (moe_intermediate_size "
                    f"{shape.moe_intermediate_size} / TP {tp}); enable expert parallel "
                    f"(--enable-expert-parallel, qwenprep check --ep) so each GPU holds whole "
                    "experts"
                )
    elif shape.intermediate_size and tp > 1:
        part = shape.intermediate_size / tp
        if part != int(part) or int(part) % bn:
            problems.append(
                f"intermediate_size {shape.intermediate_size} / TP {tp} = {part:g} "
                f"is not divisible by weight quantization block_n = {bn}"
            )
    q_part = shape.num_attention_heads * shape.head_dim / tp
    if tp > 1 and (q_part != int(q_part) or int(q_part) % bk):
        problems.append(
            f"attention output size per GPU {q_part:g} (heads x head_dim / TP) is "
            f"not divisible by block_k = {bk}"
        )
    if problems:
        out.append(
            Check(
                "parallel.fp8_block",
                "fail",
                "; ".join(problems),
                "config.json:$.quantization_config.weight_block_size",
            )
        )
    else:
        what = (
            "whole experts per GPU"
            if ep and shape.num_experts
            else f"{shape.moe_intermediate_size or shape.intermediate_size} / TP {tp}"
        )
        out.append(
            Check(
                "parallel.fp8_block", "pass", f"FP8 block {bn}x{bk} divides every TP shard ({what})"
            )
        )
    return out
