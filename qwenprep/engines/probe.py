"""Asking an engine a question: run one of qwenprep's probe scripts (``vllm_probe.py`` for
vLLM, ``sglang_probe.py`` for SGLang) in the interpreter that has the engine, and read its one
answer, the last stdout line that starts with the marker, as a JSON object.

The probe scripts run by path, so qwenprep need not be installed beside the engine; every
failure (no interpreter, a timeout, a crash, an answer that is not the probe's JSON) is a
QwenprepError that names the interpreter and the question.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenprep.errors import InputError, QwenprepError

MARKER = "QWENPREP_PROBE "
ENV_PYTHON = "QWENPREP_VLLM_PYTHON"  # the engine interpreter (the name predates SGLang)
PROBES = Path(__file__).resolve().parents[1] / "_probes"  # the probe scripts, run by path


class EngineError(QwenprepError):
    """An engine could not be asked, started or watched."""


@dataclass(frozen=True)
class ProbeScript:
    """One engine's probe: the script, the engine's name in messages, how a user names another
    interpreter, and the environment the script runs with unless the caller set it."""

    path: Path
    engine: str
    python_option: str
    python_env: str
    env_defaults: Mapping[str, str]


def bundled(script: str, engine: str, python_option: str, **env: str) -> ProbeScript:
    """The probe SCRIPT of qwenprep/_probes/ for ENGINE; its interpreter is named with
    PYTHON_OPTION or $QWENPREP_VLLM_PYTHON (either engine's). It runs with the tokenizers'
    thread pool off and ENV, unless the caller set them."""
    defaults = {"TOKENIZERS_PARALLELISM": "false", **env}
    return ProbeScript(PROBES / script, engine, python_option, ENV_PYTHON, defaults)


def engine_python(python: str | None = None) -> str:
    """The interpreter to ask: the one named, else $QWENPREP_VLLM_PYTHON, else this one."""
    return python or os.environ.get(ENV_PYTHON) or sys.executable


# Entered around every probe with (engine, python, question): how qwenprep/cli shows a status
# line while the engine answers (the core never prints). None: nothing happens.
StatusHook = Callable[[str, str, str], AbstractContextManager[Any]]
_status_hook: StatusHook | None = None


def status_hook() -> StatusHook | None:
    return _status_hook


def set_status_hook(hook: StatusHook | None) -> StatusHook | None:
    """Install HOOK (None: none); the one it replaces is returned, to put back."""
    global _status_hook
    old, _status_hook = _status_hook, hook
    return old


def run(
    probe: ProbeScript,
    python: str,
    args: Sequence[str],
    timeout: float,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """PROBE's script with ARGS in PYTHON; its one JSON answer."""
    env = dict(os.environ if env is None else env)
    for k, v in probe.env_defaults.items():
        env.setdefault(k, v)
    hook = _status_hook
    try:
        with hook(probe.engine, python, args[0]) if hook is not None else nullcontext():
            proc = subprocess.run(
                [python, str(probe.path), *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                stdin=subprocess.DEVNULL,
            )
    except FileNotFoundError:
        raise InputError(
            f"{python}: no such interpreter.",
            hint=f"pass {probe.python_option} /path/to/venv/bin/python (the "
            f"environment that has {probe.engine}) or set "
            f"{probe.python_env}.",
        ) from None
    except PermissionError:
        raise InputError(f"{python}: not executable.") from None
    except subprocess.TimeoutExpired:
        raise EngineError(
            f"{python}: asking {probe.engine} ({args[0]}) took more than {timeout:g} s."
        ) from None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            try:
                result = json.loads(line[len(MARKER) :])
            except ValueError:
                result = None
            if not isinstance(result, dict):
                shown = line[len(MARKER) :][:120]
                raise EngineError(
                    f"{python}: the {probe.engine} probe ({args[0]}) answered something that "
                    f"is not qwenprep's probe JSON: {shown!r}",
                    hint=f"point {probe.python_option} (or {probe.python_env}) at the python of "
                    f"the environment that has {probe.engine} installed, not a wrapper that "
                    "prints its own output.",
                )
            return result
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise EngineError(
        f"{python}: the {probe.engine} probe ({args[0]}) failed with exit {proc.returncode}: {tail}"
    )
