"""The leaf checks of ``qwenprep check`` (qwenprep.checks.preflight composes them into one report):
the parallel layout every check assumes (resolve_layout: the one rule plan and serve use,
qwenprep.engines.parallel.choose_layout), GPUs visible (gpu_checks), KV fits at the intended context
(kv_checks, by capacity.py), disk free (disk_checks) and the vLLM flags the installed or
named version would reject (flag_checks). Each returns Check data and raises nothing for a
failed check. CheckOptions comes from qwenprep.checks.preflight.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenprep.engines.parallel import Dims, Layout
from qwenprep.engines.vllm.kv import ModelShape, VllmRule
from qwenprep.errors import QwenprepError
from qwenprep.planning.capacity import KVRequest, plan_capacity
from qwenprep.planning.gpus import Inventory
from qwenprep.util.report import Check
from qwenprep.util.sizes import format_gib

if TYPE_CHECKING:
    from qwenprep.checks.preflight import CheckOptions

# --------------------------------------------------------------------------- layout


def _serve_profile(
    path: Path, repo_id: str | None, config: dict[str, Any] | None = None
) -> Any | None:
    """The serve profile of PATH (qwenprep.model.profile.model_profile, what serve uses); None
    for a config that is not a JSON object. CONFIG: config.json when the caller has read it."""
    from qwenprep.model.manifest import read_manifest
    from qwenprep.model.profile import model_profile

    if config is None:
        from qwenprep.util.jsonio import load_json_file

        config = load_json_file(path / "config.json", what="config.json")
    if not isinstance(config, dict):
        return None
    return model_profile(path, config, read_manifest(path), repo_id)


def resolve_layout(
    path: Path,
    opts: CheckOptions,
    shape: Dims,
    inv: Inventory,
    *,
    repo_id: str | None = None,
    config: dict[str, Any] | None = None,
) -> Layout:
    """The layout plan and serve take for the same flags (qwenprep.engines.parallel.
    choose_layout: --tp/--ep, else the model profile's, else one replica over the inventory's
    GPUs), with DP from the GPUs left over. CONFIG: config.json, when read."""
    from qwenprep.engines.parallel import choose_layout

    profile = _serve_profile(path, repo_id, config)
    return choose_layout(
        shape, gpus=inv.count or None, pp=opts.pp, tp=opts.tp, ep=opts.ep, profile=profile
    )


# --------------------------------------------------------------------------- KV fit, disk, GPUs


def gpu_checks(layout: Layout, inv: dict[str, Any]) -> list[Check]:
    need = layout.tp * layout.pp
    if not inv or inv.get("count", 0) == 0:
        notes = "; ".join(inv.get("notes", [])) if inv else ""
        return [
            Check(
                "gpus.visible",
                "skip",
                "no GPUs visible here and no --gpus/--gpu-memory given"
                + (f" ({notes})" if notes else ""),
            )
        ]
    n = inv["count"]
    names = sorted({g["name"] for g in inv["gpus"]})
    if n < need:
        return [
            Check(
                "gpus.visible",
                "fail",
                f"{n} GPU(s) from {inv['source']} but TP {layout.tp} x PP {layout.pp} needs "
                f"{need} on this node",
            )
        ]
    if n % need:
        return [
            Check(
                "gpus.visible",
                "warn",
                f"{n} GPU(s) is not a multiple of TP x PP = {need}; "
                f"{n - n // need * need} would sit idle",
            )
        ]
    mem = format_gib(min(g["memory_total"] for g in inv["gpus"]))
    if inv["source"] == "flags":
        text = (
            f"{n} GPU of {mem}" if n == 1 else f"{n} GPUs of {mem} each"
        ) + " (as given by --gpus/--gpu-memory)"
    else:
        text = (
            f"{n} x {', '.join(names)} of {mem}"
            + (" each" if n > 1 else "")
            + f" (found by {inv['source']})"
        )
    return [Check("gpus.visible", "pass", text)]


def kv_checks(
    shape: ModelShape,
    rule: VllmRule,
    opts: CheckOptions,
    layout: Layout,
    inv: Inventory,
    extra: dict[str, Any],
) -> list[Check]:
    context = opts.context_tokens(shape)
    gpu_mem = inv.min_total
    if opts.kv_memory is None:
        if gpu_mem is None:
            why = "; ".join(inv.notes) or "no GPUs found"
            return [
                Check(
                    "kv.fits",
                    "skip",
                    f"no memory budget to check {context:,} tokens against ({why}); pass "
                    "--kv-memory SIZE or --gpus N --gpu-memory SIZE",
                )
            ]
        if shape.weight_bytes is None:
            return [
                Check(
                    "kv.fits",
                    "skip",
                    "weight sizes unknown (no safetensors headers readable), so the KV "
                    "memory cannot be estimated; pass --kv-memory SIZE",
                )
            ]
    req = KVRequest(
        context=context,
        tp=layout.tp,
        pp=layout.pp,
        gpus=layout.gpus,
        gpu_memory=gpu_mem,
        kv_memory=opts.kv_memory,
        kv_cache_dtype=opts.kv_cache_dtype,
        ep=layout.ep,
        block_size=opts.block_size,
        **engine_cache_options(shape, layout.tp, opts.vllm_args),
    )
    try:
        plan = plan_capacity(shape, req, rule)
    except QwenprepError as e:
        return [Check("kv.fits", "fail", e.message)]
    extra["plan"] = plan.to_dict()
    k = plan.kv
    est = "" if plan.exact else " (estimated from GPU memory; see plan.estimate)"
    head = (
        f"{k.context:,} tokens need {format_gib(k.needed_bytes)} of KV per GPU; "
        f"{format_gib(k.available_bytes)} available{est}: "
        f"KV cache {k.kv_cache_tokens:,} tokens, {k.max_concurrency:.2f}x"
    )
    if plan.fits:
        return [Check("kv.fits", "pass", head)]
    advice = "; ".join(plan.advice[:3])
    return [Check("kv.fits", "fail", f"{head}; does not fit. {advice}")]


def engine_cache_options(shape: ModelShape, tp: int, args: tuple[str, ...]) -> dict[str, Any]:
    """The decode context parallel size and prefix caching the serve ARGS after ``--`` ask
    for, as KVRequest keywords; a DCP vLLM refuses counts as none here (the parallel.dcp
    check fails on it instead: qwenprep.engines.vllm.dcp)."""
    from qwenprep.engines.vllm.dcp import dcp_from_args, dcp_refusal
    from qwenprep.engines.vllm.kv_hybrid import prefix_caching_from_args

    try:
        dcp = dcp_from_args(args) or 1
    except QwenprepError:
        dcp = 1
    if dcp_refusal(shape, tp=tp, dcp=dcp) is not None:
        dcp = 1
    return {"dcp": dcp, "prefix_caching": prefix_caching_from_args(args)}


def dcp_checks(shape: ModelShape, tp: int, args: tuple[str, ...]) -> list[Check]:
    """parallel.dcp, when the serve ARGS after ``--`` ask for decode context parallel."""
    from qwenprep.engines.vllm.dcp import dcp_check, dcp_from_args

    try:
        dcp = dcp_from_args(args)
    except QwenprepError as e:
        return [Check("parallel.dcp", "fail", e.message)]
    return [] if dcp is None else [dcp_check(shape, tp=tp, dcp=dcp)]


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
            out.append(Check(cid, "warn", f"only {label} (below {format_gib(warn_below)})", str(p)))
        else:
            out.append(Check(cid, "pass", label))
    return out


def flag_checks(rule: VllmRule, args: tuple[str, ...]) -> list[Check]:
    if rule.source != "installed" and rule.source != "named":
        return [
            Check(
                "engine.flags",
                "skip",
                "no vLLM installed or named (--vllm-version); flags not checked",
            )
        ]
    # the one table: capabilities_for; names read as vLLM reads them (_ for -, before = and .)
    from qwenprep.engines.vllm.core import flag_refusal, parse_version
    from qwenprep.engines.vllm.launch import flag_name, flag_warnings

    have = parse_version(rule.version)
    planned = list(args)
    bad: list[str] = []
    for a in planned:
        why = flag_refusal(flag_name(a), have)
        if why is not None:
            bad.append(f"{flag_name(a)}: {why}")
    if bad:
        return [
            Check("engine.flags", "fail", f"vLLM {rule.version} would reject: " + "; ".join(bad))
        ]
    # flags that run but do less than the user may think (the notes serve prints)
    warnings = flag_warnings(planned, have)
    if warnings:
        return [Check("engine.flags", "warn", "; ".join(warnings))]
    shown = f"({' '.join(planned)})" if planned else "(no extra flags given)"
    return [
        Check(
            "engine.flags",
            "pass",
            f"vLLM {rule.version} has every version-dependent flag given {shown}; "
            "what the flags do is judged by engine.argv",
        )
    ]
