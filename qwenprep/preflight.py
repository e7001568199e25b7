"""Every pre-flight check as data, in one report (``qwenprep check``).

Checks from other modules (schema and invariants, overlay, headers, engine readback) are
composed: an error one of them raises becomes one ``fail`` check. The checks that live here:
parallelism (what vLLM's layers assert at load time), KV fits at the intended context
(capacity.py), disk, GPUs visible, and the vLLM flags the installed version would reject.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
from qwenprep.integrity_scan import Scan, gc_paused
from qwenprep.kvrules import CUDA_BLOCK_SIZE, KVDtype, ModelShape, VllmRule
from qwenprep.parallel import parallel_checks
from qwenprep.report import Check, Report
from qwenprep.sizes import GiB, format_gib
from qwenprep.validation import VllmVersion

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


def _serve_profile(path: Path, repo_id: str | None,
                   config: dict[str, Any] | None = None) -> Any | None:
    """engines.vllm_launch.model_profile for PATH (what serve uses), None when that function
    is missing. CONFIG: config.json when the caller has read it already."""
    try:
        from qwenprep.engines.vllm_launch import model_profile
    except ImportError:
        return None
    from qwenprep.manifest import read_manifest

    if config is None:
        from qwenprep.jsonio import load_json_file

        config = load_json_file(path / "config.json", what="config.json")
    if not isinstance(config, dict):
        return None
    return model_profile(path, config, read_manifest(path), repo_id)


def resolve_layout(path: Path, opts: CheckOptions, shape: ModelShape, inv: Inventory, *,
                   repo_id: str | None = None, config: dict[str, Any] | None = None) -> Layout:
    """TP and EP: the flags, else serve's model profile, else plan's rule (TP = GPUs / PP, EP
    for MoE models). DP: the inventory's GPUs over TP x PP when they divide evenly, else 1 -
    the same DP the capacity plan behind kv.fits uses. CONFIG: config.json, when read."""
    pp = opts.pp
    profile = None if opts.tp is not None and opts.ep is not None else \
        _serve_profile(path, repo_id, config)
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


def check_gate(path: Path, *, engine_on: bool, python: str | None, tp: int | None,
               ep: bool | None, max_model_len: int | None, extra_args: Sequence[str],
               repo_id: str | None = None,
               assume_version: tuple[int, int, int] | None = None) -> list[Check]:
    """check's use of the gate (qwenprep.gate): the plan serve would build from the same inputs,
    judged the same way; a refusal of the plan itself is one failed check. ASSUME_VERSION: the
    vLLM the plan is for when none is asked (--no-engine, or none installed)."""
    from qwenprep.engine import build_launch_plan, discover
    from qwenprep.gate import gate

    engine = discover(python) if engine_on else None
    try:
        plan = build_launch_plan(path, engine=engine, tp=tp, ep=ep, max_model_len=max_model_len,
                                 extra_args=extra_args, repo_id=repo_id, offline_gate=False,
                                 for_check=True, assume_version=assume_version)
    except QwenprepError as e:
        hint = f" Hint: {e.hint}" if e.hint else ""
        return [Check("engine.plan", "fail", f"qwenprep serve would refuse (exit "
                      f"{e.exit_code}): {e.message}{hint}", e.path)]
    reason = None
    if not engine_on:
        reason = "check --no-engine"
    elif engine is None or not engine.importable:
        from qwenprep.engines.vllm_core import engine_python

        reason = f"vLLM is not installed in {engine_python(python)}"
    res = gate(plan, engine=engine, offline_reason=reason)
    return [replace(c, message=f"{c.message} ({reason})") if c.id == "engine.readback" else c
            for c in res.checks]


def _named_vllm(opts: CheckOptions) -> VllmVersion | None:
    """The vLLM named with --vllm-version, for the checks whose verdict depends on it (a Dual
    Chunk Attention config); None: validation asks the installed vLLM."""
    if not opts.vllm_version:
        return None
    return VllmVersion(named_version(opts.vllm_version), "--vllm-version")


def _gate_checks(path: Path, opts: CheckOptions, repo_id: str | None,
                 config: dict[str, Any] | None = None) -> list[Check]:
    max_len = opts.context
    if max_len == -1:  # --context native
        max_len = _context_for_gate(path, opts, config)
    named = named_version(opts.vllm_version) if opts.vllm_version else None
    return check_gate(path, engine_on=opts.engine, python=opts.python, tp=opts.tp, ep=opts.ep,
                      max_model_len=max_len, extra_args=opts.vllm_args, repo_id=repo_id,
                      assume_version=named)


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class EngineHooks:
    """Another engine's gate and KV checks (qwenprep.engines.sglang_gate.check_hooks), handed
    in by the caller so that this module imports no engine module of its own."""

    name: str
    gate: Callable[[Path, CheckOptions, int | None, str | None], list[Check]]
    kv: Callable[[ModelShape, CheckOptions, Layout, Inventory, dict[str, Any]], list[Check]]


def _context_for_gate(path: Path, opts: CheckOptions,
                      config: dict[str, Any] | None = None) -> int | None:
    if opts.context != -1:
        return opts.context
    from qwenprep.contexts import native_context

    if config is None:
        from qwenprep.jsonio import load_json_file

        config = load_json_file(path / "config.json", what="config.json")
    return native_context(config) if isinstance(config, dict) else None


def _shape(path: Path, scan: Scan | None) -> ModelShape:
    """capacity.shape_from_dir from what the header scan read (config.json and every header,
    read once), when the scan read them all cleanly; otherwise shape_from_dir itself, which
    reads them again and says what it could not use (as plan does)."""
    clean = scan is not None and scan.config is not None and scan.tensors \
        and scan.shards_ok and not any(c.status == "fail" for c in scan.checks) \
        and (scan.weight_map is not None or all("/" not in s for s in scan.shard_names))
    if not clean:
        return shape_from_dir(path)
    assert scan is not None and scan.config is not None
    from qwenprep.timing import tally_tensors

    tally = tally_tensors(scan.tensor_table())
    return ModelShape.from_config(scan.config, name=str(path), weight_bytes=tally.total_bytes,
                                  expert_weight_bytes=tally.routed_expert_bytes,
                                  weights_source=f"safetensors headers in {path}",
                                  params=tally)


class _Background:
    """A call run in a thread while the caller does other work (the vLLM discovery probe is a
    subprocess: its wait releases the GIL while the headers are checked)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="qwenprep-preflight")
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller by result()
            self._error = e

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


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
    # vLLM's version (a probe subprocess) is found while the headers are read
    rule_soon = None if hooks is not None else _Background(
        lambda: resolve_rule(opts.vllm_version, python=opts.python))
    inv = inventory(gpus=opts.gpus, gpu_memory=opts.gpu_memory)
    extra["gpus"] = inv.to_dict()
    checks: list[Check] = []
    from qwenprep.integrity_tensors import header_scan
    from qwenprep.validation import validate_checkpoint

    # read once: config.json, the index and every header, by the header scan; the shape for
    # the capacity checks and the serve profile come from what it read
    scanned: list[Scan] = []

    def integrity() -> list[Check]:
        scanned.append(header_scan(path))
        return scanned[0].checks

    def config() -> dict[str, Any] | None:
        return scanned[0].config if scanned else None

    # header_scan includes overlay.overlay_checks when PATH is an overlay: calling both
    # reported overlay.manifest/config/links/source twice
    composed: list[tuple[str, Callable[[], list[Check]]]] = [
        ("config", lambda: validate_checkpoint(path, vllm=_named_vllm(opts))),
        ("integrity", integrity),
    ]
    # the gate serve runs (qwenprep.gate): the plan serve would build from these options,
    # its argv parsed by the installed vLLM and read back through vLLM's config layer with
    # those arguments; judged offline (and said so) under --no-engine or without vLLM
    if hooks is not None:
        composed.append(("engine.gate", lambda: hooks.gate(
            path, opts, _context_for_gate(path, opts, config()), repo_id)))
    else:
        composed.append(("engine.gate", lambda: _gate_checks(path, opts, repo_id, config())))
    with gc_paused():
        for what, call in composed:
            try:
                checks += call()
            except QwenprepError as e:
                checks.append(Check(what, "fail", e.message + (f" Hint: {e.hint}" if e.hint
                                                               else ""), e.path))
        try:  # the weights only where they can be read (a config error is what is left)
            shape = _shape(path, scanned[0] if scanned else None)
        except InputError as e:
            checks.append(Check("parallel", "fail", e.message))
            if rule_soon is not None:
                rule_soon.wait()  # not needed, but no probe is left running
            return Report("check", checks, extra)
    layout = resolve_layout(path, opts, shape, inv, repo_id=repo_id, config=config())
    if hooks is not None:
        extra["serving_engine"] = hooks.name
        extra["parallel"] = layout.to_dict()
        checks += parallel_checks(shape, tp=layout.tp, ep=layout.ep, dp=layout.dp)
        checks += hooks.kv(shape, opts, layout, inv, extra)
        checks += gpu_checks(layout, extra["gpus"])
        checks += disk_checks(path, opts.disk_warn_bytes)
        return Report("check", checks, extra)
    assert rule_soon is not None
    rule: VllmRule = rule_soon.result()
    extra["vllm_rule"] = rule.to_dict()
    extra["parallel"] = layout.to_dict()
    checks += parallel_checks(shape, tp=layout.tp, ep=layout.ep, dp=layout.dp)
    checks += kv_checks(shape, rule, opts, layout, inv, extra)
    checks += gpu_checks(layout, extra["gpus"])
    checks += disk_checks(path, opts.disk_warn_bytes)
    checks += flag_checks(rule, opts.vllm_args)
    return Report("check", checks, extra)
