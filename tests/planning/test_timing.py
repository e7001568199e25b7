"""Prefill and decode time estimates (qwenprep.planning.timing, qwenprep.planning.catalog, plan
--gpu/--chart).

Every expected number below is derived by hand from the model's shapes (written out in the
comments), not copied from the code's output."""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from conftest import TINY, invoke
from qwenprep.engines.vllm.kv import ModelShape
from qwenprep.model.layouts import qwen3_moe_tensors
from qwenprep.planning.catalog import CATALOG, lookup
from qwenprep.planning.shapes import shape_from_dir
from qwenprep.planning.timecost import (
    EFFICIENCY_BAND,
    Layout,
    attention_flops,
    decode,
    linear_flops,
    model_cost,
    prefill,
    tally_tensors,
)

ONE_M = 1 << 20
H200 = lookup("H200")
H100 = lookup("H100 SXM")


def _validate(obj: dict[str, Any]) -> None:
    from jsonschema import Draft202012Validator

    from qwenprep.util.schemas import load_schema

    errors = list(Draft202012Validator(load_schema("plan")).iter_errors(obj))
    assert errors == [], [e.message for e in errors]


def plan_json(*args: str) -> tuple[int, dict[str, Any]]:
    r = invoke("plan", *args, "--json")
    out = json.loads(r.stdout)  # exactly one JSON object on stdout
    _validate(out)
    return r.exit_code, out


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qwenprep.testing.synth import make_shaped_checkpoint

    return make_shaped_checkpoint(tmp_path_factory.mktemp("t480") / "Qwen3-Coder-480B-FP8")


@pytest.fixture(scope="module")
def shape480(big: Path) -> ModelShape:
    return shape_from_dir(big)


# ------------------------------------------------------------------ dense model

DENSE = {
    "model_type": "qwen3",
    "num_hidden_layers": 4,
    "hidden_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "intermediate_size": 512,
    "vocab_size": 1000,
    "max_position_embeddings": 32768,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
}


def _dense_shape() -> ModelShape:
    params = tally_tensors((t.name, t.shape, t.nbytes) for t in qwen3_moe_tensors(DENSE))
    return ModelShape.from_config(DENSE, params=params)


def test_dense_flops_by_hand() -> None:
    shape = _dense_shape()
    cost = model_cost(shape)
    # per layer: q 256x256 + k 128x256 + v 128x256 + o 256x256 = 196,608; MLP 3 x 256 x 512 =
    # 393,216; norms 2 x 256 + q/k norm 2 x 64 = 640 -> 590,464; x 4 layers + final norm 256
    assert cost.per_token_params == 4 * 590_464 + 256 == 2_362_112
    assert cost.lm_head_params == 1000 * 256
    assert cost.active_params == 2_362_112 + 2 * 256_000  # + embedding + lm_head
    n = 1000
    assert linear_flops(cost, n) == 2 * 2_362_112 * 1000 + 2 * 256_000 == 4_724_736_000
    # 2 x 4 layers x 4 heads x 64 x N x (N + 1)
    assert attention_flops(n, 4, 4, 64) == 2_050_048_000
    est = prefill(cost, n, Layout(tp=1), H100)
    assert est.flops == 4_724_736_000 + 2_050_048_000
    assert est.linear_dtype == "bf16" and est.attention_dtype == "bf16"  # bf16 weights
    compute = 6_774_784_000 / 989e12
    assert est.terms is not None and est.terms.compute == pytest.approx(compute, rel=1e-12)
    # no pipeline: no bubble, no transfer; the floor adds the 30 ms per request
    assert (est.terms.pp_bubble, est.terms.pp_transfer) == (0, 0)
    assert est.seconds_at_peak == pytest.approx(compute + 0.03, rel=1e-12)
    lo, hi = EFFICIENCY_BAND
    assert est.seconds_typical == pytest.approx((compute / hi + 0.03, compute / lo + 0.03))
    # two GPUs of TP halve the compute
    two = prefill(cost, n, Layout(tp=2), H100).terms
    assert two is not None and two.compute == pytest.approx(compute / 2)


def test_tied_embeddings_use_the_embedding_as_lm_head() -> None:
    cfg = {**DENSE, "tie_word_embeddings": True}
    params = tally_tensors((t.name, t.shape, t.nbytes) for t in qwen3_moe_tensors(cfg))
    cost = model_cost(ModelShape.from_config(cfg, params=params))
    assert cost.per_token_params == 2_362_112 and cost.lm_head_params == 256_000


# ------------------------------------------------------------------ the 480B MoE

# per layer: attention 6144 x (12288 + 1024 + 1024) + 12288 x 6144 = 163,577,856; norms
# 2 x 6144 + 2 x 128 = 12,544; router 160 x 6144 = 983,040; 8 of 160 experts x 3 x 2560 x 6144
# = 377,487,360 -> 542,060,800 active per layer
PER_TOKEN_480 = 62 * 542_060_800 + 6144  # + final norm = 33,607,775,744
ROUTED_480 = 62 * 377_487_360  # 23,404,216,320
LM_HEAD_480 = 151_936 * 6144  # 933,494,784


def test_480b_active_params_and_flops(shape480: ModelShape) -> None:
    cost = model_cost(shape480)
    assert cost.per_token_params == PER_TOKEN_480 == 33_607_775_744
    assert cost.routed_active_params == ROUTED_480
    assert cost.active_params == PER_TOKEN_480 + 2 * LM_HEAD_480 == 35_474_765_312  # "A35B"
    lin = linear_flops(cost, ONE_M)
    att = attention_flops(ONE_M, 62, 96, 128)
    assert lin == 2 * PER_TOKEN_480 * ONE_M + 2 * LM_HEAD_480
    assert att == 2 * 62 * 96 * 128 * ONE_M * (ONE_M + 1)
    # docs/time.md "Prefill FLOPs of one request of N tokens": about 1.7e18 attention against
    # 7e16 linear at 2^20
    assert 1.6e18 < att < 1.8e18 and 6.5e16 < lin < 7.5e16


def test_480b_prefill_floor_tp8_and_dp_attention(shape480: ModelShape) -> None:
    cost = model_cost(shape480)
    lin_dense = 2 * (PER_TOKEN_480 - ROUTED_480) * ONE_M + 2 * LM_HEAD_480
    routed = 2 * ROUTED_480 * ONE_M
    att = attention_flops(ONE_M, 62, 96, 128)
    tp8 = prefill(cost, ONE_M, Layout(tp=8, dp=1), H200)
    # FP8 weights: GEMMs at the FP8 rate; attention in bf16 (kv-cache-dtype auto)
    assert (tp8.linear_dtype, tp8.attention_dtype) == ("fp8", "bf16")
    # + the TP all-reduces: 2 per layer x 62 layers of 1M x 6144 bf16, NVLS on the H200's
    # NVSwitch (1x the tensor per GPU) at 450 GB/s one way: 3.55 s
    allreduce = 2 * 62 * ONE_M * 6144 * 2 / 450e9
    assert tp8.terms is not None
    assert tp8.terms.tp_allreduce == pytest.approx(allreduce, rel=1e-12)
    assert tp8.seconds_at_peak == pytest.approx(
        (lin_dense + routed) / (8 * 1979e12) + att / (8 * 989e12) + 0.03 + allreduce, rel=1e-12
    )
    assert 200 < (tp8.seconds_at_peak or 0) < 230  # about 3.6 minutes
    dp8 = prefill(cost, ONE_M, Layout(tp=1, dp=8), H200)
    assert dp8.attention_on_one_gpu and not tp8.attention_on_one_gpu
    # data-parallel attention: attention and the non-expert GEMMs on ONE GPU, experts on all 8
    assert dp8.seconds_at_peak == pytest.approx(
        lin_dense / 1979e12 + routed / (8 * 1979e12) + att / 989e12 + 0.03, rel=1e-12
    )
    fp8kv = prefill(cost, ONE_M, Layout(tp=8), H200, kv_fp8=True)
    assert fp8kv.attention_dtype == "fp8"
    # on an A100 (no FP8 tensor cores) the FP8 weights run at the BF16 rate
    assert prefill(cost, ONE_M, Layout(tp=8), lookup("A100 80GB SXM")).linear_dtype == "bf16"


def test_480b_decode_floor_by_hand(shape480: ModelShape) -> None:
    cost = model_cost(shape480)
    # bytes outside the routed experts, per layer: q/k/v/o FP8 163,577,856 + their F32 scales
    # (96x48 + 8x48 + 8x48 + 48x96) x 4 = 39,936 + bf16 norms 12,544 x 2 + bf16 router
    # 983,040 x 2 = 165,608,960; x 62 + final norm 12,288 + bf16 lm_head 1,866,989,568
    dense_bytes = 62 * 165_608_960 + 12_288 + 2 * LM_HEAD_480
    assert cost.dense_bytes == dense_bytes == 12_134_757_376
    # one expert: 3 x 2560 x 6144 FP8 + 3 x (20 x 48) F32 scales = 47,197,440 bytes
    assert cost.routed_expert_bytes == 62 * 160 * 47_197_440
    per_gpu = dense_bytes / 8 + 62 * 160 * 47_197_440 * (8 / 160) / 8 + ONE_M * 31_744
    est = decode(cost, ONE_M, Layout(tp=8), H200, 31_744, 1.98, True)
    assert est.bound == "memory"
    assert est.bytes_per_gpu_per_token == int(per_gpu) == 37_729_082_496
    assert est.seconds_per_token_at_peak == pytest.approx(per_gpu / 4.8e12, rel=1e-9)
    assert est.tokens_per_second_per_request == pytest.approx(4.8e12 / per_gpu, rel=1e-9)
    assert est.concurrent_requests == 1  # floor(1.98)
    # four requests at 256K: four KV caches and the experts 4 tokens touch: 1 - (19/20)^4
    four = decode(cost, 262_144, Layout(tp=8), H200, 31_744, 4.5, True)
    step = (
        dense_bytes / 8 + 62 * 160 * 47_197_440 * (1 - 0.95**4) / 8 + 4 * 262_144 * 31_744
    ) / 4.8e12
    assert four.concurrent_requests == 4
    assert four.tokens_per_second_aggregate == pytest.approx(4 / step, rel=1e-9)
    none = decode(cost, ONE_M, Layout(tp=8), H200, 31_744, 0.5, False)
    assert none.tokens_per_second_per_request is None and none.concurrent_requests == 0


# ------------------------------------------------------------------ hybrid layout


# what a hybrid config must also say (qwenprep.engines.vllm.kv_hybrid sizes each linear-attention
# layer's state)
LINEAR = {
    "linear_num_key_heads": 4,
    "linear_num_value_heads": 8,
    "linear_key_head_dim": 32,
    "linear_value_head_dim": 32,
    "linear_conv_kernel_dim": 4,
}


def test_hybrid_attention_counts_full_attention_layers_only() -> None:
    hybrid = {
        **DENSE,
        **LINEAR,
        "num_hidden_layers": 8,
        "layer_types": ["linear_attention"] * 3
        + ["full_attention"]
        + ["linear_attention"] * 3
        + ["full_attention"],
    }
    shape = ModelShape.from_config(hybrid)
    assert shape.full_attention_layers == 2
    n = 4096
    est = prefill(model_cost(shape), n, Layout(tp=1), H100)
    # 2 x 2 layers x 4 heads x 64 x 4096 x 4097
    assert est.attention_flops == 2 * 2 * 4 * 64 * 4096 * 4097 == 17_184_063_488
    dense8 = prefill(
        model_cost(ModelShape.from_config({**DENSE, "num_hidden_layers": 8})), n, Layout(tp=1), H100
    )
    assert dense8.attention_flops == 4 * est.attention_flops
    assert est.linear_flops == dense8.linear_flops  # the projections are linear in N either way
    interval = ModelShape.from_config(
        {**DENSE, **LINEAR, "num_hidden_layers": 48, "full_attention_interval": 4}
    )
    assert interval.full_attention_layers == 12


# ------------------------------------------------------------------ catalog


@pytest.mark.parametrize(
    "reported,name",
    [
        ("NVIDIA H200", "H200"),
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA A100-SXM4-80GB", "A100 80GB SXM"),
        ("NVIDIA H20", "H20"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA GB200", "GB200"),
        ("AMD Instinct MI300X", "MI300X"),
        ("AMD Instinct MI325X", "MI325X"),
        ("NVIDIA L40S", "L40S"),
        ("h200", "H200"),
    ],
)
def test_catalog_lookup(reported: str, name: str) -> None:
    spec = lookup(reported)
    assert spec is not None and spec.name == name


@pytest.mark.parametrize(
    "reported",
    [
        "NVIDIA H100 NVL",
        "NVIDIA A100-SXM4-40GB",
        "NVIDIA A100 80GB PCIe",
        "NVIDIA H200 NVL",
        "H100",
        "Tesla T4",
        "",
    ],
)
def test_catalog_never_guesses(reported: str) -> None:
    assert lookup(reported) is None


def test_catalog_figures_are_dense_and_sourced() -> None:
    # docs/time.md "The GPU catalog": dense BF16 / FP8 TFLOPS and TB/s
    want = {
        "H100 SXM": (989, 1979, 3.35),
        "H200": (989, 1979, 4.8),
        "B200": (2250, 4500, 8.0),
        "MI300X": (1307, 2615, 5.3),
        "L40S": (362, 733, 0.864),
        "H20": (148, 296, 4.0),
        "A100 80GB SXM": (312, None, 2.0),
    }
    for name, (bf16, fp8, bw) in want.items():
        spec = lookup(name)
        assert spec is not None
        assert spec.bf16_tflops == pytest.approx(bf16, rel=2e-3)
        assert (spec.fp8_tflops is None) == (fp8 is None)
        if fp8 is not None:
            assert spec.fp8_tflops == pytest.approx(fp8, rel=2e-3)
        assert spec.hbm_tb_s == bw
    # the driver's figure (NVML on a real H200: 143,771 MiB), not the datasheet's "141 GB"
    assert H200 is not None and H200.memory_bytes == 150_754_820_096 == 143771 * 2**20
    assert len(CATALOG) == 11  # with the GH200 (144 GB) of the published rows
    for spec in CATALOG:
        assert spec.memory_source and (
            "nvidia-smi" in spec.memory_source
            or "NVML" in spec.memory_source
            or "rocm-smi" in spec.memory_source
            or spec.memory_source.startswith("no driver-reported figure on record")
        )
        assert any(w in spec.source for w in ("datasheet", "data sheet", "docs/time.md"))
        if spec.fp8_tflops:  # dense FP8 is twice dense BF16 on every one of these
            assert spec.fp8_tflops == pytest.approx(2 * spec.bf16_tflops, rel=0.02)


# ------------------------------------------------------------------ plan


def test_plan_480b_8x_h200_at_1m(big: Path) -> None:
    code, out = plan_json(
        str(big), "--context", "1m", "--gpus", "8", "--gpu", "H200", "--vllm-version", "0.32"
    )
    assert code == 0
    assert out["gpu"]["name"] == "H200" and out["gpu"]["memory_bytes"] == 150_754_820_096
    assert out["estimate"]["gpu_memory_bytes"] == 150_754_820_096  # --gpu set the memory
    pre = out["prefill"]
    assert pre["attention_flops"] == 2 * 62 * 96 * 128 * ONE_M * (ONE_M + 1)
    assert pre["flops"] == pre["attention_flops"] + 2 * PER_TOKEN_480 * ONE_M + 2 * LM_HEAD_480
    assert pre["attention_on_one_gpu"] is False
    assert pre["efficiency_band"] == list(EFFICIENCY_BAND)
    assert 200 < pre["seconds_at_peak"] < 230
    assert [c["context"] for c in out["contexts"]][:6] == [
        32768,
        65536,
        131072,
        262144,
        524288,
        ONE_M,
    ]
    assert all(c["fits"] for c in out["contexts"])
    assert out["contexts"][-1]["context"] == out["largest_context"]
    names = [lay["name"] for lay in out["layouts"]]
    assert names == ["TP 8 + EP", "DP 8 + EP (data-parallel attention)"]
    dp = out["layouts"][1]
    assert dp["attention_on_one_gpu"] is True and dp["fits"] is False
    assert dp["kv_bytes_one_request_per_gpu"] == ONE_M * 253_952  # 248 GiB on one GPU
    assert out["single_request_layout"] == "TP 8 + EP"
    # the post's verdict: 256K, because at 1M the prefill is too slow
    assert out["recommendation"].startswith("--context 256k (262,144)")


def test_plan_dp_attention_layout(big: Path) -> None:
    code, out = plan_json(
        str(big),
        "--context",
        "1m",
        "--tp",
        "1",
        "--gpus",
        "8",
        "--gpu",
        "H200",
        "--vllm-version",
        "0.32",
    )
    assert code == 1  # one 1M request does not fit on one GPU
    assert out["prefill"]["attention_on_one_gpu"] is True
    att = 2 * 62 * 96 * 128 * ONE_M * (ONE_M + 1)
    assert out["prefill"]["seconds_at_peak"] > att / 989e12  # at least one GPU's attention
    assert out["decode"]["tokens_per_second_per_request"] is None  # nothing to decode
    r = invoke(
        "plan",
        str(big),
        "--context",
        "1m",
        "--tp",
        "1",
        "--gpus",
        "8",
        "--gpu",
        "H200",
        "--vllm-version",
        "0.32",
    )
    assert "attention on ONE GPU" in r.stdout
    assert "one request's KV 248.00 GiB on ONE GPU" in r.stdout
    # the plan table's row (what, value)
    assert re.search(r"^a single long request is served by +TP 8 \+ EP$", r.stdout, re.M)


def test_prefill_budget_moves_the_recommendation(big: Path) -> None:
    base = (str(big), "--context", "1m", "--gpus", "8", "--gpu", "H200", "--vllm-version", "0.32")
    _, out = plan_json(*base, "--prefill-budget", "3600")
    assert out["recommendation"].startswith("--context 1m")
    r = invoke("plan", *base, "--prefill-budget", "0", "--json")
    assert r.exit_code == 2 and "--prefill-budget" in json.loads(r.stdout)["error"]["message"]


def test_unknown_gpu_name_is_refused(big: Path) -> None:
    r = invoke("plan", str(big), "--gpus", "8", "--gpu", "H100 NVL", "--json")
    assert r.exit_code == 2
    err = json.loads(r.stdout)["error"]
    assert "not in the GPU catalog" in err["message"] and "H100 SXM" in err["hint"]
    r = invoke("plan", str(big), "--gpu", "H200", "--json")
    assert r.exit_code == 2 and "--gpus N" in json.loads(r.stdout)["error"]["message"]


def test_no_gpu_model_leaves_times_null() -> None:
    code, out = plan_json(str(TINY), "--context", "1m", "--kv-memory", "2GiB", "--tp", "1")
    assert code == 0
    assert out["gpu"]["bf16_tflops"] is None and out["prefill"]["seconds_at_peak"] is None
    assert out["prefill"]["flops"] > 0  # the FLOPs do not need a GPU
    assert out["decode"]["tokens_per_second_per_request"] is None
    assert any("--gpu" in n for n in out["time_notes"])
    assert all(c["prefill_seconds_at_peak"] is None for c in out["contexts"])


def test_detected_gpus_are_looked_up_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from qwenprep.planning import gpus
    from qwenprep.util.sizes import GiB

    def fake(name: str) -> Any:
        def inventory(*, gpus: int | None = None, gpu_memory: int | None = None) -> Any:
            return gpus_mod.Inventory(
                "nvml", tuple(gpus_mod.GPU(i, name, 80 * GiB, 79 * GiB) for i in range(2))
            )

        return inventory

    gpus_mod = gpus
    monkeypatch.setattr(gpus, "inventory", fake("NVIDIA H100 80GB HBM3"))
    _, out = plan_json(str(TINY), "--context", "32k")
    assert out["gpu"]["name"] == "H100 SXM" and out["prefill"]["seconds_at_peak"] > 0
    monkeypatch.setattr(gpus, "inventory", fake("NVIDIA H100 NVL"))
    _, out = plan_json(str(TINY), "--context", "32k")
    assert out["gpu"]["name"] == "NVIDIA H100 NVL" and out["gpu"]["bf16_tflops"] is None
    assert out["prefill"]["seconds_at_peak"] is None
    assert any("not in the catalog" in n for n in out["time_notes"])


# ------------------------------------------------------------------ chart


def test_chart_svg_and_png(big: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    svg = tmp_path / "plan.svg"
    code, out = plan_json(
        str(big),
        "--context",
        "1m",
        "--gpus",
        "8",
        "--gpu",
        "H200",
        "--vllm-version",
        "0.32",
        "--chart",
        str(svg),
    )
    assert code == 0 and out["chart"] == str(svg)
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    text = svg.read_text()
    assert "prefill" in text and "concurrency" in text
    png = tmp_path / "plan.png"
    r = invoke(
        "plan", str(big), "--context", "256k", "--gpus", "8", "--gpu", "H200", "--chart", str(png)
    )
    assert r.exit_code == 0 and f"chart: {png}" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    img = mpimg.imread(png)
    assert img.shape[0] > 100 and img.shape[1] > 100


def test_chart_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = invoke(
        "plan", str(TINY), "--kv-memory", "2GiB", "--chart", str(tmp_path / "x.jpg"), "--json"
    )
    assert r.exit_code == 2 and ".svg or .png" in json.loads(r.stdout)["error"]["message"]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    r = invoke("plan", str(TINY), "--kv-memory", "2GiB", "--chart", str(tmp_path / "x.svg"))
    assert r.exit_code == 2
    assert "pip install 'qwenprep[chart]'" in r.output
    assert not (tmp_path / "x.svg").exists()


def test_chart_never_written_through_a_symlink(tmp_path: Path) -> None:
    """--chart refuses a symlinked parent directory (it may lead into a source checkpoint)
    and a symlink at FILE itself, --force or not: a clear error naming the path and what to
    do, and nothing written where either link leads."""
    pytest.importorskip("matplotlib")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link_dir = tmp_path / "linkdir"
    link_dir.symlink_to(elsewhere, target_is_directory=True)
    for force in ((), ("--force",)):
        r = invoke(
            "plan", str(TINY), "--kv-memory", "2GiB", "--chart", str(link_dir / "p.svg"),
            "--json", *force,
        )  # fmt: skip
        assert r.exit_code == 2, r.output
        err = json.loads(r.stdout)["error"]
        assert str(link_dir) in err["message"] and "symlink" in err["message"]
        assert err["hint"] and "directory" in err["hint"]
        assert "Traceback" not in r.output
        assert list(elsewhere.iterdir()) == []
    victim = elsewhere / "victim.svg"
    victim.write_text("user's own")
    link_file = tmp_path / "p.svg"
    link_file.symlink_to(victim)
    for force in ((), ("--force",)):
        r = invoke("plan", str(TINY), "--kv-memory", "2GiB", "--chart", str(link_file), *force)
        assert r.exit_code == 3 and "symlink" in r.output, r.output
        assert victim.read_text() == "user's own" and link_file.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "linkdir", "p.svg"]


def test_hybrid_context_table_uses_the_hybrid_arithmetic(tmp_path: Path) -> None:
    """The time table's concurrency for a hybrid model (Qwen3-Next) comes from the same
    arithmetic as the plan's own number: each request also holds its linear-attention state, so
    the row at the plan's context says exactly what the plan says (not the per-token-only 2.5)."""
    from qwenprep.testing.synth import make_shaped_checkpoint, qwen3_next_80b_config

    ckpt = make_shaped_checkpoint(
        tmp_path / "Qwen3-Coder-Next", config=qwen3_next_80b_config(), fp8=False, shards=8
    )
    code, out = plan_json(str(ckpt), "-c", "1m", "--kv-memory", "60GiB", "--gpu", "H200")
    assert code == 0
    rows = {r["context"]: r for r in out["contexts"]}
    assert rows[ONE_M]["max_concurrency"] == out["max_concurrency"] == pytest.approx(2.4912)
    h = out["hybrid"]
    # every row, by vLLM's grouping: one block of the shared pool per layer group per step, so
    # a request takes ceil(n / block) blocks in each attention group and the state blocks in
    # each linear-attention group
    for n, row in rows.items():
        per_request = sum(
            -(-n // h["block_size"])
            if g["kind"] == "full_attention"
            else h["state_blocks_per_request_per_group"]
            for g in h["groups"]
        )
        want = out["num_blocks"] / per_request
        assert row["max_concurrency"] == pytest.approx(want, abs=1e-4), n
