"""The public Python API: the main job as functions, returning what `--json` prints.

Each function returns the same dict the matching command prints with `--json` (with
``schema_version`` and ``ok``), and raises a :class:`qwenprep.errors.QwenprepError` (message,
hint, exit_code) where the command would exit 2 or 3, its message and hint redacted as the
command prints them (the credential values in the engine args passed masked too). Nothing is
printed. Every import is inside the function, so ``import qwenprep`` stays cheap (no engine,
no huggingface_hub).

    >>> import qwenprep
    >>> overlay = qwenprep.patch("Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8", "1m")
    >>> report = qwenprep.check(overlay["path"], gpus=8, gpu="H200")
    >>> if report["ok"]:
    ...     argv = qwenprep.serve_plan(overlay["path"])["argv"]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec

if TYPE_CHECKING:
    from qwenprep.engines.base import Engine

P = ParamSpec("P")

__all__ = ["patch", "validate", "verify", "plan", "check", "revert", "serve_plan"]


def _path(value: Any, what: str) -> str:
    """A path or a repo id as the command line takes it (text, or an os.PathLike)."""
    import os

    from qwenprep.errors import UsageError

    if isinstance(value, (str, os.PathLike)):
        from qwenprep.request import no_nul

        return no_nul(str(value), what)
    raise UsageError(f"{what} takes a path or a repo id as a string (got {value!r}).")


def _flags(**values: Any) -> None:
    """Each on/off option is True or False, as on the command line (qwenprep.request.flag)."""
    from qwenprep.request import flag

    for name, value in values.items():
        flag(value, "--" + name.replace("_", "-"))


def _version(value: Any) -> str | None:
    """--vllm-version by the command line's rule (text, read by capacity.named_version)."""
    from qwenprep.planning.capacity import named_version
    from qwenprep.request import text

    if text(value, "--vllm-version") is not None:
        named_version(value)
    return value  # type: ignore[no-any-return]


def _known(args: Any = ()) -> list[str]:
    """The secrets to mask, longest first (so no part of one is left showing): the ones this
    process knows of (qwenprep.util.redact.secrets) and the values of the credential options
    in ARGS, the engine argv the caller passed (not in sys.argv). ARGS as given, before any
    check of it: a string is read as its words, bytes as text, anything else as its str."""
    from qwenprep.util.redact import argv_secrets, secrets

    def word(v: Any) -> str:
        if isinstance(v, (bytes, bytearray)):
            return v.decode("utf-8", "replace")
        try:
            return str(v)
        except Exception:  # an object whose str() fails is no text of a secret
            return ""

    if isinstance(args, (str, bytes, bytearray)):
        words = word(args).split()
    elif isinstance(args, (list, tuple)):
        words = [word(v) for v in args]
    else:
        words = []
    known = sorted({*secrets(), *(v for v in argv_secrets(words) if len(v) >= 4)}, key=len)
    known.reverse()
    return known


def _shown(obj: dict[str, Any], args: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """OBJ as `--json` prints it: every credential masked (qwenprep.util.redact.redact_obj), the
    ones this process knows of and the values of the credential options in ARGS (_known), the
    checkpoint's "path" left as it is."""
    from qwenprep.util.redact import redact_obj

    known = _known(args)
    return {k: v if k == "path" else redact_obj(v, known) for k, v in obj.items()}


def _redacted(fn: Callable[P, dict[str, Any]]) -> Callable[P, dict[str, Any]]:
    """FN, whose QwenprepError leaves with its message and hint redacted as the command line
    redacts every error it prints (cli._common.fail), and with the values of the credential
    options in the engine argv the caller passed (vllm_args=, extra_args=: _known) masked too.
    The same exception object is raised again: its type, exit_code and path kept."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        from qwenprep.errors import QwenprepError

        try:
            return fn(*args, **kwargs)
        except QwenprepError as err:
            from qwenprep.util.redact import redact

            known = _known(kwargs.get("vllm_args", kwargs.get("extra_args", ())))
            err.message = redact(err.message, known)
            err.hint = redact(err.hint, known) if err.hint is not None else None
            err.args = (err.message, *err.args[1:])
            raise

    return call


def _engine(name: Any, python: str | None) -> Engine:
    """serving_engine= as --serving-engine takes it (None: $QWENPREP_SERVING_ENGINE, else what
    the interpreter PYTHON has), looked up in the one registry (qwenprep.engines)."""
    from qwenprep.engines import select
    from qwenprep.request import text

    return select(text(name, "--serving-engine"), python)


def _size(value: str | int | None, option: str) -> str | None:
    """A size as the command line takes it: a string with its unit (never guessed), or an int
    byte count; read by the one reader every command uses (qwenprep.request)."""
    from qwenprep.request import size_text

    return size_text(value, option)


@_redacted
def patch(
    model: str | Path,
    context: str | int,
    *,
    out: str | Path | None = None,
    force: bool = False,
    yarn_on_dca: bool = False,
    vllm_version: str | None = None,
) -> dict[str, Any]:
    """``qwenprep patch MODEL --context C [--out DIR] --json``: write the overlay; returns the
    patch result (path, status, native/target context, factor, digest, ...)."""
    from qwenprep.ops.patch import patch_overlay, patch_result
    from qwenprep.request import context_value

    _flags(force=force, yarn_on_dca=yarn_on_dca)
    return _shown(
        patch_result(
            patch_overlay(
                _path(model, "model"),
                context_value(context, "--context") or "",
                out=None if out is None else _path(out, "--out"),
                force=force,
                yarn_on_dca=yarn_on_dca,
                vllm_version=_version(vllm_version),
            )
        )
    )


@_redacted
def validate(
    path: str | Path, *, strict: bool = False, vllm_version: str | None = None
) -> dict[str, Any]:
    """``qwenprep validate PATH [--vllm-version X.Y] --json``: schema and long-context
    invariants (a Dual Chunk Attention config judged for that vLLM, else the installed one)."""
    from qwenprep.checks.validate import VllmVersion, validate_checkpoint
    from qwenprep.model.checkpoint import resolve_model
    from qwenprep.planning.capacity import named_version
    from qwenprep.util.report import Report

    _flags(strict=strict)
    version = _version(vllm_version)
    vllm = VllmVersion(named_version(version), "--vllm-version") if version is not None else None
    checks = validate_checkpoint(resolve_model(_path(path, "path")).path, vllm=vllm)
    return _shown(Report("validate", checks, {"path": str(path)}, strict=strict).to_dict())


@_redacted
def verify(
    path: str | Path,
    *,
    deep: bool = False,
    record: bool = False,
    engine: bool = False,
    vllm_python: str | None = None,
    strict: bool = False,
    serving_engine: str | None = None,
) -> dict[str, Any]:
    """``qwenprep verify PATH [--deep [--record]] [--engine] [--serving-engine E] --json``
    (with ENGINE: the read-back through the serving engine's own config code)."""
    from qwenprep.checks.integrity import verify_checkpoint
    from qwenprep.errors import UsageError
    from qwenprep.model.checkpoint import resolve_model
    from qwenprep.request import text

    _flags(deep=deep, record=record, engine=engine, strict=strict)
    if record and not deep:
        raise UsageError("--record keeps the hashes --deep computes: add --deep.")
    python = text(vllm_python, "--vllm-python")
    chosen = _engine(serving_engine, python) if engine else None
    root = resolve_model(_path(path, "path")).path
    rep = verify_checkpoint(root, deep=deep, record=record)
    if chosen is not None:
        rep.extend(chosen.readback_checks(root, python=python))
    rep.strict = strict
    return _shown(rep.to_dict())


@_redacted
def plan(
    model: str | Path,
    *,
    context: str | int | None = None,
    tp: int | None = None,
    pp: int = 1,
    ep: bool | None = None,
    gpus: int | None = None,
    gpu_memory: str | int | None = None,
    kv_memory: str | int | None = None,
    kv_cache_dtype: str = "auto",
    block_size: int = 16,
    gpu: str | None = None,
    vllm_version: str | None = None,
    prefill_budget: float | None = None,
    dcp: int = 1,
    prefix_caching: bool | None = None,
    serving_engine: str | None = None,
    mem_fraction_static: float | None = None,
) -> dict[str, Any]:
    """``qwenprep plan MODEL ... --json``: KV-cache capacity by the serving engine's
    arithmetic (vLLM's, or SGLang's with serving_engine="sglang"), and for vLLM the time
    estimates. ``fits`` says whether the context fits (the command exits 1 when not).
    DCP: plan's --dcp; PREFIX_CACHING: plan's --[no-]prefix-caching (None: the version's);
    MEM_FRACTION_STATIC: SGLang's --mem-fraction-static."""
    from qwenprep.engines.base import PlanOptions
    from qwenprep.errors import UsageError
    from qwenprep.request import layout

    layout(tp, pp, gpus)  # every engine's plan: the maximum, with its why
    engine = _engine(serving_engine, None)
    vllm_version = _version(vllm_version)
    options = PlanOptions.of(locals())  # this function's keyword arguments, as plan's
    refusal = engine.plan_refusal(options)
    if refusal is not None:
        raise UsageError(refusal)
    p, _notes = engine.kv_plan(_path(model, "model"), options)
    return _shown(p.to_dict())


@_redacted
def check(
    path: str | Path,
    *,
    tp: int | None = None,
    pp: int = 1,
    ep: bool | None = None,
    context: str | int | None = None,
    engine: bool = True,
    gpus: int | None = None,
    gpu_memory: str | int | None = None,
    kv_memory: str | int | None = None,
    gpu: str | None = None,
    kv_cache_dtype: str = "auto",
    block_size: int = 16,
    vllm_version: str | None = None,
    vllm_python: str | None = None,
    vllm_args: tuple[str, ...] | list[str] = (),
    strict: bool = False,
    serving_engine: str | None = None,
) -> dict[str, Any]:
    """``qwenprep check PATH ... --json``: every pre-flight check (the gate serve runs), for
    the serving engine SERVING_ENGINE ("vllm", "sglang"; None: as the command chooses)."""
    from qwenprep.ops.check import run_check
    from qwenprep.planning.catalog import gpu_memory_for
    from qwenprep.request import text

    _flags(strict=strict)
    gm, kv = _size(gpu_memory, "--gpu-memory"), _size(kv_memory, "--kv-memory")
    _, gm, _ = gpu_memory_for(text(gpu, "--gpu"), gpu_memory=gm, kv_memory=kv, gpus=gpus)
    python = text(vllm_python, "--vllm-python")
    given = {**locals(), "gpu_memory": gm, "kv_memory": kv}
    rep = run_check(_path(path, "path"), given, engine=_engine(serving_engine, python))
    rep.strict = strict
    return _shown(rep.to_dict(), vllm_args)


@_redacted
def revert(path: str | Path, *, force: bool = False) -> dict[str, Any]:
    """``qwenprep revert PATH --json``: remove an overlay, or restore an edited config.json."""
    from qwenprep.ops.revert import revert_path
    from qwenprep.util.report import SCHEMA_VERSION

    _flags(force=force)
    res = revert_path(_path(path, "path"), force=force)
    return _shown({"schema_version": SCHEMA_VERSION, "ok": True, **res.to_dict()})


@_redacted
def serve_plan(
    path: str | Path,
    *,
    tp: int | None = None,
    ep: bool | None = None,
    max_model_len: str | int | None = None,
    host: str | None = None,
    port: int | None = None,
    served_model_name: str | None = None,
    vllm_python: str | None = None,
    extra_args: tuple[str, ...] | list[str] = (),
    expect_digest: str | None = None,
    nnodes: int | None = None,
    gpus_per_node: int | None = None,
    master_addr: str | None = None,
    multinode_mode: str | None = None,
    serving_engine: str | None = None,
) -> dict[str, Any]:
    """``qwenprep serve PATH --dry-run --json``: the vLLM argv and environment serve would run,
    judged by the same gate (refusals raise). Starts nothing. With NNODES/GPUS_PER_NODE: the
    per-node commands (``nodes``), as ``serve --nnodes N --gpus-per-node G``."""
    from qwenprep.ops.serve import serve_plan as plan_for
    from qwenprep.request import ServeRequest, text
    from qwenprep.util.report import SCHEMA_VERSION

    req = ServeRequest.from_options(
        max_len=max_model_len,
        tp=tp,
        ep=ep,
        host=host,
        port=port,
        served_model_name=served_model_name,
        extra_args=extra_args,
        expect_digest=expect_digest,
        nnodes=nnodes,
        gpus_per_node=gpus_per_node,
        master_addr=master_addr,
        multinode_mode=multinode_mode,
    )
    python = text(vllm_python, "--vllm-python")
    engine = _engine(serving_engine, python)
    launch = plan_for(_path(path, "path"), req, engine=engine, python=python, dry_run=True)
    return _shown(
        {"schema_version": SCHEMA_VERSION, "ok": True, "dry_run": True, **launch.to_dict()},
        extra_args,
    )
