"""verify accepts exactly what vLLM's weight loader loads, on checkpoints really saved by the
venv's transformers 5 (save_pretrained of a tiny randomly initialised model built from the
shipped examples' configs; FACTS.md, "Loading what transformers 5 saves"):

- Qwen3-Next without mtp.* tensors (transformers has no MTP module): vLLM 0.32's
  Qwen3NextForCausalLM.hf_to_vllm_mapper drops "mtp." (qwen3_next.py), so it serves; verify
  passes with a warning that MTP speculative decoding needs them.
- Qwen3.5-MoE with routed experts one by one (transformers 5 unfolds them on save); vLLM's
  FusedMoE loader reads them and the stacked form alike (fused_moe/routed_experts.py,
  RoutedExperts.load_weights). A missing expert or a wrong shape still fails.
- A text-only Qwen3.5-MoE whose names keep "model.language_model.": vLLM's text-only loader
  strips it (qwen3_5.py, Qwen3_5ForCausalLMBase.hf_to_vllm_mapper).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import Result

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

CliFn = Callable[..., Result]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _save(example: str, out: Path, how: str = "causal") -> Path:
    """save_pretrained of a tiny model of EXAMPLE's config, randomly initialised (seed 0)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(EXAMPLES / example)
    if how == "causal":
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        model.save_pretrained(out)
    elif how == "vl":
        from transformers import Qwen3_5MoeForConditionalGeneration

        model = Qwen3_5MoeForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16)
        model.save_pretrained(out)
    elif how == "text":
        from transformers import Qwen3_5MoeForCausalLM

        model = Qwen3_5MoeForCausalLM._from_config(cfg.text_config, dtype=torch.bfloat16)
        model.save_pretrained(out)
    else:  # "text-prefixed": the language model's weights under the VL names, no tower
        from transformers import Qwen3_5MoeForConditionalGeneration

        model = Qwen3_5MoeForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16)
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("model.visual.")}
        model.save_pretrained(out, state_dict=state)
    return out


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("t5")
    out = {
        "next": _save("tiny-qwen3-next", base / "Qwen3-Next-t5"),
        "q35": _save("tiny-qwen3.5-moe", base / "Qwen3.5-MoE-t5", "vl"),
        "q35_text": _save("tiny-qwen3.5-moe", base / "Qwen3.5-MoE-text-t5", "text"),
        "q35_prefixed": _save("tiny-qwen3.5-moe", base / "Qwen3.5-MoE-text-prefixed", "x"),
    }
    # the text-only checkpoint keeping the VL names: the text-only model's own config.json
    shutil.copy(out["q35_text"] / "config.json", out["q35_prefixed"] / "config.json")
    return out


def _names(ckpt: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        return sorted(f.keys())


def _verify(cli: CliFn, ckpt: Path) -> tuple[int, dict[str, Any]]:
    r = cli("verify", str(ckpt), "--json")
    return r.exit_code, {c["id"]: c for c in json.loads(r.stdout)["checks"]}


def _edit(src: Path, dst: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of SRC whose model.safetensors went through EDIT (a dict of tensors)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_the_checkpoints_are_what_transformers_5_writes(saved: dict[str, Path]) -> None:
    import transformers

    assert int(transformers.__version__.split(".")[0]) >= 5
    assert not [n for n in _names(saved["next"]) if n.startswith("mtp.")]
    q35 = _names(saved["q35"])
    assert "model.language_model.layers.0.mlp.experts.3.gate_proj.weight" in q35
    assert not [n for n in q35 if n.endswith("experts.gate_up_proj")]
    assert "model.layers.0.mlp.experts.0.up_proj.weight" in _names(saved["q35_text"])
    assert _names(saved["q35_prefixed"])[1] == "model.language_model.embed_tokens.weight"


def test_qwen3_next_without_mtp_passes_with_a_warning(
    cli: CliFn, saved: dict[str, Path], tmp_path: Path
) -> None:
    code, c = _verify(cli, saved["next"])
    assert code == 0, c
    assert c["tensors.mtp"]["status"] == "warn"
    assert "MTP speculative decoding" in c["tensors.mtp"]["message"]
    assert c["tensors.names"]["status"] == "pass" and c["tensors.experts"]["status"] == "pass"
    # an expert gone from one layer still fails, and so does a wrong shape
    gone = _edit(
        saved["next"],
        tmp_path / "gone",
        lambda t: [
            t.pop(f"model.layers.1.mlp.experts.3.{p}.weight")
            for p in ("gate_proj", "up_proj", "down_proj")
        ],
    )
    code, c = _verify(cli, gone)
    assert code == 1 and c["tensors.experts"]["status"] == "fail"
    assert "layer 1: 3 experts" in c["tensors.experts"]["message"]
    assert c["tensors.names"]["status"] == "fail"

    def narrow(t: dict[str, Any]) -> None:
        t["model.layers.0.mlp.experts.2.down_proj.weight"] = torch.zeros(
            128, 8, dtype=torch.bfloat16
        )

    code, c = _verify(cli, _edit(saved["next"], tmp_path / "narrow", narrow))
    assert code == 1 and "experts.2.down_proj.weight" in c["tensors.shapes"]["message"]


def test_qwen3_5_moe_experts_one_by_one_or_stacked(
    cli: CliFn, saved: dict[str, Path], tmp_path: Path
) -> None:
    """transformers 5 writes the routed experts one by one; the release (the shipped tiny
    example) has them stacked; both pass. A missing expert and a wrong shape fail."""
    for ckpt in (saved["q35"], EXAMPLES / "tiny-qwen3.5-moe"):
        code, c = _verify(cli, ckpt)
        assert code == 0, c
        assert c["tensors.names"]["status"] == "pass" and c["tensors.experts"]["status"] == "pass"
    assert c["tensors.experts"]["message"].count("stacked")  # the example's
    lm = "model.language_model.layers"
    gone = _edit(
        saved["q35"], tmp_path / "gone", lambda t: t.pop(f"{lm}.2.mlp.experts.1.up_proj.weight")
    )
    code, c = _verify(cli, gone)
    assert code == 1 and c["tensors.names"]["status"] == "fail"
    assert f"{lm}.2.mlp.experts.1.up_proj.weight" in c["tensors.names"]["message"]

    def wide(t: dict[str, Any]) -> None:
        t[f"{lm}.0.mlp.experts.0.gate_proj.weight"] = torch.zeros(32, 64, dtype=torch.bfloat16)

    code, c = _verify(cli, _edit(saved["q35"], tmp_path / "wide", wide))
    assert code == 1 and c["tensors.shapes"]["status"] == "fail"
    assert f"{lm}.0.mlp.experts.0.gate_proj.weight" in c["tensors.shapes"]["message"]


def test_qwen3_next_experts_stacked_pass_too(
    cli: CliFn, saved: dict[str, Path], tmp_path: Path
) -> None:
    """Another qwen2_moe-style family: the transformers-5-saved Qwen3-Next's experts stacked
    per layer as the Qwen3.5 releases store them (gate and up concatenated) pass verify."""

    def stack(t: dict[str, Any]) -> None:
        for i in range(4):
            p = f"model.layers.{i}.mlp.experts."
            gu = [
                torch.cat([t.pop(f"{p}{e}.gate_proj.weight"), t.pop(f"{p}{e}.up_proj.weight")])
                for e in range(4)
            ]
            t[p + "gate_up_proj"] = torch.stack(gu)
            t[p + "down_proj"] = torch.stack([t.pop(f"{p}{e}.down_proj.weight") for e in range(4)])

    code, c = _verify(cli, _edit(saved["next"], tmp_path / "stacked", stack))
    assert code == 0, c
    assert "stacked" in c["tensors.experts"]["message"] and c["tensors.names"]["status"] == "pass"


def test_text_only_qwen3_5_with_or_without_the_language_model_prefix(
    cli: CliFn, saved: dict[str, Path]
) -> None:
    code, c = _verify(cli, saved["q35_text"])
    assert code == 0, c
    code, c = _verify(cli, saved["q35_prefixed"])
    assert code == 0, c
    assert c["tensors.loader"]["status"] == "pass"
    assert "model.language_model. -> model." in c["tensors.loader"]["message"]
    assert c["tensors.layers"]["status"] == "pass" and c["tensors.names"]["status"] == "pass"


def test_a_vision_language_config_keeps_its_own_names(
    cli: CliFn, saved: dict[str, Path], tmp_path: Path
) -> None:
    """The rename is the text-only loader's: a vision-language config over model.layers.*
    names (what vLLM's Qwen3VL mapper would not find) still fails."""
    ckpt = tmp_path / "vl-over-text"
    shutil.copytree(saved["q35_text"], ckpt)
    shutil.copy(saved["q35"] / "config.json", ckpt / "config.json")
    code, c = _verify(cli, ckpt)
    assert code == 1 and c["tensors.layers"]["status"] == "fail"
