"""The command line. The only module that imports click, prints or exits."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import click

from qwenprep import __version__
from qwenprep.errors import EXIT_CHECKS_FAILED, EXIT_INTERRUPTED, Interrupted, QwenprepError
from qwenprep.report import SCHEMA_VERSION, Report, dumps, render_checks, summary_line


def _emit_json(obj: dict[str, Any]) -> None:
    click.echo(dumps(obj))


def _fail(err: QwenprepError, as_json: bool) -> NoReturn:
    """Every error of every command ends here: credentials are scrubbed from message and hint
    (qwenprep.redact), in the JSON object and on stderr alike."""
    from qwenprep.redact import redact

    message = redact(err.message)
    hint = redact(err.hint) if err.hint is not None else None
    if as_json:
        _emit_json(
            {
                "schema_version": SCHEMA_VERSION,
                "ok": False,
                "error": {"message": message, "hint": hint, "exit_code": err.exit_code},
            }
        )
    click.echo(f"error: {message}" + (f"\nHint: {hint}" if hint else ""), err=True)
    sys.exit(err.exit_code)


def run(as_json: bool, fn: Callable[[], Any]) -> Any:
    """Run one core call; turn QwenprepError into its message and exit code."""
    try:
        return fn()
    except QwenprepError as err:
        _fail(err, as_json)


def _paint() -> Callable[[str, Any], str] | None:
    """Colour for the status marks: only when stdout is a terminal and NO_COLOR is not set
    (https://no-color.org: any non-empty value)."""
    import os

    if os.environ.get("NO_COLOR") or not sys.stdout.isatty():
        return None
    colours = {"pass": "green", "fail": "red", "warn": "yellow", "skip": "cyan"}
    return lambda text, status: click.style(text, fg=colours[status],
                                            bold=True if status == "fail" else None)


def finish_report(report: Report, as_json: bool, summary: str | None = None, *,
                  failed_only: bool = False) -> NoReturn:
    """Print a report (JSON on stdout, or a table on stdout: failures first, then a summary
    line) and exit 0/1 by its checks (--strict: set report.strict first)."""
    if as_json:
        _emit_json(report.to_dict())
    else:
        click.echo(render_checks(report.checks, failed_only=failed_only, paint=_paint(),
                                 strict=report.strict))
        click.echo(summary_line(report.checks, strict=report.strict))
        if summary:
            click.echo(summary)
    sys.exit(0 if report.ok else EXIT_CHECKS_FAILED)


def _report_options(f: Any) -> Any:
    f = click.option("--failed-only", is_flag=True,
                     help="List only the failed checks (the summary line still counts all).")(f)
    return click.option("--strict", is_flag=True,
                        help="Skipped checks fail too (exit 1): for pipelines that must not "
                        "pass blind.")(f)


vllm_python_option = click.option(
    "--engine-python", "--vllm-python", "vllm_python", envvar="QWENPREP_VLLM_PYTHON",
    default=None, help="Interpreter that has the serving engine (vLLM or SGLang; default: this "
    "one). --vllm-python is the old name. Env: QWENPREP_VLLM_PYTHON.")
serving_engine_option = click.option(
    "--serving-engine", type=click.Choice(["vllm", "sglang"], case_sensitive=False),
    default=None, help="vllm or sglang (default: $QWENPREP_SERVING_ENGINE, else what "
    "--engine-python has: SGLang when it has SGLang and no vLLM, else vLLM).")


def _engine_name(name: str | None, python: str | None, as_json: bool) -> str:
    from qwenprep.engines.sglang import select_engine

    chosen: str = run(as_json, lambda: select_engine(name, python))
    return chosen
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout; logs go to stderr."
)


class _WorkflowOrder(click.Group):
    """Lists commands in the order of the job, not alphabetically."""

    ORDER = ("fetch", "verify", "patch", "validate", "plan", "check", "serve", "list", "revert",
             "demo")

    def list_commands(self, ctx: click.Context) -> list[str]:
        known = [c for c in self.ORDER if c in self.commands]
        return known + sorted(c for c in self.commands if c not in self.ORDER)


@click.group(cls=_WorkflowOrder, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qwenprep")
def cli() -> None:
    """Prepare Qwen3-Coder checkpoints for long-context serving with vLLM.

    Patches config.json into an overlay directory (the original is never touched),
    validates it, plans KV-cache capacity, and launches vLLM from the prepared path.

    Exit codes: 0 ok, 1 checks failed, 2 bad invocation, 3 cannot proceed.

    \b
    Numbers: contexts are qwenprep's (1m = 1,048,576 tokens, 256k = 262,144).
    vLLM's own parser reads a lowercase suffix as decimal: there
    vllm serve --max-model-len 1m is 1,000,000 (1M is 1,048,576);
    qwenprep always passes vLLM plain integers.
    Sizes need a unit: 141GB (decimal), 80GiB (binary) or 1024B;
    141 or 8g are refused as ambiguous (did you mean GiB or GB?).

    \b
    Examples:
      qwenprep fetch Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8
      qwenprep patch Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8 --context 1m
      qwenprep check OVERLAY --gpus 8 --gpu h200

    \b
    Shell completion (in ~/.bashrc; zsh_source / fish_source likewise):
      eval "$(_QWENPREP_COMPLETE=bash_source qwenprep)"
    """


# --- foundation commands (patch, validate, revert, demo) ---


@cli.command(short_help='Patch config.json for 512K/1M into an overlay directory.')
@click.argument("model")
@click.option("--context", "-c", required=True, metavar="C",
              help="native|256k|512k|1m|N tokens (1m = 1048576, YaRN factor 4 over 256K).")
@click.option("--out", "-o", default=None, type=click.Path(path_type=Path),
              help="Overlay directory to create (links + patched config.json + manifest). "
              "Default: $HF_HOME/qwenprep/overlays/ORG--NAME@REV-CONTEXT (QWENPREP_OVERLAYS "
              "overrides the folder).")
@click.option("--force", is_flag=True,
              help="Replace an existing qwenprep overlay; allow YaRN factors above 4.")
@click.option("--yarn-on-dca", is_flag=True,
              help="On a Dual Chunk Attention release (Qwen2.5-1M, Qwen3-2507 with "
              "config_1m.json): write YaRN over the native length instead. Not what the release "
              "was tuned for; DCA itself fails to load on vLLM >= 0.11.")
@click.option("--vllm-version", metavar="X.Y", default=None,
              help="The vLLM the overlay is for (default: the installed one). Below 0.11 a DCA "
              "release's 1M overlay is its own DCA config (config_1m.json).")
@json_option
def patch(model: str, context: str, out: Path | None, force: bool, yarn_on_dca: bool,
          vllm_version: str | None, as_json: bool) -> None:
    """Patch MODEL's config.json for a longer context into an overlay directory.

    The source checkpoint is never modified; every other file is linked, not copied. An
    overlay of a cached repo holds a cache ref (refs/qwenprep/ID) so hf cache prune keeps its
    source; revert releases it.

    \b
    Examples:
      qwenprep patch Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8 --context 1m
      qwenprep patch ./my-model --context 512k --out ./my-model-512k
    """
    from qwenprep.checkpoint import resolve_model
    from qwenprep.contexts import parse_context
    from qwenprep.dca_patch import request_for
    from qwenprep.overlay import create_overlay

    def go() -> Any:
        ckpt = resolve_model(model)
        req = request_for(ckpt.path, parse_context(context), yarn_on_dca=yarn_on_dca,
                          vllm_version=vllm_version)
        return create_overlay(ckpt, out, req, force=force)

    res = run(as_json, go)
    m = res.manifest
    if as_json:
        _emit_json({"schema_version": SCHEMA_VERSION, "ok": True, "status": res.status,
                    "path": str(res.path), "source": m["source"]["path"],
                    "native_context": m["native_context"], "target_context": m["target_context"],
                    "factor": m["factor"], "files_linked": len(m["files"]),
                    "digest": m["digest"], "pin": m["source"].get("pin"),
                    "warnings": res.notes})
        return
    for line in res.diff:
        click.echo(line, err=True)
    for note in res.notes:
        click.echo(f"warning: {note}", err=True)
    if yarn_on_dca and m["factor"] != 1.0:
        click.echo("warning: --yarn-on-dca: YaRN over a Dual Chunk Attention release is not what "
                   "the release was tuned for; check long-context quality.", err=True)
    click.echo(f"{res.status} overlay {res.path}: {m['target_context']} tokens "
               f"(YaRN factor {m['factor']:.8g} over {m['native_context']}), "
               f"{len(m['files'])} files linked from {m['source']['path']}", err=True)
    click.echo(str(res.path))


@cli.command(short_help='Check config.json: schema and long-context invariants.')
@click.argument("path")
@_report_options
@json_option
def validate(path: str, strict: bool, failed_only: bool, as_json: bool) -> None:
    """Check PATH/config.json against the Qwen3 schema and the long-context invariants.

    \b
    Examples:
      qwenprep validate ./Qwen3-Coder-480B-A35B-Instruct-FP8-1m
      qwenprep validate Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8 --json
    """
    from qwenprep.checkpoint import resolve_model
    from qwenprep.validation import validate_checkpoint

    checks = run(as_json, lambda: validate_checkpoint(resolve_model(path).path))
    report = Report("validate", checks, {"path": path}, strict=strict)
    finish_report(report, as_json, "valid" if report.ok else "INVALID: see the FAIL lines above",
                  failed_only=failed_only)


@cli.command(short_help='Remove an overlay, or restore an edited config.json.')
@click.argument("path", metavar="PATH|ORG/NAME[@REV]")
@click.option("--force", is_flag=True,
              help="Also delete edits made inside the overlay (its config.json, files under "
              ".qwenprep/); files you added are never deleted.")
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
    from qwenprep.restore import revert_path

    res = run(as_json, lambda: revert_path(path, force=force))
    if as_json:
        _emit_json({"schema_version": SCHEMA_VERSION, "ok": True, **res.to_dict()})
        return
    click.echo(res.message)


@cli.command("list", short_help="Overlays qwenprep made, each ok, stale or dangling.")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@json_option
def list_cmd(paths: tuple[Path, ...], as_json: bool) -> None:
    """List overlays under the default place ($HF_HOME/qwenprep/overlays) or PATHS (overlays,
    or folders holding them): source, context and state. ok; stale: the source config changed
    or the ref it came from moved; dangling: the source or a linked file is gone (after hf
    cache rm, say). Exit 1 when any is not ok.

    \b
    Examples:
      qwenprep list
      qwenprep list /models/overlays --json
    """
    from qwenprep.lifecycle import list_overlays, overlays_home

    found = run(as_json, lambda: list_overlays(list(paths)))
    ok = all(s.state == "ok" for s in found)
    if as_json:
        _emit_json({"schema_version": SCHEMA_VERSION, "ok": ok, "kind": "list",
                    "searched": [str(p) for p in paths] or [str(overlays_home())],
                    "overlays": [s.to_dict() for s in found]})
        sys.exit(0 if ok else EXIT_CHECKS_FAILED)
    if not found:
        click.echo(f"no overlays under {', '.join(map(str, paths)) or overlays_home()}", err=True)
    for s in found:
        click.echo(f"{s.state:<8} {s.path}  <- {s.source} @ {s.context} tokens")
        for r in s.reasons:
            click.echo(f"         {r}")
        if s.rebuild:
            click.echo(f"         rebuild: {s.rebuild}")
    sys.exit(0 if ok else EXIT_CHECKS_FAILED)


@cli.command(short_help='The main job end to end on the embedded tiny checkpoint.')
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="Where the demo overlay goes (default: a temporary directory).")
@click.option("--serve/--no-serve", default=True,
              help="Launch the real vLLM on the overlay when it is installed (default: yes).")
@vllm_python_option
@json_option
def demo(workdir: Path | None, serve: bool, vllm_python: str | None, as_json: bool) -> None:
    """Run the main job end to end on the embedded tiny checkpoint.

    verify -> patch to 1M -> validate -> plan -> engine readback and serve -> revert.

    \b
    Examples:
      qwenprep demo
      qwenprep demo --no-serve --json
    """
    import tempfile

    from qwenprep.demo import Step, run_demo

    def show(step: Step) -> None:
        click.echo(f"== {step.title}: {step.status}", err=as_json)
        for line in step.lines:
            click.echo(f"   {line}", err=as_json)

    with tempfile.TemporaryDirectory(prefix="qwenprep-demo-") as tmp:
        base = workdir if workdir is not None else Path(tmp)
        steps = run(as_json, lambda: run_demo(base, serve=serve, vllm_python=vllm_python,
                                              on_step=show))
    ok = all(s.status != "fail" for s in steps)
    if as_json:
        _emit_json({"schema_version": SCHEMA_VERSION, "ok": ok,
                    "steps": [{"title": s.title, "status": s.status, "lines": s.lines}
                              for s in steps]})
    else:
        click.echo("demo finished: all steps passed" if ok else "demo FAILED", err=False)
    sys.exit(0 if ok else EXIT_CHECKS_FAILED)


# --- locate/fetch/verify commands ---


@cli.command(short_help='Check a checkpoint is whole (headers; --deep: every byte).')
@click.argument("model", metavar="PATH|ORG/NAME")
@click.option("--deep", is_flag=True, help="Also hash every byte against its content hash.")
@click.option("--record", is_flag=True,
              help="With --deep: keep the hashes of files that have nothing to compare against "
              "(a plain directory's first run) in .qwenprep/hashes.json, for next time.")
@click.option("--engine", is_flag=True, help="Also read the config back through the serving "
              "engine (vLLM, or SGLang with --serving-engine sglang).")
@vllm_python_option
@serving_engine_option
@_report_options
@json_option
def verify(model: str, deep: bool, record: bool, engine: bool, vllm_python: str | None,
           serving_engine: str | None, strict: bool, failed_only: bool, as_json: bool) -> None:
    """Check a checkpoint is whole: index vs shards, safetensors headers, FP8 structure and
    tensor names vs config.json (reads no tensor data); --deep hashes every file against its
    HF cache blob name, download metadata or hash record (progress with throughput and ETA on
    stderr: redrawn on a terminal, a line every 10% or 10 s otherwise). With nothing to
    compare against, the hashes are reported (a WARN) and kept only with --record.

    \b
    Examples:
      qwenprep verify Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8
      qwenprep verify ./my-model --deep --record   # first run: keep the hashes
      qwenprep verify ./my-model --deep --strict --json
    """
    from qwenprep.checkpoint import resolve_model
    from qwenprep.hashing import ProgressMeter
    from qwenprep.integrity import verify_checkpoint

    if record and not deep:
        run(as_json, lambda: _usage("--record keeps the hashes --deep computes: add --deep."))
    tty = sys.stderr.isatty()
    meter = ProgressMeter(tty=tty)

    def bar(done: int, total: int) -> None:  # worker threads call this, serialised
        line = meter.update(done, total)
        if line is not None:
            click.echo(line, err=True, nl=not tty or done >= total)

    progress = bar if deep else None
    sglang = engine and _engine_name(serving_engine, vllm_python, as_json) == "sglang"

    def go() -> Report:
        path = resolve_model(model).path
        rep = verify_checkpoint(path, deep=deep, engine=engine and not sglang,
                                vllm_python=vllm_python, progress=progress, record=record)
        if sglang:
            from qwenprep.engines.sglang_gate import readback_checks

            rep.extend(readback_checks(path, python=vllm_python))
        return rep

    try:
        report = run(as_json, go)
    except KeyboardInterrupt:  # hashing stops at once and records nothing; exit 130
        if progress is not None and tty:
            click.echo(err=True)
        _fail(Interrupted("interrupted: verify stopped before it finished; no hash record "
                          "was written.",
                          hint="run the same command again to check the whole checkpoint."),
              as_json)
    x = report.extra
    report.strict = strict
    finish_report(report, as_json, f"{'OK' if report.ok else 'FAILED'}: {x['files']} shard(s), "
                  f"{x['tensors']:,} tensors, {x['bytes']:,} bytes"
                  + (f", {x['hashed_bytes']:,} bytes hashed" if deep else ""),
                  failed_only=failed_only)


@cli.command(short_help='Download a checkpoint (pinned commit), then verify it.')
@click.argument("repo", metavar="ORG/NAME[@REV]")
@click.option("--local-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Download into this directory instead of the Hugging Face cache.")
@click.option("--revision", default=None, metavar="REV",
              help="Branch, tag or commit (as ORG/NAME@REV; the two must agree).")
@click.option("--include", multiple=True, metavar="GLOB",
              help="Fetch only serving files matching GLOB (repeatable), e.g. '*.json'.")
@click.option("--exclude", multiple=True, metavar="GLOB",
              help="Leave serving files matching GLOB on the Hub (repeatable).")
@click.option("--dry-run", is_flag=True,
              help="Print what would be fetched and its total size; write nothing.")
@click.option("--max-workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="Files downloaded at once (huggingface_hub's default: 8).")
@json_option
def fetch(repo: str, local_dir: Path | None, revision: str | None, include: tuple[str, ...],
          exclude: tuple[str, ...], dry_run: bool, max_workers: int | None,
          as_json: bool) -> None:
    """Download the files serving needs (pinned commit), then verify them deeply.

    Prints the checkpoint path on stdout; progress and checks go to stderr. Speaks hf
    download's options: --revision, --include/--exclude (on top of the serving-file filter),
    --dry-run, --max-workers; with HF_HUB_OFFLINE=1 and the revision cached it prints the
    cached path and exits 0.

    \b
    Examples:
      qwenprep fetch Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8
      qwenprep fetch Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8 --revision main --dry-run
      qwenprep fetch Qwen/Qwen3-Coder-30B-A3B-Instruct --include '*.json' --local-dir ./cfg
    """
    from qwenprep.fetch import fetch as do_fetch
    from qwenprep.redact import redact, redact_obj
    from qwenprep.sizes import format_bytes

    res = run(as_json, lambda: do_fetch(repo, local_dir=local_dir, revision=revision,
                                        include=include, exclude=exclude, dry_run=dry_run,
                                        max_workers=max_workers))
    if as_json:
        _emit_json({k: v if k == "path" else redact_obj(v) for k, v in res.to_dict().items()})
    elif res.mode == "dry-run":
        for f in res.plan.files:
            click.echo(f"{f.size if f.size is not None else '?':>14}  {f.name}")
        click.echo(f"dry run: {res.plan.spec.repo_id}@{res.plan.commit[:12]}: would fetch "
                   f"{len(res.plan.files)} files, {format_bytes(res.plan.bytes_total)} "
                   f"({res.plan.bytes_total:,} bytes; {format_bytes(res.plan.bytes_needed)} not "
                   f"yet at {res.path}); nothing written", err=True)
        click.echo(redact(render_checks(res.checks)), err=True)
    elif res.mode == "offline":
        click.echo(redact(render_checks(res.checks)), err=True)
        click.echo(str(res.path))
    else:
        click.echo(f"{res.plan.spec.repo_id}@{res.plan.commit[:12]}: {len(res.plan.files)} "
                   f"files, {format_bytes(res.plan.bytes_total)} in {res.seconds:.1f} s", err=True)
        click.echo(redact(render_checks([*res.checks, *res.verify.checks])), err=True)
        click.echo(str(res.path))
    sys.exit(0 if res.ok else EXIT_CHECKS_FAILED)

# --- plan/check commands ---


_vllm_version_option = click.option(
    "--vllm-version", metavar="X.Y",
    help="Use this vLLM version's arithmetic (default: the installed vLLM, else the newest known).")
_tp_option = click.option("--tp", type=click.IntRange(min=1), default=None,
                          help="Tensor-parallel size (default: plan: the GPU count; check: the "
                          "model profile's, as qwenprep serve).")
_pp_option = click.option("--pp", type=click.IntRange(min=1), default=1, show_default=True,
                          help="Pipeline-parallel size (stages across nodes).")
_gpu_options = [
    click.option("--gpus", type=click.IntRange(min=1), help="GPUs in total (with --gpu-memory)."),
    click.option("--gpu-memory", metavar="SIZE",
                 help="Memory of one GPU, with its unit: 141GB (decimal), 80GiB (binary), "
                 "1024B. A bare number or 8g is refused as ambiguous."),
    click.option("--kv-memory", metavar="SIZE",
                 help="KV cache memory per GPU, exact (what vLLM logs as 'Available KV cache "
                 "memory', or its --kv-cache-memory-bytes), with its unit: 61.31GiB."),
    click.option("--kv-cache-dtype", type=click.Choice(["auto", "fp8"]), default="auto",
                 show_default=True, help="auto = the model dtype (bf16); fp8 = 1 byte."),
    click.option("--block-size", type=click.IntRange(min=1), default=16, show_default=True,
                 help="KV block size in tokens (16 on CUDA; vLLM's CPU backend uses 128)."),
]


def _with(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def deco(f: Any) -> Any:
        for opt in reversed(options):
            f = opt(f)
        return f
    return deco


@cli.command(short_help="KV-cache capacity, concurrency and prefill/decode time estimates.")
@click.argument("model")
@click.option("--context", "-c", metavar="C", help="native|256k|512k|1m|N (default: the "
              "checkpoint's max_position_embeddings). 1m = 1,048,576 here; vLLM's own "
              "--max-model-len reads 1m as 1,000,000.")
@_tp_option
@_pp_option
@click.option("--ep/--no-ep", default=True, show_default=True,
              help="Expert parallel (experts divided over all GPUs) for MoE models.")
@_with(_gpu_options)
@click.option("--gpu", "gpu_model", metavar="NAME",
              help="GPU model for the time estimates (H200, H100 SXM, B200, MI300X, ...); also "
              "sets the memory per GPU when --gpu-memory is not given. Default: the detected "
              "GPUs' name.")
@click.option("--prefill-budget", type=float, default=None, metavar="SECONDS",
              help="Longest acceptable full-length prefill for the recommendation "
              "(default 60).")
@click.option("--chart", "chart", metavar="FILE",
              help="Draw concurrency and prefill time against context into FILE (.svg or .png; "
              "needs the [chart] extra).")
@_vllm_version_option
@serving_engine_option
@vllm_python_option
@click.option("--mem-fraction-static", type=float, default=None, metavar="F",
              help="SGLang only: its --mem-fraction-static (default: SGLang's own default for "
              "the GPU size, an estimate).")
@json_option
def plan(model: str, context: str | None, tp: int | None, pp: int, ep: bool, gpus: int | None,
         gpu_memory: str | None, kv_memory: str | None, kv_cache_dtype: str, block_size: int,
         gpu_model: str | None, prefill_budget: float | None, chart: str | None,
         vllm_version: str | None, serving_engine: str | None, vllm_python: str | None,
         mem_fraction_static: float | None, as_json: bool) -> None:
    """KV-cache capacity of MODEL at a context, by vLLM's own arithmetic, and how long prefill
    and decode take there (estimates: floor at peak, typical band); exit 1 if it won't fit.

    MODEL is a directory, a cached ORG/NAME[@rev], or a Hub repo id (headers read remotely).

    \b
    Examples:
      qwenprep plan Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8 --context 1m --gpus 8 --gpu h200
      qwenprep plan ./overlay --tp 8 --kv-memory 61.31GiB
      qwenprep plan ./overlay --gpus 8 --gpu-memory 141GB --serving-engine sglang
    """
    from qwenprep.capacity import make_plan

    _check_sizes(as_json, gpu_memory=gpu_memory, kv_memory=kv_memory)
    if _engine_name(serving_engine, vllm_python, as_json) == "sglang":
        _plan_sglang(model, context=context, tp=tp, pp=pp, ep=ep, gpus=gpus,
                     gpu_memory=gpu_memory, kv_memory=kv_memory, kv_cache_dtype=kv_cache_dtype,
                     mem_fraction_static=mem_fraction_static, as_json=as_json)
    if mem_fraction_static is not None:
        run(as_json, lambda: _usage("--mem-fraction-static is SGLang's; vLLM's is "
                                    "gpu_memory_utilization (pass --serving-engine sglang)."))
    if chart is not None:
        from qwenprep.chart import chart_format

        run(as_json, lambda: chart_format(chart))
    p = run(as_json, lambda: make_plan(
        model, context=context, tp=tp, pp=pp, gpus=gpus, gpu_memory=gpu_memory,
        kv_memory=kv_memory, kv_cache_dtype=kv_cache_dtype,  # type: ignore[arg-type]
        ep=ep, vllm_version=vllm_version, block_size=block_size, gpu=gpu_model,
        prefill_budget=prefill_budget))
    written = None
    if chart is not None:
        from qwenprep.chart import write_chart

        written = run(as_json, lambda: write_chart(p, chart))
    if as_json:
        _emit_json({**p.to_dict(), **({"chart": str(written)} if written else {})})
    else:
        click.echo(p.summary())
        if written:
            click.echo(f"chart: {written}")
    sys.exit(0 if p.fits else EXIT_CHECKS_FAILED)


def _usage(message: str) -> None:
    from qwenprep.errors import UsageError

    raise UsageError(message)


def _check_sizes(as_json: bool, **sizes: str | None) -> None:
    """--gpu-memory / --kv-memory never guess: a bare number or 8g is refused (exit 2)."""
    from qwenprep.sizes import parse_size

    def check_all() -> None:
        for name, value in sizes.items():
            if value is not None:
                parse_size(value, "--" + name.replace("_", "-"))

    run(as_json, check_all)


def _plan_sglang(model: str, *, context: str | None, tp: int | None, pp: int, ep: bool,
                 gpus: int | None, gpu_memory: str | None, kv_memory: str | None,
                 kv_cache_dtype: str, mem_fraction_static: float | None,
                 as_json: bool) -> NoReturn:
    """plan --serving-engine sglang: SGLang 0.5.23's KV arithmetic (engines/sglang_kv.py)."""
    from qwenprep.engines.sglang_kv import make_plan

    def go() -> Any:
        return make_plan(model, context=context, tp=tp, pp=pp, ep=ep, gpus=gpus,
                         gpu_memory=gpu_memory, kv_memory=kv_memory,
                         kv_cache_dtype=kv_cache_dtype, mem_fraction_static=mem_fraction_static)

    p = run(as_json, go)
    if as_json:
        _emit_json(p.to_dict())
    else:
        click.echo(p.summary())
    sys.exit(0 if p.fits else EXIT_CHECKS_FAILED)


@cli.command(short_help='Every pre-flight check before a deploy, in one report.')
@click.argument("path")
@_tp_option
@_pp_option
@click.option("--ep/--no-ep", default=None,
              help="Expert parallel (default: on for MoE models, as qwenprep serve does).")
@click.option("--context", "-c", metavar="C",
              help="Intended context (default: the config's max_position_embeddings). 1m = "
              "1,048,576 here; vLLM's own --max-model-len reads 1m as 1,000,000.")
@click.option("--engine/--no-engine", default=True, show_default=True,
              help="Judge the serve argv with the installed vLLM's own parser and config "
              "layer (a few seconds); --no-engine judges it offline.")
@_with(_gpu_options)
@click.option("--gpu", "gpu_model", metavar="NAME",
              help="GPU model from the catalog (H200, H100 SXM, B200, MI300X, ...): sets the "
              "memory per GPU when --gpu-memory is not given, as plan --gpu does.")
@_vllm_version_option
@vllm_python_option
@serving_engine_option
@_report_options
@json_option
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def check(path: str, tp: int | None, pp: int, ep: bool | None, context: str | None,
          engine: bool, gpus: int | None, gpu_memory: str | None, kv_memory: str | None,
          kv_cache_dtype: str,
          block_size: int, gpu_model: str | None, vllm_version: str | None,
          vllm_python: str | None, serving_engine: str | None, strict: bool, failed_only: bool,
          as_json: bool, vllm_args: tuple[str, ...]) -> None:
    """Every pre-flight check on PATH before a deploy; exit 0 all pass, 1 any fails.

    Flags after `--` go into the argv `qwenprep serve` would run, which the installed vLLM
    parses and reads back exactly as serve does (the same gate: serve refuses what fails).

    \b
    Examples:
      qwenprep check ./overlay --gpus 8 --gpu h200
      qwenprep check ./overlay --gpus 8 --gpu-memory 141GB --strict --json
      qwenprep check ./overlay --kv-memory 61.31GiB -- --max-num-seqs 4
    """
    from qwenprep.catalog import gpu_memory_for
    from qwenprep.preflight import check_options, run_checks

    _check_sizes(as_json, gpu_memory=gpu_memory, kv_memory=kv_memory)
    _, gpu_memory, gpu_notes = run(as_json, lambda: gpu_memory_for(
        gpu_model, gpu_memory=gpu_memory, kv_memory=kv_memory))
    for note in gpu_notes:
        click.echo(f"note: {note}", err=True)

    def go() -> Report:
        from qwenprep.checkpoint import resolve_model

        opts = check_options(tp=tp, pp=pp, ep=ep, context=context, gpus=gpus,
                             gpu_memory=gpu_memory, kv_memory=kv_memory,
                             kv_cache_dtype=kv_cache_dtype, block_size=block_size,
                             vllm_version=vllm_version, vllm_args=vllm_args, engine=engine,
                             python=vllm_python)
        hooks = None
        if _engine_name(serving_engine, vllm_python, as_json) == "sglang":
            from dataclasses import replace

            from qwenprep.engines.sglang_gate import check_hooks

            opts, hooks = replace(opts, serving_engine="sglang"), check_hooks()
        ckpt = resolve_model(path)
        return run_checks(ckpt.path, opts, repo_id=ckpt.repo_id, hooks=hooks)

    report = run(as_json, go)
    report.strict = strict
    finish_report(report, as_json, "ready to serve" if report.ok
                  else "NOT ready: see the FAIL lines above", failed_only=failed_only)

# --- engine/serve commands ---


@cli.command(short_help='Launch vLLM from the overlay with the right flags.')
@click.argument("path")
@click.option("--tp", type=click.IntRange(min=1), default=None,
              help="Tensor parallel size (default: the model profile's).")
@click.option("--ep/--no-ep", default=None, help="Expert parallel (default: the model profile's).")
@click.option("--max-model-len", "max_len", default=None, metavar="N",
              help="Context to serve: tokens, 256k or 1m (default: the overlay's context). "
              "1m = 1,048,576 here (vLLM itself reads 1m as 1,000,000); vLLM gets the "
              "integer.")
@click.option("--host", default=None, help="Address vLLM listens on (vLLM's default: all).")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port, 1-65535 (vLLM's default: 8000).")
@click.option("--served-model-name", default=None, help="Name clients use in requests.")
@vllm_python_option
@click.option("--dry-run", is_flag=True, help="Print the command and environment; start nothing.")
@click.option("--ready-timeout", type=float, default=1800.0, show_default=True,
              help="Seconds to wait for /v1/models before giving up.")
@click.option("--expect-digest", default=None, metavar="D",
              help="Refuse (exit 3) unless PATH is the overlay with this manifest digest.")
@click.option("--nnodes", type=int, default=None, help="Nodes to spread the plan over.")
@click.option("--gpus-per-node", type=int, default=None, help="GPUs on each node.")
@click.option("--master-addr", default=None, help="Head node address for multi-node plans.")
@click.option("--multinode-mode", type=click.Choice(["native", "dp", "ray"]), default=None,
              help="How nodes join (default: native if vLLM has it, else ray; dp if TP fits "
              "a node). SGLang: its own --nnodes/--node-rank/--dist-init-addr.")
@serving_engine_option
@json_option
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def serve(path: str, tp: int | None, ep: bool | None, max_len: str | None, host: str | None,
          port: int | None, served_model_name: str | None, vllm_python: str | None,
          dry_run: bool, ready_timeout: float, expect_digest: str | None, nnodes: int | None,
          gpus_per_node: int | None, master_addr: str | None, multinode_mode: str | None,
          serving_engine: str | None, as_json: bool, vllm_args: tuple[str, ...]) -> None:
    """Launch vLLM on PATH with the known-good flags for the installed version.

    Refuses a --max-model-len the config does not allow (exit 3) before vLLM starts; waits
    until /v1/models reports the intended length; passes vLLM's exit code through.
    Extra vLLM flags go after `--`: the installed vLLM parses the whole argv and reads the
    model config back with it before anything starts (the gate qwenprep check runs too);
    what it refuses, or would run differently from the overlay, is refused (exit 3).

    \b
    Examples:
      qwenprep serve ./overlay
      qwenprep serve ./overlay --dry-run --json
      qwenprep serve ./overlay --port 8001 -- --max-num-seqs 4
    """
    import shlex

    from qwenprep import engine as eng
    from qwenprep import gate
    from qwenprep.checkpoint import resolve_model

    use_sglang = _engine_name(serving_engine, vllm_python, as_json) == "sglang"

    def make_sglang_plan() -> Any:
        from qwenprep.engines.sglang_gate import serve_plan

        return serve_plan(path, python=vllm_python, dry_run=dry_run, tp=tp, ep=ep,
                          max_len=max_len, host=host, port=port,
                          served_model_name=served_model_name, extra_args=vllm_args,
                          expect_digest=expect_digest, nnodes=nnodes,
                          gpus_per_node=gpus_per_node, master_addr=master_addr,
                          multinode_mode=multinode_mode)

    def make_plan() -> Any:
        if use_sglang:
            return make_sglang_plan()
        ckpt = resolve_model(path)
        info = eng.discover(vllm_python) if dry_run else eng.require_engine(vllm_python)
        plan = eng.build_launch_plan(
            ckpt.path, engine=info, tp=tp, ep=ep,
            max_model_len=eng.parse_max_model_len(max_len) if max_len else None, host=host,
            port=port, served_model_name=served_model_name, extra_args=vllm_args,
            repo_id=ckpt.repo_id, expect_digest=expect_digest, nnodes=nnodes,
            gpus_per_node=gpus_per_node, master_addr=master_addr, multinode_mode=multinode_mode,
            gpus_here=eng.gpus_on_this_node(), offline_gate=False)
        return gate.enforce(plan, engine=info)

    plan = run(as_json, make_plan)
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)
    if dry_run or plan.nodes:
        if as_json:
            _emit_json({"schema_version": SCHEMA_VERSION, "ok": True, "dry_run": True,
                        **plan.to_dict()})
        elif plan.nodes:
            for node in plan.nodes:
                click.echo(f"# node {node.node_rank} ({node.role}, {plan.multinode_mode})")
                click.echo(node.shell())
        else:
            for k in plan.unset_env:
                click.echo(f"unset {k}")
            for k, v in plan.env.items():
                click.echo(f"export {k}={v}")
            click.echo(shlex.join(plan.argv))
        return
    _serve_foreground(plan, ready_timeout, as_json)


def _serve_foreground(plan: Any, ready_timeout: float, as_json: bool) -> NoReturn:
    """Run vLLM (or SGLang) as a child: its output on our stderr, SIGINT/SIGTERM forwarded,
    its exit code passed through."""
    import shlex
    import signal

    from qwenprep.engines import sglang
    from qwenprep.engines import vllm_server as eng

    who = "SGLang" if getattr(plan, "serving_engine", "vllm") == "sglang" else "vLLM"
    click.echo(f"starting {who} {plan.engine.version}: {shlex.join(plan.argv)}", err=True)
    try:
        out: Any = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        out = None
    start = sglang.start if who == "SGLang" else eng.start_server
    handle: Any = run(as_json, lambda: start(plan, stdout=out, stderr=out))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: handle.send_signal(signum))
    try:
        models = handle.wait_ready(ready_timeout)
    except QwenprepError as err:
        handle.stop()
        _fail(err, as_json)
    entry = models["data"][0]
    click.echo(f"ready: {plan.base_url}/v1 serves {entry['id']} with max_model_len "
               f"{entry['max_model_len']} (Ctrl-C stops it)", err=True)
    if as_json:
        _emit_json({"schema_version": SCHEMA_VERSION, "ok": True, "ready": True,
                    "url": plan.base_url, "model": entry["id"],
                    "max_model_len": entry["max_model_len"], "pid": handle.pid})
        sys.stdout.flush()
    rc = handle.wait()
    click.echo(f"{who} exited with code {rc}", err=True)
    sys.exit(rc)


def _wants_json(argv: list[str]) -> bool:
    own = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in own


def main() -> None:
    """Console entry point. Click's own usage errors keep the --json contract too: stdout then
    carries one JSON object with the error, and the exit code stays 2."""
    try:
        rv = cli.main(prog_name="qwenprep", standalone_mode=False)
    except click.ClickException as e:
        if _wants_json(sys.argv[1:]):
            _emit_json({"schema_version": SCHEMA_VERSION, "ok": False,
                        "error": {"message": e.format_message(), "hint": None,
                                  "exit_code": e.exit_code}})
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # Ctrl-C: 130 as shells report it, never 1 (which means "checks failed")
        if _wants_json(sys.argv[1:]):
            _emit_json({"schema_version": SCHEMA_VERSION, "ok": False,
                        "error": {"message": "interrupted", "hint": None,
                                  "exit_code": EXIT_INTERRUPTED}})
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(rv if isinstance(rv, int) else 0)
