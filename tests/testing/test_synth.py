from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from safetensors import safe_open

from qwenprep.errors import ConflictError
from qwenprep.model.layouts import qwen3_moe_tensors
from qwenprep.testing.synth import (
    make_shaped_checkpoint,
    qwen3_coder_480b_fp8_config,
    tiny_fp8_config,
)

REFERENCE = Path("/work/shared/reference/qwen3-coder-480b-a35b-instruct-fp8.config.json")


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference config not on this machine")
def test_built_in_config_equals_the_published_reference() -> None:
    assert qwen3_coder_480b_fp8_config() == json.loads(REFERENCE.read_text())


def test_480b_shape_is_release_sized_and_sparse(tmp_path: Path) -> None:
    out = make_shaped_checkpoint(tmp_path / "ck")
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) == 50
    assert shards[0].name == "model-00001-of-00050.safetensors"
    assert shards[-1].name == "model-00050-of-00050.safetensors"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    wm = index["weight_map"]
    # 62 layers x (2 norms + 4 attn x 2 + q/k norm + router + 160 experts x 3 x 2) + 3
    assert len(wm) == 62 * (2 + 8 + 2 + 1 + 160 * 6) + 3 == 60329
    apparent = sum(p.stat().st_size for p in shards)
    assert 440 * 2**30 < apparent < 460 * 2**30
    real = sum(p.stat().st_blocks * 512 for p in shards)
    assert real < 64 * 2**20, real  # sparse: headers only
    total = index["metadata"]["total_size"]
    assert total < apparent and apparent - total < 20 * 2**20  # headers are the difference
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer_config.json",
        "tokenizer.json",
    ):
        json.loads((out / name).read_text())
    with safe_open(str(out / wm["model.layers.7.mlp.experts.3.down_proj.weight"]), "np") as f:
        keys = set(f.keys())
    assert "model.layers.7.mlp.experts.3.down_proj.weight" in keys


def test_fp8_dtypes_and_scale_shapes() -> None:
    specs = {s.name: s for s in qwen3_moe_tensors(qwen3_coder_480b_fp8_config())}
    w = specs["model.layers.0.mlp.experts.0.down_proj.weight"]
    s = specs["model.layers.0.mlp.experts.0.down_proj.weight_scale_inv"]
    assert (w.dtype, w.shape) == ("F8_E4M3", (6144, 2560))
    assert (s.dtype, s.shape) == ("F32", (48, 20))
    assert specs["model.layers.3.self_attn.q_proj.weight_scale_inv"].shape == (96, 48)
    assert specs["lm_head.weight"].dtype == "BF16"
    assert specs["model.layers.5.mlp.gate.weight"].dtype == "BF16"
    assert specs["model.embed_tokens.weight"].shape == (151936, 6144)
    assert "lm_head.weight_scale_inv" not in specs


def test_tiny_random_two_shards_loads_with_safetensors(tmp_path: Path) -> None:
    out = make_shaped_checkpoint(
        tmp_path / "t", config=tiny_fp8_config(), shards=2, random_data=True
    )
    shards = sorted(out.glob("*.safetensors"))
    assert [p.name for p in shards] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    n = 0
    for p in shards:
        with safe_open(str(p), "np") as f:
            for k in f.keys():
                f.get_slice(k)
                n += 1
        assert p.stat().st_blocks * 512 >= p.stat().st_size - 4096  # not sparse
    assert n == len(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"])


def test_bf16_single_file_variant(tmp_path: Path) -> None:
    out = make_shaped_checkpoint(tmp_path / "b", config=tiny_fp8_config(), shards=1, fp8=False)
    assert not (out / "model.safetensors.index.json").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    with safe_open(str(out / "model.safetensors"), "np") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}


def test_refuses_non_empty_destination(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("")
    with pytest.raises(ConflictError, match="not an empty directory"):
        make_shaped_checkpoint(tmp_path / "x", config=tiny_fp8_config(), shards=2)
    assert os.listdir(tmp_path / "x") == ["keep"]
