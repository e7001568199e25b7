"""The commands that make and undo overlays: patch, validate, revert, list, and demo."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from qwenprep.cli._common import (
    cli,
    echo,
    emit_json,
    finish_report,
    json_option,
    report_options,
    run,
    vllm_python_option,
    vllm_version_value,
)
from qwenprep.errors import EXIT_CHECKS_FAILED
from qwenprep.util.report import SCHEMA_VERSION, Check, Report


@cli.command(short_help="Patch config.json for 512K/1M into an overlay directory.")
@click.argument("model")
@click.option(
    "--context",
    "-c",
    required=True,
    metavar="C",
    help="native|256k|512k|1m|N tokens (1m = 1048576, YaRN factor 4 over 256K).",
)
@click.option(
    "--out",
    "-o",
    default=None,
    type=click.Path(path_type=Path),
    help="Overlay directory to create (links + patched config.json + manifest). "
    "Default: $HF_HOME/qwenprep/overlays/ORG--NAME@REV-CONTEXT (QWENPREP_OVERLAYS "
    "overrides the folder).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing qwenprep overlay; allow YaRN factors above 4.",
)
@click.option(
    "--yarn-on-dca",
    is_flag=True,
    help="On a Dual Chunk Attention release (Qwen2.5-1M, Qwen3-2507 with "
    "config_1m.json): write YaRN over the native length instead. Not what the release "
    "was tuned for; DCA itself fails to load on vLLM >= 0.11.",
)
@click.option(
    "--vllm-version",
    metavar="X.Y",
    default=None,
    callback=vllm_version_value,
    help="The vLLM the overlay is for (default: the installed one). Below 0.11 a DCA "
    "release's 1M overlay is its own DCA config (config_1m.json).",
)
@json_option
def patch(
    model: str,
    context: str,
    out: Path | None,
    force: bool,
    yarn_on_dca: bool,
    vllm_version: str | None,
    as_json: bool,
) -> None:
    """Patch MODEL's config.json for a longer context into an overlay directory.

    The source checkpoint is never modified; every other file is linked, not copied. An
    overlay of a cached repo holds a cache ref (refs/qwenprep/ID) so hf cache prune keeps its
    source; revert releases it.

    \b
    Examples:
      qwenprep patch Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8 --context 1m
      qwenprep patch ./my-model --context 512k --out ./my-model-512k
    """
    from qwenprep.ops.patch import how_reached, patch_overlay, patch_result

    res = run(
        as_json,
        lambda: patch_overlay(
            model, context, out=out, force=force, yarn_on_dca=yarn_on_dca, vllm_version=vllm_version
        ),
    )
    m = res.manifest
    if as_json:
        emit_json(patch_result(res))
        return
    for line in res.diff:
        echo(line, err=True)
    for note in res.notes:
        echo(f"warning: {note}", err=True)
    if yarn_on_dca and m["factor"] != 1.0:
        echo(
            "warning: --yarn-on-dca: YaRN over a Dual Chunk Attention release is not what "
            "the release was tuned for; check long-context quality.",
            err=True,
        )
    echo(
        f"{res.status} overlay {res.path}: {m['target_context']} tokens "
        f"({how_reached(m)}), "
        f"{len(m['files'])} files linked from {m['source']['path']}",
        err=True,
    )
    click.echo(str(res.path))


@cli.command(short_help="Check config.json: schema and long-context invariants.")
@click.argument("path")
@click.option(
    "--vllm-version",
    metavar="X.Y",
    default=None,
    callback=vllm_version_value,
    help="Judge for this vLLM where the version decides (Dual Chunk Attention runs "
    "only below 0.11). Default: the vLLM installed beside qwenprep.",
)
@report_options
@json_option
def validate(
    path: str, vllm_version: str | None, strict: bool, failed_only: bool, as_json: bool
) -> None:
    """Check PATH/config.json against its family's schema and the long-context invariants.

    \b
    Examples:
      qwenprep validate ./Qwen3-Coder-480B-A35B-Instruct-FP8-1m
      qwenprep validate Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8 --json
      qwenprep validate ./Qwen2.5-7B-Instruct-1M --vllm-version 0.10.2
    """
    from qwenprep.checks.validate import VllmVersion, validate_checkpoint
    from qwenprep.model.checkpoint import resolve_model
    from qwenprep.planning.capacity import named_version

    def work() -> list[Check]:
        vllm = VllmVersion(named_version(vllm_version), "--vllm-version") if vllm_version else None
        return validate_checkpoint(resolve_model(path).path, vllm=vllm)

    checks = run(as_json, work)
    report = Report("validate", checks, {"path": path}, strict=strict)
    finish_report(
        report,
        as_json,
        "valid" if report.ok else "INVALID: see the FAIL lines above",
        failed_only=failed_only,
    )


@cli.command(short_help="Remove an overlay, or restore an edited config.json.")
@click.argument("path", metavar="PATH|ORG/NAME[@REV]")
@click.option(
    "--force",
    is_flag=True,
    help="Also delete edits made inside the overlay (its config.json, files under "
    ".qwenprep/); files you added are never deleted.",
)
@json_option
def revert(path: str, force: bool, as_json: bool) -> None:
    """Undo: remove a qwenprep overlay, or restore a config.json edited in place.

    In a Hugging Face cache snapshot the restored bytes are proven against the blob's content
    address (git blob sha1); elsewhere they come from a backup or a hash record beside it, and
    a backup is used only when it is the edited file with the long-context edit undone. The
    replaced bytes are kept as config.json.qwenprep-replaced. Reverting what is already gone
    exits 0.

    \b
    Examples:
      qwenprep revert ./Qwen3-Coder-480B-A35B-Instruct-FP8-1m
      qwenprep revert Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8   # a config edited in place
    """
    from qwenprep.ops.revert import revert_path

    res = run(as_json, lambda: revert_path(path, force=force))
    if as_json:
        emit_json({"schema_version": SCHEMA_VERSION, "ok": True, **res.to_dict()})
        return
    echo(res.message)


@cli.command("list", short_help="Overlays qwenprep made: ok, stale, dangling or unpinned.")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@json_option
def list_cmd(paths: tuple[Path, ...], as_json: bool) -> None:
    """List overlays under the default place ($HF_HOME/qwenprep/overlays) or PATHS (overlays,
    or folders holding them): source, context and state. ok; stale: the source config changed
    or the ref it came from moved; dangling: the source or a linked file is gone (after hf
    cache rm, say); unpinned: its cache pin is gone, so hf cache prune may delete its source
    (the line says the patch command that re-pins it). Exit 1 when any is not ok.

    \b
    Examples:
      qwenprep list
      qwenprep list /models/overlays --json
    """
    from qwenprep.model.lifecycle import list_overlays, overlays_home

    found = run(as_json, lambda: list_overlays(list(paths)))
    ok = all(s.state == "ok" for s in found)
    if as_json:
        emit_json(
            {
                "schema_version": SCHEMA_VERSION,
                "ok": ok,
                "kind": "list",
                "searched": [str(p) for p in paths] or [str(overlays_home())],
                "overlays": [s.to_dict() for s in found],
            }
        )
        sys.exit(0 if ok else EXIT_CHECKS_FAILED)
    if not found:
        echo(f"no overlays under {', '.join(map(str, paths)) or overlays_home()}", err=True)
    for s in found:
        echo(f"{s.state:<8} {s.path}  <- {s.source} @ {s.context} tokens")
        for r in s.reasons:
            echo(f"         {r}")
        if s.rebuild:
            echo(f"         rebuild: {s.rebuild}")
    sys.exit(0 if ok else EXIT_CHECKS_FAILED)


@cli.command(short_help="The main job end to end on the embedded tiny checkpoint.")
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the demo overlay goes (default: a temporary directory).",
)
@click.option(
    "--serve/--no-serve",
    default=True,
    help="Launch the real vLLM on the overlay when it is installed (default: yes).",
)
@vllm_python_option
@json_option
def demo(workdir: Path | None, serve: bool, vllm_python: str | None, as_json: bool) -> None:
    """Run the main job end to end on the embedded tiny checkpoint.

    verify -> patch to 1M -> validate -> plan -> engine readback and serve -> a prompt past
    the native window (a 4K-native variant at 16K) -> revert.

    \b
    Examples:
      qwenprep demo
      qwenprep demo --no-serve --json
    """
    import tempfile

    from qwenprep.ops.demo import Step, run_demo

    def show(step: Step) -> None:
        echo(f"== {step.title}: {step.status}", err=as_json)
        for line in step.lines:
            echo(f"   {line}", err=as_json)

    with tempfile.TemporaryDirectory(prefix="qwenprep-demo-") as tmp:
        base = workdir if workdir is not None else Path(tmp)
        steps = run(
            as_json, lambda: run_demo(base, serve=serve, vllm_python=vllm_python, on_step=show)
        )
    ok = all(s.status != "fail" for s in steps)
    if as_json:
        emit_json(
            {
                "schema_version": SCHEMA_VERSION,
                "ok": ok,
                "steps": [{"title": s.title, "status": s.status, "lines": s.lines} for s in steps],
            }
        )
    else:
        echo("demo finished: all steps passed" if ok else "demo FAILED", err=False)
    sys.exit(0 if ok else EXIT_CHECKS_FAILED)
