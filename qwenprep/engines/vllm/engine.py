"""The engine side: find vLLM, read a checkpoint back through vLLM's own config layer, and
build the launch command for the installed version (its parts: qwenprep.engines.vllm.launch;
the running server: qwenprep.engines.vllm.server).

Nothing here imports vllm, torch or transformers: every question for vLLM is asked in a
subprocess of the interpreter that has it (``vllm_probe.py``, run by path, so qwenprep
does not have to be installed there).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenprep.engines.probe import ENV_PYTHON, engine_python
from qwenprep.engines.served import Launch
from qwenprep.engines.vllm.core import (
    FLAG_CAPABILITY,
    KNOWN_RANGE,
    NEWEST_KNOWN,
    NEWEST_KNOWN_MINOR,
    PATCH_HINT,
    EngineInfo,
    Version,
    capabilities_for,
    discover,
    flag_refusal,
    manifest_of,
    max_len_allowed,
    read_config,
    run_probe,
)
from qwenprep.engines.vllm.launch import (
    TRUST_REMOTE_CODE,
    WORKER_ENTRY,
    LaunchPlan,
    context_name,
    flag_name,
    flag_warnings,
    multinode_nodes,
    node_entry,
    node_gpu_note,
    patch_source,
    pp_size,
    validation_gate,
)
from qwenprep.errors import InputError, UsageError
from qwenprep.model.checkpoint import CONFIG
from qwenprep.model.contexts import effective_rope
from qwenprep.model.profile import Profile, model_profile
from qwenprep.request import ServeRequest
from qwenprep.util.report import Check

if TYPE_CHECKING:
    from qwenprep.model.manifest import Manifest
    from qwenprep.planning.gpus import Inventory


# The readback and the launch plan live here; the version, capability and probe names are
# qwenprep.engines.vllm.core's, the launch plan's parts qwenprep.engines.vllm.launch's.
__all__ = [
    "build_launch_plan",
    "patch_hint",
    "readback_checks",
]


def patch_hint(path: Path, manifest: Manifest | None, tokens: int) -> str:
    """The command that makes a checkpoint for TOKENS of context from what PATH came from."""
    return PATCH_HINT.format(model=patch_source(path, manifest), context=context_name(tokens))


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
        return [
            Check(
                "engine.readback",
                "skip",
                f"vLLM is not installed in {py}; the engine readback did not run "
                f"(--vllm-python or {ENV_PYTHON} names another interpreter).",
            )
        ]
    from qwenprep.engines.vllm.gate import compare, intent_of

    config = read_config(path)
    manifest = manifest_of(path)
    where = str(path / CONFIG)
    want_len = (
        int(manifest.target_context)  # type: ignore[arg-type]  # the schema requires it
        if manifest is not None
        else max_len_allowed(config, info.capabilities)
    )
    want = intent_of(config, manifest, want_len)

    got = run_probe(info.python, ["readback", str(path), str(want_len)], timeout=300)
    head = Check(
        "engine.found",
        "pass",
        f"vLLM {info.version} ({info.distribution}) with transformers "
        f"{got.get('transformers') or info.transformers} in {info.python}",
    )
    if not got.get("ok"):
        msg = str(got.get("error", "unknown error"))
        hint = ""
        if "greater than the derived max_model_len" in msg:
            hint = " Hint: " + patch_hint(path, manifest, want_len)
        return [
            head,
            Check(
                "engine.load",
                "fail",
                f"vLLM refuses {path} at max_model_len {want_len}: {msg}{hint}",
                where,
            ),
        ]

    checks = [head]
    auto_map = config.get("auto_map")
    if auto_map:
        shown = (
            ", ".join(f"{k} -> {v}" for k, v in sorted(auto_map.items())[:4])
            if isinstance(auto_map, dict)
            else repr(auto_map)[:120]
        )
        loaded = got.get("config_class") or "vLLM's built-in config class"
        checks.append(
            Check(
                "engine.remote_code",
                "warn",
                f"config.json asks for custom code (auto_map: {shown}); none of it ran: the "
                f"readback used trust_remote_code=False and loaded {loaded}. qwenprep never "
                "passes --trust-remote-code to vLLM unless you add it after --",
                where,
            )
        )
    return checks + compare(got, want, where)


# ------------------------------------------------------------------ launch plan
def _check_extra_args(
    extra: Sequence[str], vtuple: Version, version: str, *, installed: bool
) -> None:
    """The flags VERSION no longer (or does not yet) have, by capabilities_for: a usage
    error naming why, in any spelling vLLM reads. Everything else about the arguments after
    -- is the gate's (qwenprep.engines.vllm.gate: vLLM's own parser, or the offline reading)."""
    for arg in extra:
        name = flag_name(arg)
        why = flag_refusal(name, vtuple)
        if why is not None:
            which = "installed" if installed else "assumed: no vLLM found"
            rope = FLAG_CAPABILITY[name][0] == "rope_cli_flags"
            raise UsageError(
                f"{name} was {why}; vLLM {version} ({which}) would stop with 'unrecognized "
                "arguments'.",
                hint="put the rope settings into config.json instead: qwenprep patch MODEL "
                "--context 1m --out DIR"
                if rope
                else "drop it, or serve with a vLLM that has "
                "it; qwenprep check PATH --vllm-version X.Y -- FLAGS lists every flag a version "
                "would reject",
            )


def _parallel_gate(
    path: Path, config: dict[str, Any], tp: int, ep: bool, profile: Profile, notes: list[str]
) -> None:
    """Refuse (exit 3) the TP/EP layout vLLM asserts against while building the model
    (qwenprep.engines.parallel.parallel_checks: heads, experts, FP8 blocks); warnings become
    notes."""
    from qwenprep.engines.parallel import parallel_checks
    from qwenprep.engines.vllm.kv import ModelShape

    checks = parallel_checks(ModelShape.from_config(config), tp=tp, ep=ep)
    notes.extend(f"{c.id}: {c.message}" for c in checks if c.status == "warn")
    fails = [c for c in checks if c.status == "fail"]
    if not fails:
        return
    if not ep and any(c.id == "parallel.fp8_block" for c in fails):
        fix = (
            "drop --no-ep (serve uses expert parallel for this model)" if profile.ep else "add --ep"
        )
        fix += ", or choose another --tp"
    else:
        fix = "choose another --tp"
    raise InputError(
        f"TP {tp}{'' if ep else ' without expert parallel'}: vLLM would fail while loading the "
        "model: " + "; ".join(f"[{c.id}] {c.message}" for c in fails),
        hint=f"{fix}; qwenprep check {path} --tp N shows what fits.",
        path=str(path / CONFIG),
    )


def _user_tools(extra_args: Sequence[str]) -> bool:
    """Do the arguments after -- set vLLM's tool-call options themselves (any spelling, a
    --config YAML included)? Then they are the user's: the profile's pair is left out, so the
    user's values win and no flag is given twice. An argv the offline reading cannot parse
    is read option by option (an option of a newer vLLM; the gate says what else is wrong)."""
    from qwenprep.engines.vllm.offline import offline_dests

    tools = ("enable_auto_tool_choice", "tool_call_parser")
    try:
        return any(d in offline_dests(list(extra_args)) for d in tools)
    except (ValueError, OSError):
        names = [a.split("=")[0][2:].replace("-", "_") for a in extra_args if a.startswith("--")]
        return any(len(n) > 3 and d.startswith(n) for n in names for d in tools)


def profile_flags(profile: Profile, extra: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
    """The profile's launch flags that go into the argv, and one warning for each of its
    on/off flags (--X) that the user turns off after -- (--no-X, in any spelling vLLM's parser
    reads: `_` for `-`, a unique prefix, a --config YAML's `X: false`). The user's choice is
    honoured - what follows -- is the deployer's, and these flags change nothing the gate
    proves (RoPE, length) - but never silently: the warning names the profile and why it sets
    the flag, and the profile's --X is left out so that the argv (and --emit-config's YAML)
    says one thing. vLLM's parser gives every boolean option its --no- form
    (argparse.BooleanOptionalAction, vllm/engine/arg_utils.py EngineArgs.add_cli_args, 0.32)."""
    from qwenprep.engines.vllm.offline import offline_dests

    try:
        dests = offline_dests(list(extra))
    except (ValueError, OSError):  # an option of a newer vLLM: read the names one by one
        dests = {flag_name(a)[5:].replace("-", "_"): False for a in extra if a.startswith("--no")}
    kept: list[str] = []
    warnings: list[str] = []
    flags = list(profile.flags)
    for i, flag in enumerate(flags):
        takes_value = i + 1 < len(flags) and not flags[i + 1].startswith("-")
        is_value = i > 0 and flags[i - 1].startswith("--") and not flag.startswith("-")
        dest = flag[2:].replace("-", "_")
        if is_value or takes_value or dests.get(dest) is not False:
            kept.append(flag)
            continue
        why = f" Why: {profile.flags_why}." if profile.flags_why else ""
        warnings.append(
            f"--no-{flag[2:]} after -- turns off {flag}, which the {profile.name} profile sets."
            f"{why} Honoured: vLLM runs without {flag}; drop --no-{flag[2:]} to keep it"
        )
    return tuple(kept), warnings


def build_launch_plan(
    path: Path,
    request: ServeRequest | None = None,
    *,
    engine: EngineInfo | None,
    environ: dict[str, str] | None = None,
    gpus_here: Inventory | None = None,
    offline_gate: bool = True,
    for_check: bool = False,
    assume_version: Version | None = None,
    **options: Any,
) -> LaunchPlan:
    """argv + env for the installed vLLM: the model profile, overridden by REQUEST (a
    qwenprep.request.ServeRequest; OPTIONS: its fields as keywords, the older form).
    Refuses (exit 3) a config validate fails in ways that change the output, a max model
    length above what the config allows on that version, and a TP/EP layout vLLM rejects.
    GPUS_HERE (planning.gpus.on_this_node()): the GPUs of this node, which choose TP where
    nothing else does (engines.parallel.serve_layout) and note when one node cannot hold the plan.
    The arguments after -- are judged by qwenprep.engines.vllm.gate (vLLM's own parser and config
    layer);
    with no ENGINE, OFFLINE_GATE applies the gate's offline reading here already (ArgsRefused,
    exit 3), as there is no vLLM to ask later. FOR_CHECK: qwenprep check reports validation
    and parallelism as checks of its own, so the plan does not refuse them again.
    ASSUME_VERSION: the vLLM a plan without ENGINE is built for (check --vllm-version); the
    newest known one when not given."""
    req = ServeRequest.from_keywords(request, **options)
    tp, ep, max_model_len, host, port = req.tp, req.ep, req.max_model_len, req.host, req.port
    served_model_name, extra_args, repo_id = req.served_model_name, req.extra_args, req.repo_id
    expect_digest, multi = req.expect_digest, req.multinode
    nnodes, gpus_per_node = multi.nnodes, multi.gpus_per_node
    path = Path(path)
    config = read_config(path)
    manifest = manifest_of(path)
    digest = manifest.digest if manifest else None
    if expect_digest is not None:
        if manifest is None:
            raise InputError(
                f"{path}: not a qwenprep overlay, so it has no digest to compare "
                f"with {expect_digest}.",
                hint="serve the overlay made by qwenprep patch on every node.",
            )
        if digest != expect_digest:
            raise InputError(
                f"{path}: overlay digest is {digest}, expected {expect_digest}: this node would "
                "serve a different overlay than the others.",
                hint="re-create the overlay from the same source with the same qwenprep patch "
                "command on this node (or share one overlay path).",
            )
    assumed = assume_version or NEWEST_KNOWN
    version = engine.version if engine else ".".join(map(str, assumed))
    vtuple = engine.version_tuple if engine else assumed
    caps = engine.capabilities if engine else capabilities_for(assumed)
    notes: list[str] = []
    if not for_check:
        from qwenprep.checks.validate import VllmVersion

        judged = VllmVersion(
            vtuple,
            "installed" if engine else "named" if assume_version else "assumed: no vLLM found",
        )
        validation_gate(path, config, manifest, max_model_len, notes, judged)
    if engine is None:
        notes.append(
            f"vLLM not found; this plan assumes vLLM {version} behaviour"
            + (" (named)" if assume_version else "")
        )
    elif vtuple[:2] > NEWEST_KNOWN[:2]:
        notes.append(
            f"vLLM {version} is newer than the versions qwenprep's rules were read "
            f"from ({KNOWN_RANGE}); their {NEWEST_KNOWN_MINOR} flags and length rule are "
            "assumed"
        )
    _check_extra_args(extra_args, vtuple, version, installed=engine is not None)
    notes.extend(flag_warnings(extra_args, vtuple))
    if any(flag_name(a) == TRUST_REMOTE_CODE for a in extra_args):
        notes.append(
            f"{TRUST_REMOTE_CODE} was given after --: vLLM will import and run Python "
            f"files from {path} (config.json auto_map); qwenprep never adds this flag "
            "itself"
        )

    profile = model_profile(path, config, manifest, repo_id)
    if profile.before_vllm is not None and vtuple >= profile.before_vllm:
        raise InputError(
            f"{path}: the {profile.name} profile runs only on vLLM < "
            f"{'.'.join(map(str, profile.before_vllm))}; vLLM {version} "
            f"({'installed' if engine else 'assumed'}) would fail at load: "
            f"{profile.unsupported_why}.",
            hint=f"qwenprep patch {patch_source(path, manifest)} --context native --out DIR "
            "(no DCA), or --context 1m --yarn-on-dca; or serve with a vLLM < 0.11.",
            path=str(path / CONFIG),
        )
    allowed = max_len_allowed(config, caps)
    if max_model_len is None:
        max_model_len = int(manifest.target_context) if manifest else allowed  # type: ignore[arg-type]
    if max_model_len <= 0:
        raise UsageError(f"--max-model-len {max_model_len} is not a positive token count.")
    if max_model_len > allowed:
        rope = effective_rope(config)
        from qwenprep.model.view import ModelView

        why = (
            f"max_position_embeddings {ModelView(config).max_position_embeddings}, rope type "
            f"{rope.get('rope_type')}"
        )
        if rope.get("rope_type") == "yarn":
            why += (
                f", factor {_fmt(rope.get('factor'))}, original "
                f"{rope.get('original_max_position_embeddings')}"
            )
        raise InputError(
            f"{path / CONFIG}: --max-model-len {max_model_len} is above the {allowed} tokens this "
            f"config allows on vLLM {version} ({why}); vLLM would refuse it, and "
            "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 would run past it with unscaled RoPE (wrong output).",
            hint=patch_hint(path, manifest, max_model_len),
            path=str(path / CONFIG),
        )

    from qwenprep.engines.parallel import serve_layout

    tp_n, use_ep = serve_layout(
        config,
        profile,
        tp=tp,
        ep=ep,
        pp=pp_size(extra_args),
        gpus=nnodes * gpus_per_node
        if nnodes and gpus_per_node
        else (gpus_here.count if gpus_here is not None else None),
        notes=notes,
    )
    if not for_check:
        _parallel_gate(path, config, tp_n, use_ep, profile, notes)
    name = served_model_name or profile.served_model_name
    python = engine.python if engine else "python3"

    core: list[str] = []
    if tp_n > 1:
        core += ["--tensor-parallel-size", str(tp_n)]
    if use_ep:
        core += ["--enable-expert-parallel"]
    if profile.tool_parser and caps.qwen3_coder_tool_parser and not _user_tools(extra_args):
        core += ["--enable-auto-tool-choice", "--tool-call-parser", profile.tool_parser]
    elif profile.tool_parser:
        notes.append(f"vLLM {version} has no qwen3_coder tool parser (0.10.0+); tool calls are off")
    if profile.reasoning_parser:
        core += ["--reasoning-parser", profile.reasoning_parser]
    kept, overrides = profile_flags(profile, extra_args)
    core += kept
    notes.extend(overrides)
    # --flag=VALUE for the strings a user chooses: a name like "--x" stays a value
    core += [f"--served-model-name={name}", "--max-model-len", str(max_model_len)]
    launch = Launch(path, python, tuple(core), tp_n, digest, host, port, extra_args, multi)
    # `vllm serve` beside the interpreter where that console script works (node_entry)
    entry = (
        node_entry(python, engine.distribution) if engine else (python, "-c", WORKER_ENTRY, "serve")
    )
    argv = (*entry, launch.model, *core, *launch.net, *extra_args)

    env_in = os.environ if environ is None else environ
    unset: list[str] = []
    if "VLLM_ALLOW_LONG_MAX_MODEL_LEN" in env_in:
        unset.append("VLLM_ALLOW_LONG_MAX_MODEL_LEN")
        notes.append(
            "VLLM_ALLOW_LONG_MAX_MODEL_LEN is removed from vLLM's environment: the "
            "config allows this length, and the variable would hide a wrong one"
        )

    multinode = multinode_nodes(
        launch, caps, version, notes, engine.distribution if engine else None
    )
    if gpus_here is not None and gpus_here.count and nnodes is None and gpus_per_node is None:
        node_gpu_note(path, gpus_here, tp_n, pp_size(extra_args), notes)
    plan = LaunchPlan.launched(
        launch,
        argv,
        multinode=multinode,
        env=dict(profile.env),
        unset_env=unset,
        max_model_len=max_model_len,
        max_len_allowed=allowed,
        served_model_name=name,
        profile=profile.name,
        engine=engine,
        notes=notes,
        profile_overrides=tuple(overrides),
    )
    if engine is None and offline_gate:
        from qwenprep.engines.vllm.gate import enforce

        plan = enforce(plan, engine=None)
    return plan
