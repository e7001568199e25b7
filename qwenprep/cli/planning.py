"""The commands that judge a deploy before it starts: plan and check."""

from __future__ import annotations

import sys
from typing import Any

import click

from qwenprep.cli._common import (
    check_sizes,
    cli,
    echo,
    emit_json,
    finish_report,
    gpu_options,
    json_option,
    pp_option,
    report_options,
    run,
    serving_engine_for,
    serving_engine_option,
    tp_option,
    usage,
    vllm_python_option,
    vllm_version_option,
    with_options,
)
from qwenprep.errors import EXIT_CHECKS_FAILED
from qwenprep.util.report import Report


@cli.command(short_help="KV-cache capacity, concurrency and prefill/decode time estimates.")
@click.argument("model")
@click.option(
    "--context",
    "-c",
    metavar="C",
    help="native|256k|512k|1m|N (default: the "
    "checkpoint's max_position_embeddings). 1m = 1,048,576 here; vLLM's own "
    "--max-model-len reads 1m as 1,000,000.",
)
@tp_option
@pp_option
@click.option(
    "--ep/--no-ep",
    default=None,
    help="Expert parallel (experts divided over all GPUs) for MoE models (default: the "
    "model profile's, else on for MoE models on more than one GPU, as check and serve).",
)
@with_options(gpu_options)
@click.option(
    "--gpu",
    "gpu_model",
    metavar="NAME",
    help="GPU model for the time estimates (H200, H100 SXM, B200, MI300X, ...); also "
    "sets the memory per GPU when --gpu-memory is not given. Default: the detected "
    "GPUs' name.",
)
@click.option(
    "--prefill-budget",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Longest acceptable full-length prefill for the recommendation (default 60).",
)
@click.option(
    "--chart",
    "chart",
    metavar="FILE",
    help="Draw concurrency and prefill time against context into FILE (.svg or .png; "
    "needs the [chart] extra). An existing FILE is replaced only when qwenprep drew it.",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --chart: replace FILE even when it is not a chart qwenprep drew (never a symlink).",
)
@click.option(
    "--dcp",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="N",
    help="vLLM's --decode-context-parallel-size: each of N TP ranks holds 1/N of a "
    "request's KV tokens (needs TP above the KV heads; refused where vLLM refuses it).",
)
@click.option(
    "--prefix-caching/--no-prefix-caching",
    default=None,
    help="vLLM's --enable-prefix-caching / --no-enable-prefix-caching for hybrid models "
    "(mamba_cache_mode align holds whole state blocks); default: the version's own.",
)
@vllm_version_option
@serving_engine_option
@vllm_python_option
@click.option(
    "--mem-fraction-static",
    type=float,
    default=None,
    metavar="F",
    help="SGLang only: its --mem-fraction-static (default: SGLang's own default for "
    "the GPU size, an estimate).",
)
@json_option
def plan(
    model: str,
    chart: str | None,
    force: bool,
    serving_engine: str | None,
    vllm_python: str | None,
    as_json: bool,
    **given: Any,
) -> None:
    """KV-cache capacity of MODEL at a context, by vLLM's own arithmetic, and how long prefill
    and decode take there (estimates: floor at peak, typical band); exit 1 if it won't fit.

    MODEL is a directory, a cached ORG/NAME[@rev], or a Hub repo id (headers read remotely).

    \b
    Examples:
      qwenprep plan Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8 --context 1m --gpus 8 --gpu h200
      qwenprep plan ./overlay --tp 8 --kv-memory 61.31GiB
      qwenprep plan ./overlay --gpus 8 --gpu-memory 143771MiB --serving-engine sglang
    """
    from qwenprep.engines.base import PlanOptions
    from qwenprep.request import layout

    options = PlanOptions.of(given)  # plan's own options, as typed
    check_sizes(as_json, gpu_memory=given["gpu_memory"], kv_memory=given["kv_memory"])
    # every engine's plan: the maximum, with its why
    run(as_json, lambda: layout(options.tp, options.pp, options.gpus))
    engine = serving_engine_for(serving_engine, vllm_python, as_json)
    refusal = engine.plan_refusal(options)
    if refusal is not None:
        run(as_json, lambda: usage(refusal))
    if engine.charts and force and chart is None:
        run(as_json, lambda: usage("--force goes with --chart FILE."))
    if not engine.charts:
        chart = None  # an engine without time estimates draws no chart
    if chart is not None:
        from qwenprep.planning.chart import chart_target

        target: str = chart
        run(as_json, lambda: chart_target(target, force=force))
    p, notes = run(as_json, lambda: engine.kv_plan(model, options))
    for note in notes:
        echo(f"note: {note}", err=True)
    written = None
    if chart is not None:
        from qwenprep.planning.chart import write_chart

        written = run(as_json, lambda: write_chart(p, chart, force=force))
    if as_json:
        emit_json({**p.to_dict(), **({"chart": str(written)} if written else {})})
    else:
        _echo_plan(p)
        if written:
            echo(f"chart: {written}")
    sys.exit(0 if p.fits else EXIT_CHECKS_FAILED)


def _echo_plan(p: Any) -> None:
    """The plan for people: its numbers as a table, the context table, then the rest."""
    from qwenprep.cli.tables import render_plan
    from qwenprep.planning.timing import CONTEXT_COLUMNS

    rows, table, lines = p.summary_parts()
    echo(
        render_plan(
            rows,
            table,
            CONTEXT_COLUMNS,
            lines,
            "context table (* = above the config's max_position_embeddings: patch first)",
        )
    )


@cli.command(short_help="Every pre-flight check before a deploy, in one report.")
@click.argument("path")
@tp_option
@pp_option
@click.option(
    "--ep/--no-ep",
    default=None,
    help="Expert parallel (default: on for MoE models, as qwenprep serve does).",
)
@click.option(
    "--context",
    "-c",
    metavar="C",
    help="Intended context (default: the config's max_position_embeddings). 1m = "
    "1,048,576 here; vLLM's own --max-model-len reads 1m as 1,000,000.",
)
@click.option(
    "--engine/--no-engine",
    default=True,
    show_default=True,
    help="Judge the serve argv with the installed vLLM's own parser and config "
    "layer (a few seconds); --no-engine judges it offline.",
)
@with_options(gpu_options)
@click.option(
    "--gpu",
    "gpu_model",
    metavar="NAME",
    help="GPU model from the catalog (H200, H100 SXM, B200, MI300X, ...): sets the "
    "memory per GPU when --gpu-memory is not given, as plan --gpu does.",
)
@vllm_version_option
@vllm_python_option
@serving_engine_option
@report_options
@json_option
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def check(
    path: str,
    tp: int | None,
    pp: int,
    ep: bool | None,
    context: str | None,
    engine: bool,
    gpus: int | None,
    gpu_memory: str | None,
    kv_memory: str | None,
    kv_cache_dtype: str,
    block_size: int,
    gpu_model: str | None,
    vllm_version: str | None,
    vllm_python: str | None,
    serving_engine: str | None,
    strict: bool,
    failed_only: bool,
    as_json: bool,
    vllm_args: tuple[str, ...],
) -> None:
    """Every pre-flight check on PATH before a deploy; exit 0 all pass, 1 any fails.

    Flags after `--` go into the argv `qwenprep serve` would run, which the installed vLLM
    parses and reads back exactly as serve does (the same gate: serve refuses what fails).

    \b
    Examples:
      qwenprep check ./overlay --gpus 8 --gpu h200
      qwenprep check ./overlay --gpus 8 --gpu-memory 143771MiB --strict --json
      qwenprep check ./overlay --kv-memory 61.31GiB -- --max-num-seqs 4
    """
    from qwenprep.checks import scan as integrity_scan
    from qwenprep.ops.check import run_check
    from qwenprep.planning.catalog import gpu_memory_for

    locals_of_check = dict(locals())  # the command's options, as typed

    integrity_scan.FREEZE_AFTER_SCAN = True  # this process ends after the command

    check_sizes(as_json, gpu_memory=gpu_memory, kv_memory=kv_memory)
    _, gpu_memory, gpu_notes = run(
        as_json,
        lambda: gpu_memory_for(gpu_model, gpu_memory=gpu_memory, kv_memory=kv_memory, gpus=gpus),
    )
    for note in gpu_notes:
        echo(f"note: {note}", err=True)

    def go() -> Report:
        chosen = serving_engine_for(serving_engine, vllm_python, as_json)
        given = {**locals_of_check, "gpu_memory": gpu_memory, "python": vllm_python}
        return run_check(path, given, engine=chosen)

    report = run(as_json, go)
    report.strict = strict
    finish_report(
        report,
        as_json,
        _ready_text(report) if report.ok else "NOT ready: see the FAIL lines above",
        failed_only=failed_only,
    )


def _ready_text(report: Report) -> str:
    """'ready to serve', saying what was not checked: no GPUs at all, or GPUs only as --gpus
    and --gpu-memory described them (qwenprep.checks.preflight_items.gpu_checks)."""
    gpus = next((c for c in report.checks if c.id == "gpus.visible"), None)
    if gpus is None or gpus.status == "skip":
        return "ready to serve (no GPU checked: pass --gpu/--gpus)"
    if "as given by --gpus" in gpus.message:
        return "ready to serve (GPUs as --gpus/--gpu describe them; none were looked at here)"
    return "ready to serve"
