"""The patch job, once, for the command line and the Python API: resolve MODEL, build the
context request (a Dual Chunk Attention release's own path where the vLLM has it), write the
overlay; and the result as `patch --json` prints it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwenprep.ops.overlay import OverlayResult


def patch_overlay(
    model: str | Path,
    context: str | int,
    *,
    out: str | Path | None = None,
    force: bool = False,
    yarn_on_dca: bool = False,
    vllm_version: str | None = None,
) -> OverlayResult:
    """``qwenprep patch MODEL --context C [--out DIR] [--force] [--yarn-on-dca]
    [--vllm-version X.Y]``: the overlay written (or found unchanged)."""
    from qwenprep.model.checkpoint import resolve_model
    from qwenprep.model.contexts import parse_context
    from qwenprep.ops.dca import request_for
    from qwenprep.ops.overlay import create_overlay

    ckpt = resolve_model(str(model))
    req = request_for(
        ckpt.path, parse_context(str(context)), yarn_on_dca=yarn_on_dca, vllm_version=vllm_version
    )
    return create_overlay(ckpt, Path(out) if out is not None else None, req, force=force)


def patch_result(res: OverlayResult) -> dict[str, Any]:
    """What `patch --json` prints (schemas/patch-result.schema.json)."""
    from qwenprep.util.report import SCHEMA_VERSION

    m = res.manifest
    return {
        "schema_version": SCHEMA_VERSION,
        "ok": True,
        "status": res.status,
        "path": str(res.path),
        "source": m["source"]["path"],
        "native_context": m["native_context"],
        "target_context": m["target_context"],
        "factor": m["factor"],
        "files_linked": len(m["files"]),
        "digest": m["digest"],
        "pin": m["source"].get("pin"),
        "warnings": res.notes,
    }


def how_reached(manifest: dict[str, Any]) -> str:
    """How an overlay reaches its length, in words (patch's line, the demo): YaRN with its
    factor, the native length unscaled, or a release's own Dual Chunk Attention (factor 1
    and a length past native: only a DCA release's overlay for vLLM < 0.11 is that)."""
    factor, native = manifest["factor"], manifest["native_context"]
    if factor != 1.0:
        return f"YaRN factor {factor:.8g} over {native}"
    if manifest["target_context"] == native:
        return "native, RoPE unscaled"
    return f"Dual Chunk Attention over the native {native}, for vLLM < 0.11"
