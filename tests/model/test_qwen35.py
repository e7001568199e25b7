"""Qwen3.5 / Qwen3.6 (qwen3_5, qwen3_5_moe and their _text configs): the vision-language hybrid
family, end to end through the console script, on the embedded tiny Qwen3.5-MoE checkpoint and
on a sparse checkpoint shaped like Qwen3.5-35B-A3B; the engine readback and the gate through
vLLM 0.32's own config code (ModelConfig cannot inspect the VL architecture on the CPU build:
no torchvision); the long-context traps of nested overrides."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import Result

from conftest import EXAMPLES, QWENPREP_BIN, REPO

CliFn = Callable[..., Result]
TINY35 = EXAMPLES / "tiny-qwen3.5-moe"
NO_VLLM = "/usr/bin/python3"  # an interpreter without vLLM: the gate judges offline
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 262144}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.setdefault("QWENPREP_OVERLAYS", os.environ["QWENPREP_OVERLAYS"])
    return subprocess.run(
        [str(QWENPREP_BIN), *args], capture_output=True, text=True, timeout=600, env=env
    )


def _json(out: str) -> dict[str, Any]:
    obj = json.loads(out)
    assert isinstance(obj, dict)
    return obj


def _checks(out: str) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in _json(out)["checks"]}


@pytest.fixture(scope="module")
def release35(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sparse checkpoint shaped like Qwen/Qwen3.5-35B-A3B (real headers, no data)."""
    from qwenprep.model.families.qwen3_5 import qwen3_5_35b_a3b_config
    from qwenprep.testing.synth import make_shaped_checkpoint

    return make_shaped_checkpoint(
        tmp_path_factory.mktemp("q35") / "Qwen3.5-35B-A3B",
        config=qwen3_5_35b_a3b_config(),
        fp8=False,
        shards=8,
    )


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    dest = tmp_path / "Qwen3.5-tiny"
    shutil.copytree(TINY35, dest)
    return dest


# ------------------------------------------------------------------ the embedded checkpoint


def test_tiny_checkpoint_is_the_generators_output_and_ships(tmp_path: Path) -> None:
    from qwenprep.testing.synth import write_tiny_qwen3_5_moe

    fresh = write_tiny_qwen3_5_moe(tmp_path / "fresh")
    names = sorted(p.name for p in TINY35.iterdir())
    assert names == sorted(p.name for p in fresh.iterdir())
    for name in names:
        assert (fresh / name).read_bytes() == (TINY35 / name).read_bytes(), name
    assert sum((TINY35 / n).stat().st_size for n in names) < 1_000_000
    force = (REPO / "pyproject.toml").read_text()
    assert '"examples/tiny-qwen3.5-moe" = "qwenprep/_examples/tiny-qwen3.5-moe"' in force


def test_tensor_layout_is_the_releases(release35: Path) -> None:
    """Names and shapes as the real 35B-A3B release and vLLM 0.32's qwen3_5.py loader have them:
    language model under model.language_model., the four Gated DeltaNet projections, stacked
    experts [E, 2I, H] / [E, H, I], shared expert, MTP under mtp., vision tower model.visual."""
    from qwenprep.model.families.qwen3_5 import qwen3_5_35b_a3b_config
    from qwenprep.model.layouts import qwen3_5_tensors
    from qwenprep.util.safetensors_io import read_raw_header

    specs = {s.name: s.shape for s in qwen3_5_tensors(qwen3_5_35b_a3b_config())}
    p = "model.language_model.layers"
    assert specs[f"{p}.0.linear_attn.in_proj_qkv.weight"] == (8192, 2048)
    assert specs[f"{p}.0.linear_attn.in_proj_z.weight"] == (4096, 2048)
    assert specs[f"{p}.0.linear_attn.in_proj_b.weight"] == (32, 2048)
    assert specs[f"{p}.0.linear_attn.conv1d.weight"] == (8192, 1, 4)
    assert specs[f"{p}.0.linear_attn.out_proj.weight"] == (2048, 4096)
    assert specs[f"{p}.0.mlp.experts.gate_up_proj"] == (256, 1024, 2048)
    assert specs[f"{p}.39.mlp.experts.down_proj"] == (256, 2048, 512)
    assert specs[f"{p}.3.self_attn.q_proj.weight"] == (8192, 2048)  # output gate: 2 x 16 x 256
    assert specs[f"{p}.0.mlp.shared_expert_gate.weight"] == (1, 2048)
    assert f"{p}.3.linear_attn.in_proj_qkv.weight" not in specs
    assert specs["model.visual.blocks.26.attn.qkv.weight"] == (3456, 1152)
    assert specs["model.visual.merger.linear_fc2.weight"] == (2048, 4608)
    assert specs["mtp.layers.0.mlp.experts.255.down_proj.weight"] == (2048, 512)
    assert specs["mtp.fc.weight"] == (2048, 4096) and specs["lm_head.weight"] == (248320, 2048)
    assert not any(n.startswith("model.layers.") for n in specs)
    # the sparse release and the tiny checkpoint hold exactly what the layout says
    for root in (release35, TINY35):
        cfg = json.loads((root / "config.json").read_text())
        want = {s.name: list(s.shape) for s in qwen3_5_tensors(cfg)}
        got: dict[str, list[int]] = {}
        for shard in sorted(root.glob("*.safetensors")):
            got.update(
                {
                    n: list(t["shape"])
                    for n, t in read_raw_header(shard)[2].items()
                    if n != "__metadata__"
                }
            )
        assert got == want, root


# ------------------------------------------------------------------ end to end


@pytest.mark.parametrize("which", ["tiny", "35b"])
def test_every_command_through_the_console_script(
    which: str, tiny: Path, release35: Path, tmp_path: Path
) -> None:
    src = tiny if which == "tiny" else release35
    before = (src / "config.json").read_bytes()
    for args in (["validate", str(src)], ["verify", str(src)]):
        r = _run(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    ov = tmp_path / "ov"
    r = _run("patch", str(src), "-c", "1m", "-o", str(ov), "--json")
    assert r.returncode == 0, r.stderr
    assert _json(r.stdout)["factor"] == 4.0 and _json(r.stdout)["native_context"] == 262144
    cfg = json.loads((ov / "config.json").read_text())
    text, orig = cfg["text_config"], json.loads(before)["text_config"]
    assert text["max_position_embeddings"] == 1048576 and "max_position_embeddings" not in cfg
    rope = text["rope_parameters"]
    assert rope == {**orig["rope_parameters"], **YARN}  # every key kept, theta and M-RoPE too
    assert rope["rope_theta"] == 10000000 and rope["partial_rotary_factor"] == 0.25
    assert "rope_parameters" not in cfg and "rope_scaling" not in text
    assert {k: v for k, v in cfg.items() if k != "text_config"} == {
        k: v for k, v in json.loads(before).items() if k != "text_config"
    }

    r = _run("validate", str(ov), "--json")
    assert r.returncode == 0, r.stdout
    checks = _checks(r.stdout)
    for cid in (
        "invariant.yarn_length",
        "invariant.mrope_section",
        "invariant.layer_types",
        "invariant.rope_theta",
    ):
        assert checks[cid]["status"] == "pass", cid
    r = _run("verify", str(ov), "--json")
    assert r.returncode == 0, r.stdout
    # the version pinned: without vLLM installed plan assumes the newest it knows
    r = _run("plan", str(ov), "--kv-memory", "60GiB", "--vllm-version", "0.32", "--json")
    assert r.returncode == 0, r.stderr
    plan = _json(r.stdout)
    assert plan["hybrid"]["verified_for_this_version"] and plan["context"] == 1048576
    r = _run("check", str(ov), "--no-engine", "--kv-memory", "60GiB", "--json")
    assert r.returncode == 0, r.stdout
    engine = {k: v for k, v in _checks(r.stdout).items() if k.startswith("engine.")}
    assert engine["engine.mrope_section"]["status"] == "pass"
    assert engine["engine.rope_theta"]["message"].endswith("vLLM uses 10000000")
    r = _run("serve", str(ov), "--dry-run", "--json", "--vllm-python", NO_VLLM)
    assert r.returncode == 0, r.stderr
    served = _json(r.stdout)
    argv = served["argv"]
    assert served["max_model_len"] == 1048576 and served["profile"].endswith("vl-text-only")
    assert "--language-model-only" in argv
    assert argv[argv.index("--reasoning-parser") + 1] == "qwen3"
    r = _run("revert", str(ov), "--json")
    assert r.returncode == 0, r.stderr
    assert not ov.exists() and (src / "config.json").read_bytes() == before


def test_release_plan_numbers(release35: Path, tmp_path: Path) -> None:
    """Qwen3.5-35B-A3B at TP 1: 10 full-attention layers (2 KV heads x 256, bf16: 2,048 bytes
    per token per layer), 30 Gated DeltaNet layers, each 49,152 bytes of conv state (bf16) +
    2,097,152 of recurrent state (float32: the config's mamba_ssm_dtype) per request; vLLM
    raises the block to 1,056 tokens (1,056 x 2,048 = 2,162,688 >= 2,146,304)."""
    ov = tmp_path / "ov"
    assert _run("patch", str(release35), "-c", "1m", "-o", str(ov)).returncode == 0
    r = _run("plan", str(ov), "--kv-memory", "60GiB", "--json")
    assert r.returncode == 0, r.stderr
    p = _json(r.stdout)
    h = p["hybrid"]
    assert p["bytes_per_token_per_gpu"] == 10 * 2048
    assert h["state_bytes_per_layer_per_request"] == 49152 + 2097152
    assert h["block_size"] == 1056 and h["page_bytes"] == 1056 * 2048
    assert [g["layers"] for g in h["groups"]] == [10, 10, 10, 10]


# ------------------------------------------------------------------ traps and refusals


def test_mrope_and_partial_rotary_must_stay_in_the_rope_dict(tiny: Path) -> None:
    cfg = json.loads((tiny / "config.json").read_text())
    cfg["text_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000000}
    (tiny / "config.json").write_text(json.dumps(cfg, indent=2))
    r = _run("validate", str(tiny), "--json")
    assert r.returncode == 1
    fails = {c["id"]: c["message"] for c in _json(r.stdout)["checks"] if c["status"] == "fail"}
    assert "no mrope_section" in fails["invariant.mrope_section"]
    cfg["text_config"]["rope_parameters"]["mrope_section"] = [11, 11, 10]
    (tiny / "config.json").write_text(json.dumps(cfg, indent=2))
    fails = {
        c["id"]: c["message"]
        for c in _json(_run("validate", str(tiny), "--json").stdout)["checks"]
        if c["status"] == "fail"
    }
    assert (
        "adds up to 32, but head_dim 32 x partial_rotary_factor 0.25 / 2 = 4"
        in fails["invariant.mrope_section"]
    )
    cfg["text_config"]["rope_parameters"]["mrope_section"] = [11, 11, 10]
    del cfg["text_config"]["partial_rotary_factor"]  # transformers 5 would copy this one in
    (tiny / "config.json").write_text(json.dumps(cfg, indent=2))
    fails = {
        c["id"]: c["message"]
        for c in _json(_run("validate", str(tiny), "--json").stdout)["checks"]
        if c["status"] == "fail"
    }
    assert "rotate every head dimension" in fails["invariant.partial_rotary_factor_in_rope"]


def test_mpe_only_bump_and_flat_override_are_refused(tiny: Path) -> None:
    """A bump of max_position_embeddings alone (nested, as vLLM 0.32 merges it, or flat) leaves
    RoPE unscaled past 262,144; the Qwen3-Next recipe's flat rope override does not reach a
    text_config model at all. check fails (exit 1) and serve refuses (exit 3), saying why."""
    bumps = [
        {"text_config": {"max_position_embeddings": 1048576}},
        {"max_position_embeddings": 1048576, "rope_parameters": {**YARN, "rope_theta": 10000000}},
    ]
    for over in bumps:
        extra = ["--", "--hf-overrides", json.dumps(over)]
        r = _run(
            "check",
            str(tiny),
            "--context",
            "1m",
            "--no-engine",
            "--kv-memory",
            "2GiB",
            "--json",
            *extra,
        )
        assert r.returncode == 1, r.stdout
        fails = {c["id"]: c["message"] for c in _json(r.stdout)["checks"] if c["status"] == "fail"}
        assert "unscaled RoPE" in fails["engine.plan"], fails
        r = _run(
            "serve",
            str(tiny),
            "--max-model-len",
            "1m",
            "--dry-run",
            "--vllm-python",
            NO_VLLM,
            *extra,
        )
        assert r.returncode == 3 and "unscaled RoPE" in r.stderr, r.stderr


def test_overrides_that_change_the_mrope_sections_are_refused_offline(
    tiny: Path, tmp_path: Path
) -> None:
    """Offline (no vLLM), the gate reads a nested override as vLLM 0.32 applies it: merged
    key by key into text_config.rope_parameters. A partial rope dict keeps rope_theta and the
    M-RoPE sections (accepted); one that changes the sections or the rotary fraction is
    refused by check (exit 1) and serve (exit 3) with what vLLM would use."""
    ov = tmp_path / "ov"
    assert _run("patch", str(tiny), "-c", "1m", "-o", str(ov)).returncode == 0
    partial = json.dumps({"text_config": {"rope_parameters": YARN}})
    r = _run(
        "check",
        str(ov),
        "--no-engine",
        "--kv-memory",
        "2GiB",
        "--json",
        "--",
        "--hf-overrides",
        partial,
    )
    assert r.returncode == 0, r.stdout
    assert _checks(r.stdout)["engine.rope_theta"]["status"] == "pass"
    wrong = json.dumps(
        {
            "text_config": {
                "rope_parameters": {"mrope_section": [4, 0, 0], "partial_rotary_factor": 0.5}
            }
        }
    )
    r = _run(
        "check",
        str(ov),
        "--no-engine",
        "--kv-memory",
        "2GiB",
        "--json",
        "--",
        "--hf-overrides",
        wrong,
    )
    assert r.returncode == 1
    fails = {c["id"]: c["message"] for c in _json(r.stdout)["checks"] if c["status"] == "fail"}
    assert "would use [4, 0, 0] but config.json sets [2, 1, 1]" in fails["engine.mrope_section"]
    assert "would use 0.5 but config.json sets 0.25" in fails["engine.partial_rotary_factor"]
    r = _run("serve", str(ov), "--dry-run", "--vllm-python", NO_VLLM, "--", "--hf-overrides", wrong)
    assert r.returncode == 3 and "[engine.mrope_section]" in r.stderr, r.stderr


def test_unknown_vision_language_family_is_refused_by_name(tiny: Path, tmp_path: Path) -> None:
    cfg = json.loads((tiny / "config.json").read_text())
    cfg.update(model_type="qwen3_7", architectures=["Qwen3_7ForConditionalGeneration"])
    cfg["text_config"]["model_type"] = "qwen3_7_text"
    (tiny / "config.json").write_text(json.dumps(cfg, indent=2))
    r = _run("patch", str(tiny), "-c", "1m", "-o", str(tmp_path / "x"))
    assert r.returncode == 3 and not (tmp_path / "x").exists()
    assert "'qwen3_7'" in r.stderr and "nor text_config.model_type 'qwen3_7_text'" in r.stderr
    assert "cannot map" in r.stderr
    r = _run("validate", str(tiny))
    assert r.returncode == 1 and "qwen3_7_text" in r.stdout
    r = _run("serve", str(tiny), "--dry-run", "--vllm-python", NO_VLLM)
    assert r.returncode == 3 and "qwen3_7" in r.stderr


def test_families_and_profiles(tiny: Path) -> None:
    """Both text model types map to the family; a text-only checkpoint (flat, qwen3_5_moe_text)
    is served without --language-model-only; the dense family has its own entry."""
    from qwenprep.model.families import lookup
    from qwenprep.model.profile import model_profile
    from qwenprep.model.view import ModelView

    assert lookup("qwen3_5_moe_text") is lookup("qwen3_5_moe") is not None
    assert lookup("qwen3_5_text") is lookup("qwen3_5") is not None
    assert lookup("qwen3_5") is not lookup("qwen3_5_moe")
    cfg = json.loads((tiny / "config.json").read_text())
    assert ModelView(cfg).family.name == "qwen3.5-moe"
    flat = dict(cfg["text_config"], architectures=["Qwen3_5MoeForCausalLM"])
    prof = model_profile(tiny, flat, None)
    assert "--language-model-only" not in prof.flags and prof.reasoning_parser == "qwen3"
    assert "--language-model-only" in model_profile(tiny, cfg, None).flags


# ------------------------------------------------------------------ through vLLM itself


@pytest.mark.engine
def test_readback_through_vllms_config_layer(tiny: Path, tmp_path: Path) -> None:
    """verify --engine on the 1M overlay: what vLLM 0.32 will use (length, YaRN, rope_theta,
    partial_rotary_factor, mrope_section), read by vLLM's own config functions. ModelConfig
    itself cannot inspect the VL class without torchvision: a WARN says so, not a failure."""
    pytest.importorskip("vllm")
    ov = tmp_path / "ov"
    assert _run("patch", str(tiny), "-c", "1m", "-o", str(ov)).returncode == 0
    r = _run("verify", str(ov), "--engine", "--json", "--vllm-python", sys.executable)
    assert r.returncode == 0, r.stdout + r.stderr
    c = _checks(r.stdout)
    want = {
        "engine.max_model_len": "1048576",
        "engine.rope_type": "yarn",
        "engine.rope_factor": "4",
        "engine.rope_original": "262144",
        "engine.rope_theta": "10000000",
        "engine.partial_rotary_factor": "0.25",
        "engine.mrope_section": "[2, 1, 1]",
    }
    for cid, value in want.items():
        assert c[cid]["status"] == "pass" and c[cid]["message"].endswith(f"uses {value}"), c[cid]
    if c.get("engine.config_layer"):
        assert c["engine.config_layer"]["status"] == "warn"
        assert "_get_and_verify_max_len" in c["engine.config_layer"]["message"]


@pytest.mark.engine
def test_gate_through_vllm_on_nested_overrides(tiny: Path, tmp_path: Path) -> None:
    """The gate parses the argv with vLLM 0.32's CLI and applies --hf-overrides with vLLM's own
    code: a partial text_config.rope_parameters dict is merged (rope_theta and the M-RoPE
    sections survive: accepted, unlike SGLang, which replaces it); changed sections are
    refused with what vLLM would use."""
    pytest.importorskip("vllm")
    ov = tmp_path / "ov"
    assert _run("patch", str(tiny), "-c", "1m", "-o", str(ov)).returncode == 0
    from qwenprep.engines.vllm.core import discover
    from qwenprep.engines.vllm.engine import build_launch_plan
    from qwenprep.engines.vllm.gate import probe_plans

    partial = ("--hf-overrides", json.dumps({"text_config": {"rope_parameters": YARN}}))
    wrong = (
        "--hf-overrides",
        json.dumps({"text_config": {"rope_parameters": {"mrope_section": [4, 0, 0]}}}),
    )
    engine = discover(sys.executable)
    assert engine is not None and engine.importable
    plans = [
        build_launch_plan(ov, engine=engine, extra_args=x, offline_gate=False, for_check=True)
        for x in (partial, wrong)
    ]
    probe_plans(plans, sys.executable)  # one import of vLLM for both
    from conftest import invoke

    r = invoke(
        "check",
        str(ov),
        "--kv-memory",
        "2GiB",
        "--json",
        "--vllm-python",
        sys.executable,
        "--",
        *partial,
    )
    assert r.exit_code == 0, r.output
    c = _checks(r.stdout)
    assert c["engine.rope_theta"]["message"].endswith("vLLM uses 10000000")
    assert c["engine.mrope_section"]["status"] == "pass"
    r = invoke(
        "check",
        str(ov),
        "--kv-memory",
        "2GiB",
        "--json",
        "--vllm-python",
        sys.executable,
        "--",
        *wrong,
    )
    assert r.exit_code == 1, r.output
    fails = {k: v["message"] for k, v in _checks(r.stdout).items() if v["status"] == "fail"}
    assert (
        "vLLM would use [4, 0, 0] but config.json sets [2, 1, 1]" in fails["engine.mrope_section"]
    )


def test_text_only_and_dense_configs_patch_in_their_own_place() -> None:
    """A text-only checkpoint (qwen3_5_moe_text at the top level) is patched at the top level;
    a dense Qwen3.5 (qwen3_5 / qwen3_5_text, intermediate_size instead of experts) under
    text_config; both keep every rope key and validate."""
    from qwenprep.checks.validate import invariant_checks, schema_problems
    from qwenprep.model.contexts import parse_context, patch_config
    from qwenprep.model.families.qwen3_5 import tiny_qwen3_5_moe_config
    from qwenprep.model.layouts import qwen3_5_tensors

    vl = tiny_qwen3_5_moe_config()
    flat = dict(vl["text_config"], architectures=["Qwen3_5MoeForCausalLM"])
    dense = json.loads(json.dumps(vl))
    dense.update(model_type="qwen3_5", architectures=["Qwen3_5ForConditionalGeneration"])
    t = dense["text_config"]
    for k in (
        "num_experts",
        "num_experts_per_tok",
        "moe_intermediate_size",
        "shared_expert_intermediate_size",
        "router_aux_loss_coef",
    ):
        t.pop(k)
    t.update(model_type="qwen3_5_text", intermediate_size=96)
    for cfg, text_of in ((flat, lambda c: c), (dense, lambda c: c["text_config"])):
        assert schema_problems(cfg) == []
        new = patch_config(cfg, parse_context("1m")).config
        assert text_of(new)["rope_parameters"] == {**text_of(cfg)["rope_parameters"], **YARN}
        assert text_of(new)["max_position_embeddings"] == 1048576
        assert schema_problems(new) == []
        fails = [c for c in invariant_checks(new) if c.status == "fail"]
        assert not fails, fails
    names = {s.name for s in qwen3_5_tensors(flat)}
    assert "model.layers.0.linear_attn.in_proj_qkv.weight" in names
    assert not any(n.startswith(("model.language_model.", "model.visual.")) for n in names)
    dnames = {s.name: s.shape for s in qwen3_5_tensors(dense)}
    assert dnames["model.language_model.layers.0.mlp.gate_proj.weight"] == (96, 64)
    assert not any(".experts." in n for n in dnames)


VLLM_KV = r"""
import json, sys
path, max_len, avail, tp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
from vllm.config import CacheConfig, ModelConfig, VllmConfig
from vllm.model_executor.layers.mamba.mamba_utils import (MambaStateDtypeCalculator,
                                                         MambaStateShapeCalculator)
from vllm.model_executor.models.config import Qwen3_5ForConditionalGenerationConfig
from vllm.platforms.interface import Platform
from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend
from vllm.v1.core import kv_cache_utils as ku
from vllm.v1.kv_cache_interface import FullAttentionSpec, MambaSpec

# ModelConfig cannot inspect the Qwen3.5 classes here (no torchvision): it inspects the
# Qwen3-Next class instead (the hf_text_config is still Qwen3.5's, from its model_type); what
# the Qwen3.5 classes add is done below by vLLM's own code: their state shape and dtype
# calculators (Qwen3_5ForCausalLMBase.get_mamba_state_*_from_config) and the
# mamba_ssm_dtype hook (Qwen3_5ForConditionalGenerationConfig.verify_and_update_config).
mc = ModelConfig(model=path, max_model_len=max_len, trust_remote_code=False,
                 hf_overrides={"architectures": ["Qwen3NextForCausalLM"]})
vc = VllmConfig(model_config=mc, cache_config=CacheConfig(enable_prefix_caching=True))
cc = vc.cache_config
cc.block_size, cc.mamba_cache_dtype, cc.mamba_ssm_cache_dtype = 16, "auto", "auto"
cc.mamba_page_size_padded, cc.mamba_cache_mode, cc.kv_cache_layout = None, "align", "NHD"
vc.parallel_config.tensor_parallel_size = tp
Qwen3_5ForConditionalGenerationConfig.verify_and_update_config(vc)
t = mc.hf_text_config
shapes = MambaStateShapeCalculator.gated_delta_net_state_shape(
    tp, t.linear_num_key_heads, t.linear_num_value_heads, t.linear_key_head_dim,
    t.linear_value_head_dim, t.linear_conv_kernel_dim, 0)
dtypes = MambaStateDtypeCalculator.gated_delta_net_state_dtype(
    mc.dtype, cc.mamba_cache_dtype, cc.mamba_ssm_cache_dtype)
Platform._align_hybrid_block_size(vc, FlashAttentionBackend)
bs = cc.block_size
specs = {}
for i, kind in enumerate(t.layer_types):
    if kind == "full_attention":
        specs[f"l{i}"] = FullAttentionSpec(block_size=bs, num_kv_heads=mc.get_num_kv_heads(
            vc.parallel_config), head_size=mc.get_head_size(), dtype=mc.dtype)
    else:
        specs[f"l{i}"] = MambaSpec(shapes=shapes, dtypes=dtypes, block_size=bs,
                                   page_size_padded=cc.mamba_page_size_padded,
                                   mamba_cache_mode="align")
groups = ku.get_kv_cache_groups(vc, dict(specs))
config = ku.get_kv_cache_config_from_groups(vc, groups, avail)
tokens, concurrency = ku.get_kv_cache_capacity(vc, config)
print("QWENPREP_VLLM_KV " + json.dumps({
    "block_size": bs, "page_bytes": cc.mamba_page_size_padded,
    "state_bytes": MambaSpec(shapes=shapes, dtypes=dtypes, block_size=bs).page_size_bytes,
    "groups": [len(g.layer_names) for g in groups], "num_blocks": config.num_blocks,
    "tokens": tokens, "concurrency": concurrency,
    "needed": ku.max_memory_usage_bytes(vc, specs.values())}))
"""


@pytest.mark.engine
def test_hybrid_kv_equals_vllms_own_functions(tiny: Path, release35: Path, tmp_path: Path) -> None:
    """qwenprep plan against vLLM 0.32's own arithmetic for Qwen3.5 (float32 recurrent state
    from the config's mamba_ssm_dtype): block size, padded page, state, groups, blocks, tokens,
    bytes one request needs and concurrency, for the tiny and the 35B-A3B at TP 1 and 2."""
    pytest.importorskip("vllm")
    cases = [(tiny, 1, 2 * 2**30), (release35, 1, 60 * 2**30), (release35, 2, 50 * 2**30)]
    for i, (src, tp, avail) in enumerate(cases):
        ov = tmp_path / f"ov{i}"
        assert _run("patch", str(src), "-c", "1m", "-o", str(ov)).returncode == 0
        run = subprocess.run(
            [sys.executable, "-c", VLLM_KV, str(ov), "1048576", str(avail), str(tp)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        line = [ln for ln in run.stdout.splitlines() if ln.startswith("QWENPREP_VLLM_KV ")]
        assert line, run.stderr[-3000:]
        want = json.loads(line[-1].split(" ", 1)[1])
        r = _run(
            "plan",
            str(ov),
            "--tp",
            str(tp),
            "--gpus",
            str(tp),
            "--kv-memory",
            f"{avail}B",
            "--vllm-version",
            "0.32",
            "--json",
        )
        assert r.returncode == 0, r.stderr
        p = _json(r.stdout)
        h = p["hybrid"]
        got = {
            "block_size": p["block_size"],
            "page_bytes": h["page_bytes"],
            "state_bytes": h["state_bytes_per_layer_per_request"],
            "groups": [g["layers"] for g in h["groups"]],
            "num_blocks": p["num_blocks"],
            "tokens": p["kv_cache_tokens"],
            "needed": p["kv_cache_needed_bytes"],
        }
        assert got == {k: want[k] for k in got}, (src, tp)
        assert p["max_concurrency"] == round(want["concurrency"], 4)


def test_verify_compares_the_language_models_layers_and_experts(
    tiny: Path, release35: Path
) -> None:
    """verify reads the counts from text_config and the layers under model.language_model.
    (they used to be skipped: "config.json has no num_hidden_layers"); a missing layer and a
    stacked expert tensor of the wrong shape fail."""
    for ckpt in (tiny, release35):
        r = _run("verify", str(ckpt), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        c = _checks(r.stdout)
        assert c["tensors.layers"]["status"] == "pass", c["tensors.layers"]
        assert (
            c["tensors.experts"]["status"] == "pass"
            and "stacked" in c["tensors.experts"]["message"]
        )
        assert c["tensors.names"]["status"] == "pass"
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    shard = tiny / "model.safetensors"
    tensors = load_file(shard)
    layer3 = [k for k in tensors if k.startswith("model.language_model.layers.3.")]
    assert layer3
    gate_up = next(k for k in tensors if k.endswith("layers.1.mlp.experts.gate_up_proj"))
    kept = {k: v for k, v in tensors.items() if k not in layer3}
    kept[gate_up] = torch.zeros(
        (tensors[gate_up].shape[0] - 1, *tensors[gate_up].shape[1:]), dtype=tensors[gate_up].dtype
    )
    save_file(kept, str(shard), metadata={"format": "pt"})
    r = _run("verify", str(tiny), "--json")
    assert r.returncode == 1
    c = _checks(r.stdout)
    assert (
        c["tensors.layers"]["status"] == "fail"
        and "layer(s) 3 missing" in c["tensors.layers"]["message"]
    )
    assert c["tensors.shapes"]["status"] == "fail" and gate_up in c["tensors.shapes"]["message"]


def test_turning_the_profiles_flag_off_is_honoured_with_a_warning(
    tiny: Path, tmp_path: Path
) -> None:
    """Hostile test round 3, item 21: `-- --no-language-model-only` silently undid the VL
    profile's --language-model-only. The user's choice is honoured (vLLM then builds the vision
    tower), with one warning naming the profile and why it sets the flag, alike in check,
    serve --dry-run and serve --emit-config; the argv and the YAML say the user's value once."""
    ov = tmp_path / "ov"
    assert _run("patch", str(tiny), "-c", "1m", "-o", str(ov)).returncode == 0
    off = ("--", "--no-language-model-only")
    r = _run("check", str(ov), "--no-engine", "--kv-memory", "60GiB", "--json", *off)
    assert r.returncode == 0, r.stdout
    warned = _checks(r.stdout)["engine.profile"]
    assert warned["status"] == "warn"
    said = [warned["message"]]
    r = _run("serve", str(ov), "--dry-run", "--json", "--vllm-python", NO_VLLM, *off)
    assert r.returncode == 0, r.stderr
    served = _json(r.stdout)
    argv = served["argv"]
    assert "--language-model-only" not in argv and argv.count("--no-language-model-only") == 1
    said += [n for n in served["notes"] if "language-model-only" in n]
    yml = tmp_path / "c.yaml"
    r = _run("serve", str(ov), "--vllm-python", NO_VLLM, "--emit-config", str(yml), *off)
    assert r.returncode == 0, r.stderr
    said += [ln[6:] for ln in r.stderr.splitlines() if "language-model-only" in ln]
    options = [ln.split(":")[0] for ln in yml.read_text().splitlines() if not ln.startswith("#")]
    assert "no-language-model-only" in options and "language-model-only" not in options
    assert len(said) == 3 and len(set(said)) == 1, said
    assert "qwen3.5-moe-vl-text-only profile" in said[0] and "vision tower" in said[0]
