"""SGLang as the second serving engine: discovery, what each release does, the launch plan
(``python -m sglang.launch_server ...``). The watched server is engines/sglang/server.py.

Nothing here imports sglang: questions go to ``qwenprep/_probes/sglang_probe.py``, run by path with
the interpreter that has SGLang (as ``vllm_probe.py`` does for vLLM). The facts below were
read in SGLang 0.5.23's source (site-packages/sglang, file named at each use) and seen through
its ModelConfig and server-argument parser on a CPU machine; no other release is claimed.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from qwenprep.engines import probe
from qwenprep.engines.found import EngineFound, Version, parse_version
from qwenprep.engines.served import Launch, ServedPlan
from qwenprep.errors import InputError, UsageError
from qwenprep.request import MultiNode

if TYPE_CHECKING:
    from qwenprep.model.manifest import Manifest

# The running server (SglangServer, start) is engines/sglang/server.py.
__all__ = [
    "CONTEXT_LENGTH_KEYS",
    "DEFAULT_PORT",
    "ENTRY",
    "KNOWN_RELEASES",
    "LIFTING_ENV",
    "PROBE",
    "SGLANG_PROBE",
    "TOOL_PARSERS",
    "Version",
    "SglangCapabilities",
    "SglangInfo",
    "SglangNode",
    "SglangPlan",
    "build_plan",
    "capabilities_for",
    "derived_context_length",
    "discover",
    "engines_in",
    "require",
    "run_probe",
]

SGLANG_PROBE = probe.bundled(
    "sglang_probe.py", "SGLang", "--engine-python", PYTHONWARNINGS="ignore"
)
PROBE = SGLANG_PROBE.path
DEFAULT_PORT = 30000  # sglang/srt/arg_groups/fields: port default (seen: parsed 30000)
# Both lift SGLang's length check (ModelConfig._derive_context_length, 0.5.23:
# `envs.SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN.get() or is_in_ci()`) and then serve past
# the derived length with the config's RoPE unchanged: never emitted, always unset.
LIFTING_ENV = ("SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN", "SGLANG_IS_IN_CI")
KNOWN_RELEASES = ((0, 5, 23),)
# the vLLM tool parser names of the model profiles -> SGLang 0.5.23's (--tool-call-parser
# choices, server_args.py _tool_call_parser_choices; seen: qwen3_coder, qwen25, qwen)
TOOL_PARSERS = {"qwen3_coder": "qwen3_coder", "qwen3_xml": "qwen3_coder", "hermes": "qwen25"}


@dataclass(frozen=True)
class SglangCapabilities:
    """What one SGLang release does with long contexts (0.5.23, read and seen)."""

    context_from_max_position_embeddings: bool  # get_context_length: mpe, factor not applied
    override_top_level_only: bool  # --json-model-override-args: top-level keys (get_config)
    nested_dict_replaces: bool  # {"text_config": {...}} -> PretrainedConfig.update: replaces
    server_info_endpoint: str  # /server_info (max_req_input_len, max_total_num_tokens)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def capabilities_for(version: Version) -> SglangCapabilities:
    del version  # one release is known; newer ones are assumed to behave like it (noted)
    return SglangCapabilities(True, True, True, "/server_info")


@dataclass(frozen=True)
class SglangInfo(EngineFound):  # distribution: "sglang"
    capabilities: SglangCapabilities

    @property
    def known(self) -> bool:
        return self.version_tuple in KNOWN_RELEASES

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["serving_engine"] = "sglang"
        return d


def run_probe(
    python: str, args: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """sglang_probe.py ARGS in PYTHON; its one JSON answer (qwenprep.engines.probe)."""
    return probe.run(SGLANG_PROBE, python, args, timeout, env)


@functools.lru_cache(maxsize=8)
def _discover_cached(python: str) -> dict[str, Any]:
    return run_probe(python, ["discover"], timeout=60)


def engines_in(python: str | None = None) -> dict[str, Any]:
    """Which engines the interpreter has (distribution metadata only, no import)."""
    return _discover_cached(probe.engine_python(python))


def discover(python: str | None = None) -> SglangInfo | None:
    data = engines_in(python)
    version = (data.get("distributions") or {}).get("sglang")
    if not version:
        return None
    return SglangInfo(
        python=str(data.get("python") or probe.engine_python(python)),
        version=version,
        distribution="sglang",
        importable=bool(data.get("sglang_importable")),
        transformers=data.get("transformers"),
        torch=data.get("torch"),
        capabilities=capabilities_for(parse_version(version)),
    )


def require(python: str | None = None) -> SglangInfo:
    info = discover(python)
    if info is None or not info.importable:
        raise InputError(
            f"{probe.engine_python(python)}: SGLang is not installed in this interpreter.",
            hint="install it there (pip install sglang==0.5.23), or name the "
            "interpreter that has it: --engine-python /path/to/venv/bin/python",
        )
    return info


# ------------------------------------------------------------------ config rules
CONTEXT_LENGTH_KEYS = (
    "max_sequence_length",
    "seq_length",
    "max_seq_len",
    "model_max_length",
    "max_position_embeddings",
)


def derived_context_length(config: dict[str, Any]) -> int:
    """SGLang 0.5.23's get_context_length (srt/utils/hf_transformers/common.py) on the text
    config: the first of CONTEXT_LENGTH_KEYS; a rope dict's factor multiplies it only when
    the dict has no original_max_position_embeddings and is not llama3. So a YaRN block
    with max_position_embeddings left at native derives the native length."""
    from qwenprep.model.view import ModelView

    text = ModelView(config).text
    rope = text.get("rope_scaling") or text.get("rope_parameters")
    factor = 1.0
    if isinstance(rope, dict) and rope:
        f = rope.get("factor", 1)
        factor = float(f) if isinstance(f, (int, float)) and not isinstance(f, bool) else 1.0
        if "original_max_position_embeddings" in rope or rope.get("rope_type") == "llama3":
            factor = 1.0
    for key in CONTEXT_LENGTH_KEYS:
        v = text.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return int(factor * v)
    return 2048


# ------------------------------------------------------------------ launch plan
@dataclass(frozen=True)
class SglangNode:
    node_rank: int
    role: str
    argv: tuple[str, ...]
    guard: tuple[str, ...] = ()

    def shell(self) -> str:
        import shlex

        steps = [shlex.join(self.guard)] if self.guard else []
        return " && ".join([*steps, "exec " + shlex.join(self.argv)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_rank": self.node_rank,
            "role": self.role,
            "argv": list(self.argv),
            "pre": [],
            "guard": list(self.guard),
            "shell": self.shell(),
        }


@dataclass(frozen=True)
class SglangPlan(ServedPlan[SglangInfo, SglangNode]):
    serving_engine: str = "sglang"
    DEFAULT_PORT: ClassVar[int] = DEFAULT_PORT

    def to_dict(self) -> dict[str, Any]:
        return {"serving_engine": "sglang", **self.plan_dict()}


ENTRY = ("-m", "sglang.launch_server")


def build_plan(
    path: Path,
    *,
    engine: SglangInfo | None,
    tp: int | None = None,
    ep: bool | None = None,
    max_model_len: int | None = None,
    host: str | None = None,
    port: int | None = None,
    served_model_name: str | None = None,
    extra_args: Sequence[str] = (),
    repo_id: str | None = None,
    expect_digest: str | None = None,
    nnodes: int | None = None,
    gpus_per_node: int | None = None,
    master_addr: str | None = None,
    environ: dict[str, str] | None = None,
    for_check: bool = False,
    gpus_here: int | None = None,
) -> SglangPlan:
    """The `python -m sglang.launch_server` argv for the overlay and its model profile.
    Refuses (exit 3) what vLLM's plan refuses (configs that compute the wrong thing, a TP/EP
    layout the weights cannot be split into) and a --context-length above what SGLang derives
    from the config. The arguments after -- are judged by qwenprep.engines.sglang.gate.
    GPUS_HERE: the GPUs found on this node, which choose TP where nothing else does
    (qwenprep.engines.parallel.serve_layout)."""
    from qwenprep.engines.vllm import core as vllm_core
    from qwenprep.engines.vllm import engine as eng
    from qwenprep.engines.vllm.launch import validation_gate
    from qwenprep.model.profile import model_profile

    path = Path(path)
    config = vllm_core.read_config(path)
    manifest = vllm_core.manifest_of(path)
    digest = manifest.digest if manifest else None
    if expect_digest is not None and digest != expect_digest:
        raise InputError(
            f"{path}: overlay digest is {digest}, expected {expect_digest}: this "
            "node would serve a different overlay than the others.",
            hint="re-create the overlay with the same qwenprep patch command on "
            "this node (or share one overlay path).",
        )
    version = engine.version if engine else ".".join(map(str, KNOWN_RELEASES[-1]))
    notes: list[str] = []
    if not for_check:
        validation_gate(path, config, manifest, max_model_len, notes)
    if engine is None:
        notes.append(f"SGLang not found; this plan assumes SGLang {version} behaviour")
    elif not engine.known:
        notes.append(
            f"SGLang {version}: qwenprep's SGLang rules were read from 0.5.23 only; "
            "they are assumed here"
        )
    profile = model_profile(path, config, manifest, repo_id)
    allowed = derived_context_length(config)
    if max_model_len is None:
        max_model_len = int(manifest.target_context) if manifest else allowed  # type: ignore[arg-type]
    if max_model_len <= 0:
        raise UsageError(f"--max-model-len {max_model_len} is not a positive token count.")
    env_in = os.environ if environ is None else environ
    lifting = [k for k in LIFTING_ENV if k in env_in]
    if max_model_len > allowed:
        from qwenprep.model.view import ModelView

        set_here = (
            f" {', '.join(lifting)} is set in this environment; qwenprep removes it from SGLang's."
            if lifting
            else ""
        )
        raise InputError(
            f"{path / 'config.json'}: --context-length {max_model_len} is above the {allowed} "
            f"tokens SGLang {version} derives from this config (max_position_embeddings "
            f"{ModelView(config).max_position_embeddings}; SGLang's length is max_position_"
            "embeddings, a YaRN factor does not raise it); SGLang would refuse it, and "
            "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1 would run past it with the RoPE left "
            f"as it is (wrong output).{set_here}",
            hint=eng.patch_hint(path, manifest, max_model_len),
            path=str(path / "config.json"),
        )
    from qwenprep.engines.parallel import serve_layout

    tp_n, use_ep = serve_layout(
        config,
        profile,
        tp=tp,
        ep=ep,
        pp=1,
        gpus=nnodes * gpus_per_node if nnodes and gpus_per_node else gpus_here,
        notes=notes,
    )
    if not for_check:
        eng._parallel_gate(path, config, tp_n, use_ep, profile, notes)
    name = served_model_name or profile.served_model_name
    python = engine.python if engine else "python3"
    model = str(path if path.is_absolute() else path.absolute())
    core = ["--model-path", model, "--tp-size", str(tp_n)]
    if use_ep and tp_n > 1:  # sglang fields/parallel.py: --ep-size (moe_ep_size); EP over TP
        core += ["--ep-size", str(tp_n)]
    parser = TOOL_PARSERS.get(profile.tool_parser or "", profile.tool_parser)
    if parser:
        core += ["--tool-call-parser", parser]
    reasoning = _reasoning_parser(path, config, manifest, repo_id)
    if reasoning:
        core += ["--reasoning-parser", reasoning]
    core += [f"--served-model-name={name}", "--context-length", str(max_model_len)]
    ask = MultiNode(nnodes, gpus_per_node, master_addr)
    launch = Launch(path, python, tuple(core), tp_n, digest, host, port, tuple(extra_args), ask)
    argv = (python, *ENTRY, *core, *launch.net, *extra_args)
    if lifting:
        notes.append(
            f"{', '.join(lifting)} is removed from SGLang's environment: it lifts "
            "SGLang's length check and would hide a config whose RoPE does not reach "
            "the served length"
        )
    return SglangPlan.launched(
        launch,
        argv,
        multinode=_multinode(launch, notes),
        env={},
        unset_env=lifting,
        max_model_len=max_model_len,
        max_len_allowed=allowed,
        served_model_name=name,
        profile=profile.name,
        engine=engine,
        notes=notes,
    )


def _reasoning_parser(
    path: Path, config: dict[str, Any], manifest: Manifest | None, repo_id: str | None
) -> str | None:
    """The family's reasoning parser, where it names one (qwenprep.model.families ServeProfile)."""
    from qwenprep.model.families import lookup
    from qwenprep.model.profile import name_candidates
    from qwenprep.model.view import ModelView

    view = ModelView(config)
    family = lookup(view.model_type) or lookup(view.text_model_type)
    if family is None:
        return None
    p = family.profile_for(view, name_candidates(path, manifest, repo_id))
    return getattr(p, "reasoning_parser", None)


def _multinode(launch: Launch, notes: list[str]) -> tuple[str | None, tuple[SglangNode, ...]]:
    """SGLang's multi-node launch (fields/parallel.py: --nnodes, --node-rank,
    --dist-init-addr HOST:PORT): the same command on every node, one TP group over all GPUs."""
    span = launch.span(strict=False)
    if span is None:
        return None, ()
    n, gpn = span
    tp = launch.tp
    if tp != n * gpn:
        raise UsageError(
            f"SGLang's multi-node launch runs one TP group over all GPUs: TP {tp} "
            f"must equal {n} nodes x {gpn} GPUs.",
            hint=f"pass --tp {n * gpn}, or add SGLang's --dp-size after --.",
        )
    guard = launch.guard(notes, "--serving-engine", "sglang")
    init = f"{launch.multinode.master_addr or 'HEAD_NODE_IP'}:5000"
    out = []
    for r in range(n):
        argv = [
            launch.python,
            *ENTRY,
            *launch.core,
            *(launch.net if r == 0 else []),
            "--nnodes",
            str(n),
            "--node-rank",
            str(r),
            "--dist-init-addr",
            init,
            *launch.extra,
        ]
        out.append(SglangNode(r, "head" if r == 0 else "worker", tuple(argv), guard))
    return "sglang", tuple(out)
