"""The rotation itself, judged numerically (issue 19).

The engine's probe (qwenprep/_probes/rotation_probe.py, in the engine's interpreter) builds the
engine's own rotary embedding twice: from the text config the engine derives with the exact
argv applied, and from the overlay's config alone. Each measurement carries the rotary
dimension, the inverse frequencies, the attention scaling (YaRN's mscale) and cos/sin at a
few positions spread over 0..served length, past native included. Here:

- judge(): the argv's rotation against the overlay's own. Any difference is a refusal naming
  it in words; a spelling that changes nothing passes.
- reference() and against_reference(): the overlay's rotation as the engine builds it,
  against YaRN computed from first principles in pure Python from config.json (rope_theta,
  factor, original_max_position_embeddings, beta_fast/beta_slow, truncate,
  partial_rotary_factor, attention_factor/mscale/mscale_all_dim; M-RoPE sections must cover
  the rotated half), so a key lost inside the engine's own path, or an engine bug, is caught.

When the engine cannot build its rotary embedding here (vLLM's Dual Chunk Attention class
needs CUDA), the parameters it would pass to it are compared instead, and the check says so.
"""

from __future__ import annotations

import math
from typing import Any

from qwenprep.model.view import ModelView
from qwenprep.util.report import Check

REL = 1e-5  # float32 tables: relative tolerance for frequencies and scaling
ABS = 1e-4  # cos/sin entries (both builds run the same float32 code: equal when the same)


def _g(x: Any) -> str:
    if x is None:
        return "unset"
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def _close(a: float, b: float, rel: float = REL) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def _unbuilt(r: dict[str, Any]) -> bool:
    return not r.get("built")


def differences(got: dict[str, Any], own: dict[str, Any], engine: str) -> list[str]:
    """What differs between two measurements, in words (empty: the same rotation)."""
    if _unbuilt(got) or _unbuilt(own):
        a, b = got.get("derived") or {}, own.get("derived") or {}
        words = [
            f"{engine} would rotate {a.get(k)} of {a.get('head_size')} dimensions instead of "
            f"{b.get(k)}"
            if k == "rotary_dim"
            else f"{k} {_g(a.get(k))} instead of {_g(b.get(k))}"
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)
        ]
        if _unbuilt(got) and not _unbuilt(own):
            words.insert(0, f"{engine} fails to build its rotary embedding ({got.get('why')})")
        return words
    out: list[str] = []
    head = got.get("derived", {}).get("head_size")
    if got["rotary_dim"] != own["rotary_dim"]:
        of = f" of {head}" if head else ""
        out.append(
            f"{engine} would rotate {got['rotary_dim']}{of} dimensions instead of "
            f"{own['rotary_dim']}"
        )
    else:
        for i, (a, b) in enumerate(
            zip(got.get("inv_freq", []), own.get("inv_freq", []), strict=False)
        ):
            if not _close(a, b):
                out.append(f"inverse frequencies differ at dim {i} ({_g(a)} instead of {_g(b)})")
                break
    a_s, b_s = got.get("attention_scaling"), own.get("attention_scaling")
    if isinstance(a_s, float) and isinstance(b_s, float) and not _close(a_s, b_s):
        out.append(f"attention scaling {a_s:.5g} instead of {b_s:.5g}")
    if got.get("table_positions") != own.get("table_positions"):
        out.append(
            f"its cos/sin table covers {got.get('table_positions')} positions instead of "
            f"{own.get('table_positions')}"
        )
    if not out:
        rows, mine = got.get("rows", {}), own.get("rows", {})
        for p in sorted(set(rows) & set(mine), key=int):
            if any(abs(x - y) > ABS for x, y in zip(rows[p], mine[p], strict=False)):
                out.append(f"cos/sin differ at position {p}")
                break
    for k in ("mrope_section", "mrope_interleaved"):  # not seen at text positions
        a, b = got.get("derived", {}).get(k), own.get("derived", {}).get(k)
        if a != b:
            out.append(f"M-RoPE {k} {_g(a)} instead of {_g(b)}")
    return out


def _summary(r: dict[str, Any]) -> str:
    if _unbuilt(r):
        d = r.get("derived") or {}
        return ", ".join(f"{k} {_g(v)}" for k, v in sorted(d.items()))
    rows = sorted(int(p) for p in r.get("rows", {}))
    return (
        f"{r.get('class')}, rotating {r['rotary_dim']} dims, attention scaling "
        f"{r.get('attention_scaling', 1.0):.5g}, cos/sin equal at {len(rows)} positions up to "
        f"{rows[-1] if rows else 0}"
    )


def judge(got: dict[str, Any], own: dict[str, Any], engine: str, where: str) -> Check:
    """engine.rotation: the rotary embedding with the argv applied against the overlay's own."""
    diff = differences(got, own, engine)
    fallback = own if _unbuilt(own) else None  # the engine cannot build either one here
    how = (
        f" ({engine} could not build its rotary embedding here: {fallback.get('why')}; "
        "the parameters it would pass to it were compared instead)"
        if fallback is not None
        else ""
    )
    if diff:
        return Check(
            "engine.rotation",
            "fail",
            f"{engine}'s rotary embedding with these arguments is not the overlay's own: "
            + "; ".join(diff)
            + how
            + ". Hint: drop the rope keys after --; to change the rotation rebuild the overlay "
            "with qwenprep patch MODEL --context 1m --out DIR",
            where,
        )
    return Check(
        "engine.rotation",
        "pass",
        f"{engine}'s rotary embedding with these arguments is the overlay's own "
        f"({_summary(got)}){how}",
        where,
    )


# ------------------------------------------------------------------ first principles
def reference(config: dict[str, Any]) -> dict[str, Any]:
    """YaRN (Peng et al., 2309.00071, as transformers' _compute_yarn_parameters reads the keys)
    or plain RoPE for CONFIG's text config, in pure Python: rotary_dim, inv_freq,
    attention_scaling. Raises ValueError for a rope dict it cannot read."""
    view = ModelView(config)
    text = view.text
    rope = view.effective_rope()
    heads = text.get("num_attention_heads")
    hidden = text.get("hidden_size")
    head = text.get("head_dim") if text.get("model_type") != "qwen2" else None
    head = head or (hidden // heads if isinstance(hidden, int) and isinstance(heads, int) else 0)
    prf = rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 1.0)) or 1.0
    dim = int(head * float(prf))
    base = float(rope.get("rope_theta", 10000))
    if dim <= 0 or base <= 1:
        raise ValueError(f"rotary dimension {dim}, base {base}")
    exps = [base ** (2 * i / dim) for i in range(dim // 2)]
    inv = [1.0 / e for e in exps]
    scaling = 1.0
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "yarn":
        factor = float(rope["factor"])
        orig = float(rope["original_max_position_embeddings"])
        fast, slow = float(rope.get("beta_fast", 32)), float(rope.get("beta_slow", 1))

        def corr(rot: float) -> float:  # the dimension whose wavelength fits ROT turns
            return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

        low, high = corr(fast), corr(slow)
        if rope.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        extra = [1 - min(max((i - low) / (high - low), 0.0), 1.0) for i in range(dim // 2)]
        inv = [(x / factor) * (1 - m) + x * m for x, m in zip(inv, extra, strict=True)]

        def mscale(s: float, m: float = 1.0) -> float:
            return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

        att, ms, ms_all = (
            rope.get("attention_factor"),
            rope.get("mscale"),
            rope.get("mscale_all_dim"),
        )
        if att is not None:
            scaling = float(att)
        elif ms and ms_all:
            scaling = mscale(factor, float(ms)) / mscale(factor, float(ms_all))
        else:
            scaling = mscale(factor)
    elif kind not in ("default",):
        raise ValueError(f"rope type {kind!r}")
    section = rope.get("mrope_section")
    return {
        "rotary_dim": dim,
        "head_size": head,
        "inv_freq": inv,
        "attention_scaling": scaling,
        "mrope_section": section,
        "rope_type": kind,
    }


def against_reference(
    config: dict[str, Any], own: dict[str, Any], engine: str, where: str
) -> Check:
    """engine.rotation_reference: the overlay's rotation as ENGINE builds it (OWN) against
    first principles."""
    try:
        ref = reference(config)
    except (ValueError, KeyError, TypeError) as e:
        return Check(
            "engine.rotation_reference",
            "fail",
            f"qwenprep cannot compute the overlay's rotation from first principles: {e}",
            where,
        )
    bad: list[str] = []
    sec = ref["mrope_section"]
    if (
        isinstance(sec, list)
        and sum(x for x in sec if isinstance(x, int)) != ref["rotary_dim"] // 2
    ):
        bad.append(f"mrope_section {sec} does not cover the {ref['rotary_dim'] // 2} rotated pairs")
    if _unbuilt(own):
        d = own.get("derived") or {}
        if d.get("rotary_dim") != ref["rotary_dim"]:
            bad.append(
                f"{engine} would rotate {d.get('rotary_dim')} dims instead of {ref['rotary_dim']}"
            )
        how = (
            f" ({engine} could not build its rotary embedding here: {own.get('why')}; "
            "its derived parameters were compared instead)"
        )
    else:
        how = ""
        if own["rotary_dim"] != ref["rotary_dim"]:
            bad.append(
                f"{engine} rotates {own['rotary_dim']} of {ref['head_size']} dimensions, first "
                f"principles {ref['rotary_dim']}"
            )
        else:
            for i, (a, b) in enumerate(zip(own.get("inv_freq", []), ref["inv_freq"], strict=False)):
                if not _close(a, b):
                    bad.append(
                        f"inverse frequencies differ at dim {i} ({_g(a)}, first principles {_g(b)})"
                    )
                    break
        s = own.get("attention_scaling")
        if isinstance(s, float) and not _close(s, ref["attention_scaling"]):
            bad.append(
                f"attention scaling {s:.5g}, first principles {ref['attention_scaling']:.5g}"
            )
    if bad:
        return Check(
            "engine.rotation_reference",
            "fail",
            f"the overlay's rotation as {engine} builds it is not what its config.json defines: "
            + "; ".join(bad)
            + how,
            where,
        )
    return Check(
        "engine.rotation_reference",
        "pass",
        f"the overlay's rotation as {engine} builds it matches {ref['rope_type']} RoPE computed "
        f"from config.json (rotating {ref['rotary_dim']} of {ref['head_size']} dims, attention "
        f"scaling {ref['attention_scaling']:.5g}){how}",
        where,
    )


def rotation_checks(answer: Any, config: dict[str, Any], engine: str, where: str) -> list[Check]:
    """The probe's "rotation" answer ({"argv": ..., "own": ...} or {"error": ...}) as checks:
    the argv's rotation against the overlay's own, and the overlay's against first principles.
    An answer that could not be measured is a refusal: nothing unjudged reads as ready."""
    if not isinstance(answer, dict) or "argv" not in answer or "own" not in answer:
        why = answer.get("error") if isinstance(answer, dict) else "no answer"
        return [
            Check(
                "engine.rotation",
                "fail",
                f"{engine}'s rotary embedding could not be measured, so the rotation was not "
                f"judged: {why}",
                where,
            )
        ]
    return [
        judge(answer["argv"], answer["own"], engine, where),
        against_reference(config, answer["own"], engine, where),
    ]
