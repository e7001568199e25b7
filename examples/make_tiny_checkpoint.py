#!/usr/bin/env python3
# ruff: noqa: E501 - the chat template and the tensor tables read better unwrapped
"""Write the embedded tiny Qwen3-Coder-shaped checkpoints (bf16 and block-FP8).

    python examples/make_tiny_checkpoint.py [--out-dir examples]

Needs numpy only. The output is byte-for-byte deterministic: weights come from a
counter-based integer generator (splitmix64 keyed by the tensor name), not from numpy's
random module, so a numpy upgrade cannot change a single byte; the tokenizer's merges are
learnt from a corpus embedded below with a fixed tie-break; JSON is written with a fixed
key order.

What is written:
- ``tiny-qwen3-coder/``: config.json with the real release's keys and order (shrunk to
  2 layers, hidden 128, 4 experts), generation_config.json, one model.safetensors (bf16),
  a byte-level BPE tokenizer (tokenizer.json) and tokenizer_config.json with a Qwen3-Coder
  style chat template (tools in the system prompt, ``<tool_call><function=...>`` calls).
- ``tiny-qwen3-coder-fp8/``: the same model with the FP8 release's quantization_config:
  attention and expert projections as F8_E4M3 with per-128x128-block ``weight_scale_inv``
  (F32), embeddings / norms / router / lm_head in bf16, in two shards plus
  model.safetensors.index.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qwenprep.model.layouts import qwen3_next_tensors  # noqa: E402
from qwenprep.testing.synth import (  # noqa: E402
    qwen3_coder_480b_fp8_config,
    qwen3_next_80b_config,
    release_quantization_config,
)

BF16_DIR = "tiny-qwen3-coder"
FP8_DIR = "tiny-qwen3-coder-fp8"
NEXT_DIR = "tiny-qwen3-next"

# ---------------------------------------------------------------- shape
LAYERS = 2
HIDDEN = 128
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 32
EXPERTS = 4
EXPERTS_PER_TOK = 2
MOE_INTERMEDIATE = 256
INTERMEDIATE = 256
NUM_MERGES = 256
VOCAB_SIZE = 576  # tokenizer has 256 bytes + 256 merges + 9 specials = 521 ids; padded
BLOCK = 128  # FP8 weight block size
STD = 0.02
SEED = 20250722

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]
FIRST_SPECIAL_ID = 256 + NUM_MERGES
SPECIAL_IDS = {tok: FIRST_SPECIAL_ID + i for i, tok in enumerate(SPECIAL_TOKENS)}
EOS_ID = SPECIAL_IDS["<|im_end|>"]
PAD_ID = SPECIAL_IDS["<|endoftext|>"]


# ---------------------------------------------------------------- config
def model_config(fp8: bool) -> dict[str, Any]:
    """The real release's config.json, key for key and in its order, shrunk."""
    cfg = qwen3_coder_480b_fp8_config()
    cfg.update(
        eos_token_id=EOS_ID,
        head_dim=HEAD_DIM,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        max_window_layers=LAYERS,
        moe_intermediate_size=MOE_INTERMEDIATE,
        num_attention_heads=HEADS,
        num_experts=EXPERTS,
        num_experts_per_tok=EXPERTS_PER_TOK,
        num_hidden_layers=LAYERS,
        num_key_value_heads=KV_HEADS,
        vocab_size=VOCAB_SIZE,
    )
    if fp8:
        cfg["quantization_config"] = release_quantization_config(LAYERS)
        assert cfg["quantization_config"]["weight_block_size"] == [BLOCK, BLOCK]
    else:
        del cfg["quantization_config"]
    return cfg


def next_config() -> dict[str, Any]:
    """Qwen3-Next-80B-A3B's config.json, key for key and in its order, shrunk: 4 layers (three
    Gated DeltaNet, one full attention), partial rotary 0.25, 4 experts + a shared expert.
    The DeltaNet heads stay 128 wide: vLLM's CPU kernel (chunk_gated_delta_rule_cpu) refuses
    other head sizes ("Unexpected head dim size, 32")."""
    cfg = qwen3_next_80b_config()
    cfg.update(
        bos_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        head_dim=HEAD_DIM,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=128,
        linear_num_key_heads=1,
        linear_num_value_heads=1,
        linear_value_head_dim=128,
        moe_intermediate_size=16,
        num_attention_heads=HEADS,
        num_experts=EXPERTS,
        num_experts_per_tok=EXPERTS_PER_TOK,
        num_hidden_layers=4,
        num_key_value_heads=KV_HEADS,
        shared_expert_intermediate_size=16,
        vocab_size=VOCAB_SIZE,
    )
    return cfg


def next_tensors() -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Every tensor qwenprep.model.layouts.qwen3_next_tensors lists (the names vLLM 0.32 loads),
    with deterministic values: norms 0 (Qwen3-Next's RMSNorm scales by 1 + weight), the
    gated norm 1, A_log in float32, everything else uniform."""
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    for spec in qwen3_next_tensors(next_config()):
        name, shape = spec.name, tuple(spec.shape)
        if name.endswith("linear_attn.norm.weight"):
            w = np.ones(shape, np.float32)
        elif (
            name.endswith("norm.weight")
            or name.endswith("norm_embedding.weight")
            or name.endswith("norm_hidden.weight")
        ):
            w = np.zeros(shape, np.float32)
        else:
            w = random_weight(name, shape)
        if spec.dtype == "F32":
            tensors[name] = ("F32", shape, w.astype("<f4").tobytes())
        else:
            tensors[name] = ("BF16", shape, to_bf16_bits(w).astype("<u2").tobytes())
    return tensors


def generation_config() -> dict[str, Any]:
    return {
        "bos_token_id": PAD_ID,
        "pad_token_id": PAD_ID,
        "do_sample": True,
        "eos_token_id": [EOS_ID, PAD_ID],
        "repetition_penalty": 1.05,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
        "transformers_version": "4.51.0",
    }


# ---------------------------------------------------------------- weights
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(counter: np.ndarray, key: int) -> np.ndarray:
    """Counter-based splitmix64: one independent 64-bit word per counter value."""
    with np.errstate(over="ignore"):
        z = counter * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z & _M64


def random_weight(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform values with standard deviation STD, exactly reproducible (float32)."""
    key = int.from_bytes(hashlib.sha256(f"{SEED}:{name}".encode()).digest()[:8], "little")
    n = int(np.prod(shape))
    words = _splitmix64(np.arange(n, dtype=np.uint64), key)
    unit = (words >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)  # [0,1)
    half_width = STD * np.sqrt(3.0)
    return ((unit * 2.0 - 1.0) * half_width).astype(np.float32).reshape(shape)


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    return rounded.astype(np.uint16)


def _e4m3fn_table() -> np.ndarray:
    """Values of the 127 non-negative finite E4M3FN codes 0x00..0x7E (0x7F is NaN)."""
    vals = []
    for code in range(0x7F):
        exp, man = code >> 3, code & 7
        if exp == 0:
            vals.append(man / 8.0 * 2.0**-6)
        else:
            vals.append((1.0 + man / 8.0) * 2.0 ** (exp - 7))
    return np.array(vals, dtype=np.float64)


E4M3_MAX = 448.0
_E4M3 = _e4m3fn_table()


def to_e4m3fn(x: np.ndarray) -> np.ndarray:
    """float -> E4M3FN codes (uint8), round to nearest, ties to even; saturates at 448."""
    a = np.minimum(np.abs(x.astype(np.float64)), E4M3_MAX)
    hi = np.clip(np.searchsorted(_E4M3, a, side="left"), 0, len(_E4M3) - 1)
    lo = np.maximum(hi - 1, 0)
    d_lo = a - _E4M3[lo]
    d_hi = _E4M3[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    code = np.where(pick_hi, hi, lo).astype(np.uint8)
    sign = np.where(np.signbit(x), np.uint8(0x80), np.uint8(0))
    return (code | sign).astype(np.uint8)


def quantize_block_fp8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 128x128 block: scale_inv = amax / 448, q = e4m3(w / scale_inv).

    Returns (codes uint8 [out, in], scale_inv float32 [ceil(out/128), ceil(in/128)]).
    Dequantised: w ~= e4m3_value(q) * scale_inv[block].
    """
    out_dim, in_dim = w.shape
    rows, cols = -(-out_dim // BLOCK), -(-in_dim // BLOCK)
    scale_inv = np.zeros((rows, cols), dtype=np.float32)
    codes = np.zeros(w.shape, dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            blk = w[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK].astype(np.float64)
            amax = float(np.max(np.abs(blk)))
            s = np.float32(amax / E4M3_MAX if amax > 0 else 1.0)
            scale_inv[r, c] = s
            codes[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = to_e4m3fn(
                blk / np.float64(s)
            )
    return codes, scale_inv


def layer_tensor_shapes(i: int) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) for one decoder layer; kind: linear | norm | router."""
    p = f"model.layers.{i}"
    q_out, kv_out = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    out: list[tuple[str, tuple[int, ...], str]] = [
        (f"{p}.input_layernorm.weight", (HIDDEN,), "norm"),
        (f"{p}.self_attn.q_proj.weight", (q_out, HIDDEN), "linear"),
        (f"{p}.self_attn.k_proj.weight", (kv_out, HIDDEN), "linear"),
        (f"{p}.self_attn.v_proj.weight", (kv_out, HIDDEN), "linear"),
        (f"{p}.self_attn.o_proj.weight", (HIDDEN, q_out), "linear"),
        (f"{p}.self_attn.q_norm.weight", (HEAD_DIM,), "norm"),
        (f"{p}.self_attn.k_norm.weight", (HEAD_DIM,), "norm"),
        (f"{p}.post_attention_layernorm.weight", (HIDDEN,), "norm"),
        (f"{p}.mlp.gate.weight", (EXPERTS, HIDDEN), "router"),
    ]
    for e in range(EXPERTS):
        q = f"{p}.mlp.experts.{e}"
        out += [
            (f"{q}.gate_proj.weight", (MOE_INTERMEDIATE, HIDDEN), "linear"),
            (f"{q}.up_proj.weight", (MOE_INTERMEDIATE, HIDDEN), "linear"),
            (f"{q}.down_proj.weight", (HIDDEN, MOE_INTERMEDIATE), "linear"),
        ]
    return out


def all_tensor_shapes() -> list[tuple[str, tuple[int, ...], str]]:
    out: list[tuple[str, tuple[int, ...], str]] = [
        ("model.embed_tokens.weight", (VOCAB_SIZE, HIDDEN), "embed")
    ]
    for i in range(LAYERS):
        out += layer_tensor_shapes(i)
    out += [
        ("model.norm.weight", (HIDDEN,), "norm"),
        ("lm_head.weight", (VOCAB_SIZE, HIDDEN), "embed"),
    ]
    return out


def bf16_tensors(
    names: list[tuple[str, tuple[int, ...], str]],
) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    for name, shape, kind in names:
        if kind == "norm":
            w = np.ones(shape, dtype=np.float32)
        else:
            w = random_weight(name, shape)
        tensors[name] = ("BF16", shape, to_bf16_bits(w).astype("<u2").tobytes())
    return tensors


def fp8_tensors(
    names: list[tuple[str, tuple[int, ...], str]],
) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    for name, shape, kind in names:
        if kind == "linear":
            codes, scale_inv = quantize_block_fp8(random_weight(name, shape))
            tensors[name] = ("F8_E4M3", shape, codes.tobytes())
            tensors[name + "_scale_inv"] = (
                "F32",
                tuple(scale_inv.shape),
                scale_inv.astype("<f4").tobytes(),
            )
        elif kind == "norm":
            tensors[name] = (
                "BF16",
                shape,
                to_bf16_bits(np.ones(shape, np.float32)).astype("<u2").tobytes(),
            )
        else:
            tensors[name] = (
                "BF16",
                shape,
                to_bf16_bits(random_weight(name, shape)).astype("<u2").tobytes(),
            )
    return tensors


def safetensors_bytes(tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> bytes:
    """A safetensors file: u64 header length, JSON header (names sorted), data in that order."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    order = sorted(tensors)
    for name in order:
        dtype, shape, data = tensors[name]
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(tensors[n][2] for n in order)


# ---------------------------------------------------------------- tokenizer
CORPUS = r'''
def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)

    def pop(self):
        return self.items.pop()

    def is_empty(self):
        return len(self.items) == 0


for i in range(10):
    print(f"{i}: {fibonacci(i)}")

import json
import os
from pathlib import Path

def read_config(path):
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)

function add(a, b) { return a + b; }
const result = items.map((item) => item.value).filter((value) => value !== null);
SELECT name, count(*) FROM users WHERE active = true GROUP BY name ORDER BY name;

You are a helpful coding assistant. The user asks a question and the assistant answers it.
Please write a function that reverses a string. Here is the code you asked for.
The weather in the city is sunny today. What is the weather like in Paris?
This is a test of the tokenizer. It should split text into tokens and join them again.
Hello, world! How are you doing today? I am fine, thank you for asking.
The function returns the value of the parameter when the input is valid.
'''


def bytes_to_unicode() -> dict[int, str]:
    """The byte-level alphabet: printable bytes map to themselves, the rest to 256+."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(0xA1, 0xAC + 1))
        + list(range(0xAE, 0xFF + 1))
    )
    mapping: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


# Pre-tokenization as in Qwen2/GPT-4-style tokenizers (written for the `tokenizers` regex
# engine, which knows \p{L} and \p{N}).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# A close approximation with Python's re, used only to learn the merges.
_TRAIN_SPLIT = re.compile(r"[^\r\n\w]?[A-Za-z_]+|\d| ?[^\s\w]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def learn_merges(corpus: str, num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE: merge the most frequent adjacent pair; ties go to the smallest pair."""
    b2u = bytes_to_unicode()
    counts: dict[tuple[str, ...], int] = {}
    for piece in _TRAIN_SPLIT.findall(corpus):
        word = tuple(b2u[b] for b in piece.encode("utf-8"))
        counts[word] = counts.get(word, 0) + 1
    merges: list[tuple[str, str]] = []
    words = dict(counts)
    while len(merges) < num_merges:
        pairs: dict[tuple[str, str], int] = {}
        for word, n in words.items():
            for a, b in zip(word, word[1:], strict=False):
                pairs[(a, b)] = pairs.get((a, b), 0) + n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        new_words: dict[tuple[str, ...], int] = {}
        for word, n in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            key = tuple(out)
            new_words[key] = new_words.get(key, 0) + n
        words = new_words
    if len(merges) < num_merges:
        raise SystemExit(f"corpus too small: only {len(merges)} merges")
    return merges


def tokenizer_json() -> dict[str, Any]:
    b2u = bytes_to_unicode()
    vocab: dict[str, int] = {b2u[b]: b for b in range(256)}
    merges = learn_merges(CORPUS, NUM_MERGES)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    assert len(vocab) == FIRST_SPECIAL_ID, "merge produced a duplicate token"
    added = [
        {
            "id": SPECIAL_IDS[tok],
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for tok in SPECIAL_TOKENS
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": SPLIT_PATTERN},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": False,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [f"{a} {b}" for a, b in merges],
        },
    }


# Qwen3-Coder style chat template (written for this project): tools are listed in the
# system prompt, the assistant calls them as
#   <tool_call>\n<function=NAME>\n<parameter=ARG>\nVALUE\n</parameter>\n</function>\n</tool_call>
# and tool results come back as user turns wrapped in <tool_response>.
CHAT_TEMPLATE = """\
{%- macro render_value(v) -%}
{%- if v is string -%}{{ v }}{%- else -%}{{ v | tojson }}{%- endif -%}
{%- endmacro -%}
{%- set msgs = messages -%}
{%- set system_text = none -%}
{%- if msgs and msgs[0].role == 'system' -%}
{%- set system_text = msgs[0].content -%}
{%- set msgs = msgs[1:] -%}
{%- endif -%}
{%- if system_text is not none or tools -%}
{{- '<|im_start|>system\\n' -}}
{%- if system_text is not none -%}{{- system_text -}}{%- else -%}{{- 'You are Qwen, a helpful coding assistant.' -}}{%- endif -%}
{%- if tools -%}
{{- '\\n\\n# Tools\\n\\nYou may call one or more of these functions:\\n\\n<tools>' -}}
{%- for tool in tools -%}
{%- set fn = tool.function if tool.function is defined else tool -%}
{{- '\\n<function>\\n<name>' ~ fn.name ~ '</name>' -}}
{%- if fn.description is defined and fn.description -%}{{- '\\n<description>' ~ fn.description ~ '</description>' -}}{%- endif -%}
{%- if fn.parameters is defined -%}{{- '\\n<parameters>' ~ (fn.parameters | tojson) ~ '</parameters>' -}}{%- endif -%}
{{- '\\n</function>' -}}
{%- endfor -%}
{{- '\\n</tools>\\n\\nTo call a function, reply with nothing but:\\n\\n<tool_call>\\n<function=NAME>\\n<parameter=ARGUMENT>\\nVALUE\\n</parameter>\\n</function>\\n</tool_call>' -}}
{%- endif -%}
{{- '<|im_end|>\\n' -}}
{%- endif -%}
{%- for m in msgs -%}
{%- if m.role == 'user' or m.role == 'system' -%}
{{- '<|im_start|>' ~ m.role ~ '\\n' ~ (m.content if m.content is string else '') ~ '<|im_end|>\\n' -}}
{%- elif m.role == 'assistant' -%}
{{- '<|im_start|>assistant\\n' -}}
{%- if m.content is string and m.content -%}{{- m.content -}}{%- endif -%}
{%- if m.tool_calls is defined and m.tool_calls -%}
{%- for call in m.tool_calls -%}
{%- set fn = call.function if call.function is defined else call -%}
{%- if loop.first and m.content is string and m.content -%}{{- '\\n' -}}{%- elif not loop.first -%}{{- '\\n' -}}{%- endif -%}
{{- '<tool_call>\\n<function=' ~ fn.name ~ '>\\n' -}}
{%- if fn.arguments is mapping -%}
{%- for key, value in fn.arguments.items() -%}
{{- '<parameter=' ~ key ~ '>\\n' ~ render_value(value) ~ '\\n</parameter>\\n' -}}
{%- endfor -%}
{%- elif fn.arguments is defined and fn.arguments -%}
{{- fn.arguments ~ '\\n' -}}
{%- endif -%}
{{- '</function>\\n</tool_call>' -}}
{%- endfor -%}
{%- endif -%}
{{- '<|im_end|>\\n' -}}
{%- elif m.role == 'tool' -%}
{%- if loop.first or msgs[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}
{{- '\\n<tool_response>\\n' ~ (m.content if m.content is string else (m.content | tojson)) ~ '\\n</tool_response>' -}}
{%- if loop.last or msgs[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
"""


def tokenizer_config() -> dict[str, Any]:
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(SPECIAL_IDS[tok]): {
                "content": tok,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for tok in SPECIAL_TOKENS
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 1048576,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }


# ---------------------------------------------------------------- writing
def dump_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def build_files() -> dict[str, dict[str, bytes]]:
    """Every file of both checkpoints: {dir name: {file name: bytes}}."""
    tok = {
        "tokenizer.json": dump_json(tokenizer_json()),
        "tokenizer_config.json": dump_json(tokenizer_config()),
        "generation_config.json": dump_json(generation_config()),
    }
    shapes = all_tensor_shapes()
    bf16 = dict(tok)
    bf16["config.json"] = dump_json(model_config(fp8=False))
    bf16["model.safetensors"] = safetensors_bytes(bf16_tensors(shapes))

    fp8 = dict(tok)
    fp8["config.json"] = dump_json(model_config(fp8=True))
    tensors = fp8_tensors(shapes)
    # shard 1: embeddings and layer 0; shard 2: everything else
    first = {
        n for n in tensors if n.startswith("model.embed_tokens.") or n.startswith("model.layers.0.")
    }
    shard_names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    parts = [
        {n: t for n, t in tensors.items() if n in first},
        {n: t for n, t in tensors.items() if n not in first},
    ]
    weight_map: dict[str, str] = {}
    for shard, part in zip(shard_names, parts, strict=True):
        fp8[shard] = safetensors_bytes(part)
        for n in part:
            weight_map[n] = shard
    total = sum(len(t[2]) for t in tensors.values())
    fp8["model.safetensors.index.json"] = dump_json(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    )
    nxt = dict(tok)
    nxt["config.json"] = dump_json(next_config())
    nxt["model.safetensors"] = safetensors_bytes(next_tensors())
    return {BF16_DIR: bf16, FP8_DIR: fp8, NEXT_DIR: nxt}


def write_all(out_dir: Path) -> list[Path]:
    written: list[Path] = []
    for dirname, files in build_files().items():
        d = out_dir / dirname
        d.mkdir(parents=True, exist_ok=True)
        for name, data in sorted(files.items()):
            path = d / name
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="where to write the two checkpoint directories (default: examples/)",
    )
    args = parser.parse_args(argv)
    for path in write_all(args.out_dir):
        print(f"{path.stat().st_size:>9}  {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
