"""How long, for a plan: the time view of a capacity Plan (qwenprep.planning.capacity) on a GPU
(docs/time.md): the rows of the context table, the two parallel layouts of an MoE model, the
recommended context, and their words for people.

Pure: nothing here prints, reads files or exits. The arithmetic (parameters, FLOPs, bytes,
prefill and decode estimates) is qwenprep.planning.timecost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from qwenprep.planning.timecost import (
    DECODE_HBM_FRACTION,
    DecodeEstimate,
    Layout,
    ModelCost,
    PrefillEstimate,
    PrefillTerms,
    decode,
    model_cost,
    prefill,
    six_digits,
)

if TYPE_CHECKING:
    from qwenprep.planning.catalog import GPUSpec

__all__ = [  # the arithmetic is qwenprep.planning.timecost's
    "CONTEXT_COLUMNS",
    "DEFAULT_PREFILL_BUDGET_S",
    "TABLE_CONTEXTS",
    "ContextRow",
    "LayoutRow",
    "PlanTiming",
    "context_cells",
    "format_seconds",
    "label",
    "plan_timing",
    "recommend",
]

DEFAULT_PREFILL_BUDGET_S = 60.0
TABLE_CONTEXTS = (32768, 65536, 131072, 262144, 524288, 1048576)


# --------------------------------------------------------------------------- words


def label(n: int) -> str:
    """1048576 -> '1M', 262144 -> '256K', other counts with separators."""
    if n % (1 << 20) == 0:
        return f"{n >> 20}M"
    if n % 1024 == 0:
        return f"{n >> 10}K"
    return f"{n:,}"


def context_flag(n: int) -> str:
    """What --context reads back as N: '1m', '256k', or the plain count ('179904', never with
    separators); with the count after it when the two differ: '256k (262,144)'."""
    short = label(n).lower()
    return f"{short} ({n:,})" if short.endswith(("k", "m")) else str(n)


def format_seconds(s: float | None) -> str:
    if s is None:
        return "unknown"
    if s < 1:
        return f"{s * 1e3:.1f} ms" if s < 0.01 else f"{s * 1e3:.0f} ms"
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


# --------------------------------------------------------------------------- the plan's view


@dataclass(frozen=True)
class ContextRow:
    context: int
    fits: bool
    needs_patch: bool  # above the config's max_position_embeddings: qwenprep patch first
    max_concurrency: float
    prefill: PrefillEstimate
    decode: DecodeEstimate

    def to_dict(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "label": label(self.context),
            "fits": self.fits,
            "needs_patch": self.needs_patch,
            "max_concurrency": round(self.max_concurrency, 4),
            "prefill_seconds_at_peak": six_digits(self.prefill.seconds_at_peak),
            "prefill_seconds_typical": (
                list(map(six_digits, self.prefill.seconds_typical))
                if self.prefill.seconds_typical
                else None
            ),
            "attention_share": round(self.prefill.attention_share, 4),
            "decode_tokens_per_second_per_request": six_digits(
                self.decode.tokens_per_second_per_request
            ),
            "decode_tokens_per_second_aggregate": six_digits(
                self.decode.tokens_per_second_aggregate
            ),
            "decode_tokens_per_second_per_request_typical": six_digits(
                self.decode.tokens_per_second_per_request_typical
            ),
            "decode_tokens_per_second_aggregate_typical": six_digits(
                self.decode.tokens_per_second_aggregate_typical
            ),
        }


@dataclass(frozen=True)
class LayoutRow:
    name: str
    layout: Layout
    kv_bytes_one_request_per_gpu: int
    kv_cache_bytes_per_gpu: int
    fits: bool
    concurrency_total: float  # requests at the context over all DP ranks
    prefill: PrefillEstimate
    decode: DecodeEstimate

    def to_dict(self) -> dict[str, Any]:
        lay = self.layout
        return {
            "name": self.name,
            "tp": lay.tp,
            "pp": lay.pp,
            "dp": lay.dp,
            "ep": lay.ep,
            "attention_on_one_gpu": lay.attention_on_one_gpu,
            "kv_bytes_one_request_per_gpu": self.kv_bytes_one_request_per_gpu,
            "kv_cache_bytes_per_gpu": self.kv_cache_bytes_per_gpu,
            "fits": self.fits,
            "max_concurrency_total": round(self.concurrency_total, 4),
            "prefill_seconds_at_peak": six_digits(self.prefill.seconds_at_peak),
            "decode_tokens_per_second_per_request": six_digits(
                self.decode.tokens_per_second_per_request
            ),
        }


@dataclass(frozen=True)
class PlanTiming:
    gpu: GPUSpec | None
    gpu_name: str | None  # as detected or named, known or not
    notes: tuple[str, ...]
    cost: ModelCost
    prefill: PrefillEstimate
    decode: DecodeEstimate
    contexts: tuple[ContextRow, ...]
    layouts: tuple[LayoutRow, ...]
    single_request_layout: str | None
    recommendation: str
    budget_s: float

    def gpu_dict(self) -> dict[str, Any]:
        if self.gpu is not None:
            return self.gpu.to_dict()
        return {
            "name": self.gpu_name,
            "bf16_tflops": None,
            "fp8_tflops": None,
            "hbm_tb_s": None,
            "memory_bytes": None,
            "source": None,
            "memory_source": None,
            "known": False,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefill": self.prefill.to_dict(),
            "decode": self.decode.to_dict(),
            "gpu": self.gpu_dict(),
            "active_params": self.cost.active_params,
            "params_source": self.cost.source,
            "full_attention_layers": self.cost.full_attention_layers,
            "contexts": [r.to_dict() for r in self.contexts],
            "layouts": [r.to_dict() for r in self.layouts],
            "single_request_layout": self.single_request_layout,
            "recommendation": self.recommendation,
            "prefill_budget_seconds": self.budget_s,
            "time_notes": list(self.notes),
        }

    def summary_rows(self, context: int) -> tuple[list[tuple[str, str]], list[str]]:
        """For people (qwenprep/cli renders them): the (what, value) rows of the plan's table
        and the notes; the context table is ``context_cells`` of each of ``contexts``."""
        from qwenprep.util.sizes import format_gib

        p, d, c = self.prefill, self.decode, self.cost
        gpu = (
            f"{self.gpu.name} ({self.gpu.bf16_tflops:g} BF16 / "
            + (f"{self.gpu.fp8_tflops:g} FP8" if self.gpu.fp8_tflops else "no FP8")
            + f" dense TFLOPS, {self.gpu.hbm_tb_s:g} TB/s; {self.gpu.source})"
            if self.gpu
            else f"{self.gpu_name or 'not named'}: UNKNOWN, no time estimates"
        )
        rows = [
            ("GPU", gpu),
            (
                "prefill FLOPs",
                f"one {context:,}-token request: {p.flops:.3g} FLOPs = linear "
                f"{p.linear_flops:.3g} (2 x {c.per_token_params / 1e9:.2f}B active matmul params "
                f"per token, of {c.active_params / 1e9:.2f}B active) + "
                f"attention {p.attention_flops:.3g} ({c.full_attention_layers} full-attention "
                f"layers; {p.attention_share:.0%} of the total)",
            ),
        ]
        if p.seconds_at_peak is not None and p.seconds_typical is not None:
            lo, hi = p.efficiency_band
            rows.append(
                (
                    "prefill time",
                    f"ESTIMATE: floor {format_seconds(p.seconds_at_peak)} at peak "
                    f"(linear {p.linear_dtype}, attention {p.attention_dtype}"
                    + (", attention on ONE GPU" if p.attention_on_one_gpu else "")
                    + f"); typical {format_seconds(p.seconds_typical[0])} - "
                    f"{format_seconds(p.seconds_typical[1])} at {lo:.0%}-{hi:.0%} of peak "
                    "(measured band, docs/time.md)",
                )
            )
            if p.terms is not None:
                rows.append(("prefill floor terms", _terms_text(p.terms)))
        if d.seconds_per_token_at_peak is not None:
            rows.append(
                (
                    "decode",
                    f"ESTIMATE ({d.bound}-bound): "
                    f"{format_seconds(d.seconds_per_token_at_peak)} per token at the ceiling; "
                    f"one request {_tps(d.tokens_per_second_per_request_typical)} - "
                    f"{_tps(d.tokens_per_second_per_request)} tokens/s (typical at "
                    f"{DECODE_HBM_FRACTION:.0%} of the HBM bandwidth - ceiling; "
                    f"{format_gib(d.bytes_per_gpu_per_token)} read per GPU per token); "
                    + (
                        f"{_tps(d.tokens_per_second_aggregate_typical)} - "
                        f"{_tps(d.tokens_per_second_aggregate)} tokens/s in aggregate over "
                        f"{d.concurrent_requests} concurrent request(s)"
                        if d.tokens_per_second_aggregate
                        else "no full-length request runs at once"
                    ),
                )
            )
        for row in self.layouts:
            lay = row.layout
            rows.append(
                (
                    f"layout {row.name}",
                    f"one request's KV {format_gib(row.kv_bytes_one_request_per_gpu)}"
                    + (" on ONE GPU" if lay.attention_on_one_gpu else " per GPU")
                    + f" of {format_gib(row.kv_cache_bytes_per_gpu)} KV memory: "
                    + ("fits" if row.fits else "does NOT fit")
                    + f"; prefill floor {format_seconds(row.prefill.seconds_at_peak)}",
                )
            )
        if self.layouts:
            rows.append(
                (
                    "a single long request is served by",
                    self.single_request_layout or "neither layout",
                )
            )
        return rows, [f"note: {n}" for n in self.notes]


def _tps(x: float | None) -> str:
    return f"{x:,.0f}" if x else "-"


def _terms_text(t: PrefillTerms) -> str:
    pp = (
        f" + pipeline fill/drain {format_seconds(t.pp_bubble)} + activations over the stage "
        f"boundaries {format_seconds(t.pp_transfer)} ({t.cross_node_boundaries} across nodes; "
        f"{t.chunks} chunk(s) of {t.chunk_tokens:,})"
        if t.pp_bubble or t.pp_transfer
        else ""
    )
    ar = f" + TP all-reduces {format_seconds(t.tp_allreduce)}" if t.tp_allreduce else ""
    return (
        f"compute {format_seconds(t.compute)}{pp}{ar} + per request {format_seconds(t.fixed)} "
        "(docs/time.md, What the floor adds)"
    )


# the context table's columns (context_cells of each row); * = above the config's
# max_position_embeddings: qwenprep patch first
CONTEXT_COLUMNS = (
    "context",
    "fits",
    "concurrency",
    "prefill floor",
    "prefill typical",
    "decode tok/s",
)


def context_cells(r: ContextRow) -> tuple[str, ...]:
    p, d = r.prefill, r.decode
    typ = (
        f"{format_seconds(p.seconds_typical[0])}-{format_seconds(p.seconds_typical[1])}"
        if p.seconds_typical
        else "unknown"
    )
    tps = (
        f"{_tps(d.tokens_per_second_per_request_typical)}-{_tps(d.tokens_per_second_per_request)}"
        if d.tokens_per_second_per_request
        else "-"
    )
    return (
        label(r.context) + ("*" if r.needs_patch else ""),
        "yes" if r.fits else "no",
        f"{r.max_concurrency:.2f}x",
        format_seconds(p.seconds_at_peak),
        typ,
        tps,
    )


def recommend(rows: tuple[ContextRow, ...], budget_s: float, known_time: bool) -> str:
    """The largest context in the table that holds one request and whose typical full-length
    prefill (the slow end of the band) stays within BUDGET_S; its reasoning in words."""
    fitting = [r for r in rows if r.fits]
    if not fitting:
        return (
            "none of the table's contexts fits one request: see the advice (fp8 KV cache, "
            "more GPUs)"
        )
    if not known_time:
        best = fitting[-1]
        return (
            f"--context {context_flag(best.context)} is the largest "
            "that fits; prefill time is unknown without a known GPU (name one with --gpu)"
        )
    within = [
        r for r in fitting if r.prefill.seconds_typical and r.prefill.seconds_typical[1] <= budget_s
    ]
    biggest = fitting[-1]
    if not within:
        best = fitting[0]
        return (
            f"--context {context_flag(best.context)}: even the smallest context's full "
            f"prefill exceeds the {budget_s:g} s budget "
            f"({_typ(best)}); raise --prefill-budget or add GPUs"
        )
    best = within[-1]
    why = (
        f"--context {context_flag(best.context)}: the largest context "
        f"whose full-length prefill stays within {budget_s:g} s (typical {_typ(best)}, "
        f"{best.max_concurrency:.2f}x concurrency)"
    )
    if biggest.context > best.context:
        why += (
            f"; {label(biggest.context)} fits ({biggest.max_concurrency:.2f}x) but one full "
            f"{label(biggest.context)} prompt takes {_typ(biggest)} to prefill (floor "
            f"{format_seconds(biggest.prefill.seconds_at_peak)}, "
            f"{biggest.prefill.attention_share:.0%} of it attention)"
        )
    if best.needs_patch:
        flag = context_flag(best.context).split()[0]
        why += f"; patch first: qwenprep patch MODEL --context {flag}"
    return why


def _typ(r: ContextRow) -> str:
    t = r.prefill.seconds_typical
    return f"{format_seconds(t[0])} - {format_seconds(t[1])}" if t else "unknown"


def _layouts(
    plan: Any, gpu: GPUSpec | None, cost: ModelCost, n: int, alternatives: Mapping[int, Any]
) -> tuple[tuple[LayoutRow, ...], str | None]:
    """For an MoE model on several GPUs (no PP, expert parallel): the TP layout (one request's
    KV spread over every GPU) next to the data-parallel-attention layout of vLLM's recipe (DP
    + EP: one request's attention and whole KV cache on one GPU). ALTERNATIVES holds the
    capacity plan of each layout by its TP size (qwenprep.planning.capacity.layout_alternatives)."""
    from qwenprep.engines.vllm.kv import bytes_per_token_per_gpu

    req = plan.request
    gpus = req.tp * req.pp * plan.dp
    if not (plan.shape.num_experts and req.ep and req.pp == 1 and gpus > 1):
        return (), None
    kv_fp8 = req.kv_cache_dtype == "fp8"
    rows = []
    for name, tp in ((f"TP {gpus} + EP", gpus), (f"DP {gpus} + EP (data-parallel attention)", 1)):
        p = plan if req.tp == tp else alternatives.get(tp)
        if p is None:
            continue
        lay = Layout(tp, 1, p.dp, True)
        bpt = bytes_per_token_per_gpu(plan.shape, tp=tp, kv_cache_dtype=req.kv_cache_dtype)
        rows.append(
            LayoutRow(
                name,
                lay,
                p.kv.needed_bytes,
                p.kv.available_bytes,
                p.fits,
                p.kv.max_concurrency * p.dp,
                prefill(cost, n, lay, gpu, kv_fp8=kv_fp8),
                decode(cost, n, lay, gpu, bpt, p.kv.max_concurrency, p.fits, kv_fp8=kv_fp8),
            )
        )
    fitting = [r.name for r in rows if r.fits]
    return tuple(rows), (" and ".join(fitting) if fitting else None)


def _capacity_at(plan: Any, n: int) -> tuple[bool, float]:
    """(fits, max concurrency) of the plan's cache at context N, by the arithmetic the plan used:
    a hybrid model's requests also hold their linear-attention state
    (qwenprep.engines.vllm.kv_hybrid)."""
    from qwenprep.engines.vllm.kv import kv_capacity
    from qwenprep.engines.vllm.kv_hybrid import hybrid_capacity

    if plan.kv.hybrid is not None:
        h = hybrid_capacity(plan.kv.hybrid, plan.kv.available_bytes, n, dcp=plan.request.dcp)
        return h.fits, h.max_concurrency
    kv = kv_capacity(
        plan.kv.available_bytes,
        plan.bytes_per_token,
        n,
        plan.rule,
        block_size=plan.request.block_size,
        dcp=plan.request.dcp,
    )
    return kv.fits, kv.max_concurrency


def plan_timing(
    plan: Any,
    gpu: GPUSpec | None,
    *,
    gpu_name: str | None = None,
    notes: tuple[str, ...] = (),
    budget_s: float = DEFAULT_PREFILL_BUDGET_S,
    alternatives: Mapping[int, Any] | None = None,
) -> PlanTiming:
    """The time view of a capacity Plan (qwenprep.planning.capacity.Plan): its context, every row
    of the
    context table, both parallel layouts (their capacity plans by TP size in ALTERNATIVES), and
    the recommendation."""
    from qwenprep.engines.vllm.kv import bytes_per_token_per_gpu

    shape, req = plan.shape, plan.request
    cost = model_cost(shape)
    kv_fp8 = req.kv_cache_dtype == "fp8"
    layout = Layout(req.tp, req.pp, plan.dp, req.ep)
    bpt = bytes_per_token_per_gpu(shape, tp=req.tp, kv_cache_dtype=req.kv_cache_dtype)

    def row(n: int) -> ContextRow:
        fits, concurrency = _capacity_at(plan, n)
        return ContextRow(
            n,
            fits,
            n > shape.max_position_embeddings,
            concurrency,
            prefill(cost, n, layout, gpu, kv_fp8=kv_fp8),
            decode(cost, n, layout, gpu, bpt, concurrency, fits, kv_fp8=kv_fp8),
        )

    largest = plan.kv.largest_context
    rows = tuple(row(n) for n in sorted(set(TABLE_CONTEXTS) | ({largest} if largest else set())))
    ctx = plan.kv.context
    layouts, single = _layouts(plan, gpu, cost, ctx, alternatives or {})
    notes = tuple(notes)
    if cost.source != "safetensors headers":
        notes += (f"active parameters from {cost.source}",)
    limit = max(shape.max_position_embeddings, 4 * (shape.native_context or 0))
    candidates = tuple(r for r in rows if r.context <= limit)
    return PlanTiming(
        gpu,
        gpu_name if gpu is None else gpu.name,
        notes,
        cost,
        prefill(cost, ctx, layout, gpu, kv_fp8=kv_fp8),
        decode(cost, ctx, layout, gpu, bpt, plan.kv.max_concurrency, plan.fits, kv_fp8=kv_fp8),
        rows,
        layouts,
        single,
        recommend(candidates, budget_s, gpu is not None),
        budget_s,
    )
