"""Qwen3.8-Flash-Next (qwen4_exp, qwen4_exp_text): the hybrid Gated DeltaNet + indexed-attention
family. patch to 1M (YaRN x4 over 262,144 in the nested or top-level rope_parameters, rope_theta
and partial_rotary_factor kept), the schema and transformers' indexer invariants, and the
readback through vLLM's own config code (0.32 here; 0.34's CUDA wheel where installed)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, invoke

V034 = os.environ.get("QWENPREP_VLLM034_PYTHON") or str(REPO / ".venv-vllm034" / "bin" / "python")
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 262144}


def _config_dir(path: Path, *, nested: bool, **text: Any) -> Path:
    from qwenprep.model.families.qwen4_exp import tiny_qwen4_exp_config

    cfg = tiny_qwen4_exp_config(nested=nested)
    (cfg["text_config"] if nested else cfg).update(text)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    return path


def _checks(out: str) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in json.loads(out)["checks"]}


@pytest.mark.parametrize("nested", [True, False])
def test_patch_to_1m_keeps_theta_and_partial_rotary(tmp_path: Path, nested: bool) -> None:
    src = _config_dir(tmp_path / "src", nested=nested)
    before = (src / "config.json").read_bytes()
    ov = tmp_path / "ov"
    r = invoke("patch", str(src), "--context", "1m", "--out", str(ov), "--json")
    assert r.exit_code == 0, r.output
    assert (src / "config.json").read_bytes() == before  # the source is never modified
    cfg = json.loads((ov / "config.json").read_text())
    text = cfg["text_config"] if nested else cfg
    assert "rope_parameters" not in cfg or not nested  # written where the text config is
    assert text["rope_parameters"] == {
        "partial_rotary_factor": 0.25,
        **YARN,
        "rope_theta": 10000000,
    }
    assert text["max_position_embeddings"] == 1048576
    r = invoke("validate", str(ov), "--json")
    assert r.exit_code == 0, r.output
    c = _checks(r.output)
    assert c["invariant.yarn_length"]["status"] == "pass"
    assert c["invariant.layer_types"]["message"].startswith("1 full-attention and 3 linear")
    assert c["invariant.indexer"]["status"] == "pass"


@pytest.mark.parametrize(
    ("text", "cid", "words"),
    [
        ({"indexer_kv_heads": 2}, "invariant.indexer", "indexer_kv_heads is 2"),
        ({"indexer_budget": 6}, "invariant.indexer", "not divisible by indexer_compress_ratio"),
        ({"indexer_budget": None}, "invariant.indexer", "['indexer_budget'] are missing"),
        ({"indexer_head_dim": 4}, "invariant.indexer", "exceed indexer_head_dim 4"),
        ({"hc_count": 1}, "schema", "hc_count"),
        (
            {"layer_types": ["linear_attention"] * 3 + ["sliding_attention"]},
            "schema",
            "layer_types",
        ),
        ({"layer_types": ["linear_attention"] * 4}, "invariant.layer_types", "no full_attention"),
    ],
)
def test_configs_transformers_refuses_are_refused(
    tmp_path: Path, text: dict[str, Any], cid: str, words: str
) -> None:
    src = _config_dir(tmp_path / "src", nested=True, **text)
    r = invoke("validate", str(src), "--json")
    assert r.exit_code != 0, r.output
    fails = [c for c in json.loads(r.output)["checks"] if c["status"] == "fail"]
    assert any(c["id"] == cid and words in c["message"] for c in fails), fails


def test_full_attention_spelling_is_an_indexed_layer(tmp_path: Path) -> None:
    """transformers' Qwen4ExpTextConfig reads a checkpoint's "full_attention" as
    "indexed_attention": both spellings are the attention layer."""
    src = _config_dir(
        tmp_path / "src", nested=False, layer_types=["linear_attention"] * 3 + ["full_attention"]
    )
    r = invoke("validate", str(src), "--json")
    assert r.exit_code == 0, r.output


def _readback(tmp_path: Path, python: str, nested: bool) -> dict[str, dict[str, Any]]:
    src = _config_dir(tmp_path / "src", nested=nested)
    ov = tmp_path / "ov"
    assert invoke("patch", str(src), "-c", "1m", "-o", str(ov)).exit_code == 0
    r = invoke("verify", str(ov), "--engine", "--json", "--vllm-python", python)
    assert r.exit_code == 0, r.output
    return _checks(r.output)


def _assert_read_back(c: dict[str, dict[str, Any]]) -> None:
    want = {
        "engine.max_model_len": "1048576",
        "engine.rope_type": "yarn",
        "engine.rope_factor": "4",
        "engine.rope_original": "262144",
        "engine.rope_theta": "10000000",
        "engine.partial_rotary_factor": "0.25",
    }
    for cid, value in want.items():
        assert c[cid]["status"] == "pass" and c[cid]["message"].endswith(f"uses {value}"), c[cid]
    if c.get("engine.config_layer"):  # ModelConfig cannot import the classes here (torchvision)
        assert c["engine.config_layer"]["status"] == "warn"
        assert "_get_and_verify_max_len" in c["engine.config_layer"]["message"]


@pytest.mark.engine
def test_readback_through_vllm_032(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    _assert_read_back(_readback(tmp_path, sys.executable, nested=True))


@pytest.mark.engine
@pytest.mark.vllm034
@pytest.mark.skipif(not Path(V034).is_file(), reason=f"vLLM 0.34.0's interpreter {V034} absent")
def test_readback_through_vllm_034(tmp_path: Path) -> None:
    _assert_read_back(_readback(tmp_path, V034, nested=False))


# ------------------------------------------------------------------ plan


def test_plan_counts_indexed_layers_and_the_indexers_keys(tmp_path: Path) -> None:
    """indexed_attention layers hold per-token KV (vLLM 0.34 config/model.py
    _ATTENTION_LAYER_TYPES): 2 x 1 KV head x 32 x 2 bytes = 128, plus the indexer's compressed
    keys, 32 x 2 bytes / compress ratio 4 = 16 (QSACompressedKeyCache.get_kv_cache_spec); the
    plan says it is not verified against vLLM."""
    src = _config_dir(tmp_path / "src", nested=True)
    ov = tmp_path / "ov"
    assert invoke("patch", str(src), "-c", "1m", "-o", str(ov)).exit_code == 0
    r = invoke("plan", str(ov), "--kv-memory", "2GiB", "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)
    h = plan["hybrid"]
    assert (h["attention_layers"], h["linear_attention_layers"]) == (1, 3)
    assert h["indexer_bytes_per_token_per_layer"] == 16
    assert h["kv_bytes_per_token_per_layer"] == 144
    assert plan["bytes_per_token_per_gpu"] == 144
    assert h["verified_for_this_version"] is False and "not verified" in h["note"]
    assert plan["full_attention_layers"] == 1


def test_plan_and_check_refuse_dcp_for_the_indexer(tmp_path: Path) -> None:
    """vLLM 0.32-0.34 Qwen4ExpQSAAttention.__init__: "Qwen4Exp QSA does not support context
    parallelism"; without indexer_* keys the GQA rule alone decides."""
    from qwenprep.engines.vllm.dcp import dcp_check
    from qwenprep.engines.vllm.kv import ModelShape

    src = _config_dir(tmp_path / "src", nested=True)
    r = invoke("plan", str(src), "--kv-memory", "2GiB", "--tp", "2", "--dcp", "2")
    assert r.exit_code == 2, r.output
    assert "Qwen4Exp QSA does not support context parallelism" in r.output
    cfg = json.loads((src / "config.json").read_text())
    c = dcp_check(ModelShape.from_config(cfg), tp=2, dcp=2)
    assert c.status == "fail" and "indexer runs without it" in c.message
    for k in ("indexer_n_heads", "indexer_kv_heads", "indexer_head_dim", "indexer_budget"):
        cfg["text_config"][k] = None
    cfg["text_config"]["indexer_compress_ratio"] = None
    assert dcp_check(ModelShape.from_config(cfg), tp=2, dcp=2).status == "pass"


# ------------------------------------------------------------------ the tiny checkpoint

TINY4 = REPO / "examples" / "tiny-qwen3.8-flash-next"


def test_tiny_checkpoint_is_the_generators_output_and_ships(tmp_path: Path) -> None:
    from qwenprep.testing.synth import write_tiny_qwen4_exp

    fresh = write_tiny_qwen4_exp(tmp_path / "fresh")
    names = sorted(p.name for p in TINY4.iterdir())
    assert names == sorted(p.name for p in fresh.iterdir())
    for name in names:
        assert (fresh / name).read_bytes() == (TINY4 / name).read_bytes(), name
    assert sum((TINY4 / n).stat().st_size for n in names) < 500_000
    force = (REPO / "pyproject.toml").read_text()
    assert '"examples/tiny-qwen3.8-flash-next" = "qwenprep/_examples/tiny-qwen3.8-flash-next"' in (
        force
    )


@pytest.mark.parametrize(
    "update",
    [
        {},
        {"hc_count": 3, "hc_lowrank": 5, "indexer_n_heads": 3, "tie_word_embeddings": True},
        {"layer_types": ["linear_attention", "full_attention"] * 2},
    ],
)
def test_layout_is_transformers_own(update: dict[str, Any]) -> None:
    """qwenprep's layout equals the state dict transformers' Qwen4ExpForCausalLM builds (on the
    meta device) for the config, name for name and shape for shape (tied: no lm_head saved)."""
    torch = pytest.importorskip("torch")
    modeling = pytest.importorskip("transformers.models.qwen4_exp.modeling_qwen4_exp")
    from transformers.models.qwen4_exp.configuration_qwen4_exp import Qwen4ExpTextConfig

    from qwenprep.model.families.qwen4_exp import tiny_qwen4_exp_config
    from qwenprep.model.layouts_qwen4 import qwen4_exp_tensors

    cfg = dict(tiny_qwen4_exp_config(nested=False), **update)
    specs = list(qwen4_exp_tensors(cfg))
    mine = {t.name: tuple(t.shape) for t in specs}
    assert len(mine) == len(specs)  # names are distinct
    kwargs = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        model = modeling.Qwen4ExpForCausalLM(Qwen4ExpTextConfig(**kwargs))
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.get("tie_word_embeddings"):
        theirs.pop("lm_head.weight")
    assert mine == theirs


def test_verify_and_profiles(tmp_path: Path) -> None:
    from qwenprep.model.profile import model_profile

    r = invoke("verify", str(TINY4), "--json")
    assert r.exit_code == 0, r.output
    c = _checks(r.output)
    assert c["tensors.names"]["status"] == "pass", c["tensors.names"]
    flat = json.loads((TINY4 / "config.json").read_text())
    assert "--language-model-only" not in model_profile(TINY4, flat, None).flags
    from qwenprep.model.families.qwen4_exp import tiny_qwen4_exp_config

    assert "--language-model-only" in model_profile(TINY4, tiny_qwen4_exp_config(), None).flags


@pytest.mark.engine
def test_tiny_patch_validate_check_plan(tmp_path: Path) -> None:
    """The tiny checkpoint end to end: patch to 1M, validate, check (vLLM 0.32's parser, config
    code and rotary embedding: the gate), plan."""
    pytest.importorskip("vllm")
    ov = tmp_path / "ov"
    assert invoke("patch", str(TINY4), "-c", "1m", "-o", str(ov)).exit_code == 0
    assert invoke("validate", str(ov)).exit_code == 0
    r = invoke("check", str(ov), "--json", "--kv-memory", "2GiB", "--vllm-python", sys.executable)
    assert r.exit_code == 0, r.output
    c = _checks(r.output)
    for cid in ("engine.max_model_len", "engine.rotation", "engine.partial_rotary_factor"):
        assert c[cid]["status"] == "pass", c[cid]
    r = invoke("plan", str(ov), "--kv-memory", "2GiB", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["hybrid"]["attention_layers"] == 1
