"""Every pre-flight check as data, in one report (``qwenprep check``).

Checks from other modules (schema and invariants, overlay, headers, engine readback) are
composed: an error one of them raises becomes one ``fail`` check. The leaf checks (layout,
KV fits at the intended context, disk, GPUs visible, the vLLM flags the installed version
would reject) live in qwenprep.checks.preflight_items; parallelism (what vLLM's layers assert at
load time) in qwenprep.engines.parallel. Here: the options (CheckOptions,
check_options), check's use of the gate (check_gate), and run_checks, which reads the
checkpoint once and composes the report (another engine's gate and KV checks come in as
qwenprep.engines.base.EngineHooks).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from qwenprep.checks.preflight_items import (
    dcp_checks,
    disk_checks,
    flag_checks,
    gpu_checks,
    kv_checks,
    resolve_layout,
)
from qwenprep.checks.scan import Scan, gc_paused
from qwenprep.checks.validate import VllmVersion
from qwenprep.engines.base import EngineHooks
from qwenprep.engines.gate_common import GateAsk, plan_refused
from qwenprep.engines.parallel import ConfigDims, Layout, parallel_checks
from qwenprep.engines.vllm.kv import CUDA_BLOCK_SIZE, KVDtype, ModelShape, VllmRule
from qwenprep.errors import InputError, QwenprepError
from qwenprep.model.contexts import ContextRequest
from qwenprep.planning.capacity import named_version, resolve_rule
from qwenprep.planning.gpus import inventory
from qwenprep.planning.shapes import shape_from_dir
from qwenprep.util.report import Check, Report
from qwenprep.util.sizes import GiB

__all__ = [  # the leaf checks are qwenprep.checks.preflight_items' and qwenprep.engines.parallel's
    "DISK_WARN_BYTES",
    "CheckOptions",
    "check_gate",
    "check_options",
    "run_checks",
]

DISK_WARN_BYTES = 5 * GiB  # vLLM's compile cache and logs want a few GiB beside the model


@dataclass(frozen=True)
class CheckOptions:
    tp: int | None = None  # None: the model profile's, as qwenprep serve (see resolve_layout)
    pp: int = 1
    ep: bool | None = None  # None: the model profile's, as qwenprep serve
    gpus: int | None = None
    gpu_memory: int | None = None
    kv_memory: int | None = None
    # --context as parsed; None: the config's max_position_embeddings; .native: the native context
    context: ContextRequest | None = None
    kv_cache_dtype: KVDtype = "auto"
    vllm_version: str | None = None
    vllm_args: tuple[str, ...] = ()
    python: str | None = None  # interpreter with vLLM, for the engine readback
    engine: bool = True  # run the engine readback (vLLM's config layer, a few seconds)
    disk_warn_bytes: int = DISK_WARN_BYTES
    block_size: int = CUDA_BLOCK_SIZE
    serving_engine: str = "vllm"  # "sglang": the gate and KV checks of EngineHooks

    def context_tokens(self, shape: ModelShape) -> int:
        """The context to check, in tokens: --context's count; not given, SHAPE's
        max_position_embeddings; native, SHAPE's native context."""
        if self.context is None:
            return shape.max_position_embeddings
        if self.context.tokens is None:  # native
            return shape.native_context
        return self.context.tokens


def check_options(
    *,
    tp: int | None = None,
    pp: int = 1,
    ep: bool | None = None,
    context: str | int | None = None,
    gpus: int | None = None,
    gpu_memory: str | None = None,
    kv_memory: str | None = None,
    kv_cache_dtype: str = "auto",
    block_size: int = CUDA_BLOCK_SIZE,
    vllm_version: str | None = None,
    vllm_args: Sequence[str] = (),
    python: str | None = None,
    engine: bool = True,
) -> CheckOptions:
    """CheckOptions from the command line's strings (sizes, context) - UsageError when wrong
    (each option by its rule in qwenprep.request, as plan's)."""
    from qwenprep import request as rules
    from qwenprep.model.contexts import parse_context
    from qwenprep.util.sizes import parse_size

    tp, pp, gpus = rules.layout(tp, pp, gpus)
    ep = rules.flag(ep, "--ep", optional=True)
    engine = rules.flag(engine, "--engine")
    context = rules.context_value(context, "--context")
    kv_cache_dtype = rules.text(
        kv_cache_dtype, "--kv-cache-dtype", choices=rules.KV_CACHE_DTYPES, optional=False
    )
    block_size = rules.whole(block_size, "--block-size")
    vllm_version = rules.text(vllm_version, "--vllm-version")
    python = rules.text(python, "--vllm-python")
    vllm_args = rules.words(vllm_args, "vllm_args")

    rules.one_memory_budget(kv_memory, gpu_memory)
    ctx = parse_context(context) if context is not None else None
    if vllm_version is not None:
        named_version(vllm_version)
    return CheckOptions(
        tp=tp,
        pp=pp,
        ep=ep,
        gpus=gpus,
        gpu_memory=parse_size(gpu_memory) if gpu_memory is not None else None,
        kv_memory=parse_size(kv_memory) if kv_memory is not None else None,
        context=ctx,
        kv_cache_dtype=kv_cache_dtype,  # type: ignore[arg-type]
        vllm_version=vllm_version,
        vllm_args=tuple(vllm_args),
        python=python,
        block_size=block_size,
        engine=engine,
    )


# --------------------------------------------------------------------------- the gate


def check_gate(ask: GateAsk, *, assume_version: tuple[int, int, int] | None = None) -> list[Check]:
    """check's use of the gate (qwenprep.engines.vllm.gate): the plan serve would build from the
    same inputs, judged the same way; a refusal of the plan itself is one failed check.
    ASSUME_VERSION: the vLLM the plan is for when none is asked (--no-engine, or none
    installed)."""
    from qwenprep.engines.vllm.core import discover
    from qwenprep.engines.vllm.engine import build_launch_plan
    from qwenprep.engines.vllm.gate import gate

    engine_on, python = ask.engine_on, ask.python
    engine = discover(python) if engine_on else None
    reason = None if engine_on else "check --no-engine"
    if engine is not None and assume_version and engine.version_tuple[:2] != assume_version[:2]:
        # --vllm-version names another vLLM than the installed one: its parser and config
        # layer do not speak for the named version, so the plan and the gate are the named one's
        reason = (
            f"--vllm-version {'.'.join(map(str, assume_version))} names another vLLM than "
            f"the {engine.version} in {engine.python}"
        )
        engine = None
    elif engine_on and (engine is None or not engine.importable):
        from qwenprep.engines.probe import engine_python

        reason = f"vLLM is not installed in {engine_python(python)}"
    try:
        plan = build_launch_plan(
            ask.path,
            engine=engine,
            offline_gate=False,
            assume_version=assume_version,
            **ask.plan_inputs(),
        )
    except QwenprepError as e:
        return plan_refused(e, "qwenprep serve")
    res = gate(plan, engine=engine, offline_reason=reason)
    return [
        replace(c, message=f"{c.message} ({reason})") if c.id == "engine.readback" else c
        for c in res.checks
    ] + [Check("engine.profile", "warn", w) for w in plan.profile_overrides]


def _named_vllm(opts: CheckOptions) -> VllmVersion | None:
    """The vLLM named with --vllm-version, for the checks whose verdict depends on it (a Dual
    Chunk Attention config); None: validation asks the installed vLLM."""
    if not opts.vllm_version:
        return None
    return VllmVersion(named_version(opts.vllm_version), "--vllm-version")


def _gate_checks(
    path: Path, opts: CheckOptions, repo_id: str | None, config: dict[str, Any] | None = None
) -> list[Check]:
    max_len = _context_for_gate(path, opts, config)
    named = named_version(opts.vllm_version) if opts.vllm_version else None
    return check_gate(GateAsk.of(path, opts, max_len, repo_id), assume_version=named)


# --------------------------------------------------------------------------- the report


def _context_for_gate(
    path: Path, opts: CheckOptions, config: dict[str, Any] | None = None
) -> int | None:
    if opts.context is None:  # not given: the overlay's own length
        return None
    if not opts.context.native:
        return opts.context.tokens
    from qwenprep.model.contexts import native_context

    if config is None:
        from qwenprep.util.jsonio import load_json_file

        config = load_json_file(path / "config.json", what="config.json")
    return native_context(config) if isinstance(config, dict) else None


def _shape(path: Path, scan: Scan | None) -> ModelShape:
    """shapes.shape_from_dir from what the header scan read (config.json and every header,
    read once), when the scan read them all cleanly; otherwise shape_from_dir itself, which
    reads them again and says what it could not use (as plan does)."""
    clean = (
        scan is not None
        and scan.config is not None
        and scan.tensors
        and scan.shards_ok
        and not any(c.status == "fail" for c in scan.checks)
        and (scan.weight_map is not None or all("/" not in s for s in scan.shard_names))
    )
    if not clean:
        return shape_from_dir(path)
    assert scan is not None and scan.config is not None
    from qwenprep.planning.timecost import tally_columns

    tally = tally_columns(*scan.tensor_columns())
    return ModelShape.from_config(
        scan.config,
        name=str(path),
        weight_bytes=tally.total_bytes,
        expert_weight_bytes=tally.routed_expert_bytes,
        weights_source=f"safetensors headers in {path}",
        params=tally,
    )


class _Background:
    """A call run in a thread while the caller does other work (the vLLM discovery probe is a
    subprocess: its wait releases the GIL while the headers are checked)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="qwenprep-preflight")
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


def run_checks(
    path: Path, opts: CheckOptions, *, repo_id: str | None = None, hooks: EngineHooks | None = None
) -> Report:
    """Every pre-flight check on PATH (a checkpoint directory or an overlay; REPO_ID names the
    Hub repo it came from, which the model profile may use as serve does). HOOKS: the gate
    and KV checks of another serving engine (SGLang) instead of vLLM's."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise InputError(
            f"{path}: no config.json here; not a checkpoint directory.",
            hint="pass the overlay made by: qwenprep patch MODEL --context 1m --out DIR",
            path=str(path),
        )
    extra: dict[str, Any] = {"path": str(path)}
    # vLLM's version (a probe subprocess) is found while the headers are read
    rule_soon = (
        None
        if hooks is not None
        else _Background(lambda: resolve_rule(opts.vllm_version, python=opts.python))
    )
    inv = inventory(gpus=opts.gpus, gpu_memory=opts.gpu_memory)
    extra["gpus"] = inv.to_dict()
    checks: list[Check] = []
    from qwenprep.checks.tensors import header_scan
    from qwenprep.model.lifecycle import require_live

    try:
        require_live(path)
    except InputError as e:  # dangling: the rebuild is the fix, not the missing files one by one
        if rule_soon is not None:
            rule_soon.wait()
        live = Check("overlay.live", "fail", f"{e.message} Hint: {e.hint}", e.path)
        return Report("check", [live], extra)
    from qwenprep.checks.validate import validate_checkpoint

    # read once: config.json, the index and every header, by the header scan; the shape for
    # the capacity checks and the serve profile come from what it read
    scanned: list[Scan] = []

    def integrity() -> list[Check]:
        scanned.append(header_scan(path))
        return scanned[0].checks

    def config() -> dict[str, Any] | None:
        return scanned[0].config if scanned else None

    # header_scan includes overlay_state.overlay_checks when PATH is an overlay: calling both
    # reported overlay.manifest/config/links/source twice
    composed: list[tuple[str, Callable[[], list[Check]]]] = [
        ("config", lambda: validate_checkpoint(path, vllm=_named_vllm(opts))),
        ("integrity", integrity),
    ]

    # the gate serve runs (qwenprep.engines.vllm.gate): the plan serve would build from these
    # options,
    # its argv parsed by the installed vLLM and read back through vLLM's config layer with
    # those arguments; judged offline (and said so) under --no-engine or without vLLM
    laid: list[Layout] = []  # the layout, decided once from config.json's counts

    def gate_opts() -> CheckOptions:
        """OPTS with the layout this report assumes (resolve_layout, plan's and serve's rule):
        the gate reads back the argv serve runs for that layout."""
        cfg = config()
        if not isinstance(cfg, dict):
            return opts
        try:
            lay = resolve_layout(path, opts, ConfigDims.of(cfg), inv, repo_id=repo_id, config=cfg)
        except QwenprepError:
            return opts  # the overlay's own checks say what is wrong
        laid.append(lay)
        return replace(opts, tp=lay.tp, ep=lay.ep)

    if hooks is not None:
        composed.append(
            (
                "engine.gate",
                lambda: hooks.gate(
                    path, gate_opts(), _context_for_gate(path, opts, config()), repo_id
                ),
            )
        )
    else:
        composed.append(("engine.gate", lambda: _gate_checks(path, gate_opts(), repo_id, config())))
    with gc_paused():
        for what, call in composed:
            try:
                checks += call()
            except QwenprepError as e:
                checks.append(
                    Check(what, "fail", e.message + (f" Hint: {e.hint}" if e.hint else ""), e.path)
                )
        try:  # the weights only where they can be read (a config error is what is left)
            shape = _shape(path, scanned[0] if scanned else None)
        except InputError as e:
            checks.append(Check("parallel", "fail", e.message))
            if rule_soon is not None:
                rule_soon.wait()  # not needed, but no probe is left running
            return Report("check", checks, extra)
    # the same counts as the shape's (config.json's), so the gate's layout is the report's
    layout = (
        laid[0]
        if laid
        else resolve_layout(path, opts, shape, inv, repo_id=repo_id, config=config())
    )
    if layout.note:  # the flags differ from what the model profile launches: said, as plan does
        checks.append(Check("parallel.profile", "warn", layout.note))
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
    checks += dcp_checks(shape, layout.tp, opts.vllm_args)
    checks += kv_checks(shape, rule, opts, layout, inv, extra)
    checks += gpu_checks(layout, extra["gpus"])
    checks += disk_checks(path, opts.disk_warn_bytes)
    checks += flag_checks(rule, opts.vllm_args)
    return Report("check", checks, extra)
