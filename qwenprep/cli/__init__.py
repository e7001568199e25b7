"""The command line: the only package that imports click, prints or exits. The group and
what commands share are in _common; the commands, by stage of the job, in prepare, files,
planning and serving (importing them registers them on the group)."""

from __future__ import annotations

import sys

import click

from qwenprep.cli import files, planning, prepare, serving  # noqa: F401 - registers commands
from qwenprep.cli._common import (
    cli,
    emit_json,
)
from qwenprep.errors import EXIT_INTERRUPTED
from qwenprep.util.report import SCHEMA_VERSION

__all__ = ["cli", "main"]


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
            emit_json(
                {
                    "schema_version": SCHEMA_VERSION,
                    "ok": False,
                    "error": {
                        "message": e.format_message(),
                        "hint": None,
                        "exit_code": e.exit_code,
                    },
                }
            )
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # Ctrl-C: 130 as shells report it, never 1 (which means "checks failed")
        if _wants_json(sys.argv[1:]):
            emit_json(
                {
                    "schema_version": SCHEMA_VERSION,
                    "ok": False,
                    "error": {
                        "message": "interrupted",
                        "hint": None,
                        "exit_code": EXIT_INTERRUPTED,
                    },
                }
            )
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(rv if isinstance(rv, int) else 0)
