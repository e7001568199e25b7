"""What the hybrid families (Qwen3-Next, Qwen3.5/3.6) share: layer-layout invariants and the
schema fragment of the Gated DeltaNet keys."""

from __future__ import annotations

from typing import Any

from qwenprep.report import Check


def hybrid_invariants(view: Any) -> list[Check]:
    """layer_types agrees with num_hidden_layers and names only the two kinds vLLM builds;
    at least one layer is full attention (else there is no per-token KV to extend);
    partial_rotary_factor, where it sits, is in (0, 1]."""
    t = view.text
    checks: list[Check] = []
    layers = t.get("num_hidden_layers")
    types = t.get("layer_types")
    where = view.pointer("layer_types")
    if isinstance(types, list) and isinstance(layers, int):
        bad = sorted({str(x) for x in types} - {"full_attention", "linear_attention"})
        if len(types) != layers:
            checks.append(Check("invariant.layer_types", "fail",
                                f"layer_types has {len(types)} entries but num_hidden_layers "
                                f"is {layers}; vLLM indexes layer_types by layer", where))
        elif bad:
            checks.append(Check("invariant.layer_types", "fail",
                                f"layer_types names {bad}; vLLM builds only full_attention "
                                "and linear_attention layers", where))
        elif "full_attention" not in types:
            checks.append(Check("invariant.layer_types", "fail",
                                "layer_types has no full_attention layer", where))
        else:
            n = types.count("full_attention")
            checks.append(Check("invariant.layer_types", "pass",
                                f"{n} full-attention and {layers - n} linear-attention layers"))
    elif types is None:
        interval = t.get("full_attention_interval", 4)
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            checks.append(Check("invariant.layer_types", "fail",
                                f"full_attention_interval is {interval!r}; expected a positive "
                                "integer", view.pointer("full_attention_interval")))
        else:
            checks.append(Check("invariant.layer_types", "pass",
                                f"every {interval}th layer is full attention"))
    rope = view.effective_rope()
    prf = rope.get("partial_rotary_factor", t.get("partial_rotary_factor"))
    if prf is not None:
        ok = isinstance(prf, (int, float)) and not isinstance(prf, bool) and 0 < prf <= 1
        checks.append(Check("invariant.partial_rotary_factor", "pass" if ok else "fail",
                            f"partial_rotary_factor {prf!r}" + ("" if ok else
                                                                "; expected a number in (0, 1]"),
                            None if ok else view.pointer("partial_rotary_factor")))
    return checks
