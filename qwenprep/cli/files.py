"""The commands that get and check a checkpoint's files: verify and fetch."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from qwenprep.cli._common import (
    cli,
    echo,
    emit_json,
    fail,
    finish_report,
    json_option,
    report_options,
    run,
    serving_engine_for,
    serving_engine_option,
    usage,
    vllm_python_option,
)
from qwenprep.cli.terminal import animated
from qwenprep.errors import EXIT_CHECKS_FAILED, Interrupted
from qwenprep.util.report import Report, render_checks


@cli.command(short_help="Check a checkpoint is whole (headers; --deep: every byte).")
@click.argument("model", metavar="PATH|ORG/NAME")
@click.option("--deep", is_flag=True, help="Also hash every byte against its content hash.")
@click.option(
    "--record",
    is_flag=True,
    help="With --deep: keep the hashes of files that have nothing to compare against "
    "(a plain directory's first run) in .qwenprep/hashes.json, for next time.",
)
@click.option(
    "--engine",
    is_flag=True,
    help="Also read the config back through the serving "
    "engine (vLLM, or SGLang with --serving-engine sglang).",
)
@vllm_python_option
@serving_engine_option
@report_options
@json_option
def verify(
    model: str,
    deep: bool,
    record: bool,
    engine: bool,
    vllm_python: str | None,
    serving_engine: str | None,
    strict: bool,
    failed_only: bool,
    as_json: bool,
) -> None:
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
    from qwenprep.checks import scan as integrity_scan
    from qwenprep.checks.integrity import verify_checkpoint
    from qwenprep.model.checkpoint import resolve_model
    from qwenprep.util.hashing import ProgressMeter

    integrity_scan.FREEZE_AFTER_SCAN = True  # this process ends after the command

    if record and not deep:
        run(as_json, lambda: usage("--record keeps the hashes --deep computes: add --deep."))
    tty = animated(sys.stderr)  # the progress line redrawn in place
    meter = ProgressMeter(tty=tty)

    def bar(done: int, total: int) -> None:  # worker threads call this, serialised
        line = meter.update(done, total)
        if line is not None:
            echo(line, err=True, nl=not tty or done >= total)

    progress = bar if deep else None
    chosen = serving_engine_for(serving_engine, vllm_python, as_json) if engine else None

    def go() -> Report:
        path = resolve_model(model).path
        rep = verify_checkpoint(path, deep=deep, progress=progress, record=record)
        if chosen is not None:  # the engine's own read-back, last
            rep.extend(chosen.readback_checks(path, python=vllm_python))
        return rep

    try:
        report = run(as_json, go)
    except KeyboardInterrupt:  # hashing stops at once and records nothing; exit 130
        if progress is not None and tty:
            echo(err=True)
        fail(
            Interrupted(
                "interrupted: verify stopped before it finished; no hash record was written.",
                hint="run the same command again to check the whole checkpoint.",
            ),
            as_json,
        )
    x = report.extra
    report.strict = strict
    finish_report(
        report,
        as_json,
        f"{'OK' if report.ok else 'FAILED'}: {x['files']} shard(s), "
        f"{x['tensors']:,} tensors, {x['bytes']:,} bytes"
        + (f", {x['hashed_bytes']:,} bytes hashed" if deep else ""),
        failed_only=failed_only,
    )


@cli.command(short_help="Download a checkpoint (pinned commit), then verify it.")
@click.argument("repo", metavar="ORG/NAME[@REV]")
@click.option(
    "--local-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Download into this directory instead of the Hugging Face cache.",
)
@click.option(
    "--revision",
    default=None,
    metavar="REV",
    help="Branch, tag or commit (as ORG/NAME@REV; the two must agree).",
)
@click.option(
    "--include",
    multiple=True,
    metavar="GLOB",
    help="Fetch only serving files matching GLOB (repeatable), e.g. '*.json'.",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Leave serving files matching GLOB on the Hub (repeatable).",
)
@click.option(
    "--dry-run", is_flag=True, help="Print what would be fetched and its total size; write nothing."
)
@click.option(
    "--max-workers",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Files downloaded at once (huggingface_hub's default: 8).",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --local-dir: download over files there whose bytes differ from the Hub's, "
    "keeping each beside itself as NAME.qwenprep-replaced (without it fetch refuses, exit 3).",
)
@json_option
def fetch(
    repo: str,
    local_dir: Path | None,
    revision: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    dry_run: bool,
    max_workers: int | None,
    force: bool,
    as_json: bool,
) -> None:
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
    from qwenprep.ops.fetch.download import fetch as do_fetch
    from qwenprep.util.sizes import format_bytes

    res = run(
        as_json,
        lambda: do_fetch(
            repo,
            local_dir=local_dir,
            revision=revision,
            include=include,
            exclude=exclude,
            dry_run=dry_run,
            max_workers=max_workers,
            force=force,
        ),
    )
    if as_json:
        emit_json(res.to_dict())
    elif res.mode == "dry-run":
        for f in res.plan.files:
            echo(f"{f.size if f.size is not None else '?':>14}  {f.name}")
        echo(
            f"dry run: {res.plan.spec.repo_id}@{res.plan.commit[:12]}: would fetch "
            f"{len(res.plan.files)} files, {format_bytes(res.plan.bytes_total)} "
            f"({res.plan.bytes_total:,} bytes; {format_bytes(res.plan.bytes_needed)} not "
            f"yet at {res.path}); nothing written",
            err=True,
        )
        echo(render_checks(res.checks), err=True)
    elif res.mode == "offline":
        echo(render_checks(res.checks), err=True)
        click.echo(str(res.path))
    else:
        echo(
            f"{res.plan.spec.repo_id}@{res.plan.commit[:12]}: {len(res.plan.files)} "
            f"files, {format_bytes(res.plan.bytes_total)} in {res.seconds:.1f} s",
            err=True,
        )
        echo(render_checks([*res.checks, *res.verify.checks]), err=True)
        click.echo(str(res.path))
    sys.exit(0 if res.ok else EXIT_CHECKS_FAILED)
