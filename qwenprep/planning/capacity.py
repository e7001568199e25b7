"""Capacity plans: the vLLM rule for a version, the plan (KV capacity of a model shape on a
parallel layout) with its advice, and make_plan, what ``qwenprep plan`` computes. The arithmetic
itself, as vLLM does it, is qwenprep.engines.vllm.kv; the model shape of a checkpoint is
qwenprep.planning.shapes; the plan's words for people are qwenprep.planning.text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from qwenprep.engines.vllm.core import (
    NEWEST_KNOWN,
    OLDEST_KNOWN,
    capabilities_for,
    discover,
    parse_version,
)
from qwenprep.engines.vllm.kv import (
    CUDA_BLOCK_SIZE,
    KVCapacity,
    KVDtype,
    ModelShape,
    VllmRule,
    bytes_per_token_per_gpu,
    kv_capacity,
    kv_dtype_bytes,
    kv_heads_per_gpu,
    layers_per_gpu,
    overhead_estimate,
    overhead_parts,
    weights_per_gpu,
)
from qwenprep.engines.vllm.kv_extensible import (
    ExtensibleBudget,
    extensible_budget,
    extensible_by_default,
)
from qwenprep.errors import InputError, UsageError
from qwenprep.planning.shapes import load_shape
from qwenprep.util.report import SCHEMA_VERSION

if TYPE_CHECKING:
    from qwenprep.planning.timing import PlanTiming

__all__ = [
    "Plan",
    "KVRequest",
    "layout_alternatives",
    "make_plan",
    "named_version",
    "plan_capacity",
    "resolve_rule",
    "vllm_rule",
]


# --------------------------------------------------------------------------- version rules


def named_version(text: str) -> tuple[int, int, int]:
    """A version the user typed (--vllm-version), read by vllm_core.parse_version; UsageError
    (exit 2) when it has no number in it."""
    if not re.fullmatch(r"\s*v?\d+\.\d+(\.\d+)*(\S*)\s*", str(text)):
        raise UsageError(
            f"unreadable vLLM version {text!r}: expected X.Y or X.Y.Z.",
            hint="name it as X.Y or X.Y.Z, e.g. --vllm-version 0.32",
        )
    try:
        return parse_version(str(text))
    except InputError:
        raise UsageError(
            f"unreadable vLLM version {text!r}.",
            hint="name it as X.Y or X.Y.Z, e.g. --vllm-version 0.32",
        ) from None


def vllm_rule(version: str, source: str = "named") -> VllmRule:
    """The arithmetic rule of one vLLM version (clamped to the known 0.10 .. 0.34 range)."""
    major, minor, patch = named_version(version) if source == "named" else parse_version(version)
    key = (major, minor)
    note = ""
    oldest, newest = OLDEST_KNOWN[:2], NEWEST_KNOWN[:2]
    known = f"{oldest[0]}.{oldest[1]}-{newest[0]}.{newest[1]}"
    if key < oldest:
        note = (
            f"vLLM {version} is older than the known range {known}; the "
            f"{oldest[0]}.{oldest[1]} rule is used"
        )
        key, patch = oldest, 0
    elif key > newest:
        note = (
            f"vLLM {version} is newer than the known range {known}; the "
            f"{newest[0]}.{newest[1]} rule is used (re-check the numbers against its log "
            "line)"
        )
        key = newest
    extensible = extensible_by_default(key)
    return VllmRule(
        version=f"{major}.{minor}" + (f".{patch}" if patch else ""),
        source=source,
        # 0.34: CacheConfig.resolved_gpu_memory_utilization is 1.0 with the extensible cache
        gpu_memory_utilization=1.0 if extensible else 0.92 if key >= (0, 20) else 0.9,
        tokens_from_concurrency=key >= (0, 21),
        reserves_null_block=key >= (0, 29),
        cuda_graphs_in_profile=key >= (0, 20),
        has_kv_cache_memory_bytes=capabilities_for((*key, patch)).kv_cache_memory_bytes,
        note=note,
        extensible_kv_cache=extensible,
    )


def resolve_rule(named: str | None = None, *, python: str | None = None) -> VllmRule:
    """The rule for a named version, else the installed vLLM's, else the newest known."""
    if named:
        return vllm_rule(named, "named")
    try:
        info = discover(python)
    except Exception:  # noqa: BLE001 - a broken engine must not break planning
        info = None
    if info is not None and info.version:
        return vllm_rule(info.version, "installed")
    newest = f"{NEWEST_KNOWN[0]}.{NEWEST_KNOWN[1]}"
    return replace(
        vllm_rule(newest, "default"),
        note="no vLLM found; the newest known rule is used (name one with --vllm-version X.Y)",
    )


@dataclass(frozen=True)
class KVRequest:
    """The KV-capacity question with every value resolved: tokens, bytes, the layout (what
    make_plan and check's kv.fits derive from a qwenprep.request.PlanRequest, the options as
    typed, and the GPUs found)."""

    context: int
    tp: int = 1
    pp: int = 1
    gpus: int | None = None  # GPUs in total (DP = gpus // (tp x pp))
    gpu_memory: int | None = None  # bytes per GPU (total)
    kv_memory: int | None = None  # bytes per GPU for the KV cache (exact)
    kv_cache_dtype: KVDtype = "auto"
    ep: bool = True
    block_size: int = CUDA_BLOCK_SIZE
    gpu_memory_utilization: float | None = None  # None: the version's default
    dcp: int = 1  # vLLM --decode-context-parallel-size (qwenprep.engines.vllm.dcp)
    prefix_caching: bool | None = (
        None  # hybrids: None = the version's default (qwenprep.engines.vllm.kv_hybrid)
    )


@dataclass(frozen=True)
class Plan:
    shape: ModelShape
    request: KVRequest
    rule: VllmRule
    dp: int
    exact: bool
    weights_per_gpu: int
    overhead_bytes: int | None
    overhead_text: str | None
    utilization: float | None
    kv: KVCapacity
    bytes_per_token: int
    advice: list[str] = field(default_factory=list)
    timing: PlanTiming | None = (
        None  # qwenprep.planning.timing: prefill / decode time, context table
    )
    extensible: ExtensibleBudget | None = None  # vLLM 0.34+ sizing after warmup (estimates)
    measured: Any = None  # qwenprep.planning.measured.Measured: this machine's record that matches
    layout_source: str = ""  # where TP/EP came from (qwenprep.engines.parallel.choose_layout)

    @property
    def fits(self) -> bool:
        return self.kv.fits

    def to_dict(self) -> dict[str, Any]:
        r = self.request
        d: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": "plan",
            "ok": self.fits,
            "model": self.shape.name,
            "context": self.kv.context,
            "fits": self.fits,
            "exact": self.exact,
            "kv_cache_tokens": self.kv.kv_cache_tokens,
            "max_concurrency": round(self.kv.max_concurrency, 4),
            "max_concurrency_printed": f"{self.kv.max_concurrency:.2f}x",
            "bytes_per_token_per_gpu": self.bytes_per_token,
            "largest_context": self.kv.largest_context,
            "kv_cache_bytes_per_gpu": self.kv.available_bytes,
            "kv_cache_needed_bytes": self.kv.needed_bytes,
            "num_blocks": self.kv.num_blocks,
            "block_size": self.kv.block_size,
            "kv_cache_dtype": r.kv_cache_dtype,
            "parallel": {
                "tp": r.tp,
                "pp": r.pp,
                "dp": self.dp,
                "ep": r.ep,
                "gpus": r.gpus if r.gpus is not None else r.tp * r.pp * self.dp,
                "dcp": r.dcp,
                **({"source": self.layout_source} if self.layout_source else {}),
            },
            "weights_per_gpu_bytes": self.weights_per_gpu,
            "weights_source": self.shape.weights_source,
            "vllm_rule": self.rule.to_dict(),
            "advice": list(self.advice),
        }
        if self.kv.hybrid is not None:
            d["hybrid"] = self.hybrid_dict()
        if not self.exact:
            d["estimate"] = {
                "gpu_memory_bytes": r.gpu_memory,
                "gpu_memory_utilization": self.utilization,
                "weights_per_gpu_bytes": self.weights_per_gpu,
                "overhead_bytes": self.overhead_bytes,
                "overhead": self.overhead_text,
            }
            if self.extensible is not None:
                d["estimate"]["extensible_kv_cache"] = self.extensible.to_dict()
        if self.timing is not None:
            d.update(self.timing.to_dict())
        if self.measured is not None:
            d["measured"] = self.measured.to_dict()
        return d

    def hybrid_dict(self) -> dict[str, Any]:
        assert self.kv.hybrid is not None
        from qwenprep.engines.vllm.kv_hybrid import prefix_caching_mode

        out = self.kv.hybrid.to_dict()
        out["caching"] = prefix_caching_mode(self.rule.version, self.request.prefix_caching).why
        major_minor = ".".join(self.rule.version.split(".")[:2])
        out["verified_for_this_version"] = major_minor in out["vllm_verified"]
        if out["indexer_bytes_per_token_per_layer"]:  # qwenprep.engines.vllm.kv_hybrid.QsaIndexer
            out["verified_for_this_version"] = False
            out["note"] = (
                "the QSA indexer's compressed keys (vLLM's QSACompressedKeyCache spec) are "
                "counted in the attention page; its raw-key ring (one block per request) and "
                "how vLLM groups these specs are not modelled: not verified against vLLM"
            )
        elif not out["verified_for_this_version"]:
            out["note"] = (
                "hybrid KV arithmetic read in vLLM 0.32 and checked against 0.10.2's log; "
                f"vLLM {self.rule.version}: not verified"
            )
        return out

    def summary_parts(self) -> tuple[list[tuple[str, str]], list[tuple[str, ...]], list[str]]:
        """The plan for people, as data: qwenprep.planning.text.summary_parts."""
        from qwenprep.planning.text import summary_parts

        return summary_parts(self)

    def summary(self) -> str:
        """summary_parts as plain lines: qwenprep.planning.text.summary."""
        from qwenprep.planning.text import summary

        return summary(self)


def _compute(shape: ModelShape, req: KVRequest, rule: VllmRule) -> Plan:
    for name, v in (("tp", req.tp), ("pp", req.pp), ("block_size", req.block_size)):
        if v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1 (got {v}).")
    per_replica = req.tp * req.pp
    gpus = req.gpus if req.gpus is not None else per_replica
    if gpus < per_replica or gpus % per_replica:
        raise UsageError(
            f"--gpus {gpus} is not a multiple of TP {req.tp} x PP {req.pp}.",
            hint="use --gpus equal to TP x PP x DP, e.g. --gpus 8 --tp 8.",
        )
    dp = gpus // per_replica
    from qwenprep.engines.vllm.dcp import refuse_dcp

    refuse_dcp(shape, tp=req.tp, dcp=req.dcp)
    bpt = bytes_per_token_per_gpu(shape, tp=req.tp, pp=req.pp, kv_cache_dtype=req.kv_cache_dtype)
    w = weights_per_gpu(shape, tp=req.tp, pp=req.pp, dp=dp, ep=req.ep)
    ext: ExtensibleBudget | None = None
    if req.kv_memory is not None:
        avail = req.kv_memory
        exact, over, over_text, util = True, None, None, None
    elif req.gpu_memory is not None:
        if shape.weight_bytes is None:
            raise InputError(
                f"{shape.name}: weight sizes are {shape.weights_source}; so the KV "
                "memory cannot "
                "be estimated from the GPU size.",
                hint="pass --kv-memory SIZE (what vLLM prints as 'Available KV cache memory').",
            )
        util = req.gpu_memory_utilization or rule.gpu_memory_utilization
        over, over_text = overhead_estimate(shape, tp=req.tp, rule=rule)
        avail = int(req.gpu_memory * util) - w - over
        exact = False
        if rule.extensible_kv_cache:
            ext = _extensible(shape, req, rule, w)
            avail = ext.available
    else:
        raise UsageError(
            "no memory budget: pass --kv-memory SIZE, or --gpus N --gpu-memory SIZE "
            "(no GPU was found to read it from).",
            hint="qwenprep plan MODEL --context 1m --gpus 8 --gpu H200",
        )
    if shape.linear is not None:
        kv = _hybrid_kv(shape, req, avail, rule)
    else:
        kv = kv_capacity(avail, bpt, req.context, rule, block_size=req.block_size, dcp=req.dcp)
    return Plan(shape, req, rule, dp, exact, w, over, over_text, util, kv, bpt, extensible=ext)


def _extensible(shape: ModelShape, req: KVRequest, rule: VllmRule, w: int) -> ExtensibleBudget:
    """vLLM 0.34's post-warmup budget for an estimated plan
    (qwenprep.engines.vllm.kv_extensible)."""
    assert req.gpu_memory is not None
    transient, resident = overhead_parts(shape, rule=rule)
    return extensible_budget(
        req.gpu_memory,
        weights=w,
        resident=resident,
        transient=transient,
        utilization=req.gpu_memory_utilization,
    )


def _hybrid_kv(shape: ModelShape, req: KVRequest, avail: int, rule: VllmRule) -> KVCapacity:
    """KV capacity of a hybrid model by vLLM's arithmetic (qwenprep.engines.vllm.kv_hybrid), with
    the prefix
    caching mode the engine of RULE's version uses for REQ's flags."""
    from qwenprep.engines.vllm.kv_hybrid import hybrid_capacity, hybrid_layout, prefix_caching_mode

    assert shape.linear is not None
    if req.context <= 0:
        raise UsageError(f"context {req.context} must be positive.")
    layout = hybrid_layout(
        attention_layers=layers_per_gpu(shape, req.pp),
        linear=shape.linear,
        linear_layers=math.ceil(shape.linear.layers / req.pp),
        kv_heads_per_gpu=kv_heads_per_gpu(shape, req.tp),
        head_dim=shape.head_dim,
        kv_bytes=kv_dtype_bytes(shape, req.kv_cache_dtype),
        state_dtype_bytes=shape.dtype_bytes,
        tp=req.tp,
        block_size=req.block_size,
        prefix_caching=prefix_caching_mode(rule.version, req.prefix_caching).align,
        indexer_bytes_per_token=shape.indexer.bytes_per_token() if shape.indexer else 0,
    )
    cap = hybrid_capacity(
        layout, avail, req.context, by_concurrency=rule.tokens_from_concurrency, dcp=req.dcp
    )
    return KVCapacity(
        req.context,
        layout.block_size,
        layout.bytes_per_block,
        max(0, avail),
        cap.num_blocks,
        cap.kv_cache_tokens,
        cap.max_concurrency,
        cap.needed_bytes,
        cap.fits,
        cap.largest_context,
        layout,
    )


def layout_alternatives(plan: Plan) -> dict[int, Plan]:
    """The capacity plans of the two layouts the time view compares for an MoE model on several
    GPUs, by TP size: TP over every GPU + EP, and DP attention + EP (TP 1). Empty otherwise."""
    req = plan.request
    gpus = req.tp * req.pp * plan.dp
    if not (plan.shape.num_experts and req.ep and req.pp == 1 and gpus > 1):
        return {}
    return {
        tp: plan
        if req.tp == tp
        else _compute(plan.shape, replace(req, tp=tp, gpus=gpus, dcp=1), plan.rule)
        for tp in (gpus, 1)
    }


def plan_capacity(shape: ModelShape, req: KVRequest, rule: VllmRule) -> Plan:
    """The plan plus concrete advice (each alternative computed, not guessed)."""
    plan = _compute(shape, req, rule)
    return replace(plan, advice=_advice(shape, req, rule, plan))


def _advice(shape: ModelShape, req: KVRequest, rule: VllmRule, plan: Plan) -> list[str]:
    from qwenprep.engines.vllm.dcp import dcp_advice, largest_dcp

    top = largest_dcp(shape, req.tp) if req.dcp == 1 else 1
    alt_dcp = _compute(shape, replace(req, dcp=top), rule).kv if top > 1 else None
    # DCP comes after the layout and dtype advice: those change more, and check's kv.fits
    # message quotes the first lines. Under DP the DP line names the way out instead.
    dcp_lines = dcp_advice(
        shape,
        tp=req.tp,
        dcp=req.dcp,
        fits=plan.fits or plan.dp > 1,
        context=plan.kv.context,
        alt=alt_dcp,
    )
    return _layout_advice(shape, req, rule, plan) + dcp_lines


def _layout_advice(shape: ModelShape, req: KVRequest, rule: VllmRule, plan: Plan) -> list[str]:
    out: list[str] = []
    ctx = plan.kv.context
    if plan.dp > 1 and shape.num_experts and req.pp == 1:
        alt = _compute(shape, replace(req, tp=req.tp * plan.dp, ep=True), rule)
        out.append(
            f"DP {plan.dp} keeps each sequence's whole KV cache on one TP group; TP "
            f"{req.tp * plan.dp} with expert parallel (--tp {req.tp * plan.dp} --ep) spreads it "
            f"over all {plan.dp * req.tp} GPUs: {alt.bytes_per_token:,} bytes per token per GPU, "
            f"{alt.kv.max_concurrency:.2f}x at {ctx:,} ("
            + ("fits" if alt.fits else "still does not fit")
            + ")"
        )
    if plan.fits:
        if not plan.exact and rule.has_kv_cache_memory_bytes:
            out.append(
                "the KV memory is an estimate; pin it with vLLM's --kv-cache-memory-bytes "
                "(and pass the same figure as --kv-memory) to make these numbers exact"
            )
        return out
    if req.kv_cache_dtype == "auto" and shape.dtype_bytes > 1:
        alt = _compute(shape, replace(req, kv_cache_dtype="fp8"), rule)
        out.append(
            f"--kv-cache-dtype fp8 halves the KV cache ({alt.bytes_per_token:,} instead of "
            f"{plan.bytes_per_token:,} bytes per token per GPU): {alt.kv.max_concurrency:.2f}x "
            f"at {ctx:,}, "
            + ("fits" if alt.fits else "still does not fit")
            + " (fp8 KV can cost some accuracy)"
        )
    gpus = (req.gpus or req.tp * req.pp) * 2
    more = _compute(shape, replace(req, pp=req.pp * 2, gpus=gpus), rule)
    out.append(  # the flags that give this figure: plan --gpus alone would pick TP = GPUs / PP
        f"more GPUs: twice the GPUs (another node), --gpus {gpus} --tp {req.tp} --pp "
        f"{req.pp * 2} (vLLM --pipeline-parallel-size {req.pp * 2}), "
        f"halves the layers and weights on each GPU: {more.bytes_per_token:,} bytes per token per "
        f"GPU, {more.kv.max_concurrency:.2f}x at {ctx:,} ("
        + ("fits" if more.fits else "still does not fit")
        + (", same KV memory per GPU assumed" if plan.exact else "")
        + ")"
    )
    if plan.kv.largest_context > 0:
        out.append(
            f"a smaller context: at most {plan.kv.largest_context:,} tokens fit one "
            f"request (--context {plan.kv.largest_context} / vLLM --max-model-len "
            f"{plan.kv.largest_context})"
        )
    else:
        out.append(
            "no KV cache memory is left at all after the weights: more GPUs (or larger "
            "ones) are needed for any context"
        )
    return out


def refuse_layout(shape: ModelShape, *, tp: int, ep: bool, dp: int) -> None:
    """A layout vLLM refuses is no plan: what check reports as a FAIL (parallel.parallel_checks,
    the one rule: heads or experts vs TP, FP8 blocks vs each shard; TP x PP beyond the GPUs)
    is a UsageError from plan, before it prints numbers for it (TP x PP beyond --gpus:
    _compute's refusal, said first). check reports the same rule as FAIL lines."""
    from qwenprep.engines.parallel import parallel_checks

    failed = [c for c in parallel_checks(shape, tp=tp, ep=ep, dp=dp) if c.status == "fail"]
    if failed:
        raise UsageError(
            f"vLLM refuses this layout: {'; '.join(c.message for c in failed)}.",
            hint=f"choose --tp (and --ep) as qwenprep check accepts them: TP divides the "
            f"{shape.num_attention_heads} query heads.",
        )


def make_plan(
    model: str,
    *,
    context: str | None = None,
    tp: int | None = None,
    pp: int = 1,
    gpus: int | None = None,
    gpu_memory: str | None = None,
    kv_memory: str | None = None,
    kv_cache_dtype: KVDtype = "auto",
    ep: bool | None = None,
    vllm_version: str | None = None,
    block_size: int = CUDA_BLOCK_SIZE,
    python: str | None = None,
    gpu: str | None = None,
    prefill_budget: float | None = None,
    dcp: int = 1,
    prefix_caching: bool | None = None,
) -> Plan:
    """What ``qwenprep plan`` computes, from its options as typed. Without any memory option the
    GPUs of this machine (NVML / nvidia-smi) give the memory; TP, EP and DP come from the
    layout rule check and serve use (engines.parallel.choose_layout). GPU
    (--gpu NAME) picks a catalog entry for the time estimates and, without --gpu-memory, its
    memory; else detected GPUs are looked up by name (qwenprep.planning.catalog)."""
    from qwenprep.model.contexts import parse_context
    from qwenprep.planning.catalog import detected_gpu, named_gpu
    from qwenprep.planning.gpus import check_flags, inventory, on_this_node
    from qwenprep.planning.timing import DEFAULT_PREFILL_BUDGET_S, plan_timing
    from qwenprep.util.sizes import parse_size

    spec, gpu_memory, gpus, time_notes = named_gpu(
        gpu, gpu_memory=gpu_memory, kv_memory=kv_memory, gpus=gpus, tp=tp, pp=pp
    )
    gpu_name: str | None = None
    budget = DEFAULT_PREFILL_BUDGET_S if prefill_budget is None else prefill_budget
    if not (budget > 0 and math.isfinite(budget)):
        raise UsageError(f"--prefill-budget must be a positive number of seconds (got {budget}).")

    from qwenprep.request import one_memory_budget

    one_memory_budget(kv_memory, gpu_memory)
    kv_bytes = parse_size(kv_memory) if kv_memory is not None else None
    gpu_bytes = parse_size(gpu_memory) if gpu_memory is not None else None
    if kv_bytes is None and gpus is not None and gpu_bytes is not None:
        check_flags(gpus, gpu_bytes)  # a count: nothing is built per GPU
    elif kv_bytes is None:
        if gpu_bytes is None and gpus is not None:
            raise UsageError("--gpus needs --gpu-memory SIZE (or give --kv-memory SIZE).")
        inv = inventory(gpus=gpus, gpu_memory=gpu_bytes)
        gpus, gpu_bytes = (inv.count, inv.min_total) if inv.count else (None, None)
        if spec is None and inv.source in ("nvml", "nvidia-smi"):
            spec, gpu_name, note = detected_gpu(inv)
            time_notes += [note] if note else []
    elif gpus is None:  # --kv-memory: the GPUs here still count the replicas, as check does
        here = on_this_node()
        if here is not None and (tp is None or here.count % (tp * pp) == 0):
            gpus = here.count
    if spec is None and not time_notes:
        time_notes.append(
            "no GPU model named or detected: time estimates are left out "
            "(name one with --gpu, e.g. --gpu H200)"
        )
    shape = load_shape(model)  # a wrong MODEL is said first (exit 3)
    if kv_bytes is None and gpu_bytes is None:
        why = "; ".join(inv.notes) or "no source listed any"
        raise UsageError(
            f"no memory budget: no GPU found here ({why}); pass --kv-memory "
            "SIZE, or --gpus N --gpu-memory SIZE.",
            hint="qwenprep plan MODEL --context 1m --gpus 8 --gpu H200",
        )
    if context is None:
        ctx = shape.max_position_embeddings
    else:
        req = parse_context(context)
        if req.tokens is not None:
            ctx = req.tokens
        else:
            ctx = shape.native_context
    from qwenprep.engines.parallel import choose_layout
    from qwenprep.model.profile import profile_at

    # the layout check and serve take for the same flags (one rule: engines.parallel)
    lay = choose_layout(shape, gpus=gpus, pp=pp, tp=tp, ep=ep, profile=profile_at(model))
    rule = resolve_rule(vllm_version, python=python)
    plan = plan_capacity(
        shape,
        KVRequest(
            context=ctx,
            tp=lay.tp,
            pp=pp,
            gpus=gpus,
            gpu_memory=gpu_bytes,
            kv_memory=kv_bytes,
            kv_cache_dtype=kv_cache_dtype,
            ep=lay.ep,
            block_size=block_size,
            dcp=dcp,
            prefix_caching=prefix_caching,
        ),
        rule,
    )
    refuse_layout(shape, tp=lay.tp, ep=plan.request.ep, dp=plan.dp)
    plan = replace(plan, layout_source=lay.source)
    if lay.note:  # the flags differ from what the model profile launches: said, as check does
        plan = replace(plan, advice=[*plan.advice, lay.note])
    plan = replace(
        plan,
        timing=plan_timing(
            plan,
            spec,
            gpu_name=gpu_name,
            notes=tuple(time_notes),
            budget_s=budget,
            alternatives=layout_alternatives(plan),
        ),
    )
    from qwenprep.planning.measured import match_plan

    return replace(plan, measured=match_plan(plan))
