"""Property tests: patch -> validate -> patch native round-trips any valid Qwen3 config, and
no config.json, however malformed, makes validate or patch end in a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwenprep.checks.validate import invariant_checks, schema_problems
from qwenprep.model.contexts import ContextRequest, patch_config

pow2 = st.sampled_from([4096, 8192, 32768, 40960, 65536, 131072, 262144])
names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**9),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)


@st.composite
def qwen3_configs(draw: st.DrawFn) -> dict[str, Any]:
    moe = draw(st.booleans())
    heads = draw(st.sampled_from([4, 8, 16, 32, 64, 96]))
    cfg: dict[str, Any] = {
        "architectures": ["Qwen3MoeForCausalLM" if moe else "Qwen3ForCausalLM"],
        "model_type": "qwen3_moe" if moe else "qwen3",
        "hidden_size": draw(st.sampled_from([128, 2048, 4096, 6144])),
        "num_hidden_layers": draw(st.integers(1, 96)),
        "num_attention_heads": heads,
        "num_key_value_heads": draw(st.sampled_from([h for h in (1, 2, 4, 8) if heads % h == 0])),
        "head_dim": draw(st.sampled_from([64, 128, 256])),
        "max_position_embeddings": draw(pow2),
        "vocab_size": draw(st.integers(1000, 200000)),
    }
    if moe:
        cfg.update(
            num_experts=draw(st.integers(4, 256)),
            num_experts_per_tok=8,
            moe_intermediate_size=draw(st.sampled_from([768, 1536, 2560])),
        )
    theta = draw(st.sampled_from([10000, 1000000, 10000000, 5e6]))
    if draw(st.booleans()):  # transformers 4 style
        cfg["rope_scaling"] = None
        cfg["rope_theta"] = theta
    else:  # transformers 5 style
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    extra = draw(st.dictionaries(names, scalars, max_size=6))
    for k, v in extra.items():
        cfg.setdefault("x_" + k, v)
    keys = list(cfg)
    order = draw(st.permutations(keys))
    return {k: cfg[k] for k in order}


@settings(max_examples=300, deadline=None)
@given(cfg=qwen3_configs(), factor=st.sampled_from([1, 1.5, 2, 3, 4]))
def test_patch_validate_native_round_trip(cfg: dict[str, Any], factor: float) -> None:
    assert schema_problems(cfg) == []
    native = cfg["max_position_embeddings"]
    target = int(native * factor)
    res = patch_config(cfg, ContextRequest(str(target), target))
    new = res.config
    assert list(new)[: len(cfg)] == list(cfg)  # order kept, nothing dropped
    assert schema_problems(new) == []
    fails = [c for c in invariant_checks(new, native=native) if c.status == "fail"]
    assert fails == []
    assert new["max_position_embeddings"] == target
    again = patch_config(new, ContextRequest(str(target), target))
    assert again.config == new and again.native == native
    back = patch_config(new, ContextRequest("native", None)).config
    assert json.dumps(back) == json.dumps(cfg)


json_values = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=5)
    ),
    max_leaves=20,
)
interesting_keys = st.sampled_from(
    [
        "model_type",
        "max_position_embeddings",
        "rope_scaling",
        "rope_parameters",
        "rope_theta",
        "head_dim",
        "quantization_config",
        "num_hidden_layers",
        "num_experts",
    ]
)


@st.composite
def hostile_configs(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.text(max_size=200))
    base: dict[str, Any] = {
        "model_type": "qwen3_moe",
        "max_position_embeddings": 262144,
        "head_dim": 128,
        "rope_theta": 1e7,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 262144,
        },
        "rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e6},
        "quantization_config": {
            "quant_method": "fp8",
            "weight_block_size": [128, 128],
            "activation_scheme": "dynamic",
            "modules_to_not_convert": ["lm_head"],
        },
    }
    for k in draw(st.lists(interesting_keys, max_size=5)):
        base[k] = draw(json_values)
    for parent, k in draw(
        st.lists(
            st.tuples(
                st.sampled_from(["rope_scaling", "rope_parameters", "quantization_config"]),
                st.sampled_from(
                    [
                        "rope_type",
                        "type",
                        "factor",
                        "original_max_position_embeddings",
                        "rope_theta",
                        "quant_method",
                        "weight_block_size",
                        "modules_to_not_convert",
                    ]
                ),
            ),
            max_size=4,
        )
    ):
        if isinstance(base.get(parent), dict):
            base[parent][k] = draw(
                st.one_of(
                    json_values, st.floats(), st.sampled_from([1e308, -1, 0, "fp8", "yarn", True])
                )
            )
    for k in draw(st.lists(st.sampled_from(list(base)), max_size=3)):
        base.pop(k, None)
    if kind == 1:
        return json.dumps(base, allow_nan=True)
    if kind == 2:
        return json.dumps(draw(json_values))
    text = json.dumps(base)
    cut = draw(st.integers(0, len(text)))
    return text[:cut]


@settings(
    max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=hostile_configs())
def test_no_config_makes_a_traceback(tmp_path: Path, text: str) -> None:
    from conftest import invoke

    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    raw = text.encode("utf-8", "surrogatepass")
    (src / "config.json").write_bytes(raw)
    r = invoke("validate", str(src), "--json")
    assert r.exit_code in (0, 1, 3), r.output
    out = json.loads(r.stdout)
    assert out["ok"] is (r.exit_code == 0)
    r = invoke("patch", str(src), "-c", "1m", "-o", str(tmp_path / "ov"), "--force", "--json")
    assert r.exit_code in (0, 2, 3), r.output
    assert (src / "config.json").read_bytes() == raw


@pytest.mark.parametrize(
    "raw", [b"\xff\xfe{}", b"\x00" * 10, '{"a": "\udcff"}'.encode("utf-8", "surrogatepass")]
)
def test_binary_garbage_config(tmp_path: Path, raw: bytes) -> None:
    from conftest import invoke

    (tmp_path / "config.json").write_bytes(raw)
    r = invoke("validate", str(tmp_path))
    assert r.exit_code == 3
    assert "config.json" in r.stderr
