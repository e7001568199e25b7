"""`qwenprep check`'s one path, for the command line and the API: the options as typed, the
serving engine's gate and KV checks where they are not vLLM's, every pre-flight check on the
checkpoint in one report (qwenprep.checks.preflight)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qwenprep.engines.base import Engine
    from qwenprep.util.report import Report


def run_check(path: str, given: Mapping[str, Any], *, engine: Engine) -> Report:
    """Every pre-flight check on PATH (a directory or ORG/NAME[@rev]) for ENGINE. GIVEN: the
    caller's keyword arguments; those check_options takes are its options (sizes, context
    and the rest read by one rule each, UsageError when wrong)."""
    from qwenprep.checks.preflight import check_options, run_checks
    from qwenprep.model.checkpoint import resolve_model

    names = inspect.signature(check_options).parameters
    opts = check_options(**{k: v for k, v in given.items() if k in names})
    hooks = engine.check_hooks()
    if hooks is not None:
        opts = replace(opts, serving_engine=engine.name)
    ckpt = resolve_model(path)
    return run_checks(ckpt.path, opts, repo_id=ckpt.repo_id, hooks=hooks)
