"""A capacity Plan (qwenprep.planning.capacity.Plan) for people, as data: the (what, value) rows,
the
context table and the lines after it (qwenprep/cli draws them), and as plain lines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qwenprep.planning.measured import add_row
from qwenprep.planning.timing import CONTEXT_COLUMNS, context_cells
from qwenprep.util.sizes import format_gib

if TYPE_CHECKING:
    from qwenprep.planning.capacity import Plan


def _layers(n: int, kind: str) -> str:
    """'1 full-attention layer holds' / '3 full-attention layers hold'."""
    return f"{n} {kind} layer holds" if n == 1 else f"{n} {kind} layers hold"


def _hybrid_rows(plan: Plan) -> list[tuple[str, str]]:
    h = plan.hybrid_dict()
    groups = ", ".join(f"{g['layers']} {g['kind']}" for g in h["groups"])
    return [
        (
            "hybrid KV",
            f"{_layers(h['attention_layers'], 'full-attention')} per-token KV "
            f"({h['kv_bytes_per_token_per_layer']:,} bytes per token per layer); "
            f"{_layers(h['linear_attention_layers'], 'linear-attention')} "
            f"{h['state_bytes_per_layer_per_request']:,} bytes of state each per request "
            f"({h['state_bytes_per_request']:,} per request, padded to "
            f"{h['page_bytes']:,}-byte pages)",
        ),
        (
            "hybrid blocks",
            f"block size {h['block_size']} tokens (raised from "
            f"{h['requested_block_size']} so an attention page holds a state page); groups: "
            f"{groups}; "
            + (
                f"vLLM {plan.rule.version} arithmetic"
                if h["verified_for_this_version"]
                else h["note"]
            ),
        ),
        (
            "hybrid prefix caching",
            f"mamba_cache_mode {h['mamba_cache_mode']} ({h['caching']}): "
            f"{h['state_blocks_per_request_per_group']} state block(s) per request and group",
        ),
    ]


def vllm_log_lines(plan: Plan) -> list[str]:
    """The KV capacity lines as plan.rule's vLLM version logs them (qwenprep.engines.vllm.kv): one
    line "KV cache size: N tokens, Maximum concurrency for L tokens per request: X.XXx" when
    the tokens come from the concurrency (0.21+, ``update_kv_cache_capacity`` in 0.32/0.34);
    before, two lines (``get_kv_cache_config`` in 0.10.2), after "Multiplying the GPU KV cache
    size by the dcp_world_size N." under decode context parallel (vLLM PR 24864's log)."""
    k = plan.kv
    tokens = f"KV cache size: {k.kv_cache_tokens:,} tokens"
    conc = f"Maximum concurrency for {k.context:,} tokens per request: {k.max_concurrency:.2f}x"
    if plan.rule.tokens_from_concurrency:
        return [f"{tokens}, {conc}"]
    dcp = plan.request.dcp
    head = [f"Multiplying the GPU KV cache size by the dcp_world_size {dcp}."] if dcp > 1 else []
    return [*head, tokens, conc]


def answer(plan: Plan) -> str:
    """The plan in one line, before its detail: fits or not, the concurrency, the full-length
    prefill's typical time and the recommended context (each where known)."""
    from qwenprep.planning.timing import format_seconds

    k = plan.kv
    parts = [
        ("fits" if plan.fits else "does NOT fit")
        + f": {k.max_concurrency:.2f}x concurrency at {k.context:,} tokens"
    ]
    t = plan.timing
    if t is not None and t.prefill.seconds_typical is not None:
        lo, hi = t.prefill.seconds_typical
        parts.append(f"prefill typical {format_seconds(lo)} - {format_seconds(hi)}")
    if t is not None and t.recommendation.startswith("--context"):
        parts.append(f"recommended {t.recommendation.split(':')[0]} (why: below)")
    return "; ".join(parts)


def summary_parts(plan: Plan) -> tuple[list[tuple[str, str]], list[tuple[str, ...]], list[str]]:
    """The plan for people, as data (qwenprep/cli draws it): the (what, value) rows, the
    context table (columns: timing.CONTEXT_COLUMNS; empty without time estimates), and
    the lines after it (notes, recommendation, advice, vLLM's own log line, the verdict)."""
    k = plan.kv
    r = plan.request
    n = r.tp * r.pp * plan.dp
    kv_mem = (
        f"{format_gib(k.available_bytes)} (given; exact"
        + (
            "; as --kv-cache-memory-bytes it turns vLLM 0.34's extensible KV cache off)"
            if plan.rule.extensible_kv_cache
            else ")"
        )
        if plan.exact
        else f"{format_gib(k.available_bytes)} ESTIMATE = {format_gib(r.gpu_memory or 0)} "
        f"x {plan.utilization} - weights {format_gib(plan.weights_per_gpu)} - "
        f"overhead: {plan.overhead_text}"
        if plan.extensible is None
        else f"{format_gib(k.available_bytes)} ESTIMATE: {plan.extensible.text()}; weights "
        f"{format_gib(plan.weights_per_gpu)}, overhead: {plan.overhead_text}"
    )
    rows = [
        ("answer", answer(plan)),  # first: the detail follows
        ("model", plan.shape.name),
        (
            "parallel",
            f"TP {r.tp} x PP {r.pp} x DP {plan.dp}"
            + (f" + decode context parallel {r.dcp}" if r.dcp > 1 else "")
            + (
                " + expert parallel"
                if r.ep and plan.shape.num_experts and r.tp * plan.dp > 1
                else ""
            )
            + (f" ({n} GPUs" if n > 1 else " (one GPU")
            # where the layout came from, unless the flags said it all
            + (
                f"; {plan.layout_source})"
                if plan.layout_source and not plan.layout_source.startswith("--tp")
                else ")"
            ),
        ),
        ("arithmetic", plan.rule.name + (f" [{plan.rule.note}]" if plan.rule.note else "")),
        (
            "weights per GPU",
            f"{format_gib(plan.weights_per_gpu)} ({plan.shape.weights_source})",
        ),
        (
            "KV bytes per token per GPU",
            f"{plan.bytes_per_token:,} (kv-cache-dtype {r.kv_cache_dtype})",
        ),
        ("KV cache memory per GPU", kv_mem),
        *(_hybrid_rows(plan) if k.hybrid is not None else []),
        ("KV cache size", f"{k.kv_cache_tokens:,} tokens"),
        (
            "maximum concurrency",
            f"{k.max_concurrency:.2f}x at {k.context:,} tokens per request",
        ),
        ("one request needs", f"{format_gib(k.needed_bytes)} per GPU at {k.context:,} tokens"),
        ("largest context that fits", f"{k.largest_context:,} tokens"),
    ]
    table: list[tuple[str, ...]] = []
    lines: list[str] = []
    if plan.timing is not None:
        more, lines = plan.timing.summary_rows(k.context)
        rows += more
        add_row(rows, plan.measured)
        table = [context_cells(c) for c in plan.timing.contexts]
        lines.append(f"recommendation: {plan.timing.recommendation}")
    lines += [f"advice: {a}" for a in plan.advice]
    lines += [f"as vLLM logs it: {line}" for line in vllm_log_lines(plan)]
    lines.append(f"fits: {'yes' if plan.fits else 'NO'}")
    return rows, table, lines


def summary(plan: Plan) -> str:
    """summary_parts as plain lines ("what: value", the context table, the rest)."""
    rows, table, lines = summary_parts(plan)
    out = [f"{what}: {value}" for what, value in rows]
    out += [" | ".join(cells) for cells in ([CONTEXT_COLUMNS] if table else []) + table]
    return "\n".join(out + lines)
