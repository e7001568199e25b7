"""The one path to a serve plan, for both engines and for both the command line and the API:
`qwenprep serve` (dry run or not, --emit included) and `qwenprep.api.serve_plan` call this."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qwenprep.engines.base import Engine
    from qwenprep.engines.served import ServedPlan
    from qwenprep.request import ServeRequest


def serve_plan(
    path: str | Path, req: ServeRequest, *, engine: Engine, python: str | None, dry_run: bool
) -> ServedPlan[Any, Any]:
    """The launch plan for PATH as ENGINE runs it, through that engine's gate (a refusal
    raises ArgsRefused). DRY_RUN: planned even when the engine is not importable here."""
    return engine.serve_plan(path, req, python=python, dry_run=dry_run)
