"""KV-cache capacity by SGLang 0.5.23's arithmetic (read in its source; no other release is
claimed). For a model whose attention layers are plain MHA/GQA (Qwen3-MoE):

- bytes per token ("cell size", model_executor/pool_configurator.py
  DefaultPoolConfigurator._compute_cell_size): ``kv_heads_per_gpu x (head_dim + v_head_dim)
  x layers x dtype_bytes``, ``kv_heads_per_gpu = max(1, kv_heads // tp)``
  (configs/model_config.py get_num_kv_heads), v_head_dim = head_dim for MHA;
- tokens in the pool (calculate_pool_sizes): ``available // cell // page_size x page_size``;
  page_size defaults to 1 on CUDA (arg_groups/overrides.py _page_size_default; FA4 on
  Blackwell forces 128);
- the budget (mem_cache/kv_cache_configurator.py _profile_available_bytes): free memory after
  the weights load minus ``pre_load_free x (1 - mem_fraction_static)``; the default
  mem_fraction_static (arg_groups/memory_hook.py handle_gpu_memory_settings) is
  ``round((gpu_mem - reserved) / gpu_mem, 3)`` with reserved (MB) = 512 + 1.5 x
  max(chunked_prefill_size, 2048) + tp x pp / 8 x 1024 + 2 x decode cuda-graph max_bs, at
  least 10 GiB above 60 GiB GPUs;
- the per-request token table (mem_cache/memory_pool.py ReqToTokenPool): int32
  ``(max_num_reqs + 1) x (context_len + 4)``, allocated after the KV budget was measured, so
  it comes out of the (1 - mem_fraction_static) slack, not out of the KV pool. max_num_reqs
  (kv_cache_configurator.resolve_max_num_reqs): ``min(clamp(int(tokens / context x 512),
  2048, 4096), tokens // 2)`` unless --max-running-requests sets it. At 1M context that is
  2049 x 1,048,580 x 4 bytes = 8.0 GiB per GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qwenprep.errors import InputError, UsageError
from qwenprep.util.report import SCHEMA_VERSION
from qwenprep.util.sizes import GiB, format_gib

if TYPE_CHECKING:
    from qwenprep.engines.base import PlanOptions
    from qwenprep.engines.vllm.kv import ModelShape

VERSION = "0.5.23"
MiB = 1024 * 1024
REQ_TO_TOKEN_EXTRA = 4  # allocation_sizing.get_req_to_token_extra_context_len, no spec decode


def cell_size(shape: ModelShape, *, tp: int, pp: int = 1, kv_cache_dtype: str = "auto") -> int:
    heads = max(1, shape.num_kv_heads // tp)
    layers = math.ceil(shape.full_attention_layers / pp)
    dtype_bytes = 1 if kv_cache_dtype == "fp8" else shape.dtype_bytes
    return heads * (shape.head_dim + shape.head_dim) * layers * dtype_bytes


def default_mem_fraction_static(gpu_mem_bytes: int, *, tp: int, pp: int = 1) -> tuple[float, str]:
    """SGLang's default for one GPU size (decode CUDA graphs on, no DP attention, no
    speculative decoding, prefill graphs' small per-size reserve left out): an estimate."""
    mb = gpu_mem_bytes / MiB
    if mb < 20 * 1024:
        cps, bs = 2048, 8
    elif mb < 35 * 1024:
        cps, bs = 4096, 48 if tp < 4 else 160
    elif mb < 60 * 1024:
        cps, bs = 4096, 32 if tp < 4 else 160
    elif mb < 160 * 1024:
        cps, bs = 8192, 256 if tp < 4 else 512
    else:
        cps, bs = 16384, 512
    reserved = 512 + max(cps, 2048) * 1.5 + tp * pp / 8 * 1024 + bs * 2
    if mb > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    frac = round((mb - reserved) / mb, 3)
    text = (
        f"SGLang {VERSION} default for a {mb:,.0f} MB GPU: (gpu_mem - reserved) / gpu_mem "
        f"with reserved {reserved:,.0f} MB (512 + 1.5 x chunked_prefill_size {cps} + "
        f"TP x PP / 8 x 1024 + 2 x cuda-graph max_bs {bs}"
        + (", at least 10 GiB" if mb > 60 * 1024 else "")
        + ")"
    )
    return frac, text


def max_num_reqs(tokens: int, context: int, max_running_requests: int | None = None) -> int:
    if max_running_requests is not None:
        return min(max(1, max_running_requests), tokens // 2)
    estimated = max(min(int(tokens / context * 512), 4096), 2048)
    return min(estimated, tokens // 2)


def req_to_token_bytes(reqs: int, context: int) -> int:
    return (reqs + 1) * (context + REQ_TO_TOKEN_EXTRA) * 4


@dataclass(frozen=True)
class SglangKVPlan:
    model: str
    context: int
    tp: int
    pp: int
    dp: int
    ep: bool
    page_size: int
    kv_cache_dtype: str
    cell_size: int
    exact: bool
    available_bytes: int
    weights_per_gpu: int
    mem_fraction_static: float | None
    mem_fraction_text: str | None
    max_total_num_tokens: int
    max_concurrency: float
    max_num_reqs: int
    req_to_token_bytes: int
    slack_bytes: int | None
    fits: bool
    largest_context: int
    advice: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "plan",
            "ok": self.fits,
            "serving_engine": "sglang",
            "sglang_rule": f"SGLang {VERSION}",
            "model": self.model,
            "context": self.context,
            "fits": self.fits,
            "exact": self.exact,
            "kv_cache_tokens": self.max_total_num_tokens,
            "max_total_num_tokens": self.max_total_num_tokens,
            "max_concurrency": round(self.max_concurrency, 4),
            "bytes_per_token_per_gpu": self.cell_size,
            "page_size": self.page_size,
            "largest_context": self.largest_context,
            "kv_cache_bytes_per_gpu": self.available_bytes,
            "kv_cache_needed_bytes": self.context * self.cell_size,
            "kv_cache_dtype": self.kv_cache_dtype,
            "parallel": {
                "tp": self.tp,
                "pp": self.pp,
                "dp": self.dp,
                "ep": self.ep,
                "gpus": self.tp * self.pp * self.dp,
            },
            "weights_per_gpu_bytes": self.weights_per_gpu,
            "mem_fraction_static": self.mem_fraction_static,
            "mem_fraction_static_source": self.mem_fraction_text,
            "max_running_requests": self.max_num_reqs,
            "req_to_token_bytes": self.req_to_token_bytes,
            "slack_bytes": self.slack_bytes,
            "advice": list(self.advice),
            "notes": list(self.notes),
        }

    def summary_parts(self) -> tuple[list[tuple[str, str]], list[tuple[str, ...]], list[str]]:
        """The plan for people, as data (qwenprep/cli draws it as vLLM's plan is drawn): the
        (what, value) rows, no context table, and the verdict, notes and advice."""
        if self.exact:
            pool = f"{format_gib(self.available_bytes)} (given; exact)"
        else:
            pool = (
                f"{format_gib(self.available_bytes)} ESTIMATE = GPU x mem_fraction_static "
                f"{self.mem_fraction_static} - weights {format_gib(self.weights_per_gpu)} "
                f"({self.mem_fraction_text})"
            )
        rows = [
            ("model", self.model),
            (
                "engine",
                f"SGLang {VERSION} arithmetic (read from its source; other releases not claimed)",
            ),
            (
                "parallel",
                f"TP {self.tp} x PP {self.pp} x DP {self.dp}"
                + (" + expert parallel (--ep-size)" if self.ep else ""),
            ),
            (
                "KV bytes per token per GPU (cell size)",
                f"{self.cell_size:,} (kv-cache-dtype {self.kv_cache_dtype}), page size "
                f"{self.page_size}",
            ),
            ("KV pool memory per GPU", pool),
            (
                "max_total_num_tokens",
                f"{self.max_total_num_tokens:,}; {self.max_concurrency:.2f}x requests of "
                f"{self.context:,} tokens",
            ),
            (
                "per-request token table (req_to_token, outside the KV pool)",
                f"{self.max_num_reqs + 1:,} x {self.context + REQ_TO_TOKEN_EXTRA:,} x 4 bytes = "
                f"{format_gib(self.req_to_token_bytes)} per GPU"
                + (
                    f" of {format_gib(self.slack_bytes)} non-static memory"
                    if self.slack_bytes is not None
                    else ""
                ),
            ),
            ("largest context that fits", f"{self.largest_context:,} tokens"),
        ]
        lines = [f"fits: {'yes' if self.fits else 'NO'}"]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"advice: {a}" for a in self.advice]
        return rows, [], lines

    def summary(self) -> str:
        """summary_parts as plain lines ("what: value", then the rest)."""
        rows, _, lines = self.summary_parts()
        return "\n".join([f"{what}: {value}" for what, value in rows] + lines)


def plan_sglang(
    shape: ModelShape,
    *,
    context: int,
    tp: int,
    pp: int = 1,
    gpus: int | None = None,
    gpu_memory: int | None = None,
    kv_memory: int | None = None,
    kv_cache_dtype: str = "auto",
    ep: bool = True,
    page_size: int = 1,
    mem_fraction_static: float | None = None,
    max_running_requests: int | None = None,
) -> SglangKVPlan:
    from qwenprep.engines.vllm.kv import weights_per_gpu

    if context <= 0:
        raise UsageError(f"context {context} must be positive.")
    if tp < 1 or pp < 1 or page_size < 1:
        raise UsageError("--tp, --pp and the page size must be at least 1.")
    if mem_fraction_static is not None and not 0 < mem_fraction_static <= 1:
        raise UsageError(f"--mem-fraction-static {mem_fraction_static}: a fraction in (0, 1].")
    per_replica = tp * pp
    total = gpus if gpus is not None else per_replica
    if total < per_replica or total % per_replica:
        raise UsageError(f"--gpus {total} is not a multiple of TP {tp} x PP {pp}.")
    dp = total // per_replica
    use_ep = ep and bool(shape.num_experts) and tp > 1
    cell = cell_size(shape, tp=tp, pp=pp, kv_cache_dtype=kv_cache_dtype)
    weights = weights_per_gpu(shape, tp=tp, pp=pp, dp=1, ep=use_ep)
    notes: list[str] = []
    if shape.attention_layers is not None:
        notes.append(
            "hybrid model: only the full-attention layers hold per-token KV; SGLang's "
            "Mamba/linear-attention state pool is not modelled here"
        )
    frac, frac_text, slack = None, None, None
    if kv_memory is not None:
        avail, exact = kv_memory, True
    elif gpu_memory is not None:
        if shape.weight_bytes is None:
            raise InputError(
                f"{shape.name}: weight sizes unknown, so the KV pool cannot be "
                "estimated from the GPU size.",
                hint="pass --kv-memory SIZE.",
            )
        if mem_fraction_static is None:
            frac, frac_text = default_mem_fraction_static(gpu_memory, tp=tp, pp=pp)
        else:
            frac, frac_text = mem_fraction_static, "given with --mem-fraction-static"
        avail = int(gpu_memory * frac) - weights
        slack = int(gpu_memory * (1 - frac))
        exact = False
    else:
        raise UsageError("no memory budget: pass --kv-memory SIZE, or --gpus N --gpu-memory SIZE.")
    avail = max(0, avail)
    tokens = avail // cell // page_size * page_size if cell else 0
    reqs = max_num_reqs(tokens, context, max_running_requests) if tokens >= 2 else 0
    table = req_to_token_bytes(reqs, context)
    need = math.ceil(context / page_size) * page_size
    fits = tokens >= need and (slack is None or table < slack)
    largest = tokens
    advice = []
    if slack is not None and table >= slack:
        advice.append(
            f"the per-request token table ({format_gib(table)}) does not fit the "
            f"{format_gib(slack)} SGLang keeps outside the static pool: pass "
            "--max-running-requests N after -- (the table is (N + 1) x context x 4 "
            "bytes)"
        )
    elif table >= GiB:
        advice.append(
            f"at {context:,} tokens SGLang reserves {format_gib(table)} per GPU for the "
            f"token table of {reqs:,} request slots; --max-running-requests N after -- "
            "shrinks it to (N + 1) x context x 4 bytes"
        )
    if tokens < need:
        advice.append(
            f"one request of {context:,} tokens needs {need:,} KV slots; the pool "
            f"holds {tokens:,}: more GPUs (--tp), --kv-cache-dtype fp8, or a smaller "
            "context"
        )
    if not exact:
        advice.append(
            "the KV pool is an estimate; SGLang logs max_total_num_tokens at start "
            "(and /server_info reports it): pass its pool bytes as --kv-memory"
        )
    return SglangKVPlan(
        shape.name,
        context,
        tp,
        pp,
        dp,
        use_ep,
        page_size,
        kv_cache_dtype,
        cell,
        exact,
        avail,
        weights,
        frac,
        frac_text,
        tokens,
        tokens / context,
        reqs,
        table,
        slack,
        fits,
        largest,
        advice,
        notes,
    )


def make_plan(model: str, options: PlanOptions) -> SglangKVPlan:
    """`qwenprep plan --serving-engine sglang` from its options as typed; without a memory
    option the GPUs of this machine give the memory, TP defaults to their count."""
    from qwenprep.model.contexts import parse_context
    from qwenprep.planning.shapes import load_shape
    from qwenprep.util.sizes import parse_size

    kv_memory, gpu_memory, gpus, tp, pp = (
        options.kv_memory,
        options.gpu_memory,
        options.gpus,
        options.tp,
        options.pp,
    )
    from qwenprep.request import one_memory_budget

    one_memory_budget(kv_memory, gpu_memory)
    kv = parse_size(str(kv_memory)) if kv_memory is not None else None
    gm = parse_size(str(gpu_memory)) if gpu_memory is not None else None
    n = gpus
    if kv is None and gm is None:
        from qwenprep.planning.gpus import inventory

        inv = inventory(gpus=gpus)
        n, gm = (inv.count, inv.min_total) if inv.count else (gpus, None)
    shape = load_shape(model)
    req = parse_context(str(options.context)) if options.context is not None else None
    ctx = (
        shape.max_position_embeddings
        if req is None
        else (req.tokens if req.tokens is not None else shape.native_context)
    )
    from qwenprep.engines.parallel import choose_layout
    from qwenprep.model.profile import profile_at

    # the layout check and serve take for the same flags (one rule: engines.parallel)
    lay = choose_layout(shape, gpus=n, pp=pp, tp=tp, ep=options.ep, profile=profile_at(model))
    return plan_sglang(
        shape,
        context=ctx,
        tp=lay.tp,
        pp=pp,
        gpus=n,
        gpu_memory=gm,
        kv_memory=kv,
        kv_cache_dtype=options.kv_cache_dtype,
        ep=lay.ep,
        mem_fraction_static=options.mem_fraction_static,
    )
