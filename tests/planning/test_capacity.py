"""KV capacity by vLLM's own arithmetic: both calibration points, fp8 doubling, the version
rules, and the 480B-shaped checkpoint on 8x141 GiB (fits) and 8x80 GiB (does not)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import QWENPREP_BIN, TINY, TINY_FP8, invoke, run_capped
from qwenprep.engines.vllm.kv import ModelShape, bytes_per_token_per_gpu, kv_capacity
from qwenprep.planning.capacity import KVRequest, plan_capacity, resolve_rule, vllm_rule
from qwenprep.planning.shapes import shape_from_dir
from qwenprep.util.sizes import GiB

ONE_M = 1048576
# Calibration 1 (FACTS.md): 8x H200, TP 8 + EP, the 480B model; vLLM reported 61.31 GiB of KV
# memory per GPU and printed 2,073,680 tokens (a 2-decimal GiB print covers 2,073,632..2,073,968)
# and 1.98x at 1M. 129,605 blocks of 16 tokens x 31,744 bytes = 65,826,897,920 bytes.
CAL1_BYTES = 129_605 * 16 * 31_744


def _validate(obj: dict[str, Any], name: str) -> None:
    from jsonschema import Draft202012Validator

    from qwenprep.util.schemas import load_schema

    errors = list(Draft202012Validator(load_schema(name)).iter_errors(obj))
    assert errors == [], [e.message for e in errors]


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sparse checkpoint shaped like Qwen3-Coder-480B-A35B-Instruct-FP8 (50 shards, real
    headers, ~450 GiB apparent, a few MB on disk)."""
    from qwenprep.testing.synth import make_shaped_checkpoint

    return make_shaped_checkpoint(tmp_path_factory.mktemp("q480") / "Qwen3-Coder-480B-FP8")


@pytest.fixture(scope="module")
def shape480(big: Path) -> ModelShape:
    return shape_from_dir(big)


def plan_json(*args: str) -> tuple[int, dict[str, Any]]:
    r = invoke("plan", *args, "--json")
    out = json.loads(r.stdout)
    _validate(out, "plan")
    return r.exit_code, out


# ------------------------------------------------------------------ calibration 1


def test_480b_bytes_per_token(shape480: ModelShape) -> None:
    # 2 (K,V) x 62 layers x max(1, 8 // 8) KV heads x 128 head_dim x 2 bytes
    assert bytes_per_token_per_gpu(shape480, tp=8) == 31_744
    assert bytes_per_token_per_gpu(shape480, tp=8, kv_cache_dtype="fp8") == 15_872
    assert bytes_per_token_per_gpu(shape480, tp=1) == 253_952  # the DP layout: 8x more


@pytest.mark.parametrize("version", ["0.21", "0.29", "0.32", "0.33", "0.34"])
def test_calibration_1(version: str) -> None:
    rule = vllm_rule(version)
    at_256k = kv_capacity(CAL1_BYTES, 31_744, 262_144, rule)
    assert f"{CAL1_BYTES / GiB:.2f}" == "61.31"
    assert at_256k.num_blocks == 129_605
    assert at_256k.kv_cache_tokens == 2_073_680
    at_1m = kv_capacity(CAL1_BYTES, 31_744, ONE_M, rule)
    assert at_1m.kv_cache_tokens == 2_073_680
    assert f"{at_1m.max_concurrency:.2f}x" == "1.98x"
    assert at_1m.fits


def _gib2_bounds() -> tuple[int, int]:
    """The smallest and largest byte counts that vLLM prints as 61.31 GiB."""
    lo = math.floor(61.305 * GiB) - 4
    while f"{lo / GiB:.2f}" != "61.31":
        lo += 1
    hi = math.ceil(61.315 * GiB) + 4
    while f"{hi / GiB:.2f}" != "61.31":
        hi -= 1
    return lo, hi


def test_every_61_31_gib_lands_in_the_printed_range() -> None:
    lo, hi = _gib2_bounds()
    rule = vllm_rule("0.32")
    assert kv_capacity(lo, 31_744, 262_144, rule).kv_cache_tokens == 2_073_632
    assert kv_capacity(hi, 31_744, 262_144, rule).kv_cache_tokens == 2_073_968
    assert (
        kv_capacity(lo - 1, 31_744, 262_144, rule).kv_cache_tokens < 2_073_632
        or f"{(lo - 1) / GiB:.2f}" != "61.31"
    )


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=_gib2_bounds()[0], max_value=_gib2_bounds()[1]),
    st.sampled_from(["0.10", "0.20", "0.21", "0.32"]),
)
def test_any_61_31_gib_in_range(n: int, version: str) -> None:
    k = kv_capacity(n, 31_744, 262_144, vllm_rule(version))
    assert 2_073_632 <= k.kv_cache_tokens <= 2_073_968
    assert f"{kv_capacity(n, 31_744, ONE_M, vllm_rule(version)).max_concurrency:.2f}" == "1.98"


def test_calibration_1_through_the_cli(big: Path) -> None:
    code, out = plan_json(
        str(big),
        "--tp",
        "8",
        "--kv-memory",
        f"{CAL1_BYTES}B",
        "--context",
        "256k",
        "--vllm-version",
        "0.32",
    )
    assert code == 0
    assert out["kv_cache_tokens"] == 2_073_680
    assert out["bytes_per_token_per_gpu"] == 31_744
    assert out["exact"] is True and "estimate" not in out
    code, out = plan_json(
        str(big),
        "--tp",
        "8",
        "--kv-memory",
        "61.31GiB",
        "--context",
        "1m",
        "--vllm-version",
        "0.32",
    )
    assert code == 0 and out["fits"] is True
    assert 2_073_632 <= out["kv_cache_tokens"] <= 2_073_968
    assert out["max_concurrency_printed"] == "1.98x"
    assert out["vllm_rule"]["source"] == "named" and out["vllm_rule"]["version"] == "0.32"


# ------------------------------------------------------------------ calibration 2


@pytest.mark.parametrize("block", ["128", "16"])
def test_calibration_2_tiny_cpu(block: str) -> None:
    """Seen on vLLM 0.32 CPU: 'CPU KV cache size: 4,194,304 tokens, Maximum concurrency for
    1,048,576 tokens per request: 4.00x' with VLLM_CPU_KVCACHE_SPACE=2 (CPU block size 128)."""
    code, out = plan_json(
        str(TINY),
        "--context",
        "1m",
        "--kv-memory",
        "2GiB",
        "--block-size",
        block,
        "--vllm-version",
        "0.32",
    )
    assert code == 0
    assert out["bytes_per_token_per_gpu"] == 512  # 2 x 2 layers x 2 heads x 32 x 2 bytes
    assert out["kv_cache_tokens"] == 4_194_304
    assert out["max_concurrency_printed"] == "4.00x"
    assert out["max_concurrency"] == 4.0


def test_fp8_kv_doubles_capacity(shape480: ModelShape) -> None:
    rule = vllm_rule("0.32")
    for ctx in (262_144, ONE_M):
        auto = plan_capacity(shape480, KVRequest(context=ctx, tp=8, kv_memory=CAL1_BYTES), rule)
        fp8 = plan_capacity(
            shape480,
            KVRequest(context=ctx, tp=8, kv_memory=CAL1_BYTES, kv_cache_dtype="fp8"),
            rule,
        )
        assert fp8.bytes_per_token * 2 == auto.bytes_per_token
        assert fp8.kv.num_blocks == 2 * auto.kv.num_blocks
        assert fp8.kv.kv_cache_tokens == 2 * auto.kv.kv_cache_tokens == 4_147_360
        assert fp8.kv.max_concurrency == pytest.approx(2 * auto.kv.max_concurrency)


def test_fp8_doubling_tiny_cli() -> None:
    _, auto = plan_json(str(TINY), "--context", "1m", "--kv-memory", "2GiB")
    _, fp8 = plan_json(
        str(TINY), "--context", "1m", "--kv-memory", "2GiB", "--kv-cache-dtype", "fp8"
    )
    assert fp8["kv_cache_tokens"] == 2 * auto["kv_cache_tokens"] == 8_388_608
    assert fp8["max_concurrency_printed"] == "8.00x"


# ------------------------------------------------------------------ version rules


def test_rule_table() -> None:
    assert vllm_rule("0.10.0").gpu_memory_utilization == 0.9
    assert vllm_rule("0.19.1").gpu_memory_utilization == 0.9
    assert vllm_rule("0.20").gpu_memory_utilization == 0.92
    assert not vllm_rule("0.20").tokens_from_concurrency
    assert vllm_rule("0.21").tokens_from_concurrency
    assert not vllm_rule("0.28").reserves_null_block
    assert vllm_rule("0.29").reserves_null_block
    assert not vllm_rule("0.10.1").has_kv_cache_memory_bytes
    assert vllm_rule("0.10.2").has_kv_cache_memory_bytes
    assert "0.34 rule is used" in vllm_rule("0.40").note
    assert vllm_rule("0.32.0+cpu").version == "0.32"


def test_printed_tokens_differ_by_version_when_context_is_not_a_block_multiple() -> None:
    # 1000 blocks of 16, context 1000 tokens -> ceil(1000/16) = 63 blocks per request
    avail = 1000 * 16 * 512
    old = kv_capacity(avail, 512, 1000, vllm_rule("0.20"))
    new = kv_capacity(avail, 512, 1000, vllm_rule("0.21"))
    assert old.kv_cache_tokens == 16_000
    assert new.kv_cache_tokens == int(1000 / 63 * 1000) == 15_873
    assert old.max_concurrency == new.max_concurrency == 1000 / 63


def test_null_block_reserve_from_0_29() -> None:
    # exactly one request's worth of blocks: fits before 0.29, not from 0.29 on
    avail = 65_536 * 16 * 512  # 65,536 blocks = one 1M request
    assert kv_capacity(avail, 512, ONE_M, vllm_rule("0.28")).fits
    k = kv_capacity(avail, 512, ONE_M, vllm_rule("0.29"))
    assert not k.fits and k.largest_context == ONE_M - 16
    assert kv_capacity(avail + 16 * 512, 512, ONE_M, vllm_rule("0.29")).fits


def test_resolve_rule_named_and_fallback() -> None:
    assert resolve_rule("0.10.2").source == "named"
    rule = resolve_rule(None)
    assert rule.source in ("installed", "default")
    if rule.source == "default":
        assert rule.version == "0.34" and "no vLLM found" in rule.note
    else:
        from importlib.metadata import version

        try:
            installed = version("vllm")
        except Exception:  # noqa: BLE001
            installed = version("vllm-cpu")
        assert installed.startswith(rule.version)


# ------------------------------------------------------------------ from GPU memory


def test_1m_fits_on_8x141_gib(big: Path) -> None:
    code, out = plan_json(
        str(big),
        "--context",
        "1m",
        "--tp",
        "8",
        "--gpus",
        "8",
        "--gpu-memory",
        "141GiB",
        "--vllm-version",
        "0.32",
    )
    assert code == 0
    assert out["fits"] is True and out["ok"] is True
    assert out["exact"] is False
    est = out["estimate"]
    assert est["gpu_memory_utilization"] == 0.92
    assert "activations" in est["overhead"] and "(estimate)" in est["overhead"]
    assert out["bytes_per_token_per_gpu"] == 31_744
    # weights: ~449 GiB of tensors over 8 GPUs
    assert 55 * GiB < out["weights_per_gpu_bytes"] < 58 * GiB
    assert out["kv_cache_needed_bytes"] == 31 * GiB  # 1M x 31,744 bytes
    assert out["largest_context"] > ONE_M


def test_1m_does_not_fit_on_8x80_gib(big: Path) -> None:
    r = invoke(
        "plan",
        str(big),
        "--context",
        "1m",
        "--tp",
        "8",
        "--gpus",
        "8",
        "--gpu-memory",
        "80GiB",
        "--vllm-version",
        "0.32",
        "--json",
    )
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    _validate(out, "plan")
    assert out["fits"] is False and out["ok"] is False
    advice = " | ".join(out["advice"])
    assert "--kv-cache-dtype fp8 halves the KV cache (15,872 instead of 31,744" in advice
    assert "more GPUs: twice the GPUs" in advice and "--pipeline-parallel-size 2" in advice
    assert f"a smaller context: at most {out['largest_context']:,} tokens" in advice
    assert 0 < out["largest_context"] < ONE_M


def test_human_output_states_the_estimate(big: Path) -> None:
    r = invoke(
        "plan",
        str(big),
        "--context",
        "1m",
        "--gpus",
        "8",
        "--gpu-memory",
        "80GiB",
        "--vllm-version",
        "0.32",
    )
    assert r.exit_code == 1
    assert "ESTIMATE = 80.00 GiB x 0.92 - weights" in r.stdout
    assert "KV cache size: " in r.stdout and "Maximum concurrency for 1,048,576 tokens" in r.stdout
    assert "fits: NO" in r.stdout
    assert "vLLM 0.32 rule (named)" in r.stdout


def test_parallel_line_names_expert_parallel_only_across_gpus(big: Path) -> None:
    import re

    def row(text: str) -> str:  # the plan table's "parallel" row (what, value)
        return r"^parallel +" + re.escape(text) + "$"

    r = invoke("plan", str(TINY), "--context", "1m", "--kv-memory", "2GiB", "--tp", "1")
    assert re.search(row("TP 1 x PP 1 x DP 1 (one GPU)"), r.stdout, re.M), r.stdout
    r = invoke(
        "plan",
        str(big),
        "--context",
        "1m",
        "--gpus",
        "8",
        "--gpu-memory",
        "141GiB",
        "--vllm-version",
        "0.32",
    )
    assert re.search(
        row("TP 8 x PP 1 x DP 1 + expert parallel (8 GPUs; model profile qwen3-coder-480b)"),
        r.stdout,
        re.M,
    ), r.stdout
    r = invoke(
        "plan",
        str(big),
        "--context",
        "1m",
        "--gpus",
        "8",
        "--gpu-memory",
        "141GiB",
        "--no-ep",
        "--tp",
        "2",
        "--vllm-version",
        "0.32",
    )
    assert re.search(row("TP 2 x PP 1 x DP 4 (8 GPUs)"), r.stdout, re.M), r.stdout
    # TP 8 without expert parallel splits each FP8 expert into 320-wide shards, not whole
    # 128-blocks: vLLM refuses it, check says FAIL, and plan refuses it alike (exit 2)
    r = invoke("plan", str(big), "-c", "1m", "--gpus", "8", "--gpu-memory", "141GiB", "--no-ep")
    assert r.exit_code == 2 and "vLLM refuses this layout" in r.stderr, r.output
    assert "is not divisible by weight quantization block_n = 128" in r.stderr


def test_dp_layout_advises_tp_plus_ep(big: Path) -> None:
    code, out = plan_json(
        str(big),
        "--context",
        "1m",
        "--tp",
        "1",
        "--gpus",
        "8",
        "--gpu-memory",
        "141GiB",
        "--vllm-version",
        "0.32",
    )
    assert code == 1
    assert out["parallel"] == {
        "tp": 1,
        "pp": 1,
        "dp": 8,
        "ep": True,
        "gpus": 8,
        "dcp": 1,
        "source": "--tp",
    }
    assert out["bytes_per_token_per_gpu"] == 253_952
    assert out["advice"][0].startswith(
        "DP 8 keeps each sequence's whole KV cache on one TP group; TP 8 with expert parallel "
        "(--tp 8 --ep) spreads it over all 8 GPUs"
    )
    assert "(fits)" in out["advice"][0]


def test_default_context_is_the_config_max(tmp_path: Path) -> None:
    code, out = plan_json(str(TINY), "--kv-memory", "1GiB")
    assert code == 0 and out["context"] == 262_144
    code, out = plan_json(str(TINY), "--kv-memory", "1GiB", "--context", "native")
    assert out["context"] == 262_144


# ------------------------------------------------------------------ errors


def test_both_memory_options_is_a_usage_error() -> None:
    r = invoke("plan", str(TINY), "--kv-memory", "2GiB", "--gpu-memory", "80GiB", "--json")
    assert r.exit_code == 2
    assert json.loads(r.stdout)["error"]["message"].startswith(
        "--kv-memory and --gpu-memory exclude each other"
    )


def test_no_memory_budget_says_why_no_gpu_was_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    from fakes import fake_smi

    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py absent
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    r = invoke("plan", str(TINY), "--context", "1m")
    assert r.exit_code == 2
    assert (
        "error: no memory budget: no GPU found here (NVML: nvidia-ml-py is not installed; "
        "nvidia-smi is not on PATH); pass --kv-memory SIZE, or --gpus N --gpu-memory SIZE."
    ) in r.stderr
    # a broken driver: nvidia-smi's own first line says what is wrong, in the JSON error too
    fake_smi(tmp_path / "bin", "", rc=9)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    r = invoke("plan", str(TINY), "--context", "1m", "--json")
    assert r.exit_code == 2
    err = json.loads(r.stdout)["error"]
    assert (
        "(NVML: nvidia-ml-py is not installed; nvidia-smi: nvidia-smi exited 9: NVIDIA-SMI "
        "has failed because it could not communicate with the NVIDIA driver.)"
    ) in err["message"]
    assert err["hint"] == "qwenprep plan MODEL --context 1m --gpus 8 --gpu H200"


def test_bad_size_and_bad_context() -> None:
    r = invoke("plan", str(TINY), "--kv-memory", "lots")
    assert r.exit_code == 2 and "unreadable size 'lots'." in r.stderr
    r = invoke("plan", str(TINY), "--kv-memory", "2GiB", "--context", "huge")
    assert r.exit_code == 2 and "unknown context 'huge'." in r.stderr


def test_gpu_memory_without_weights(tmp_path: Path) -> None:
    d = tmp_path / "cfg-only"
    d.mkdir()
    (d / "config.json").write_text((TINY / "config.json").read_text())
    r = invoke("plan", str(d), "--gpus", "1", "--gpu-memory", "80GiB")
    assert r.exit_code == 3
    assert "weight sizes are unknown" in r.stderr and "pass --kv-memory SIZE" in r.stderr
    # with the exact KV memory the weights are not needed
    assert invoke("plan", str(d), "--kv-memory", "2GiB", "--context", "1m").exit_code == 0


def test_gpus_not_a_multiple_of_tp() -> None:
    r = invoke("plan", str(TINY), "--tp", "3", "--gpus", "8", "--gpu-memory", "80GiB")
    assert r.exit_code == 2 and "--gpus 8 is not a multiple of TP 3 x PP 1." in r.stderr


# ------------------------------------------------------------------ the Hub, the console script


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    from hubserver import HubServer, files_from_dir, make_commit

    commit = make_commit(files_from_dir(TINY_FP8))
    server = HubServer()
    server.add_repo("Qwen/Tiny-Qwen3-Coder-FP8", [commit], {"main": commit.sha})
    server.start()
    for k in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    # huggingface_hub reads HF_HUB_OFFLINE once, at import: an earlier in-process test that
    # imported it under HF_HUB_OFFLINE=1 would otherwise leave this process "offline".
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    try:
        yield server.url
    finally:
        server.stop()


def test_plan_for_a_repo_not_downloaded(hub: str, tmp_path: Path) -> None:
    """Weights from the Hub's header metadata (HfApi.get_safetensors_metadata, range requests);
    nothing lands in the HF cache."""
    local = shape_from_dir(TINY_FP8)
    code, out = plan_json(
        "Qwen/Tiny-Qwen3-Coder-FP8",
        "--context",
        "1m",
        "--gpus",
        "1",
        "--gpu-memory",
        "8GiB",
        "--vllm-version",
        "0.32",
    )
    assert code == 0, out
    assert out["weights_source"] == "safetensors headers of Qwen/Tiny-Qwen3-Coder-FP8 on the Hub"
    assert out["weights_per_gpu_bytes"] == local.weight_bytes
    assert not (tmp_path / "hf" / "hub" / "models--Qwen--Tiny-Qwen3-Coder-FP8").exists()
    r = invoke("plan", "Qwen/No-Such-Model", "--kv-memory", "1GiB")
    assert r.exit_code == 3
    assert "Qwen/No-Such-Model: cannot read config.json and safetensors headers from" in r.stderr


def test_console_script() -> None:
    res = subprocess.run(
        [
            str(QWENPREP_BIN),
            "plan",
            str(TINY),
            "--context",
            "1m",
            "--kv-memory",
            "2GiB",
            "--vllm-version",
            "0.32",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["kv_cache_tokens"] == 4_194_304 and out["max_concurrency_printed"] == "4.00x"


def test_schemas_are_valid_draft_2020_12() -> None:
    from jsonschema import Draft202012Validator

    from qwenprep.util.schemas import load_schema

    for name in ("plan", "check-report"):
        Draft202012Validator.check_schema(load_schema(name))


def test_index_names_outside_the_checkpoint_are_refused(tmp_path: Path) -> None:
    import json
    import shutil

    from click.testing import CliRunner

    from qwenprep.cli import cli

    src = tmp_path / "ckpt"
    shutil.copytree(Path(__file__).resolve().parents[2] / "examples" / "tiny-qwen3-coder-fp8", src)
    index = src / "model.safetensors.index.json"
    obj = json.loads(index.read_text())
    name = next(iter(obj["weight_map"]))
    for bad in ("../outside.safetensors", str(tmp_path / "outside.safetensors")):
        obj["weight_map"][name] = bad
        index.write_text(json.dumps(obj))
        r = CliRunner().invoke(
            cli, ["plan", str(src), "--gpus", "1", "--gpu-memory", "80GiB", "--tp", "1"]
        )
        assert r.exit_code == 3, r.output
        assert f"weight_map names {bad!r}" in r.stderr and "refusing to open it" in r.stderr


def test_plan_of_an_uncached_repo_offline_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    r = invoke("plan", "Qwen/Not-Here", "--kv-memory", "1GiB")
    assert r.exit_code == 3
    assert "Qwen/Not-Here: not in the Hugging Face cache, and HF_HUB_OFFLINE is set" in r.stderr
    assert "qwenprep fetch Qwen/Not-Here" in r.stderr


def test_one_header_pass_gives_bytes_and_parameters(shape480: ModelShape, big: Path) -> None:
    """The header tally behind plan's time estimates agrees with the byte sizes planning uses:
    the 480B's parameters are 62 layers x (163,577,856 attention + 12,544 norms + 983,040
    router + 160 x 47,185,920 experts) + 6144 + 2 x 933,494,784 embedding/lm_head."""
    from qwenprep.planning.shapes import weight_bytes_from_dir

    assert shape480.params is not None
    assert weight_bytes_from_dir(big) == (
        shape480.params.total_bytes,
        shape480.params.routed_expert_bytes,
    )
    assert shape480.weight_bytes == shape480.params.total_bytes
    per_layer = 163_577_856 + 12_544 + 983_040 + 160 * 3 * 2560 * 6144
    assert shape480.params.total == 62 * per_layer + 6144 + 2 * 151_936 * 6144
    assert shape480.experts_per_token == 8 and shape480.full_attention_layers == 62
    assert shape480.quant_method == "fp8"


# ------------------------------------------------------------------ counts and layouts (issue 20)


def test_gpus_is_a_count_never_listed_gpu_by_gpu() -> None:
    """plan --gpus 9999999999 was OOM-killed (a GPU object per GPU): now refused with the
    maximum and why; the maximum itself plans at once, in a 1 GiB address space."""
    r = run_capped(["plan", str(TINY), "--gpus", "9999999999", "--gpu-memory", "80GiB", "--json"])
    assert r.returncode == 2, r.stderr
    message = json.loads(r.stdout)["error"]["message"]
    assert message.startswith("--gpus 9999999999 is too large: at most 65,536: ")
    assert "no one serving deployment is near 65,536 GPUs" in message
    r = run_capped(
        ["plan", str(TINY), "--gpus", "65536", "--gpu-memory", "80GiB", "--tp", "4", "--json"]
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["parallel"]["gpus"] == 65536


def test_plan_refuses_the_layouts_check_refuses() -> None:
    """plan --tp 3 on 4 query heads said "fits: yes" while check failed it: both now judge
    it by parallel.parallel_checks (plan: exit 2; check: the same FAIL line)."""
    r = invoke("plan", str(TINY), "--tp", "3", "--kv-memory", "1GiB")
    assert r.exit_code == 2, r.output
    want = "TP 3 does not divide the 4 query heads (num_attention_heads)"
    assert r.stderr.startswith(f"error: vLLM refuses this layout: {want}"), r.stderr
    r = invoke("check", str(TINY), "--tp", "3", "--kv-memory", "1GiB", "--no-engine", "--json")
    heads = [c for c in json.loads(r.stdout)["checks"] if c["id"] == "parallel.heads"]
    assert r.exit_code == 1 and heads[0]["status"] == "fail" and want in heads[0]["message"]
    # an absurd TP: refused with the maximum, never "0.00 GiB of weights per GPU, fits"
    r = invoke("plan", str(TINY), "--tp", "1099511627776", "--kv-memory", "1GiB")
    assert r.exit_code == 2 and "--tp 1099511627776 is too large: at most 65,536" in r.stderr
    assert "0.00 GiB" not in r.output
    # TP x PP past the maximum too, each under it
    r = invoke("plan", str(TINY), "--tp", "4", "--pp", "65536", "--kv-memory", "1GiB")
    assert r.exit_code == 2 and "TP 4 x PP 65536 = 262,144 GPUs is too many" in r.stderr
