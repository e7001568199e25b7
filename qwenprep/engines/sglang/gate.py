"""The gate for SGLang: the same proof as vLLM's (qwenprep.engines.vllm.gate), asked of SGLang
itself.

The exact argv `qwenprep serve --serving-engine sglang` would exec is parsed by SGLang's own
``prepare_server_args`` and the model config is built from it with SGLang's
``ModelConfig.from_server_args`` (in sglang_probe.py, in SGLang's interpreter). What SGLang
will then use (context length, rope type, factor, original length, rope_theta) is compared
with the overlay's intent by qwenprep.engines.vllm.gate.compare. On top, the long-context traps of
SGLang 0.5.23's --json-model-override-args (srt/utils/hf_transformers/config.py get_config:
overrides are set on the top-level config; a dict for a sub-config is merged with
PretrainedConfig.update, which replaces a rope dict whole) are named with their reason.
check reports the checks (a fail: exit 1); serve raises ArgsRefused (exit 3).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenprep.engines import gate_common as common
from qwenprep.engines import probe
from qwenprep.engines.gate_common import PATCH_FIX, ArgsRefused, GateProbe
from qwenprep.engines.sglang.core import LIFTING_ENV, SglangInfo, SglangPlan, run_probe
from qwenprep.errors import QwenprepError
from qwenprep.util.report import Check

if TYPE_CHECKING:
    from qwenprep.request import ServeRequest

OWN_OPTION = {
    "model_path": "PATH (qwenprep serve PATH)",
    "context_length": "--max-model-len (qwenprep check: --context)",
    "tp_size": "--tp",
    "ep_size": "--ep/--no-ep",
    "served_model_name": "--served-model-name",
    "tool_call_parser": "(the model profile)",
    "reasoning_parser": "(the model profile)",
    "host": "--host",
    "port": "--port",
    "nnodes": "--nnodes",
    "node_rank": "(qwenprep serve --nnodes)",
    "dist_init_addr": "--master-addr",
}
TEXT_KEYS = (
    "max_position_embeddings",
    "rope_scaling",
    "rope_parameters",
    "rope_theta",
    "partial_rotary_factor",
)


def _items(plan: SglangPlan) -> list[dict[str, Any]]:
    from qwenprep.engines.vllm.gate import native_of

    argvs = [plan.argv] + [n.argv for n in plan.nodes]
    native = native_of(plan.model_path, plan.max_model_len)
    return common.probe_items(
        plan, argvs, lambda argv: 3, native
    )  # after PYTHON -m sglang.launch_server


def _key(plan: SglangPlan, python: str, items: list[dict[str, Any]]) -> str:
    import hashlib

    h = hashlib.sha256(json.dumps([python, items]).encode())
    for f in (
        Path(plan.model_path) / "config.json",
        Path(plan.model_path) / ".qwenprep" / "manifest.json",
    ):
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(b"-")
    from qwenprep.util.hashing import env_key

    h.update(env_key(plan.child_env(), ("SGLANG_", "HF_", "TRANSFORMERS_")))
    return h.hexdigest()


PROBE: GateProbe[SglangPlan] = GateProbe("SGLang", _items, _key, run_probe)
_CACHE = PROBE.cache


def probe_plans(plans: list[SglangPlan], python: str) -> None:
    """Ask SGLang about several plans in one probe (one import, ~8 s)."""
    PROBE.batch(plans, python)


def _who(engine: SglangInfo) -> str:
    return f"SGLang {engine.version}"


def _sglang_words(checks: list[Check], who: str) -> list[Check]:
    return [replace(c, message=c.message.replace("vLLM", who)) for c in checks]


def override_traps(
    config: dict[str, Any], overrides: Any, want_theta: Any, where: str
) -> list[Check]:
    """The --json-model-override-args traps of SGLang 0.5.23, each with its reason."""
    if not isinstance(overrides, dict) or not overrides:
        return []
    out: list[Check] = []
    text = config.get("text_config")
    nested = isinstance(text, dict)
    flat = [k for k in TEXT_KEYS if k in overrides]
    if nested and flat:
        out.append(
            Check(
                "engine.override_nested",
                "fail",
                f"--json-model-override-args sets {', '.join(flat)} at the top level, but this "
                "model's text settings live in text_config: SGLang applies the override to the "
                "top-level config only, so it changes nothing the model uses (a silent no-op). "
                "Hint: " + PATCH_FIX,
                where,
            )
        )
    sub = overrides.get("text_config") if nested else overrides
    if isinstance(sub, dict):
        cur = text if nested and isinstance(text, dict) else config
        for key in ("rope_parameters", "rope_scaling"):
            block = sub.get(key)
            if not isinstance(block, dict):
                continue
            got = cur.get(key) if isinstance(cur, dict) else None
            old: dict[str, Any] = got if isinstance(got, dict) else {}
            lost = [
                k
                for k in (
                    "rope_theta",
                    "mrope_section",
                    "mrope_interleaved",
                    "partial_rotary_factor",
                )
                if k in old and k not in block
            ]
            if nested and lost:
                out.append(
                    Check(
                        "engine.override_rope_partial",
                        "fail",
                        f"--json-model-override-args gives text_config.{key} without "
                        f"{', '.join(lost)}: SGLang merges text_config with PretrainedConfig."
                        f"update, which replaces the whole {key} dict, so {', '.join(lost)} "
                        "are lost (rope_theta falls back to 10000). Restate the whole dict, or "
                        "better: " + PATCH_FIX,
                        where,
                    )
                )
        mpe = sub.get("max_position_embeddings")
        rope_given = any(isinstance(sub.get(k), dict) for k in ("rope_parameters", "rope_scaling"))
        from qwenprep.model.contexts import effective_rope, native_context

        native = native_context(config)
        kind = effective_rope(config).get("rope_type", "default")
        if isinstance(mpe, int) and mpe > native and not rope_given and kind != "yarn":
            out.append(
                Check(
                    "engine.override_mpe",
                    "fail",
                    f"--json-model-override-args raises max_position_embeddings to {mpe} without "
                    f"a YaRN block: SGLang's context length follows it, and RoPE stays unscaled "
                    f"past the native {native} (wrong output). Hint: " + PATCH_FIX,
                    where,
                )
            )
    del want_theta
    return out


REMOTE_CODE = (
    "--trust-remote-code: SGLang will run Python files from the checkpoint; the readback ran "
    "none of them"
)


def _online(
    r: dict[str, Any],
    config: dict[str, Any],
    want: Any,
    where: str,
    shown: str,
    who: str,
    node: str,
) -> list[Check]:
    from qwenprep.engines.vllm.gate import compare

    out, parsed = common.parsed_checks(
        r,
        f"{who}'s server-argument parser",
        shown,
        node,
        lambda changed: common.own_changes(changed, OWN_OPTION),
        REMOTE_CODE,
        where,
    )
    if not parsed:
        return out
    args = r.get("args") or {}
    raw = args.get("json_model_override_args") or "{}"
    try:
        overrides = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        overrides = None
    traps = override_traps(config, overrides, want.rope_theta, where)
    if not r.get("ok"):
        return out + traps + [common.load_refused(r, who, node, "context_length", where)]
    from qwenprep.engines.rotation import rotation_checks

    return (
        out
        + traps
        + _sglang_words(compare(r["view"], want, where), who)
        + rotation_checks(r.get("rotation"), config, who, where)
    )


def gate_checks(
    plan: SglangPlan, engine: SglangInfo | None, offline_reason: str | None = None
) -> list[Check]:
    """Judge PLAN's argv with SGLang itself. Without SGLang nothing can be judged: one skip
    (qwenprep keeps no offline copy of SGLang's parser)."""
    from qwenprep.engines.vllm.core import manifest_of, read_config
    from qwenprep.engines.vllm.gate import intent_of

    path = Path(plan.model_path)
    where = str(path / "config.json")
    env_note = [
        Check(
            "engine.env",
            "warn",
            f"{k} is set here; it lifts SGLang's length check and leaves RoPE as it "
            "is, so qwenprep removes it from SGLang's environment",
            where,
        )
        for k in plan.unset_env
        if k in LIFTING_ENV
    ]
    config = read_config(path)
    want = intent_of(config, manifest_of(path), plan.max_model_len)
    if engine is None or not engine.importable or offline_reason:
        why = offline_reason or "SGLang is not installed in the named interpreter"
        return env_note + _offline(plan, config, want, where, why)
    answer = PROBE.answer(plan, engine.python)
    who = _who(engine)
    checks = [
        Check(
            "engine.found",
            "pass",
            f"SGLang {engine.version} with transformers "
            f"{answer.get('transformers') or engine.transformers} in {engine.python}",
        )
    ]
    checks += env_note
    shown = " ".join(plan.extra_args) or "(no arguments after --)"
    return checks + common.node_checks(
        answer["results"], lambda r, node: _online(r, config, want, where, shown, who, node)
    )


OVERRIDES = "--json-model-override-args"


def _offline(
    plan: SglangPlan, config: dict[str, Any], want: Any, where: str, why: str
) -> list[Check]:
    """Without SGLang: its --json-model-override-args judged as SGLang 0.5.23 applies it (the
    traps above, and the overlay's intent against the config with the overrides set on top);
    any other argument after -- refused, since nothing here can say what SGLang makes of it."""
    from qwenprep.engines.vllm.gate import compare
    from qwenprep.engines.vllm.offline import offline_view

    tag = "(offline, not judged by SGLang) "
    out = [
        Check(
            "engine.readback",
            "skip",
            f"the SGLang readback did not run ({why}): the argv was not judged by SGLang",
        )
    ]
    args, raw, other = list(plan.extra_args), [], []
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name.replace("_", "-") == OVERRIDES and (eq or i + 1 < len(args)):
            raw.append(value if eq else args[i + 1])
            i += 1 if eq else 2
            continue
        other.append(args[i])
        i += 1
    if other:
        out.append(
            Check(
                "engine.offline",
                "fail",
                f"{tag}SGLang is not here to judge {' '.join(other)}: without it qwenprep reads "
                f"only {OVERRIDES}. Hint: judge them with SGLang installed (--engine-python PY, "
                "check without --no-engine), or drop them",
            )
        )
    if not raw:
        return out
    try:
        overrides = json.loads(raw[-1])  # argparse: the last one wins
    except ValueError as e:
        overrides = e
    if not isinstance(overrides, dict):
        return out + [
            Check("engine.argv", "fail", f"{tag}{OVERRIDES} is not a JSON object: {raw[-1]}")
        ]
    out += override_traps(config, overrides, want.rope_theta, where)
    nested = isinstance(config.get("text_config"), dict)
    try:  # a nested model's text settings are judged by the traps: set on top, they do nothing
        view = offline_view(config, {"hf_overrides": {} if nested else overrides})
    except ValueError as e:
        return out + [Check("engine.load", "fail", f"{tag}{e}", where)]
    view["max_model_len"] = plan.max_model_len
    judged = _sglang_words(compare(view, want, where), "SGLang")
    return out + [replace(c, message=tag + c.message) for c in judged]


def enforce(plan: SglangPlan, engine: SglangInfo | None) -> SglangPlan:
    """serve's use of the gate: ArgsRefused (exit 3) on any failed check."""
    checks = gate_checks(plan, engine)
    bad = [c for c in checks if c.status == "fail"]
    if bad:
        listed = common.refused_listing(bad)
        who = _who(engine) if engine else "SGLang"
        ids = {c.id for c in bad}
        if "engine.own_args" in ids:
            hint = "set these with qwenprep's own options, not after --."
        elif ids <= {"engine.argv", "engine.offline"}:
            hint = "drop or fix that argument; python -m sglang.launch_server --help lists them."
        else:
            hint = f"put the rope settings into config.json instead: {PATCH_FIX}."
        where = f"{who} in {engine.python}" if engine else "judged offline: no SGLang here"
        raise ArgsRefused(
            f"SGLang would not serve what was asked ({where}): {listed}",
            hint=hint,
        )
    if engine is None:
        return replace(
            plan,
            notes=(*plan.notes, "SGLang is not installed here: the argv was not judged by SGLang"),
        )
    return replace(
        plan,
        notes=(
            *plan.notes,
            f"{_who(engine)} in {engine.python} parsed this "
            "argv with its own server-argument parser and read the model "
            "config back with those arguments",
        ),
    )


def check_gate(ask: common.GateAsk) -> list[Check]:
    """check's use of the gate: the plan serve would build, judged the same way."""
    from qwenprep.engines.sglang import core as sglang

    engine = sglang.discover(ask.python) if ask.engine_on else None
    try:
        plan = sglang.build_plan(ask.path, engine=engine, **ask.plan_inputs())
    except QwenprepError as e:
        return common.plan_refused(e, "qwenprep serve --serving-engine sglang")
    reason = None if ask.engine_on else "check --no-engine"
    return gate_checks(plan, engine, reason)


def readback_checks(path: Path, *, python: str | None = None) -> list[Check]:
    """verify --engine --serving-engine sglang: load PATH through SGLang's ModelConfig at the
    intended length and compare with the manifest (or the config itself)."""
    from qwenprep.engines.sglang import core as sglang

    info = sglang.discover(python)
    if info is None or not info.importable:
        return [
            Check(
                "engine.readback",
                "skip",
                f"SGLang is not installed in {probe.engine_python(python)}; the engine "
                "readback did not run (--engine-python names another interpreter).",
            )
        ]
    plan = sglang.build_plan(Path(path), engine=info, for_check=True)
    return [c for c in gate_checks(plan, info) if c.id != "engine.argv"]


def _kv_checks(shape: Any, opts: Any, layout: Any, inv: Any, extra: dict[str, Any]) -> list[Check]:
    """kv.fits by SGLang 0.5.23's arithmetic (qwenprep.engines.sglang.kv)."""
    from qwenprep.engines.sglang.kv import plan_sglang
    from qwenprep.util.sizes import format_gib

    context = opts.context_tokens(shape)
    if opts.kv_memory is None and inv.min_total is None:
        return [
            Check(
                "kv.fits",
                "skip",
                f"no memory budget to check {context:,} tokens "
                "against; pass --kv-memory SIZE or --gpus N --gpu-memory SIZE",
            )
        ]
    try:
        p = plan_sglang(
            shape,
            context=context,
            tp=layout.tp,
            pp=layout.pp,
            gpus=layout.gpus,
            gpu_memory=inv.min_total,
            kv_memory=opts.kv_memory,
            kv_cache_dtype=opts.kv_cache_dtype,
            ep=layout.ep,
        )
    except QwenprepError as e:
        return [Check("kv.fits", "fail", e.message)]
    extra["plan"] = p.to_dict()
    head = (
        f"SGLang {p.max_total_num_tokens:,} KV tokens per GPU, {p.max_concurrency:.2f}x at "
        f"{context:,}; per-request token table {format_gib(p.req_to_token_bytes)}"
        + ("" if p.exact else " (KV pool estimated from GPU memory)")
    )
    if p.fits:
        return [Check("kv.fits", "pass", head)]
    return [Check("kv.fits", "fail", f"{head}; does not fit. " + "; ".join(p.advice[:2]))]


def check_hooks() -> Any:
    """EngineHooks for `qwenprep check --serving-engine sglang`."""
    from qwenprep.engines.base import EngineHooks

    def gate(path: Path, opts: Any, max_len: int | None, repo_id: str | None) -> list[Check]:
        return check_gate(common.GateAsk.of(path, opts, max_len, repo_id))

    return EngineHooks("sglang", gate, _kv_checks)


def serve_plan(
    path: str,
    req: ServeRequest,
    *,
    python: str | None,
    dry_run: bool,
    gpus_here: int | None = None,
) -> SglangPlan:
    """`qwenprep serve --serving-engine sglang`: the plan, through the gate (ArgsRefused).
    GPUS_HERE: the GPUs found on this node (they choose TP where nothing else does)."""
    from qwenprep.engines.sglang import core as sglang
    from qwenprep.errors import UsageError
    from qwenprep.model.checkpoint import resolve_model
    from qwenprep.request import context_tokens

    if req.multinode.mode is not None:
        raise UsageError(
            "--multinode-mode is vLLM's; SGLang nodes join with its own "
            "--nnodes/--node-rank/--dist-init-addr (qwenprep adds them)."
        )
    ckpt = resolve_model(path)
    info = sglang.discover(python) if dry_run else sglang.require(python)
    plan = sglang.build_plan(
        ckpt.path,
        engine=info,
        tp=req.tp,
        ep=req.ep,
        max_model_len=context_tokens(req.max_model_len, "--max-model-len"),
        host=req.host,
        port=req.port,
        served_model_name=req.served_model_name,
        extra_args=req.extra_args,
        repo_id=ckpt.repo_id,
        expect_digest=req.expect_digest,
        nnodes=req.multinode.nnodes,
        gpus_per_node=req.multinode.gpus_per_node,
        gpus_here=gpus_here,
        master_addr=req.multinode.master_addr,
    )
    return enforce(plan, info)
