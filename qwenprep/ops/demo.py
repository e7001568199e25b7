"""The main job end to end on the embedded tiny checkpoint: verify, patch to 1M, validate,
plan, read back through vLLM and serve (when vLLM is installed), revert.

Each step returns data; the CLI renders it. Nothing here prints.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from qwenprep.errors import InputError, UsageError
from qwenprep.model.checkpoint import resolve_dir
from qwenprep.model.contexts import parse_context
from qwenprep.util.report import Check

TINY_NAME = "tiny-qwen3-coder"


@dataclass
class Step:
    title: str
    status: str  # pass | fail | skip
    lines: list[str] = field(default_factory=list)


def embedded_checkpoint(name: str = TINY_NAME) -> Path:
    """The embedded tiny checkpoint NAME, found as every shipped file is
    (qwenprep.util.schemas.shipped_dir: qwenprep/_examples in the wheel, examples/ in a
    checkout)."""
    from qwenprep.util.schemas import shipped_dir

    found = shipped_dir("_examples") / name
    if not (found / "config.json").is_file():
        raise InputError(
            f"the embedded checkpoint {name} is missing from {found.parent}.",
            hint="reinstall qwenprep.",
        )
    return found


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _checks_step(title: str, checks: list[Check]) -> Step:
    failed = [c for c in checks if c.status == "fail"]
    return Step(
        title, "fail" if failed else "pass", [f"[{c.status}] {c.id}: {c.message}" for c in checks]
    )


def run_demo(
    workdir: Path,
    *,
    serve: bool = True,
    vllm_python: str | None = None,
    on_step: Callable[[Step], None] = lambda s: None,
) -> list[Step]:
    from qwenprep.checks.integrity import verify_checkpoint
    from qwenprep.checks.validate import validate_checkpoint
    from qwenprep.ops.overlay import create_overlay
    from qwenprep.ops.revert import revert_path

    if workdir.exists() and not workdir.is_dir():
        raise UsageError(
            f"--workdir {workdir} is a file, not a directory.",
            hint="name a directory (created when missing), or leave --workdir out for a "
            "temporary one.",
        )
    out = workdir / "tiny-qwen3-coder-1m"
    native = f"tiny-qwen3-coder-native{SMALL_NATIVE // 1024}k"
    ours = [out, workdir / native, workdir / f"{native}-x4"]
    taken = [p for p in ours if os.path.lexists(p)]
    if taken:  # the demo makes and removes these itself: never someone else's
        raise UsageError(
            f"--workdir {workdir} already holds {', '.join(p.name for p in taken)}: the demo "
            "makes these and removes them when done, and never replaces what it did not make.",
            hint="name a new or empty directory (or leave --workdir out for a temporary one), "
            "or move those away first",
        )
    steps: list[Step] = []

    def add(step: Step) -> Step:
        steps.append(step)
        on_step(step)
        return step

    source = resolve_dir(embedded_checkpoint())
    before = tree_digest(source.path)
    add(Step("locate", "pass", [f"embedded checkpoint {source.path}"]))

    add(_checks_step("verify (headers)", verify_checkpoint(source.path).checks))

    res = create_overlay(source, out, parse_context("1m"))
    add(
        Step(
            "patch --context 1m",
            "pass",
            [
                f"{res.status} overlay {out}: {res.manifest['target_context']} tokens, "
                f"YaRN factor {res.manifest['factor']:g}, {len(res.manifest['files'])} files "
                "linked",
                *res.diff,
            ],
        )
    )
    add(_checks_step("validate", validate_checkpoint(out)))

    add(_plan_step(out))
    if serve:
        from qwenprep.engines.vllm.server import demo_serve

        add(demo_serve(out, python=vllm_python, step_cls=Step))
        add(_past_native_step(source.path, workdir, vllm_python))

    rr = revert_path(out)
    after = tree_digest(source.path)
    add(
        Step(
            "revert",
            "pass" if not out.exists() and after == before else "fail",
            [
                rr.message,
                f"source tree sha256 {after[:16]}... "
                + ("unchanged" if after == before else "CHANGED"),
            ],
        )
    )
    return steps


def _plan_step(out: Path) -> Step:
    """The calibration the tiny model was seen at on vLLM 0.32 CPU: 2 GiB of KV cache."""
    from qwenprep.planning.capacity import make_plan

    plan = make_plan(str(out), kv_memory="2GiB", tp=1, block_size=128)
    d = plan.to_dict()
    return Step(
        "plan (2 GiB KV, TP 1)",
        "pass" if plan.fits else "fail",
        [
            f"KV cache size: {d['kv_cache_tokens']:,} tokens, maximum concurrency for "
            f"{d['context']:,} tokens per request: {d['max_concurrency_printed']} "
            f"({d['bytes_per_token_per_gpu']:,} bytes per token; "
            f"{d['vllm_rule']['description']})"
        ],
    )


# The tiny checkpoint's native window is the 480B's (262,144 tokens): a prompt past it takes
# minutes on a CPU. The demo's variant has the same weights and a 4,096-token native window, so
# a 16K overlay of it (YaRN x4) shows a prompt past native running in seconds.
SMALL_NATIVE = 4096


def small_native_variant(source: Path, dest: Path, native: int = SMALL_NATIVE) -> Path:
    """DEST: SOURCE's files linked, config.json rewritten with max_position_embeddings NATIVE
    (the native window of an unscaled config). A new checkpoint: SOURCE is not touched."""
    from qwenprep.util.jsonio import atomic_write_text, dump_config, load_json_file

    dest.mkdir(parents=True, exist_ok=False)
    for p in sorted(source.iterdir()):
        if p.is_file() and p.name != "config.json":
            (dest / p.name).symlink_to(p.resolve())
    cfg = load_json_file(source / "config.json", what="config.json")
    cfg["max_position_embeddings"] = native
    atomic_write_text(dest / "config.json", dump_config(cfg))
    return dest


def _past_native_step(source: Path, workdir: Path, vllm_python: str | None) -> Step:
    """Serve a 4x overlay of the small-native variant and send one prompt past its native
    window (the request `qwenprep serve` makes once ready)."""
    import shutil

    from qwenprep.engines.vllm.server import demo_serve
    from qwenprep.ops.overlay import create_overlay

    variant_dir = workdir / f"tiny-qwen3-coder-native{SMALL_NATIVE // 1024}k"  # run_demo
    variant = resolve_dir(small_native_variant(source, variant_dir))  # checked both are free
    out = workdir / f"tiny-qwen3-coder-native{SMALL_NATIVE // 1024}k-x4"
    create_overlay(variant, out, parse_context(str(SMALL_NATIVE * 4)))
    try:
        step: Step = demo_serve(out, python=vllm_python, step_cls=Step, past_native=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(variant_dir, ignore_errors=True)
    step.lines.insert(
        0,
        f"{variant_dir.name}: the same weights with a {SMALL_NATIVE:,}-token native window, "
        f"patched to {SMALL_NATIVE * 4:,} (YaRN x4)",
    )
    return step
