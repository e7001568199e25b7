"""What the prefill floor adds to the FLOPs (docs/time.md "What the floor adds"): the pipeline's
fill and drain, the activations crossing stage boundaries, a per-request fixed cost; and the
typical band, at most 4x the floor. Expected numbers are derived by hand in the comments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import invoke
from qwenprep.engines.vllm.kv import ModelShape
from qwenprep.planning.catalog import CATALOG, lookup
from qwenprep.planning.timecost import (
    FIXED_REQUEST_SECONDS,
    Layout,
    model_cost,
    prefill,
    vllm_chunk_tokens,
)

H20 = lookup("H20")
H200 = lookup("H200")

# a dense Qwen3 of round numbers: 8 layers, hidden 4096, 32 heads of 128, MLP 12288, no lm_head
# tie; params from config arithmetic (qwenprep.planning.timecost.params_from_config)
DENSE = {
    "model_type": "qwen3",
    "num_hidden_layers": 8,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 12288,
    "vocab_size": 1000,
    "max_position_embeddings": 131072,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
}


def test_pipeline_terms_by_hand() -> None:
    cost = model_cost(ModelShape.from_config(DENSE))
    n, c = 65536, 8192
    # PP 4 x TP 4 on 8-GPU nodes: stages on GPUs 0-3 | 4-7 | 8-11 | 12-15; only the boundary
    # between GPU 7 and GPU 8 crosses nodes
    lay = Layout(tp=4, pp=4)
    est = prefill(cost, n, lay, H20, chunk=c)
    t = est.terms
    assert t is not None and (t.chunk_tokens, t.chunks, t.cross_node_boundaries) == (c, 8, 1)
    rate = 148e12  # H20 BF16, dense
    per_tok = cost.per_token_params
    hd = 2 * 8 * 32 * 128
    compute = (2 * per_tok * n + 2 * cost.lm_head_params + hd * n * (n + 1)) / (16 * rate)
    assert t.compute == pytest.approx(compute, rel=1e-12)
    # fill and drain: 3 x the last chunk's stage time; its 8192 queries meet all 65,536 keys
    last = (2 * per_tok * c + hd * c * (2 * n - c + 1)) / (16 * rate)
    assert t.pp_bubble == pytest.approx(3 * last, rel=1e-12)
    # each TP rank sends 1/4 of hidden states + residual, bf16: 2 x 8192 x 4096 x 2 / 4 bytes,
    # over 400 Gb/s (50 GB/s) once and over NVLink (900 / 2 GB/s) twice
    b = 2 * c * 4096 * 2 / 4
    assert t.pp_transfer == pytest.approx(b / 50e9 + 2 * b / 450e9, rel=1e-12)
    assert t.fixed == FIXED_REQUEST_SECONDS == 0.03
    # TP 4 all-reduces on the H20's NVSwitch (NVLS: 1x the tensor per GPU), 2 per layer, each
    # stage its 2 of the 8 layers over N / 4 tokens + 3/4 of one chunk's fill and drain
    ar = 2 * 8 * (n / 4 + 3 * c / 4) * 4096 * 2 / 450e9
    assert t.tp_allreduce == pytest.approx(ar, rel=1e-12)
    assert est.seconds_at_peak == pytest.approx(compute + 3 * last + t.pp_transfer + 0.03 + ar)
    lo, hi = 0.35, 0.95  # the H20's band; all-reduces at NCCL's 370 of 450 GB/s, a ring's
    # 2 x 3/4 of the tensor at the slow end
    assert est.seconds_typical == pytest.approx(
        (
            (compute + 3 * last) / hi + t.pp_transfer + 0.03 + ar * 450 / 370,
            (compute + 3 * last) / lo + t.pp_transfer + 0.03 + 1.5 * ar * 450 / 370,
        )
    )
    # dynamic chunking (SGLang): every chunk takes as long as the first, C x (C + 1) / 2 pairs
    dyn = prefill(cost, n, lay, H20, chunk=c, dynamic_chunking=True).terms
    first = (2 * per_tok * c + hd * c * (c + 1)) / (16 * rate)
    assert dyn is not None and dyn.pp_bubble == pytest.approx(3 * first, rel=1e-12)
    # no pipeline: neither term
    flat = prefill(cost, n, Layout(tp=8), H20).terms
    assert flat is not None and (flat.pp_bubble, flat.pp_transfer) == (0, 0)


def test_tp_allreduce_term_by_hand() -> None:
    # 2 all-reduces per layer of N x hidden x 2 bytes (vLLM 0.32 RowParallelLinear after o_proj
    # and down_proj), not overlapped: DENSE has 8 layers of hidden 4096
    cost = model_cost(ModelShape.from_config(DENSE))
    n = 65536
    tensor = n * 4096 * 2  # bytes of one all-reduce's tensor
    # H200 (NVLink SHARP): 1x the tensor per GPU at 900 / 2 GB/s one way; a ring 2 x 3/4 of it
    est = prefill(cost, n, Layout(tp=4), H200)
    t = est.terms
    assert t is not None
    assert t.tp_allreduce == pytest.approx(2 * 8 * tensor / 450e9, rel=1e-12)
    ring = 2 * 8 * 2 * 3 / 4 * tensor / 450e9
    assert t.tp_allreduce_ring == pytest.approx(ring / (370 / 450), rel=1e-12)
    assert est.seconds_at_peak == pytest.approx(t.compute + 0.03 + t.tp_allreduce, rel=1e-12)
    # the band: kernels at 0.75 - 0.35 of peak, all-reduces at NCCL's 370 of 450 GB/s, fast end
    # with the floor's bytes, slow end by a ring
    assert est.seconds_typical == pytest.approx(
        (
            t.compute / 0.75 + 0.03 + t.tp_allreduce * 450 / 370,
            t.compute / 0.35 + 0.03 + ring * 450 / 370,
        )
    )
    # A100 (NVSwitch without SHARP): a ring at 600 / 2 GB/s
    a100 = prefill(cost, n, Layout(tp=4), lookup("A100 80GB SXM")).terms
    assert a100 is not None and a100.tp_allreduce == pytest.approx(2 * 8 * 1.5 * tensor / 300e9)
    # TP 16 spans two 8-GPU nodes: a ring at the 50 GB/s NIC
    wide = prefill(cost, n, Layout(tp=16), H200).terms
    assert wide is not None and wide.tp_allreduce == pytest.approx(
        2 * 8 * 2 * 15 / 16 * tensor / 50e9
    )
    # PP 2: each stage reduces its half of the layers while the other works, + one chunk's fill
    c = 8192
    pp = prefill(cost, n, Layout(tp=4, pp=2), H200, chunk=c).terms
    assert pp is not None
    assert pp.tp_allreduce == pytest.approx(2 * 8 * (n / 2 + c / 2) * 4096 * 2 / 450e9)
    # TP 1: none
    one = prefill(cost, n, Layout(tp=1), H200).terms
    assert one is not None and (one.tp_allreduce, one.tp_allreduce_ring) == (0, 0)


def test_chunk_defaults_follow_vllm() -> None:
    # vLLM 0.32 EngineArgs.get_batch_defaults: >= 160 GiB 16384; >= 70 GiB but A100 8192; 2048
    assert vllm_chunk_tokens(lookup("B200")) == 16384
    assert vllm_chunk_tokens(H200) == 8192
    assert vllm_chunk_tokens(lookup("A100 80GB SXM")) == 2048
    assert vllm_chunk_tokens(lookup("L40S")) == 2048


@pytest.mark.parametrize("gpu", CATALOG, ids=[g.name for g in CATALOG])
def test_typical_band_stays_within_4x_of_the_floor(gpu) -> None:  # type: ignore[no-untyped-def]
    cost = model_cost(ModelShape.from_config(DENSE))
    for lay in (Layout(tp=1), Layout(tp=4, pp=8), Layout(tp=8, pp=2)):
        for n in (32768, 1 << 20):
            est = prefill(cost, n, lay, gpu)
            assert est.seconds_at_peak and est.seconds_typical
            lo, hi = est.seconds_typical
            assert est.seconds_at_peak <= lo <= hi <= 4 * est.seconds_at_peak


def test_plan_json_names_the_terms(tmp_path: Path) -> None:
    model = tmp_path / "dense"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(DENSE))
    args = ("plan", str(model), "--gpu", "H20", "--tp", "4", "--pp", "2", "--context", "64k")
    r = invoke(*args, "--kv-memory", "20GiB", "--json")
    assert r.exit_code == 0, r.output
    pre = json.loads(r.stdout)["prefill"]
    terms = pre["terms"]
    assert set(terms) >= {
        "compute_seconds",
        "pp_bubble_seconds",
        "pp_transfer_seconds",
        "fixed_seconds",
        "tp_allreduce_seconds",
    }
    assert (
        terms["pp_bubble_seconds"] > 0
        and terms["tp_allreduce_seconds"] > 0
        and terms["fixed_seconds"] == 0.03
    )
    assert terms["chunk_size"] == 8192  # the H20's 96 GiB: vLLM's 8192
    total = sum(
        terms[k]
        for k in (
            "compute_seconds",
            "pp_bubble_seconds",
            "pp_transfer_seconds",
            "fixed_seconds",
            "tp_allreduce_seconds",
        )
    )
    assert pre["seconds_at_peak"] == pytest.approx(total, rel=1e-5)
    assert pre["efficiency_band"] == [0.35, 0.95]
    text = invoke(*args, "--kv-memory", "20GiB")
    assert "prefill floor terms" in text.stdout and "pipeline fill/drain" in text.stdout
    assert "TP all-reduces" in text.stdout


def test_decode_band_by_hand() -> None:
    from qwenprep.planning.timecost import DECODE_HBM_FRACTION, decode

    cost = model_cost(ModelShape.from_config(DENSE))
    n, kv = 65536, 16384  # KV bytes per token per GPU (given)
    est = decode(cost, n, Layout(tp=2), H200, kv, 3.5, True)
    # per GPU and token: half the weights outside the embedding table + N x the KV bytes
    nbytes = cost.dense_bytes / 2 + n * kv
    ceiling = 4.8e12 / nbytes
    assert est.tokens_per_second_per_request == pytest.approx(ceiling, rel=1e-9)
    # typical: the same bytes at 0.69 of the bandwidth (Qwen2.5-72B on 2x H100, vLLM: 30.9 ms
    # per token against 21.3 ms at peak)
    assert DECODE_HBM_FRACTION == 0.69
    assert est.tokens_per_second_per_request_typical == pytest.approx(0.69 * ceiling, rel=1e-9)
    # aggregate over floor(3.5) = 3 requests: one step reads the weights once and 3 KV caches
    step = (cost.dense_bytes / 2 + 3 * n * kv) / 4.8e12
    assert est.concurrent_requests == 3
    assert est.tokens_per_second_aggregate == pytest.approx(3 / step, rel=1e-9)
    assert est.tokens_per_second_aggregate_typical == pytest.approx(0.69 * 3 / step, rel=1e-9)
    band = est.to_dict()["band"]
    assert band["per_request"] == pytest.approx([0.69 * ceiling, ceiling], rel=1e-5)
    assert band["aggregate"] == pytest.approx([0.69 * 3 / step, 3 / step], rel=1e-5)


def test_plan_shows_the_decode_band(tmp_path: Path) -> None:
    model = tmp_path / "dense"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(DENSE))
    args = ("plan", str(model), "--gpu", "H200", "--tp", "2", "--context", "64k")
    out = json.loads(invoke(*args, "--kv-memory", "20GiB", "--json").stdout)
    band = out["decode"]["band"]
    lo, hi = band["per_request"]
    assert lo == pytest.approx(0.69 * hi, rel=1e-4)
    assert hi == out["decode"]["tokens_per_second_per_request"]
    row = next(c for c in out["contexts"] if c["context"] == 65536)
    assert row["decode_tokens_per_second_per_request_typical"] == pytest.approx(lo, rel=1e-4)
    text = invoke(*args, "--kv-memory", "20GiB").stdout
    assert "typical at 69% of the HBM bandwidth - ceiling" in text
