"""The command line. The only module that imports click, prints or exits."""

from __future__ import annotations

import sys
from typing import Any, Callable, NoReturn

import click

from qwenprep import __version__
from qwenprep.errors import EXIT_CHECKS_FAILED, QwenprepError
from qwenprep.report import SCHEMA_VERSION, Check, Report, dumps, render_checks


def _emit_json(obj: dict[str, Any]) -> None:
    click.echo(dumps(obj))


def _fail(err: QwenprepError, as_json: bool) -> NoReturn:
    if as_json:
        _emit_json(
            {
                "schema_version": SCHEMA_VERSION,
                "ok": False,
                "error": {"message": err.message, "hint": err.hint, "exit_code": err.exit_code},
            }
        )
    click.echo(f"error: {err}", err=True)
    sys.exit(err.exit_code)


def run(as_json: bool, fn: Callable[[], Any]) -> Any:
    """Run one core call; turn QwenprepError into its message and exit code."""
    try:
        return fn()
    except QwenprepError as err:
        _fail(err, as_json)


def finish_report(report: Report, as_json: bool, summary: str | None = None) -> NoReturn:
    """Print a report (JSON on stdout, or a table on stdout) and exit 0/1 by its checks."""
    if as_json:
        _emit_json(report.to_dict())
    else:
        click.echo(render_checks(report.checks))
        if summary:
            click.echo(summary)
    sys.exit(0 if report.ok else EXIT_CHECKS_FAILED)


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout; logs go to stderr."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qwenprep")
def cli() -> None:
    """Prepare Qwen3-Coder checkpoints for long-context serving with vLLM.

    Patches config.json into an overlay directory (the original is never touched),
    validates it, plans KV-cache capacity, and launches vLLM from the prepared path.

    Exit codes: 0 ok, 1 checks failed, 2 bad invocation, 3 cannot proceed.
    """


# --- foundation commands (patch, validate, revert, demo) ---

# --- locate/fetch/verify commands ---

# --- plan/check commands ---

# --- engine/serve commands ---


def main() -> None:
    cli(prog_name="qwenprep")
