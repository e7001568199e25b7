"""The Qwen line beyond Qwen3-MoE: Qwen3-Next (hybrid Gated DeltaNet + full attention), Qwen2 /
Qwen2.5 and the Dual Chunk Attention releases (Qwen2.5-1M, Qwen3-2507 config_1m.json), and the
hybrid KV arithmetic of vLLM 0.32 (compared with vLLM's own functions where they run here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import Result

from conftest import EXAMPLES

CliFn = Callable[..., Result]
TINY_NEXT = EXAMPLES / "tiny-qwen3-next"
VLLM_PY = Path(sys.executable)
# an interpreter without vLLM: serve --dry-run then judges the argv offline (no 8 s probe)
NO_VLLM = "/usr/bin/python3"


def _json(r: Result) -> dict[str, Any]:
    out = json.loads(r.stdout)
    assert isinstance(out, dict)
    return out


@pytest.fixture(scope="module")
def next_80b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release-shaped Qwen3-Next-80B-A3B checkpoint (sparse: real headers, no data)."""
    from qwenprep.testing.synth import make_shaped_checkpoint, qwen3_next_80b_config

    return make_shaped_checkpoint(
        tmp_path_factory.mktemp("n80") / "Qwen3-Coder-Next",
        config=qwen3_next_80b_config(),
        fp8=False,
        shards=8,
    )


@pytest.fixture(scope="module")
def qwen25_1m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qwenprep.testing.synth import make_shaped_checkpoint, qwen25_7b_instruct_1m_config

    return make_shaped_checkpoint(
        tmp_path_factory.mktemp("q25") / "Qwen2.5-7B-Instruct-1M",
        config=qwen25_7b_instruct_1m_config(),
        fp8=False,
        shards=4,
    )


# ------------------------------------------------------------------ Qwen3-Next end to end


@pytest.mark.parametrize("which", ["tiny", "80b"])
def test_qwen3_next_goes_through_every_command(
    cli: CliFn, tmp_path: Path, next_80b: Path, which: str
) -> None:
    src = TINY_NEXT if which == "tiny" else next_80b
    for args in (["validate", str(src)], ["verify", str(src)]):
        r = cli(*args)
        assert r.exit_code == 0, (args, r.output)
    ov = tmp_path / "ov"
    r = cli("patch", str(src), "-c", "1m", "-o", str(ov), "--json")
    assert r.exit_code == 0, r.output
    assert _json(r)["factor"] == 4.0 and _json(r)["native_context"] == 262144
    cfg = json.loads((ov / "config.json").read_text())
    assert cfg["rope_scaling"] == {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 262144,
    }
    assert cfg["max_position_embeddings"] == 1048576
    assert cfg["partial_rotary_factor"] == 0.25 and cfg["full_attention_interval"] == 4
    r = cli("validate", str(ov), "--json")
    assert r.exit_code == 0, r.output
    ids = {c["id"] for c in _json(r)["checks"]}
    assert {"invariant.layer_types", "invariant.partial_rotary_factor"} <= ids
    r = cli("verify", str(ov), "--json")
    assert r.exit_code == 0, r.output
    r = cli("plan", str(ov), "--kv-memory", "60GiB", "--vllm-version", "0.32", "--json")
    assert r.exit_code == 0, r.output
    plan = _json(r)
    assert "hybrid" in plan and plan["hybrid"]["verified_for_this_version"]
    r = cli("check", str(ov), "--no-engine", "--kv-memory", "60GiB", "--json")
    assert r.exit_code == 0, r.output
    r = cli("serve", str(ov), "--dry-run", "--json", "--vllm-python", NO_VLLM)
    assert r.exit_code == 0, r.output
    served = _json(r)
    assert served["max_model_len"] == 1048576
    if which == "80b":  # named Qwen3-Coder-Next: the coder profile
        assert served["profile"] == "qwen3-coder-next"
        assert "--tool-call-parser" in served["argv"] and "qwen3_coder" in served["argv"]
    r = cli("revert", str(ov), "--json")
    assert r.exit_code == 0, r.output
    assert not ov.exists()


def test_qwen3_next_80b_plan_numbers(cli: CliFn, next_80b: Path) -> None:
    """48 layers: 12 full attention (2 KV heads x 256, bf16: 2,048 bytes per token per layer),
    36 Gated DeltaNet layers, each 49,152 bytes of conv state + 1,048,576 of recurrent state per
    request; vLLM raises the block to 544 tokens (544 x 2,048 = 1,114,112 >= 1,097,728)."""
    r = cli("plan", str(next_80b), "-c", "1m", "--kv-memory", "60GiB", "--json")
    assert r.exit_code == 0, r.output
    p = _json(r)
    h = p["hybrid"]
    assert p["bytes_per_token_per_gpu"] == 12 * 2048
    assert h["state_bytes_per_layer_per_request"] == 1097728
    assert h["block_size"] == 544 and p["block_size"] == 544
    assert h["page_bytes"] == 544 * 2048
    assert [g["layers"] for g in h["groups"]] == [12, 12, 12, 12]
    from qwenprep.util.schemas import validator

    assert not list(validator("plan").iter_errors(p))
    r = cli("plan", str(next_80b), "--kv-memory", "60GiB", "--vllm-version", "0.30")
    assert r.exit_code == 0
    assert "not verified" in r.output and "block size 544 tokens" in r.output


VLLM_KV = r"""
import json, sys
path, max_len, avail, tp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
from vllm.config import CacheConfig, ModelConfig, VllmConfig
from vllm.model_executor.models import ModelRegistry
from vllm.platforms.interface import Platform
from vllm.v1.attention.backends.flash_attn import FlashAttentionBackend
from vllm.v1.core import kv_cache_utils as ku
from vllm.v1.kv_cache_interface import FullAttentionSpec, MambaSpec

mc = ModelConfig(model=path, max_model_len=max_len, trust_remote_code=False)
vc = VllmConfig(model_config=mc, cache_config=CacheConfig(enable_prefix_caching=True))
cc = vc.cache_config
# what the CUDA build has (the CPU platform's own choices undone): block 16, state dtypes auto
cc.block_size, cc.mamba_cache_dtype, cc.mamba_ssm_cache_dtype = 16, "auto", "auto"
cc.mamba_page_size_padded, cc.mamba_cache_mode, cc.kv_cache_layout = None, "align", "NHD"
vc.parallel_config.tensor_parallel_size = tp
Platform._align_hybrid_block_size(vc, FlashAttentionBackend)
bs = cc.block_size
cls, _ = ModelRegistry.resolve_model_cls(mc.architecture, model_config=mc)
shapes = cls.get_mamba_state_shape_from_config(vc)
dtypes = cls.get_mamba_state_dtype_from_config(vc)
specs = {}
for i, kind in enumerate(mc.hf_text_config.layer_types):
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
def test_hybrid_kv_equals_vllms_own_functions(cli: CliFn, tmp_path: Path, next_80b: Path) -> None:
    """vLLM 0.32's own code on this CPU: Platform._align_hybrid_block_size with the
    FlashAttention backend, the model class's state shape/dtype, get_kv_cache_groups,
    get_kv_cache_config_from_groups, get_kv_cache_capacity, max_memory_usage_bytes."""
    pytest.importorskip("vllm")
    cases = [(TINY_NEXT, 1, 2 * 2**30), (next_80b, 1, 60 * 2**30), (next_80b, 2, 50 * 2**30)]
    for i, (src, tp, avail) in enumerate(cases):
        ov = tmp_path / f"ov{i}"
        assert cli("patch", str(src), "-c", "1m", "-o", str(ov)).exit_code == 0
        run = subprocess.run(
            [str(VLLM_PY), "-c", VLLM_KV, str(ov), "1048576", str(avail), str(tp)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        line = [ln for ln in run.stdout.splitlines() if ln.startswith("QWENPREP_VLLM_KV ")]
        assert line, run.stderr[-3000:]
        want = json.loads(line[-1].split(" ", 1)[1])
        r = cli(
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
        assert r.exit_code == 0, r.output
        p = _json(r)
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


# ------------------------------------------------------------------ wrong overrides


def test_partial_overrides_on_qwen3_next_are_refused(cli: CliFn, tmp_path: Path) -> None:
    """A partial rope override (no rope_theta: vLLM then uses base 10000) on the 1M overlay and
    an mpe-only bump on the release are refused by check and serve, each saying why."""
    ov = tmp_path / "ov"
    assert cli("patch", str(TINY_NEXT), "-c", "1m", "-o", str(ov)).exit_code == 0
    for key in ("rope_parameters", "rope_scaling"):
        override = json.dumps({key: {"rope_type": "yarn", "factor": 4}})
        r = cli(
            "check",
            str(ov),
            "--no-engine",
            "--kv-memory",
            "2GiB",
            "--json",
            "--",
            "--hf-overrides",
            override,
        )
        assert r.exit_code == 1, r.output
        fails = {c["id"]: c["message"] for c in _json(r)["checks"] if c["status"] == "fail"}
        assert "would use 10000 but config.json sets 10000000" in fails["engine.rope_theta"]
        r = cli(
            "serve",
            str(ov),
            "--dry-run",
            "--vllm-python",
            NO_VLLM,
            "--",
            "--hf-overrides",
            override,
        )
        assert r.exit_code == 3 and "rope_theta" in r.stderr, r.output
    bump = '{"max_position_embeddings": 1048576}'
    r = cli(
        "check",
        str(TINY_NEXT),
        "--context",
        "1m",
        "--no-engine",
        "--kv-memory",
        "2GiB",
        "--",
        "--hf-overrides",
        bump,
    )
    assert r.exit_code == 1 and "unscaled RoPE" in r.output, r.output
    r = cli(
        "serve",
        str(TINY_NEXT),
        "--max-model-len",
        "1m",
        "--dry-run",
        "--vllm-python",
        NO_VLLM,
        "--",
        "--hf-overrides",
        bump,
    )
    assert r.exit_code == 3 and "unscaled RoPE" in r.stderr, r.output


# ------------------------------------------------------------------ Qwen2 / DCA


def test_qwen25_1m_dca_is_refused_and_offers_native(
    cli: CliFn, tmp_path: Path, qwen25_1m: Path
) -> None:
    r = cli("verify", str(qwen25_1m))
    assert r.exit_code == 0, r.output
    r = cli("validate", str(qwen25_1m), "--vllm-version", "0.32", "--json")
    assert r.exit_code == 1
    dca = [c for c in _json(r)["checks"] if c["id"] == "invariant.dca"]
    assert dca and dca[0]["status"] == "fail" and "25351" in dca[0]["message"]
    r = cli("patch", str(qwen25_1m), "-c", "1m", "-o", str(tmp_path / "x"))
    assert r.exit_code == 3 and "Dual Chunk Attention" in r.stderr and "--yarn-on-dca" in r.stderr
    assert not (tmp_path / "x").exists()
    r = cli("serve", str(qwen25_1m), "--dry-run")
    assert r.exit_code == 3 and "V0 engine" in r.stderr
    r = cli("check", str(qwen25_1m), "--no-engine", "--kv-memory", "20GiB")
    assert r.exit_code == 1 and "dual_chunk_attention_config" in r.output

    nat = tmp_path / "native"
    r = cli("patch", str(qwen25_1m), "-c", "native", "-o", str(nat), "--json")
    assert r.exit_code == 0, r.output
    cfg = json.loads((nat / "config.json").read_text())
    assert "dual_chunk_attention_config" not in cfg and cfg["max_position_embeddings"] == 262144
    for args in (
        ["validate", str(nat)],
        ["verify", str(nat)],
        ["plan", str(nat), "--kv-memory", "20GiB"],
        ["check", str(nat), "--no-engine", "--kv-memory", "20GiB"],
        ["serve", str(nat), "--dry-run", "--vllm-python", NO_VLLM],
        ["revert", str(nat)],
    ):
        r = cli(*args)
        assert r.exit_code == 0, (args, r.output)


def test_yarn_on_dca_needs_the_flag_and_says_so(
    cli: CliFn, tmp_path: Path, qwen25_1m: Path
) -> None:
    ov = tmp_path / "yarn"
    r = cli("patch", str(qwen25_1m), "-c", "1m", "-o", str(ov), "--yarn-on-dca")
    assert r.exit_code == 0, r.output
    assert "not what the release was tuned for" in r.stderr
    cfg = json.loads((ov / "config.json").read_text())
    assert "dual_chunk_attention_config" not in cfg
    assert cfg["rope_scaling"]["factor"] == 4.0 and cfg["max_position_embeddings"] == 1048576
    assert cli("validate", str(ov)).exit_code == 0


def test_dca_overlay_for_vllm_010_and_its_launch(cli: CliFn, tmp_path: Path) -> None:
    """A 2507-shaped release (config_1m.json + sparse_attention_config.json beside it): for
    vLLM 0.10 the 1M overlay's config.json is config_1m.json, the sparse config linked; the
    launch has the V0 engine's environment and flags; vLLM 0.32 refuses it."""
    from qwenprep.engines.vllm.core import EngineInfo, capabilities_for
    from qwenprep.engines.vllm.engine import build_launch_plan
    from qwenprep.testing.synth import make_shaped_checkpoint, tiny_fp8_config

    cfg = tiny_fp8_config()
    cfg.pop("quantization_config")
    src = make_shaped_checkpoint(
        tmp_path / "Qwen3-30B-A3B-Instruct-2507", config=cfg, fp8=False, shards=1
    )
    one_m = dict(
        cfg,
        max_position_embeddings=1010000,
        dual_chunk_attention_config={
            "chunk_size": 262144,
            "local_size": 8192,
            "original_max_position_embeddings": 262144,
            "sparse_attention_enabled": True,
            "sparse_attention_threshold": 32768,
        },
    )
    (src / "config_1m.json").write_text(json.dumps(one_m, indent=2))
    (src / "sparse_attention_config.json").write_text('{"sparse": true}\n')
    before = (src / "config.json").read_bytes()

    r = cli("patch", str(src), "-c", "1m", "-o", str(tmp_path / "cur"))
    assert r.exit_code == 3 and "config_1m.json" in r.stderr

    ov = tmp_path / "v010"
    r = cli("patch", str(src), "-c", "1m", "-o", str(ov), "--vllm-version", "0.10", "--json")
    assert r.exit_code == 0, r.output
    assert _json(r)["target_context"] == 1010000
    assert json.loads((ov / "config.json").read_text()) == one_m
    assert (ov / "sparse_attention_config.json").is_symlink()
    assert (src / "config.json").read_bytes() == before

    v010 = EngineInfo(
        "python3", "0.10.0", "vllm", True, "4.55.4", "2.7.1", capabilities_for((0, 10, 0))
    )
    plan = build_launch_plan(ov, engine=v010, offline_gate=False, for_check=True)
    assert plan.env == {"VLLM_USE_V1": "0", "VLLM_ATTENTION_BACKEND": "DUAL_CHUNK_FLASH_ATTN"}
    argv = list(plan.argv)
    assert (
        "--enforce-eager" in argv and argv[argv.index("--max-num-batched-tokens") + 1] == "131072"
    )
    assert argv[argv.index("--max-model-len") + 1] == "1010000"
    from qwenprep.errors import InputError

    v032 = EngineInfo(
        "python3", "0.32.0", "vllm", True, "5.0", "2.13", capabilities_for((0, 32, 0))
    )
    with pytest.raises(InputError, match="V0 engine"):
        build_launch_plan(ov, engine=v032, offline_gate=False, for_check=True)
    r = cli("patch", str(src), "-c", "1m", "-o", str(tmp_path / "y"), "--yarn-on-dca")
    assert r.exit_code == 0, r.output
    assert cli("revert", str(ov)).exit_code == 0 and (src / "config.json").read_bytes() == before


def test_qwen2_dense_plans_without_head_dim(cli: CliFn, tmp_path: Path) -> None:
    from qwenprep.testing.synth import make_shaped_checkpoint, qwen25_7b_instruct_1m_config

    cfg = qwen25_7b_instruct_1m_config()
    cfg.pop("dual_chunk_attention_config")
    cfg.update(max_position_embeddings=32768, rope_theta=1000000.0, num_hidden_layers=4)
    src = make_shaped_checkpoint(tmp_path / "Qwen2.5-7B-Instruct", config=cfg, fp8=False, shards=1)
    ov = tmp_path / "ov"
    r = cli("patch", str(src), "-c", "128k", "-o", str(ov), "--json")
    assert r.exit_code == 0, r.output
    assert _json(r)["factor"] == 4.0
    r = cli("plan", str(ov), "--kv-memory", "8GiB", "--json")
    assert r.exit_code == 0, r.output
    assert _json(r)["bytes_per_token_per_gpu"] == 2 * 4 * 128 * 2 * 4  # head_dim 3584 / 28
    for args in (["validate", str(ov)], ["verify", str(ov)], ["revert", str(ov)]):
        assert cli(*args).exit_code == 0, args


# ------------------------------------------------------------------ engine readback


@pytest.mark.engine
def test_qwen3_next_overlay_reads_back_through_vllm(cli: CliFn, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    src = tmp_path / "Qwen3-Next-tiny"
    shutil.copytree(TINY_NEXT, src)
    ov = tmp_path / "ov"
    assert cli("patch", str(src), "-c", "1m", "-o", str(ov)).exit_code == 0
    r = cli("verify", str(ov), "--engine", "--json")
    assert r.exit_code == 0, r.output
    checks = {c["id"]: c for c in _json(r)["checks"]}
    assert checks["engine.rope_theta"]["status"] == "pass"
    assert checks["engine.max_model_len"]["status"] == "pass"
