"""What every command shares: the click group, --json and error output, exit codes by
report, the options several commands take. Only qwenprep/cli/ imports click."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Callable, NoReturn

import click

from qwenprep._version import __version__
from qwenprep.cli.terminal import animated, colour_wanted
from qwenprep.engines import ENGINES
from qwenprep.errors import EXIT_CHECKS_FAILED, QwenprepError
from qwenprep.request import KV_CACHE_DTYPES
from qwenprep.util.report import SCHEMA_VERSION, Report, dumps, render_checks, summary_line

if TYPE_CHECKING:
    from qwenprep.engines.base import Engine


def echo(message: str = "", *, err: bool = False, nl: bool = True) -> None:
    """click.echo through the redactor (qwenprep.util.redact): every line qwenprep prints, except a
    bare path printed for a script to read (click.echo there, as for --json's "path")."""
    from qwenprep.util.redact import redact

    click.echo(redact(message), err=err, nl=nl)


def emit_json(obj: dict[str, Any]) -> None:
    """One JSON object on stdout, every string in it through the redactor (credential-named
    keys and argv lists included; the top-level "path", a path qwenprep made, as it is)."""
    from qwenprep.util.redact import redact_obj, secrets

    known = secrets()
    click.echo(dumps({k: v if k == "path" else redact_obj(v, known) for k, v in obj.items()}))


def fail(err: QwenprepError, as_json: bool) -> NoReturn:
    """Every error of every command ends here: credentials are scrubbed from message and hint
    (qwenprep.util.redact), in the JSON object and on stderr alike."""
    from qwenprep.util.redact import redact

    message = redact(err.message)
    hint = redact(err.hint) if err.hint is not None else None  # the JSON goes through emit_json
    if as_json:
        details = err.details() if hasattr(err, "details") else {}
        emit_json(
            {
                "schema_version": SCHEMA_VERSION,
                "ok": False,
                "error": {"message": message, "hint": hint, "exit_code": err.exit_code, **details},
            }
        )
    echo(f"error: {message}" + (f"\nHint: {hint}" if hint else ""), err=True)
    sys.exit(err.exit_code)


def run(as_json: bool, fn: Callable[[], Any]) -> Any:
    """Run one core call; turn QwenprepError into its message and exit code."""
    try:
        return fn()
    except QwenprepError as err:
        fail(err, as_json)


def _paint() -> Callable[[str, Any], str] | None:
    """Colour for the status marks: only when stdout is a terminal and colour_wanted()."""
    if not colour_wanted() or not sys.stdout.isatty():
        return None
    colours = {"pass": "green", "fail": "red", "warn": "yellow", "skip": "cyan"}
    return lambda text, status: click.style(
        text, fg=colours[status], bold=True if status == "fail" else None
    )


def finish_report(
    report: Report, as_json: bool, summary: str | None = None, *, failed_only: bool = False
) -> NoReturn:
    """Print a report (JSON on stdout, or a table on stdout: failures first, then a summary
    line) and exit 0/1 by its checks (--strict: set report.strict first)."""
    if as_json:
        emit_json(report.to_dict())
    else:
        echo(
            render_checks(
                report.checks, failed_only=failed_only, paint=_paint(), strict=report.strict
            )
        )
        echo(summary_line(report.checks, strict=report.strict))
        if summary:
            echo(summary)
    sys.exit(0 if report.ok else EXIT_CHECKS_FAILED)


def report_options(f: Any) -> Any:
    f = click.option(
        "--failed-only",
        is_flag=True,
        help="List only the failed checks (the summary line still counts all).",
    )(f)
    return click.option(
        "--strict",
        is_flag=True,
        help="Skipped checks fail too (exit 1): for pipelines that must not pass blind.",
    )(f)


vllm_python_option = click.option(
    "--engine-python",
    "--vllm-python",
    "vllm_python",
    envvar="QWENPREP_VLLM_PYTHON",
    default=None,
    help="Interpreter that has the serving engine (vLLM or SGLang; default: this "
    "one). --vllm-python is the old name. Env: QWENPREP_VLLM_PYTHON.",
)
serving_engine_option = click.option(
    "--serving-engine",
    type=click.Choice(list(ENGINES), case_sensitive=False),
    default=None,
    help="vllm or sglang (default: $QWENPREP_SERVING_ENGINE, else what "
    "--engine-python has: SGLang when it has SGLang and no vLLM, else vLLM).",
)


def serving_engine_for(name: str | None, python: str | None, as_json: bool) -> Engine:
    """The engine --serving-engine NAME (or what the interpreter PYTHON has) chooses."""
    from qwenprep.engines import select

    chosen: Engine = run(as_json, lambda: select(name, python))
    return chosen


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout; logs go to stderr."
)


class _WorkflowOrder(click.Group):
    """Lists commands in the order of the job, not alphabetically."""

    ORDER = (
        "fetch",
        "verify",
        "patch",
        "validate",
        "plan",
        "check",
        "serve",
        "list",
        "revert",
        "demo",
    )

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
    Sizes need a unit: 143771MiB or 80GiB (binary, as nvidia-smi counts),
    80GB (decimal) or 1024B; 141 or 8g are refused as ambiguous.

    \b
    Examples:
      qwenprep fetch Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8
      qwenprep patch Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8 --context 1m
      qwenprep check OVERLAY --gpus 8 --gpu h200

    \b
    Shell completion (in ~/.bashrc; zsh_source / fish_source likewise):
      eval "$(_QWENPREP_COMPLETE=bash_source qwenprep)"
    """
    if animated(sys.stderr):  # a status line on stderr while vLLM answers
        from qwenprep.cli.tables import install_probe_status

        install_probe_status()


def vllm_version_value(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--vllm-version as given, once it reads as X.Y or X.Y.Z (an empty value or a bare "0"
    is a usage error, not "not given" or 0.0.0)."""
    if value is None:
        return None
    from qwenprep.errors import UsageError
    from qwenprep.planning.capacity import named_version

    try:
        named_version(value)
    except UsageError as e:
        raise click.BadParameter(e.message) from None
    return value


vllm_version_option = click.option(
    "--vllm-version",
    metavar="X.Y",
    callback=vllm_version_value,
    help="Use this vLLM version's arithmetic (default: the installed vLLM, else the newest known).",
)
tp_option = click.option(
    "--tp",
    type=click.IntRange(min=1),
    default=None,
    help="Tensor-parallel size (default: plan: the GPU count; check: the "
    "model profile's, as qwenprep serve).",
)
pp_option = click.option(
    "--pp",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Pipeline-parallel size (stages across nodes).",
)
gpu_options = [
    click.option("--gpus", type=click.IntRange(min=1), help="GPUs in total (with --gpu-memory)."),
    click.option(
        "--gpu-memory",
        metavar="SIZE",
        help="Memory of one GPU, with its unit, as nvidia-smi prints it: 143771MiB (binary; "
        "GB is decimal), or 1024B. A bare number or 8g is refused. --gpu NAME sets it.",
    ),
    click.option(
        "--kv-memory",
        metavar="SIZE",
        help="KV cache memory per GPU, exact (what vLLM logs as 'Available KV cache "
        "memory', or its --kv-cache-memory-bytes), with its unit: 61.31GiB.",
    ),
    click.option(
        "--kv-cache-dtype",
        type=click.Choice(KV_CACHE_DTYPES),
        default="auto",
        show_default=True,
        help="auto = the model dtype (bf16); fp8 = 1 byte.",
    ),
    click.option(
        "--block-size",
        type=click.IntRange(min=1),
        default=16,
        show_default=True,
        help="KV block size in tokens (16 on CUDA; vLLM's CPU backend uses 128).",
    ),
]


def with_options(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def deco(f: Any) -> Any:
        for opt in reversed(options):
            f = opt(f)
        return f

    return deco


def usage(message: str) -> None:
    from qwenprep.errors import UsageError

    raise UsageError(message)


def check_sizes(as_json: bool, **sizes: str | None) -> None:
    """--gpu-memory / --kv-memory never guess: a bare number or 8g is refused (exit 2)."""
    from qwenprep.request import size_bytes

    def check_all() -> None:
        for name, value in sizes.items():
            size_bytes(value, "--" + name.replace("_", "-"))

    run(as_json, check_all)
