"""Every pre-flight check as data, in one report (``qwenprep check``).

Checks from other modules (schema and invariants, overlay, headers, engine readback) are
composed: an error one of them raises becomes one ``fail`` check. The checks that live here:
parallelism (what vLLM's layers assert at load time), KV fits at the intended context
(capacity.py), disk, GPUs visible, and the vLLM flags the installed version would reject.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from qwenprep.capacity import (
    PlanRequest,
    named_version,
    plan_capacity,
    resolve_rule,
    shape_from_dir,
)
from qwenprep.errors import InputError, QwenprepError, UsageError
from qwenprep.gpus import Inventory, inventory
from qwenprep.kvrules import CUDA_BLOCK_SIZE, KVDtype, ModelShape, VllmRule
from qwenprep.report import Check, Report
from qwenprep.sizes import GiB, format_gib

DISK_WARN_BYTES = 5 * GiB  # vLLM's compile cache and logs want a few GiB beside the model


@dataclass(frozen=True)
class CheckOptions:
    tp: int | None = None  # None: the model profile's, as qwenprep serve (see resolve_layout)
    pp: int = 1
    ep: bool | None = None  # None: the model profile's, as qwenprep serve
    gpus: int | None = None
    gpu_memory: int | None = None
    kv_memory: int | None = None
    context: int | None = None  # None: the config's max_position_embeddings; -1: native
    kv_cache_dtype: KVDtype = "auto"
    vllm_version: str | None = None
    vllm_args: tuple[str, ...] = ()
    python: str | None = None  # interpreter with vLLM, for the engine readback
    engine: bool = True  # run the engine readback (vLLM's config layer, a few seconds)
    disk_warn_bytes: int = DISK_WARN_BYTES
    block_size: int = CUDA_BLOCK_SIZE
    serving_engine: str = "vllm"  # "sglang": the gate and KV checks of EngineHooks


def check_options(*, tp: int | None = None, pp: int = 1, ep: bool | None = None,
                  context: str | None = None, gpus: int | None = None,
                  gpu_memory: str | None = None, kv_memory: str | None = None,
                  kv_cache_dtype: str = "auto", block_size: int = CUDA_BLOCK_SIZE,
                  vllm_version: str | None = None, vllm_args: tuple[str, ...] = (),
                  python: str | None = None, engine: bool = True) -> CheckOptions:
    """CheckOptions from the command line's strings (sizes, context) - UsageError when wrong."""
    from qwenprep.contexts import parse_context
    from qwenprep.sizes import parse_size

    if kv_memory is not None and gpu_memory is not None:
        raise UsageError("--kv-memory and --gpu-memory exclude each other: the first is exact, "
                         "the second an estimate.", hint="pass one of them.")
    ctx = None
    if context is not None:
        ctx = parse_context(context).tokens  # None for "native": the config decides
        if ctx is None:
            ctx = -1
    if kv_cache_dtype not in ("auto", "fp8"):
        raise UsageError(f"--kv-cache-dtype {kv_cache_dtype!r}: use auto or fp8.")
    if vllm_version is not None:
        named_version(vllm_version)
    return CheckOptions(
        tp=tp, pp=pp, ep=ep, gpus=gpus,
        gpu_memory=parse_size(gpu_memory) if gpu_memory is not None else None,
        kv_memory=parse_size(kv_memory) if kv_memory is not None else None,
        context=ctx, kv_cache_dtype=kv_cache_dtype,  # type: ignore[arg-type]
        vllm_version=vllm_version, vllm_args=tuple(vllm_args), python=python,
        block_size=block_size, engine=engine)


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """The parallel layout every check assumes: TP/EP as ``qwenprep serve`` would launch (its
    model profile) unless --tp/--ep say otherwise; DP from the GPUs in the inventory."""

    tp: int
    pp: int
    dp: int
    ep: bool
    source: str

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    def to_dict(self) -> dict[str, Any]:
        return {"tp": self.tp, "pp": self.pp, "dp": self.dp, "ep": self.ep,
                "source": self.source}


def _serve_profile(path: Path, repo_id: str | None) -> Any | None:
    """engines.vllm_launch.model_profile for PATH (what serve uses), None when that function
    is missing."""
    try:
        from qwenprep.engines.vllm_launch import model_profile
    except ImportError:
        return None
    from qwenprep.jsonio import load_json_file
    from qwenprep.overlay import read_manifest

    config = load_json_file(path / "config.json", what="config.json")
    if not isinstance(config, dict):
        return None
    return model_profile(path, config, read_manifest(path), repo_id)


def resolve_layout(path: Path, opts: CheckOptions, shape: ModelShape, inv: Inventory, *,
                   repo_id: str | None = None) -> Layout:
    """TP and EP: the flags, else serve's model profile, else plan's rule (TP = GPUs / PP, EP
    for MoE models). DP: the inventory's GPUs over TP x PP when they divide evenly, else 1 -
    the same DP the capacity plan behind kv.fits uses."""
    pp = opts.pp
    profile = None if opts.tp is not None and opts.ep is not None else \
        _serve_profile(path, repo_id)
    if profile is not None:
        tp, ep = profile.tp, profile.ep
        source = f"model profile {profile.name} (as qwenprep serve)"
    else:
        tp, ep = max(1, inv.count // pp), bool(shape.num_experts)
        source = "qwenprep plan's rule (TP = GPUs / PP; no model profile)"
    if opts.tp is not None:
        tp = opts.tp
    if opts.ep is not None:
        ep = opts.ep
    if opts.tp is not None and opts.ep is not None:
        source = "--tp/--ep"
    elif opts.tp is not None or opts.ep is not None:
        source += "; " + ("--tp" if opts.tp is not None else "--ep") + " given"
    ep = ep and bool(shape.num_experts)
    per_replica = tp * pp
    n = inv.count
    dp = n // per_replica if n >= per_replica and n % per_replica == 0 else 1
    return Layout(tp, pp, dp, ep, source)


# --------------------------------------------------------------------------- parallelism


def parallel_checks(shape: ModelShape, *, tp: int, ep: bool, dp: int = 1) -> list[Check]:
    """What vLLM asserts while building Qwen3-MoE layers for TP/EP (read in its source:
    Qwen3MoeAttention, Qwen3MoeSparseMoeBlock, fp8_utils.validate_fp8_block_shape*)."""
    out: list[Check] = []
    h, kv = shape.num_attention_heads, shape.num_kv_heads
    if h % tp:
        out.append(Check("parallel.heads", "fail",
                         f"TP {tp} does not divide the {h} query heads (num_attention_heads); "
                         f"vLLM asserts total_num_heads % tp_size == 0",
                         "config.json:$.num_attention_heads"))
    elif kv >= tp and kv % tp:
        out.append(Check("parallel.heads", "fail",
                         f"TP {tp} does not divide the {kv} KV heads (num_key_value_heads)",
                         "config.json:$.num_key_value_heads"))
    elif kv < tp and tp % kv:
        out.append(Check("parallel.heads", "fail",
                         f"TP {tp} is above the {kv} KV heads and not a multiple of them; vLLM "
                         "can only replicate KV heads when tp % num_key_value_heads == 0",
                         "config.json:$.num_key_value_heads"))
    else:
        rep = f" (each KV head replicated {tp // kv}x)" if kv < tp else ""
        out.append(Check("parallel.heads", "pass",
                         f"TP {tp}: {h // tp} query and {max(1, kv // tp)} KV heads per GPU{rep}"))

    if shape.num_experts:
        e = shape.num_experts
        if tp * (dp if ep else 1) == 1:
            out.append(Check("parallel.experts", "pass", f"one GPU holds all {e} experts"))
        elif tp > e:
            out.append(Check("parallel.experts", "fail",
                             f"Tensor parallel size {tp} is greater than the number of experts "
                             f"{e} (vLLM refuses this)", "config.json:$.num_experts"))
        elif ep:
            ep_size = tp * dp
            if e % ep_size:
                out.append(Check("parallel.experts", "warn",
                                 f"expert parallel over {ep_size} GPUs: {e} experts split "
                                 f"unevenly ({e // ep_size} or {e // ep_size + 1} per GPU)"))
            else:
                out.append(Check("parallel.experts", "pass",
                                 f"expert parallel: {e // ep_size} whole experts per GPU "
                                 f"({e} over {ep_size})"))
        else:
            out.append(Check("parallel.experts", "pass",
                             f"no expert parallel: each of the {e} experts is split over TP {tp}"))

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
                    "experts")
    elif shape.intermediate_size and tp > 1:
        part = shape.intermediate_size / tp
        if part != int(part) or int(part) % bn:
            problems.append(f"intermediate_size {shape.intermediate_size} / TP {tp} = {part:g} "
                            f"is not divisible by weight quantization block_n = {bn}")
    q_part = shape.num_attention_heads * shape.head_dim / tp
    if tp > 1 and (q_part != int(q_part) or int(q_part) % bk):
        problems.append(f"attention output size per GPU {q_part:g} (heads x head_dim / TP) is "
                        f"not divisible by block_k = {bk}")
    if problems:
        out.append(Check("parallel.fp8_block", "fail", "; ".join(problems),
                         "config.json:$.quantization_config.weight_block_size"))
    else:
        what = ("whole experts per GPU" if ep and shape.num_experts
                else f"{shape.moe_intermediate_size or shape.intermediate_size} / TP {tp}")
        out.append(Check("parallel.fp8_block", "pass",
                         f"FP8 block {bn}x{bk} divides every TP shard ({what})"))
    return out


# --------------------------------------------------------------------------- KV fit, disk, GPUs


def gpu_checks(layout: Layout, inv: dict[str, Any]) -> list[Check]:
    need = layout.tp * layout.pp
    if not inv or inv.get("count", 0) == 0:
        notes = "; ".join(inv.get("notes", [])) if inv else ""
        return [Check("gpus.visible", "skip",
                      "no GPUs visible here and no --gpus/--gpu-memory given"
                      + (f" ({notes})" if notes else ""))]
    n = inv["count"]
    names = sorted({g["name"] for g in inv["gpus"]})
    if n < need:
        return [Check("gpus.visible", "fail",
                      f"{n} GPU(s) from {inv['source']} but TP {layout.tp} x PP {layout.pp} needs "
                      f"{need} on this node")]
    if n % need:
        return [Check("gpus.visible", "warn",
                      f"{n} GPU(s) is not a multiple of TP x PP = {need}; "
                      f"{n - n // need * need} would sit idle")]
    mem = format_gib(min(g["memory_total"] for g in inv["gpus"]))
    if inv["source"] == "flags":
        text = (f"{n} GPU of {mem}" if n == 1 else f"{n} GPUs of {mem} each") \
            + " (as given by --gpus/--gpu-memory)"
    else:
        text = (f"{n} x {', '.join(names)} of {mem}" + (" each" if n > 1 else "")
                + f" (found by {inv['source']})")
    return [Check("gpus.visible", "pass", text)]


def kv_checks(shape: ModelShape, rule: VllmRule, opts: CheckOptions, layout: Layout,
              inv: Inventory, extra: dict[str, Any]) -> list[Check]:
    context = opts.context or shape.max_position_embeddings
    if context == -1:
        context = shape.native_context
    gpu_mem = inv.min_total
    if opts.kv_memory is None:
        if gpu_mem is None:
            why = "; ".join(inv.notes) or "no GPUs found"
            return [Check("kv.fits", "skip",
                          f"no memory budget to check {context:,} tokens against ({why}); pass "
                          "--kv-memory SIZE or --gpus N --gpu-memory SIZE")]
        if shape.weight_bytes is None:
            return [Check("kv.fits", "skip",
                          "weight sizes unknown (no safetensors headers readable), so the KV "
                          "memory cannot be estimated; pass --kv-memory SIZE")]
    req = PlanRequest(context=context, tp=layout.tp, pp=layout.pp, gpus=layout.gpus,
                      gpu_memory=gpu_mem, kv_memory=opts.kv_memory,
                      kv_cache_dtype=opts.kv_cache_dtype, ep=layout.ep,
                      block_size=opts.block_size)
    try:
        plan = plan_capacity(shape, req, rule)
    except QwenprepError as e:
        return [Check("kv.fits", "fail", e.message)]
    extra["plan"] = plan.to_dict()
    k = plan.kv
    est = "" if plan.exact else " (estimated from GPU memory; see plan.estimate)"
    head = (f"{k.context:,} tokens need {format_gib(k.needed_bytes)} of KV per GPU; "
            f"{format_gib(k.available_bytes)} available{est}: "
            f"KV cache {k.kv_cache_tokens:,} tokens, {k.max_concurrency:.2f}x")
    if plan.fits:
        return [Check("kv.fits", "pass", head)]
    advice = "; ".join(plan.advice[:3])
    return [Check("kv.fits", "fail", f"{head}; does not fit. {advice}")]


def disk_checks(path: Path, warn_below: int) -> list[Check]:
    out: list[Check] = []
    targets = [("disk.model_dir", path)]
    cache = Path(os.environ.get("VLLM_CACHE_ROOT") or Path.home() / ".cache" / "vllm")
    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    targets.append(("disk.vllm_cache", probe))
    for cid, p in targets:
        try:
            free = shutil.disk_usage(p).free
        except OSError as e:
            out.append(Check(cid, "warn", f"cannot read free space of {p} ({e})", str(p)))
            continue
        label = f"{format_gib(free)} free on the filesystem of {p}"
        if free < warn_below:
            out.append(Check(cid, "warn", f"only {label} (below {format_gib(warn_below)})",
                             str(p)))
        else:
            out.append(Check(cid, "pass", label))
    return out


def flag_checks(rule: VllmRule, args: tuple[str, ...]) -> list[Check]:
    if rule.source != "installed" and rule.source != "named":
        return [Check("engine.flags", "skip",
                      "no vLLM installed or named (--vllm-version); flags not checked")]
    # the one table: capabilities_for; names read as vLLM reads them (_ for -, before = and .)
    from qwenprep.engines.vllm_core import flag_refusal, parse_version
    from qwenprep.engines.vllm_launch import _flag_name

    have = parse_version(rule.version)
    planned = list(args)
    bad: list[str] = []
    for a in planned:
        why = flag_refusal(_flag_name(a), have)
        if why is not None:
            bad.append(f"{_flag_name(a)}: {why}")
    if bad:
        return [Check("engine.flags", "fail",
                      f"vLLM {rule.version} would reject: " + "; ".join(bad))]
    shown = " ".join(planned) if planned else "(no extra flags given)"
    return [Check("engine.flags", "pass",
                  f"vLLM {rule.version} has every version-dependent flag given ({shown}); "
                  "what the flags do is judged by engine.argv")]


# --------------------------------------------------------------------------- the gate


def _gate_checks(path: Path, opts: CheckOptions, repo_id: str | None) -> list[Check]:
    from qwenprep.gate import check_gate

    max_len = opts.context
    if max_len == -1:  # --context native
        from qwenprep.contexts import native_context
        from qwenprep.jsonio import load_json_file

        config = load_json_file(path / "config.json", what="config.json")
        max_len = native_context(config) if isinstance(config, dict) else None
    return check_gate(path, engine_on=opts.engine, python=opts.python, tp=opts.tp, ep=opts.ep,
                      max_model_len=max_len, extra_args=opts.vllm_args, repo_id=repo_id)


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class EngineHooks:
    """Another engine's gate and KV checks (qwenprep.engines.sglang_gate.check_hooks), handed
    in by the caller so that this module imports no engine module of its own."""

    name: str
    gate: Callable[[Path, CheckOptions, int | None, str | None], list[Check]]
    kv: Callable[[ModelShape, CheckOptions, Layout, Inventory, dict[str, Any]], list[Check]]


def _context_for_gate(path: Path, opts: CheckOptions) -> int | None:
    if opts.context != -1:
        return opts.context
    from qwenprep.contexts import native_context
    from qwenprep.jsonio import load_json_file

    config = load_json_file(path / "config.json", what="config.json")
    return native_context(config) if isinstance(config, dict) else None


def run_checks(path: Path, opts: CheckOptions, *, repo_id: str | None = None,
               hooks: EngineHooks | None = None) -> Report:
    """Every pre-flight check on PATH (a checkpoint directory or an overlay; REPO_ID names the
    Hub repo it came from, which the model profile may use as serve does). HOOKS: the gate
    and KV checks of another serving engine (SGLang) instead of vLLM's."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError(f"{path}: no config.json here; not a checkpoint directory.",
                         hint="pass the overlay made by: qwenprep patch MODEL --context 1m "
                         "--out DIR", path=str(path))
    extra: dict[str, Any] = {"path": str(path)}
    inv = inventory(gpus=opts.gpus, gpu_memory=opts.gpu_memory)
    extra["gpus"] = inv.to_dict()
    checks: list[Check] = []
    from qwenprep.integrity import header_checks
    from qwenprep.validation import validate_checkpoint

    # header_checks includes overlay.overlay_checks when PATH is an overlay: calling both
    # reported overlay.manifest/config/links/source twice
    composed: list[tuple[str, Callable[[], list[Check]]]] = [
        ("config", lambda: validate_checkpoint(path)),
        ("integrity", lambda: header_checks(path)),
    ]
    # the gate serve runs (qwenprep.gate): the plan serve would build from these options,
    # its argv parsed by the installed vLLM and read back through vLLM's config layer with
    # those arguments; judged offline (and said so) under --no-engine or without vLLM
    if hooks is not None:
        composed.append(("engine.gate", lambda: hooks.gate(
            path, opts, _context_for_gate(path, opts), repo_id)))
    else:
        composed.append(("engine.gate", lambda: _gate_checks(path, opts, repo_id)))
    for what, call in composed:
        try:
            checks += call()
        except QwenprepError as e:
            checks.append(Check(what, "fail", e.message + (f" Hint: {e.hint}" if e.hint else ""),
                                e.path))

    try:  # shape_from_dir reads the weights only where it can (a config error is what is left)
        shape = shape_from_dir(path)
    except InputError as e:
        checks.append(Check("parallel", "fail", e.message))
        return Report("check", checks, extra)
    layout = resolve_layout(path, opts, shape, inv, repo_id=repo_id)
    if hooks is not None:
        extra["serving_engine"] = hooks.name
        extra["parallel"] = layout.to_dict()
        checks += parallel_checks(shape, tp=layout.tp, ep=layout.ep, dp=layout.dp)
        checks += hooks.kv(shape, opts, layout, inv, extra)
        checks += gpu_checks(layout, extra["gpus"])
        checks += disk_checks(path, opts.disk_warn_bytes)
        return Report("check", checks, extra)
    rule = resolve_rule(opts.vllm_version, python=opts.python)
    extra["vllm_rule"] = rule.to_dict()
    extra["parallel"] = layout.to_dict()
    checks += parallel_checks(shape, tp=layout.tp, ep=layout.ep, dp=layout.dp)
    checks += kv_checks(shape, rule, opts, layout, inv, extra)
    checks += gpu_checks(layout, extra["gpus"])
    checks += disk_checks(path, opts.disk_warn_bytes)
    checks += flag_checks(rule, opts.vllm_args)
    return Report("check", checks, extra)

