"""Decode context parallel, the hybrid capacity line per vLLM version, and prefix caching on
hybrids (issue 21, Build 4-6), each against a public vLLM log or report:

- vLLM PR 24864's test result (Qwen/Qwen3-235B-A22B-Instruct-2507, ``--tensor-parallel-size 8
  --decode-context-parallel-size 2``, default max_model_len 262,144): "Multiplying the GPU KV
  cache size by the dcp_world_size 2." / "GPU KV cache size: 1,723,584 tokens" / "Maximum
  concurrency for 262,144 tokens per request: 6.57x". The log does not print the KV memory;
  the block count is 1,723,584 / (16 x 2) = 53,862, so any memory of 53,862 blocks (and not
  53,863) must give both printed numbers.
- a vLLM 0.10.2 log of Qwen3-Next-80B-A3B-Instruct at TP 2 on H200 ("Available KV cache
  memory: 44.59 GiB", "Setting attention block size to 544 tokens", "Hybrid or mamba-based
  model detected: disabling prefix caching", "GPU KV cache size: 973,760 tokens", "Maximum
  concurrency for 262,144 tokens per request: 14.77x").
- a report on vLLM PR 46778 (a hybrid Qwen3.5-architecture model, attention block size 1,600
  tokens): with ``--enable-prefix-caching`` (mamba_cache_mode align) 262,144 is refused with
  "the estimated maximum model length is 260800" on the memory that served 262,144 without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import TINY, invoke
from qwenprep.engines.vllm.kv import ModelShape


def _qwen3_235b_2507_config() -> dict[str, Any]:
    """Qwen/Qwen3-235B-A22B-Instruct-2507's config.json (its model card: 94 layers, 64 query
    and 4 KV heads of 128, 262,144 native context; the keys capacity reads)."""
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "hidden_size": 4096,
        "head_dim": 128,
        "num_attention_heads": 64,
        "num_key_value_heads": 4,
        "num_hidden_layers": 94,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": 1536,
        "intermediate_size": 12288,
        "max_position_embeddings": 262144,
        "rope_theta": 5000000,
        "vocab_size": 151936,
        "torch_dtype": "bfloat16",
    }


def _model(tmp_path: Path, config: dict[str, Any], name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    return d


def _plan(*args: str) -> tuple[int, dict[str, Any], str]:
    r = invoke("plan", *args, "--json")
    h = invoke("plan", *args)
    return r.exit_code, json.loads(r.stdout), h.stdout


# 2 (K,V) x 1 KV head per GPU (4 heads over TP 8, replicated) x 128 x 2 bytes x 94 layers x 16
BLOCK_235B_TP8 = 2 * 1 * 128 * 2 * 94 * 16
BLOCKS_PR_24864 = 1_723_584 // (16 * 2)


@pytest.mark.parametrize("version", ["0.11", "0.32", "0.34"])
@pytest.mark.parametrize("extra", [0, BLOCK_235B_TP8 - 1])
def test_dcp_reproduces_the_pr_24864_log(tmp_path: Path, version: str, extra: int) -> None:
    model = _model(tmp_path, _qwen3_235b_2507_config(), "Qwen3-235B-A22B-Instruct-2507")
    kv = BLOCKS_PR_24864 * BLOCK_235B_TP8 + extra
    common = ("--tp", "8", "--gpus", "8", "--kv-memory", f"{kv}B", "--vllm-version", version)
    code, out, text = _plan(str(model), "--dcp", "2", *common)
    assert code == 0, out
    assert out["num_blocks"] == 53_862
    assert out["kv_cache_tokens"] == 1_723_584
    assert out["max_concurrency_printed"] == "6.57x"
    assert out["parallel"]["dcp"] == 2
    if version == "0.11":  # the log's own vLLM: the tokens line multiplied by DCP, said first
        assert (
            "as vLLM logs it: Multiplying the GPU KV cache size by the dcp_world_size 2.\n"
            "as vLLM logs it: KV cache size: 1,723,584 tokens\n"
            "as vLLM logs it: Maximum concurrency for 262,144 tokens per request: 6.57x"
        ) in text
    else:
        assert (
            "as vLLM logs it: KV cache size: 1,723,584 tokens, Maximum concurrency for "
            "262,144 tokens per request: 6.57x"
        ) in text
    # without DCP the same memory holds half: TP 8 replicates each of the 4 KV heads twice
    _, alone, _ = _plan(str(model), *common)
    assert alone["max_concurrency_printed"] == "3.29x"
    assert any(
        "--decode-context-parallel-size 2" in a and "6.57x at 262,144 (fits)" in a
        for a in alone["advice"]
    ), alone["advice"]


def test_plan_refuses_dcp_where_vllm_does(tmp_path: Path) -> None:
    cfg = _qwen3_235b_2507_config()
    model = _model(tmp_path, cfg, "q235")
    mem = ("--gpus", "8", "--kv-memory", "40GiB")
    # ModelConfig.verify_with_parallel_config: DCP <= TP // KV heads (8 // 4 = 2)
    r = invoke("plan", str(model), "--tp", "8", "--dcp", "4", *mem)
    assert r.exit_code == 2
    assert "exceeds the maximum supported value (2)" in r.output and "--dcp 2" in r.output
    # TP must be above the KV heads: the 480B's 8 KV heads at TP 8 leave no room for DCP
    model480 = _model(
        tmp_path, {**cfg, "num_attention_heads": 96, "num_key_value_heads": 8}, "q480"
    )
    r = invoke("plan", str(model480), "--tp", "8", "--dcp", "2", *mem)
    assert r.exit_code == 2
    assert "greater than the model's total number of KV heads (8)" in r.output
    # query heads per KV head must divide by DCP: 12 / 4 = 3 at TP 8, DCP 2
    odd = _model(tmp_path, {**cfg, "num_attention_heads": 12}, "odd")
    r = invoke("plan", str(odd), "--tp", "8", "--dcp", "2", *mem)
    assert r.exit_code == 2
    assert "query heads per KV head (3) must be divisible" in r.output


def test_480b_at_1m_on_one_h100_node_says_dcp_cannot_help(tmp_path: Path) -> None:
    cfg = {**_qwen3_235b_2507_config(), "num_attention_heads": 96, "num_key_value_heads": 8}
    cfg["num_hidden_layers"] = 62
    model = _model(tmp_path, cfg, "q480")
    code, out, _ = _plan(
        str(model), "--tp", "8", "--gpus", "8", "--kv-memory", "20GiB", "--context", "1m"
    )
    assert code == 1 and not out["fits"]
    said = [a for a in out["advice"] if "decode context parallel cannot help" in a]
    assert said and "8 KV heads" in said[0] and "8 GPUs" in said[0], out["advice"]


def test_check_refuses_dcp_after_the_double_dash() -> None:
    """The tiny model has 2 KV heads: at TP 1 vLLM refuses any DCP."""
    r = invoke(
        "check", str(TINY), "--no-engine", "--tp", "1", "--kv-memory", "2GiB", "--json",
        "--", "-dcp", "2",
    )  # fmt: skip
    checks = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["parallel.dcp"]["status"] == "fail", checks["parallel.dcp"]
    assert (
        "greater than the model's total number of KV heads (2)" in checks["parallel.dcp"]["message"]
    )
    assert r.exit_code == 1


def test_dcp_args_read_as_vllm_reads_them() -> None:
    from qwenprep.engines.vllm.dcp import dcp_from_args

    assert dcp_from_args(["--max-model-len", "4096"]) is None
    assert dcp_from_args(["-dcp", "2"]) == 2
    assert dcp_from_args(["-dcp=4"]) == 4
    assert dcp_from_args(["--decode_context_parallel_size", "2"]) == 2
    assert dcp_from_args(["--decode-context-parallel-size=2", "-dcp", "8"]) == 8


# ------------------------------------------------------------------ the hybrid line per version


def _next_80b(tmp_path: Path) -> Path:
    from qwenprep.testing.synth import qwen3_next_80b_config

    return _model(tmp_path, qwen3_next_80b_config(), "Qwen3-Next-80B-A3B-Instruct")


def test_0_10_2_hybrid_line_is_the_public_log(tmp_path: Path) -> None:
    model = _next_80b(tmp_path)
    common = ("--tp", "2", "--gpus", "2", "--kv-memory", "44.59GiB")
    code, out, text = _plan(str(model), *common, "--vllm-version", "0.10.2")
    assert code == 0
    assert out["block_size"] == 544  # "Setting attention block size to 544 tokens"
    assert out["hybrid"]["mamba_cache_mode"] == "none"  # "disabling prefix caching"
    assert out["kv_cache_tokens"] == 973_760
    assert out["max_concurrency_printed"] == "14.77x"
    assert "as vLLM logs it: KV cache size: 973,760 tokens\n" in text
    assert "as vLLM logs it: Maximum concurrency for 262,144 tokens per request: 14.77x" in text
    assert out["hybrid"]["verified_for_this_version"]
    # 0.32 on the same memory: int(concurrency x L), and prefix caching on by default
    _, new, _ = _plan(str(model), *common, "--vllm-version", "0.32")
    assert new["num_blocks"] == out["num_blocks"]
    assert new["hybrid"]["mamba_cache_mode"] == "align"
    # cdiv(262,144, 544) = 482 attention blocks + 2 state blocks in each of 3 state groups
    assert new["kv_cache_tokens"] == int(new["num_blocks"] / (482 + 3 * 2) * 262144)
    assert new["max_concurrency_printed"] == "14.68x"


# ------------------------------------------------------------------ prefix caching on hybrids


def test_align_mode_rounds_the_state_up_to_whole_blocks(tmp_path: Path) -> None:
    """The PR 46778 report's numbers at its attention block size (1,600 tokens): 262,144
    tokens take 164 blocks; with prefix caching (align) the largest context on the same
    memory is 163 blocks = 260,800 tokens, the pool unchanged."""
    from qwenprep.model.families.qwen3_5 import qwen3_5_35b_a3b_config

    model = _model(tmp_path, qwen3_5_35b_a3b_config(), "Qwen3.5-35B-A3B")
    page = 1600 * 2 * 2 * 256 * 2  # block x (K,V) x 2 KV heads x 256 x bf16
    # 10 attention + 30 linear layers in groups of 10: a block is 10 pages; without caching
    # one request needs 10 x 164 + 30 x 1 pages, with align 10 x 164 + 30 x 2 (+ 1 null block)
    kv = 1705 * page
    common = ("--tp", "1", "--gpus", "1", "--kv-memory", f"{kv}B", "--block-size", "1600")
    common += ("--context", "262144", "--vllm-version", "0.32")
    off_code, off, _ = _plan(str(model), *common, "--no-prefix-caching")
    on_code, on, _ = _plan(str(model), *common)  # 0.32's default for hybrids: on
    assert off["block_size"] == on["block_size"] == 1600
    assert off_code == 0 and off["fits"] and off["hybrid"]["mamba_cache_mode"] == "none"
    assert on_code == 1 and not on["fits"] and on["hybrid"]["mamba_cache_mode"] == "align"
    assert on["largest_context"] == 260_800
    assert on["num_blocks"] == off["num_blocks"]  # the supply did not move
    assert on["kv_cache_bytes_per_gpu"] == off["kv_cache_bytes_per_gpu"]
    # --enable-prefix-caching after `--` in check is read the same way
    from qwenprep.engines.vllm.kv_hybrid import prefix_caching_from_args

    assert prefix_caching_from_args(["--enable-prefix-caching"]) is True
    assert prefix_caching_from_args(["--enable_prefix_caching", "--no-enable-prefix-caching"]) is (
        False
    )
    assert prefix_caching_from_args([]) is None


def test_caching_mode_per_version() -> None:
    from qwenprep.engines.vllm.kv_hybrid import prefix_caching_mode

    assert not prefix_caching_mode("0.10.2", True).align  # 0.10-0.11 switch it off
    assert not prefix_caching_mode("0.20", None).align  # opt-in before 0.32
    assert prefix_caching_mode("0.20", True).align
    assert prefix_caching_mode("0.32", None).align and prefix_caching_mode("0.34", None).align
    assert not prefix_caching_mode("0.34", False).align


def test_dcp_shape_rule_direct() -> None:
    from qwenprep.engines.vllm.dcp import dcp_refusal, largest_dcp

    s = ModelShape(
        name="m", num_layers=2, num_attention_heads=64, num_kv_heads=4, head_dim=128,
        hidden_size=4096, vocab_size=0, dtype_bytes=2, max_position_embeddings=4096,
    )  # fmt: skip
    assert dcp_refusal(s, tp=8, dcp=2) is None and largest_dcp(s, 8) == 2
    assert largest_dcp(s, 16) == 4 and largest_dcp(s, 4) == 1


def test_context_table_uses_dcp(tmp_path: Path) -> None:
    """The time view's context rows hold DCP's capacity too, not the replicated one."""
    model = _model(tmp_path, _qwen3_235b_2507_config(), "q235")
    kv = f"{BLOCKS_PR_24864 * BLOCK_235B_TP8}B"
    args = ("--tp", "8", "--gpus", "8", "--kv-memory", kv, "--gpu", "H200", "--dcp", "2")
    code, out, _ = _plan(str(model), *args, "--context", "262144")
    assert code == 0
    rows = {r["context"]: r for r in out["contexts"]}
    assert rows[262144]["max_concurrency"] == pytest.approx(out["max_concurrency"], abs=1e-4)


def test_python_api_plans_dcp_and_prefix_caching(tmp_path: Path) -> None:
    from qwenprep import api

    model = _model(tmp_path, _qwen3_235b_2507_config(), "q235")
    kv = BLOCKS_PR_24864 * BLOCK_235B_TP8
    out = api.plan(model, tp=8, gpus=8, kv_memory=kv, dcp=2, vllm_version="0.34")
    assert out["kv_cache_tokens"] == 1_723_584 and out["max_concurrency_printed"] == "6.57x"
    nxt = api.plan(
        _next_80b(tmp_path), tp=2, gpus=2, kv_memory="44.59GiB", prefix_caching=False,
        vllm_version="0.34",
    )  # fmt: skip
    assert nxt["hybrid"]["mamba_cache_mode"] == "none"
