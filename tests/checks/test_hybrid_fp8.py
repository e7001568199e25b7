"""The FP8 releases of the hybrid families (Qwen3-Next-80B-A3B-*-FP8 / Qwen3-Coder-Next-FP8,
Qwen3.5/3.6-*-FP8): their tensor layout (which linear weights are block FP8 with a
weight_scale_inv of [ceil(out/128), ceil(in/128)], which stay BF16), verify on sparse
checkpoints of the releases' shapes through the console script (tensor names compared, not
skipped; FP8 structure checked), the three ways such a checkpoint goes wrong, and plan / check
on them. Facts and their sources: docs/qwen-line.md, "FP8 releases"."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import QWENPREP_BIN

Entries = dict[str, dict[str, Any]]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QWENPREP_BIN), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )


def _checks(out: str) -> dict[str, dict[str, Any]]:
    obj = json.loads(out)
    assert isinstance(obj, dict)
    return {c["id"]: c for c in obj["checks"]}


def _next_config() -> dict[str, Any]:
    from qwenprep.testing.synth import qwen3_next_80b_fp8_config

    return qwen3_next_80b_fp8_config()


def _q35_config() -> dict[str, Any]:
    from qwenprep.model.families.qwen3_5 import qwen3_5_35b_a3b_fp8_config

    return qwen3_5_35b_a3b_fp8_config()


RELEASES: dict[str, Callable[[], dict[str, Any]]] = {
    "Qwen3-Next-80B-A3B-Instruct-FP8": _next_config,
    "Qwen3.5-35B-A3B-FP8": _q35_config,
}


def _make(dest: Path, name: str) -> Path:
    from qwenprep.testing.synth import make_shaped_checkpoint

    return make_shaped_checkpoint(dest / name, config=RELEASES[name](), shards=12)


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hybrid-fp8")
    return {name: _make(root, name) for name in RELEASES}


def _edit_headers(ckpt: Path, edit: Callable[[str, Entries], bool]) -> None:
    """Rewrite the header of each shard EDIT changes (EDIT(shard, entries) -> changed; entries
    maps a tensor name to {"dtype", "shape"}), data areas sparse again, and keep
    model.safetensors.index.json in step (its weight_map and total_size)."""
    from qwenprep.model.layouts import TensorSpec
    from qwenprep.testing.synth import INDEX_NAME, safetensors_header

    index = json.loads((ckpt / INDEX_NAME).read_text())
    total = 0
    weight_map: dict[str, str] = {}
    for shard in sorted(set(index["weight_map"].values())):
        path = ckpt / shard
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        meta = header.pop("__metadata__", None)
        entries: Entries = {
            k: {"dtype": v["dtype"], "shape": v["shape"]} for k, v in header.items()
        }
        if edit(shard, entries):
            specs = [TensorSpec(k, v["dtype"], tuple(v["shape"])) for k, v in entries.items()]
            head, data_len = safetensors_header(specs, meta)
            with open(path, "wb") as f:
                f.write(head)
                f.truncate(len(head) + data_len)
        else:
            data_len = max(v["data_offsets"][1] for v in header.values())
        total += data_len
        weight_map.update(dict.fromkeys(entries, shard))
    index["metadata"]["total_size"] = total
    index["weight_map"] = dict(sorted(weight_map.items()))
    (ckpt / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


# ------------------------------------------------------------------ the layout


def test_layouts_are_the_releases(tmp_path: Path) -> None:
    """The derived FP8 layouts hold what the releases hold: Qwen3.6-35B-A3B-FP8's 30,720
    per-expert weights with as many scales and 250 other scales in the language model (the
    counts mlx-lm PR 1224 met loading it); Qwen3-Next-FP8's modules_to_not_convert as a dump
    of the release's config lists it (407 modules, in that order); each dtype and scale
    shape; make_shaped_checkpoint(fp8=True) gives a hybrid config its own family's list."""
    from qwenprep.model.layouts import qwen3_5_tensors, qwen3_next_tensors
    from qwenprep.testing.synth import make_shaped_checkpoint, qwen3_next_80b_config, shaped_tensors

    q35 = {s.name: s for s in qwen3_5_tensors(_q35_config())}
    lm = [n for n in q35 if n.startswith("model.language_model.")]
    experts = [n for n in lm if ".mlp.experts." in n]
    assert sum(n.endswith("_proj.weight") for n in experts) == 30720
    assert sum(n.endswith(".weight_scale_inv") for n in experts) == 30720
    assert sum(n.endswith(".weight_scale_inv") for n in lm if n not in experts) == 250
    assert not any(n.endswith("gate_up_proj") for n in q35)  # one by one, not stacked
    assert not any(n.startswith("model.visual.") and q35[n].dtype == "F8_E4M3" for n in q35)
    p = "model.language_model.layers.0"
    want35 = {
        f"{p}.linear_attn.in_proj_qkv.weight": ("F8_E4M3", (8192, 2048)),
        f"{p}.linear_attn.in_proj_qkv.weight_scale_inv": ("BF16", (64, 16)),
        f"{p}.linear_attn.in_proj_z.weight_scale_inv": ("BF16", (32, 16)),
        f"{p}.linear_attn.in_proj_a.weight": ("BF16", (32, 2048)),
        f"{p}.linear_attn.in_proj_b.weight": ("BF16", (32, 2048)),
        f"{p}.linear_attn.conv1d.weight": ("BF16", (8192, 1, 4)),
        f"{p}.linear_attn.A_log": ("F32", (32,)),
        f"{p}.mlp.gate.weight": ("BF16", (256, 2048)),
        f"{p}.mlp.shared_expert_gate.weight": ("BF16", (1, 2048)),
        f"{p}.mlp.experts.255.down_proj.weight": ("F8_E4M3", (2048, 512)),
        f"{p}.mlp.experts.255.down_proj.weight_scale_inv": ("BF16", (16, 4)),
        "model.language_model.layers.3.self_attn.q_proj.weight_scale_inv": ("BF16", (64, 16)),
        "lm_head.weight": ("BF16", (248320, 2048)),
        "mtp.fc.weight": ("BF16", (2048, 4096)),
        "mtp.layers.0.mlp.experts.0.gate_proj.weight_scale_inv": ("BF16", (4, 16)),
        "model.visual.blocks.0.attn.qkv.weight": ("BF16", (3456, 1152)),
    }
    assert {n: (q35[n].dtype, q35[n].shape) for n in want35} == want35

    cfg = _next_config()
    keep = cfg["quantization_config"]["modules_to_not_convert"]
    assert len(keep) == 407
    assert keep[:11] == ["lm_head"] + [
        f"model.layers.0.{m}"
        for m in (
            "input_layernorm",
            "linear_attn.A_log",
            "linear_attn.conv1d",
            "linear_attn.dt_bias",
            "linear_attn.in_proj_ba",
            "linear_attn.norm",
            "mlp.gate",
            "mlp.shared_expert_gate",
            "post_attention_layernorm",
        )
    ] + ["model.layers.1.input_layernorm"]
    assert keep[-10:] == ["mtp.fc"] + [
        f"mtp.layers.0.{m}"
        for m in (
            "input_layernorm",
            "mlp.gate",
            "mlp.shared_expert_gate",
            "post_attention_layernorm",
            "self_attn.k_norm",
            "self_attn.q_norm",
        )
    ] + ["mtp.norm", "mtp.pre_fc_norm_embedding", "mtp.pre_fc_norm_hidden"]
    assert "model.layers.3.self_attn.q_norm" in keep and "model.embed_tokens" not in keep
    nxt = {s.name: s for s in qwen3_next_tensors(cfg)}
    wantn = {
        "model.layers.0.linear_attn.in_proj_qkvz.weight": ("F8_E4M3", (12288, 2048)),
        "model.layers.0.linear_attn.in_proj_qkvz.weight_scale_inv": ("BF16", (96, 16)),
        "model.layers.0.linear_attn.in_proj_ba.weight": ("BF16", (64, 2048)),
        "model.layers.0.linear_attn.out_proj.weight_scale_inv": ("BF16", (16, 32)),
        "model.layers.0.mlp.experts.511.up_proj.weight_scale_inv": ("BF16", (4, 16)),
        "model.layers.0.mlp.shared_expert.down_proj.weight": ("F8_E4M3", (2048, 512)),
        "model.layers.0.mlp.shared_expert_gate.weight": ("BF16", (1, 2048)),
        "model.layers.3.self_attn.q_proj.weight_scale_inv": ("BF16", (64, 16)),
        "model.layers.3.self_attn.o_proj.weight_scale_inv": ("BF16", (16, 32)),
        "model.embed_tokens.weight": ("BF16", (151936, 2048)),
        "lm_head.weight": ("BF16", (151936, 2048)),
        "mtp.fc.weight": ("BF16", (2048, 4096)),
        "mtp.layers.0.self_attn.k_proj.weight": ("F8_E4M3", (512, 2048)),
        "mtp.layers.0.mlp.experts.0.gate_proj.weight": ("F8_E4M3", (512, 2048)),
    }
    assert {n: (nxt[n].dtype, nxt[n].shape) for n in wantn} == wantn
    assert "model.layers.0.mlp.gate.weight_scale_inv" not in nxt
    bf16 = qwen3_next_80b_config()
    assert [s.name for s in shaped_tensors(bf16, fp8=False)] == [
        n for n in nxt if not n.endswith("weight_scale_inv")
    ]
    # fp8=True on the BF16 release's config: its own family's quantization_config
    for src, want in ((bf16, cfg), (_q35_config(), _q35_config())):
        src = {k: v for k, v in src.items() if k != "quantization_config"}
        ckpt = make_shaped_checkpoint(
            tmp_path / str(len(list(tmp_path.iterdir()))), config=src, fp8=True, shards=4
        )
        got = json.loads((ckpt / "config.json").read_text())
        assert got["quantization_config"] == want["quantization_config"]


# ------------------------------------------------------------------ verify through the CLI


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_verify_compares_names_and_fp8_structure(name: str, releases: dict[str, Path]) -> None:
    r = _run("verify", str(releases[name]), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    c = _checks(r.stdout)
    assert c["tensors.names"]["status"] == "pass", c["tensors.names"]
    assert "tensors config.json implies are present" in c["tensors.names"]["message"]
    assert c["tensors.layers"]["status"] == "pass"
    assert c["tensors.experts"]["status"] == "pass"
    assert c["fp8.scales"]["status"] == "pass", c["fp8.scales"]
    assert c["fp8.not_convert"]["status"] == "pass", c["fp8.not_convert"]
    assert "fp8.coverage" not in c and "tensors.unknown" not in c and "tensors.shapes" not in c
    config = json.loads((releases[name] / "config.json").read_text())
    assert config["quantization_config"]["weight_block_size"] == [128, 128]


def _drop(name: str) -> Callable[[str, Entries], bool]:
    def edit(shard: str, entries: Entries) -> bool:
        return entries.pop(name, None) is not None

    return edit


def _reshape(name: str, shape: list[int]) -> Callable[[str, Entries], bool]:
    def edit(shard: str, entries: Entries) -> bool:
        if name not in entries:
            return False
        entries[name]["shape"] = shape
        return True

    return edit


def _to_fp8(name: str) -> Callable[[str, Entries], bool]:
    """NAME becomes F8_E4M3 with a weight_scale_inv of the right block shape beside it: the
    FP8 structure is sound, only the release keeps that module BF16."""

    def edit(shard: str, entries: Entries) -> bool:
        if name not in entries:
            return False
        out, inp = entries[name]["shape"]
        entries[name]["dtype"] = "F8_E4M3"
        entries[name[: -len("weight")] + "weight_scale_inv"] = {
            "dtype": "BF16",
            "shape": [-(-out // 128), -(-inp // 128)],
        }
        return True

    return edit


BROKEN = [
    (
        "Qwen3-Next-80B-A3B-Instruct-FP8",
        "missing scale",
        "model.layers.3.self_attn.q_proj.weight_scale_inv",
    ),
    (
        "Qwen3.5-35B-A3B-FP8",
        "missing scale",
        "model.language_model.layers.7.mlp.experts.100.down_proj.weight_scale_inv",
    ),
    (
        "Qwen3-Next-80B-A3B-Instruct-FP8",
        "scale shape",
        "model.layers.0.linear_attn.in_proj_qkvz.weight_scale_inv",
    ),
    ("Qwen3.5-35B-A3B-FP8", "scale shape", "mtp.layers.0.self_attn.o_proj.weight_scale_inv"),
    (
        "Qwen3-Next-80B-A3B-Instruct-FP8",
        "fp8 kept bf16",
        "model.layers.0.linear_attn.in_proj_ba.weight",
    ),
    ("Qwen3-Next-80B-A3B-Instruct-FP8", "fp8 kept bf16", "mtp.fc.weight"),
    (
        "Qwen3.5-35B-A3B-FP8",
        "fp8 kept bf16",
        "model.language_model.layers.4.mlp.shared_expert_gate.weight",
    ),
    ("Qwen3.5-35B-A3B-FP8", "fp8 kept bf16", "model.visual.blocks.0.attn.qkv.weight"),
]


@pytest.mark.slow  # a checkpoint of the release's shape each, verified twice: ~5 s
@pytest.mark.parametrize(("name", "what", "tensor"), BROKEN)
def test_broken_fp8_structure_fails_naming_the_tensor(
    name: str, what: str, tensor: str, tmp_path: Path
) -> None:
    ckpt = _make(tmp_path, name)
    if what == "missing scale":
        _edit_headers(ckpt, _drop(tensor))
        check, weight = "fp8.scales", tensor[: -len("_scale_inv")]
    elif what == "scale shape":
        _edit_headers(ckpt, _reshape(tensor, [1, 1]))
        check, weight = "fp8.scales", tensor
    else:
        _edit_headers(ckpt, _to_fp8(tensor))
        check, weight = "fp8.not_convert", tensor
    r = _run("verify", str(ckpt), "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    c = _checks(r.stdout)
    assert c[check]["status"] == "fail", c[check]
    assert weight in c[check]["message"], c[check]["message"]
    if what == "missing scale":
        assert c["tensors.names"]["status"] == "fail" and tensor in c["tensors.names"]["message"]
    if what == "scale shape":
        assert "has shape [1, 1], expected" in c[check]["message"]
    r = _run("verify", str(ckpt))  # people read the same, on stderr
    assert r.returncode == 1 and weight in r.stdout + r.stderr


# ------------------------------------------------------------------ plan and check


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_plan_and_check_work_on_the_fp8_releases(name: str, releases: dict[str, Path]) -> None:
    ckpt = str(releases[name])
    r = _run("plan", ckpt, "--kv-memory", "60GiB", "--tp", "1", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    plan = json.loads(r.stdout)
    assert plan["ok"] and plan["fits"] and plan["kv_cache_tokens"] > 262144
    r = _run("check", ckpt, "--no-engine", "--kv-memory", "60GiB", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    c = _checks(r.stdout)
    assert not [k for k, v in c.items() if v["status"] == "fail"]
