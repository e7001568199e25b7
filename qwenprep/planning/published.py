"""Published long-context prefill measurements, held against the time model (docs/time.md,
"Published errors"). Every row is a public measurement on data-centre GPUs at 32K tokens or
more, with its source; the floor and band are recomputed from the shipped catalog and
qwenprep.planning.timecost, and tests/planning/test_published.py holds the table in
docs/time.md to them.

Models are described by the numbers of their public config.json (parameters by config
arithmetic, qwenprep.planning.timecost.params_from_config).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwenprep.planning.catalog import lookup
from qwenprep.planning.timecost import Layout, PrefillEstimate, model_cost, prefill

_FP8 = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"}

# Qwen/Qwen3-235B-A22B-FP8 config.json
QWEN3_235B_FP8: dict[str, Any] = {
    "model_type": "qwen3_moe",
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "moe_intermediate_size": 1536,
    "num_hidden_layers": 94,
    "num_attention_heads": 64,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "quantization_config": dict(_FP8, weight_block_size=[128, 128]),
}
# Qwen/Qwen3-Coder-30B-A3B-Instruct config.json (BF16)
QWEN3_CODER_30B: dict[str, Any] = {
    "model_type": "qwen3_moe",
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "moe_intermediate_size": 768,
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "vocab_size": 151936,
    "max_position_embeddings": 262144,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def _llama(layers: int, hidden: int, heads: int, inter: int, fp8: bool = True) -> dict[str, Any]:
    """meta-llama/Llama-3.1-*B config.json numbers, with FP8 weights (TensorRT-LLM's runs)."""
    cfg = {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    return dict(cfg, quantization_config=_FP8) if fp8 else cfg


LLAMA_405B_FP8 = _llama(126, 16384, 128, 53248)
LLAMA_70B_FP8 = _llama(80, 8192, 64, 28672)
LLAMA3_8B = _llama(32, 4096, 32, 14336, fp8=False)  # BF16, the shapes of gradientai's 262K

LMSYS = (
    "https://lmsys.org/blog/2026-01-15-chunked-pipeline/ (Table 1; 128K read as 131,072, "
    "launched as the blog's Qwen example: --chunked-prefill-size 18432 --enable-dynamic-chunking)"
)
NVIDIA_NVL32 = (
    "https://developer.nvidia.com/blog/low-latency-inference-chapter-2-blackwell-is-coming-"
    "nvidia-gh200-nvl32-with-nvlink-switch-gives-signs-of-big-leap-in-time-to-first-token-"
    "performance/ (layout not stated: all 32 GPUs' compute, one NVLink domain)"
)
LMSYS_PP1 = (
    "https://lmsys.org/blog/2026-01-15-chunked-pipeline/ (text: 'baseline TTFT of ~55.5s (PP1 "
    "TP4) is reduced to ~10.5s under the PP8 TP4 configuration'; that 10.5 s is Table 1's 128K "
    "row, so this is 128K too)"
)
MINFERENCE = (
    "https://github.com/microsoft/MInference/issues/84 (the MInference paper's LLaMA-3-8B "
    "prefill of a 300K-token prompt on a single A100: 3 minutes, as its authors corrected it; "
    "300K read as 300,000)"
)
META_CP = (
    "https://arxiv.org/abs/2411.01783 (Table 6, its Llama3 405B with Table 9's shapes, TP8 at "
    "batch size 1: one Grand Teton host of 8 H100 with 96 GB HBM2e, read as the catalog's H100 "
    "SXM; row-wise FP8 feed-forward weights, FlashAttention-3; 32K and 128K read as 32,768 and "
    "131,072)"
)
GAHOW = (
    "https://gitea.gahow.org/gahow/agentic-kvc/src/commit/"
    "837df6bc9e05f5a5b4af27a36356efdd4cff2ecd (v2/exp_a_tier_latency, prefix-cache miss)"
)


@dataclass(frozen=True)
class Published:
    model: str
    config: dict[str, Any]
    gpu: str  # catalog name
    layout: Layout
    engine: str
    tokens: int
    measured_s: float
    source: str
    chunk: int | None = None  # None: vLLM's default for the GPU
    dynamic_chunking: bool = False
    outside_why: str = ""  # why the measurement is outside its band, when it is

    @property
    def gpus(self) -> int:
        return self.layout.tp * self.layout.pp * self.layout.dp

    def estimate(self) -> PrefillEstimate:
        from qwenprep.engines.vllm.kv import ModelShape

        gpu = lookup(self.gpu)
        assert gpu is not None, self.gpu
        cost = model_cost(ModelShape.from_config(self.config, name=self.model))
        return prefill(
            cost,
            self.tokens,
            self.layout,
            gpu,
            chunk=self.chunk,
            dynamic_chunking=self.dynamic_chunking,
        )

    def inside(self) -> bool:
        typ = self.estimate().seconds_typical
        assert typ is not None
        return typ[0] <= self.measured_s <= typ[1]


_Q235 = ("Qwen3-235B-A22B-FP8", QWEN3_235B_FP8, "H20", Layout(tp=4, pp=8, ep=False))
_SGL = "SGLang >= 0.5.7"
_TRT = "TensorRT-LLM"
_NVL32 = Layout(tp=32, gpus_per_node=32)
_META = "Meta PyTorch + FA3"

ROWS: tuple[Published, ...] = (
    Published(
        "Qwen3-235B-A22B-FP8",
        QWEN3_235B_FP8,
        "H20",
        Layout(tp=4, ep=False),
        _SGL,
        131072,
        55.5,
        LMSYS_PP1,
        18432,
        True,
    ),
    Published(*_Q235, _SGL, 131072, 10.54, LMSYS, 18432, True),
    Published(*_Q235, _SGL, 262144, 32.68, LMSYS, 18432, True),
    Published(*_Q235, _SGL, 524288, 114.33, LMSYS, 18432, True),
    Published(*_Q235, _SGL, 1048576, 420.91, LMSYS, 18432, True),
    Published(
        "Llama 3.1 405B", LLAMA_405B_FP8, "GH200 144GB", _NVL32, _TRT, 122880, 7.5, NVIDIA_NVL32
    ),
    Published(
        "Llama 3.1 405B", LLAMA_405B_FP8, "GH200 144GB", _NVL32, _TRT, 32768, 1.6, NVIDIA_NVL32
    ),
    Published(
        "Llama 3.1 70B",
        LLAMA_70B_FP8,
        "GH200 144GB",
        _NVL32,
        _TRT,
        32768,
        0.472,
        NVIDIA_NVL32,
    ),
    Published(
        "Llama 3.1 405B",
        LLAMA_405B_FP8,
        "H100 SXM",
        Layout(tp=8),
        _META,
        32768,
        7.658,
        META_CP,
    ),
    Published(
        "Llama 3.1 405B", LLAMA_405B_FP8, "H100 SXM", Layout(tp=8), _META, 131072, 42.01, META_CP
    ),
    Published(
        "LLaMA-3-8B",
        LLAMA3_8B,
        "A100 80GB SXM",
        Layout(tp=1),
        "HF + FlashAttention-2",
        300000,
        180.0,
        MINFERENCE,
    ),
    Published(
        "Qwen3-Coder-30B-A3B",
        QWEN3_CODER_30B,
        "H20",
        Layout(tp=1),
        "vLLM 0.18.1",
        65536,
        15.2,
        GAHOW,
    ),
)


def _s(x: float) -> str:
    return f"{x:.3g} s" if x < 100 else f"{x:,.0f} s"


def table_lines() -> list[str]:
    """The docs/time.md table of ROWS, one line a row after the header, as recomputed now."""
    out = [
        "| model | GPUs | parallelism | engine | context | measured | floor | band | inside"
        " | source |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ROWS:
        est = r.estimate()
        lay = r.layout
        assert est.seconds_at_peak is not None and est.seconds_typical is not None
        par = f"TP {lay.tp}" + (f" x PP {lay.pp}" if lay.pp > 1 else "")
        lo, hi = est.seconds_typical
        out.append(
            f"| {r.model} | {r.gpus}x {r.gpu} | {par} | {r.engine} | {r.tokens:,} | "
            f"{_s(r.measured_s)} | {_s(est.seconds_at_peak)} | {_s(lo)} - {_s(hi)} | "
            + (
                "yes"
                if lo <= r.measured_s <= hi
                else "NO (slower)"
                if r.measured_s > hi
                else "NO (faster)"
            )
            + f" | {r.source} |"
        )
    return out
