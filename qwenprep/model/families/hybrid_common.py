"""What the hybrid families (Qwen3-Next, Qwen3.5/3.6) share: layer-layout invariants and the
schema fragment of the Gated DeltaNet keys."""

from __future__ import annotations

from typing import Any

from qwenprep.util.report import Check


def hybrid_invariants(
    view: Any, attention_kinds: tuple[str, ...] = ("full_attention",)
) -> list[Check]:
    """layer_types agrees with num_hidden_layers and names only the kinds vLLM builds
    (linear_attention and ATTENTION_KINDS, the family's spellings of a full-attention layer);
    at least one layer is full attention (else there is no per-token KV to extend);
    partial_rotary_factor, where it sits, is in (0, 1]."""
    t = view.text
    kinds = {"linear_attention", *attention_kinds}
    shown = " and ".join(sorted(kinds))
    checks: list[Check] = []
    layers = t.get("num_hidden_layers")
    types = t.get("layer_types")
    where = view.pointer("layer_types")
    if isinstance(types, list) and isinstance(layers, int):
        bad = sorted({str(x) for x in types} - kinds)
        if len(types) != layers:
            checks.append(
                Check(
                    "invariant.layer_types",
                    "fail",
                    f"layer_types has {len(types)} entries but num_hidden_layers "
                    f"is {layers}; vLLM indexes layer_types by layer",
                    where,
                )
            )
        elif bad:
            checks.append(
                Check(
                    "invariant.layer_types",
                    "fail",
                    f"layer_types names {bad}; vLLM builds only {shown} layers",
                    where,
                )
            )
        elif not any(k in attention_kinds for k in types):
            checks.append(
                Check(
                    "invariant.layer_types",
                    "fail",
                    "layer_types has no full_attention layer",
                    where,
                )
            )
        else:
            n = sum(types.count(k) for k in attention_kinds)
            checks.append(
                Check(
                    "invariant.layer_types",
                    "pass",
                    f"{n} full-attention and {layers - n} linear-attention layers",
                )
            )
    elif types is None:
        interval = t.get("full_attention_interval", 4)
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            checks.append(
                Check(
                    "invariant.layer_types",
                    "fail",
                    f"full_attention_interval is {interval!r}; expected a positive integer",
                    view.pointer("full_attention_interval"),
                )
            )
        else:
            checks.append(
                Check(
                    "invariant.layer_types", "pass", f"every {interval}th layer is full attention"
                )
            )
    rope = view.effective_rope()
    prf = rope.get("partial_rotary_factor", t.get("partial_rotary_factor"))
    if prf is not None:
        ok = isinstance(prf, (int, float)) and not isinstance(prf, bool) and 0 < prf <= 1
        checks.append(
            Check(
                "invariant.partial_rotary_factor",
                "pass" if ok else "fail",
                f"partial_rotary_factor {prf!r}" + ("" if ok else "; expected a number in (0, 1]"),
                None if ok else view.pointer("partial_rotary_factor"),
            )
        )
    return checks


def mrope_invariants(view: Any) -> list[Check]:
    """M-RoPE (Qwen3.5/3.6): mrope_section sits in the rope dict the engine reads (vLLM 0.32's
    get_rope builds MRotaryEmbedding only when the dict carries it, YaRN included), is a list
    of non-negative integers, and its sections add up to the rotary half-width
    (head_dim x partial_rotary_factor / 2: 256 x 0.25 / 2 = 32 = 11 + 11 + 10 in the
    releases). A patch or override that loses it turns the model's 3-D positions into 1-D
    ones; one that loses partial_rotary_factor rotates the whole head."""
    rope = view.effective_rope()
    where = view.pointer(f"{view.rope_style}.mrope_section")
    sec = rope.get("mrope_section")
    if sec is None and not view.nested:
        return [
            Check(
                "invariant.mrope_section",
                "pass",
                "no mrope_section: a text-only checkpoint (vLLM 0.32 serves the text-only "
                "Qwen3.5 classes with 1-D positions and drops the M-RoPE keys itself)",
            )
        ]
    if sec is None:
        return [
            Check(
                "invariant.mrope_section",
                "fail",
                f"the rope dict ({view.pointer(view.rope_style)}) has no mrope_section; "
                "the release's M-RoPE sections are lost (vLLM would build a 1-D rotary "
                "embedding). Hint: restore the release's rope dict, or rebuild with "
                "qwenprep patch MODEL --context 1m --out DIR",
                where,
            )
        ]
    if not (
        isinstance(sec, list)
        and sec
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in sec)
    ):
        return [
            Check(
                "invariant.mrope_section",
                "fail",
                f"mrope_section is {sec!r}; expected a list of non-negative integers",
                where,
            )
        ]
    checks: list[Check] = []
    # transformers 5 copies a text-config partial_rotary_factor into the rope dict on load
    prf = rope.get("partial_rotary_factor", view.text.get("partial_rotary_factor"))
    if prf is None:
        checks.append(
            Check(
                "invariant.partial_rotary_factor_in_rope",
                "fail",
                f"neither the rope dict ({view.pointer(view.rope_style)}) nor the text config has "
                "partial_rotary_factor: vLLM's get_rope would rotate every head dimension (the "
                "releases rotate a quarter)",
                view.pointer(f"{view.rope_style}.partial_rotary_factor"),
            )
        )
        prf = 1.0
    head_dim = view.text.get("head_dim")
    if isinstance(head_dim, int) and isinstance(prf, (int, float)) and not isinstance(prf, bool):
        half = int(head_dim * prf) // 2
        if sum(sec) != half:
            checks.append(
                Check(
                    "invariant.mrope_section",
                    "fail",
                    f"mrope_section {sec} adds up to {sum(sec)}, but head_dim "
                    f"{head_dim} x partial_rotary_factor {prf:g} / 2 = {half}",
                    where,
                )
            )
            return checks
    checks.append(
        Check(
            "invariant.mrope_section",
            "pass",
            f"mrope_section {sec} (interleaved: "
            f"{bool(rope.get('mrope_interleaved', False))}) in the rope dict",
        )
    )
    return checks
