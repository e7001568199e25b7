"""Synthetic checkpoints shaped like the real Qwen3-Coder FP8 release, for tests and benchmarks.

`make_shaped_checkpoint` writes every tensor name, dtype and shape the release has, split over
N shards with valid safetensors headers and exact file sizes. The data areas are sparse (the
file is truncated up to its size after the header), so the 480B shape takes ~450 GiB of
apparent size but only a few MB of disk, and is written in seconds. Header-level tools
(`qwenprep verify`, `patch`, `plan`) see the real structure; nothing here is loadable weights.

The name/dtype/shape lists themselves (`qwen3_moe_tensors(config)` and its siblings) are
qwenprep.model.layouts'; `qwenprep.checks.integrity` uses them to compare a checkpoint's tensor
names with
its config.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qwenprep.errors import ConflictError
from qwenprep.model.layouts import (
    TensorSpec,
    hybrid_fp8_quantization_config,
    qwen3_5_tensors,
    qwen3_moe_tensors,
)
from qwenprep.util.jsonio import dump_config

INDEX_NAME = "model.safetensors.index.json"
_CHUNK = 8 * 1024 * 1024


def release_not_convert(layers: int) -> list[str]:
    """modules_to_not_convert as the FP8 release lists it: lm_head, then per layer the two
    norms and the router."""
    out = ["lm_head"]
    for i in range(layers):
        out += [
            f"model.layers.{i}.{m}"
            for m in ("input_layernorm", "mlp.gate", "post_attention_layernorm")
        ]
    return out


def release_quantization_config(layers: int) -> dict[str, Any]:
    return {
        "activation_scheme": "dynamic",
        "modules_to_not_convert": release_not_convert(layers),
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    }


def qwen3_coder_480b_fp8_config() -> dict[str, Any]:
    """The published config of Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8, built from its numbers."""
    layers = 62
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "attention_dropout": 0.0,
        "decoder_sparse_step": 1,
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 6144,
        "initializer_range": 0.02,
        "intermediate_size": 8192,
        "max_position_embeddings": 262144,
        "max_window_layers": layers,
        "mlp_only_layers": [],
        "model_type": "qwen3_moe",
        "moe_intermediate_size": 2560,
        "norm_topk_prob": True,
        "num_attention_heads": 96,
        "num_experts": 160,
        "num_experts_per_tok": 8,
        "num_hidden_layers": layers,
        "num_key_value_heads": 8,
        "output_router_logits": False,
        "qkv_bias": False,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000000,
        "router_aux_loss_coef": 0.0,
        "shared_expert_intermediate_size": 0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_qk_norm": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
        "quantization_config": release_quantization_config(layers),
    }


def tiny_fp8_config(*, layers: int = 2, experts: int = 4) -> dict[str, Any]:
    """A small qwen3_moe FP8 config (same shape rules as the release, kilobytes of tensors)."""
    cfg = qwen3_coder_480b_fp8_config()
    cfg.update(
        head_dim=32,
        hidden_size=128,
        intermediate_size=256,
        max_window_layers=layers,
        moe_intermediate_size=256,
        num_attention_heads=4,
        num_experts=experts,
        num_experts_per_tok=2,
        num_hidden_layers=layers,
        num_key_value_heads=2,
        vocab_size=512,
    )
    cfg["quantization_config"] = release_quantization_config(layers)
    return cfg


def shaped_tensors(config: dict[str, Any], *, fp8: bool) -> Iterator[TensorSpec]:
    """The tensors of CONFIG's family (qwenprep.model.families): Qwen3(-MoE) by qwen3_moe_tensors
    (FP8 or not), any other family by its own ``tensors``."""
    if config.get("model_type") in ("qwen3", "qwen3_moe"):
        return qwen3_moe_tensors(config, fp8=fp8)
    from qwenprep.model.families import family_of
    from qwenprep.model.view import ModelView

    view = ModelView(config)
    fam = family_of(view)
    if fam.tensors is None:
        raise ValueError(f"family {fam.name} does not derive its tensors")
    return iter(fam.tensors(view))


def _split(specs: list[TensorSpec], shards: int) -> list[list[TensorSpec]]:
    """Contiguous split into `shards` non-empty groups of about equal bytes."""
    if shards < 1 or shards > len(specs):
        raise ValueError(f"shards must be between 1 and {len(specs)}, got {shards}")
    total = sum(s.nbytes for s in specs) or 1
    groups: list[list[TensorSpec]] = [[] for _ in range(shards)]
    cum = 0
    for s in specs:
        groups[min(shards - 1, cum * shards // total)].append(s)
        cum += s.nbytes
    if all(groups):
        return groups
    per = -(-len(specs) // shards)  # fall back to equal counts
    out = [specs[i * per : (i + 1) * per] for i in range(shards)]
    if not all(out):
        base, extra = divmod(len(specs), shards)
        out, k = [], 0
        for i in range(shards):
            n = base + (1 if i < extra else 0)
            out.append(specs[k : k + n])
            k += n
    return out


def safetensors_header(
    specs: list[TensorSpec], metadata: dict[str, str] | None
) -> tuple[bytes, int]:
    """(8-byte length + JSON header padded to 8 bytes, data-area size) for these tensors."""
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    for s in specs:
        header[s.name] = {
            "dtype": s.dtype,
            "shape": list(s.shape),
            "data_offsets": [off, off + s.nbytes],
        }
        off += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, off


def make_shaped_checkpoint(
    dest: Path,
    *,
    config: dict[str, Any] | None = None,
    shards: int = 50,
    fp8: bool = True,
    random_data: bool = False,
    seed: int = 0,
) -> Path:
    """Write a checkpoint shaped like the Qwen3-Coder FP8 release into `dest` and return it.

    config: the model config (default: the 480B FP8 release's). fp8=False writes a BF16
    checkpoint and drops quantization_config; fp8=True adds the release's block-FP8
    quantization_config when the config has none (a Qwen3-Next or Qwen3.5/3.6 config gets its
    own family's: qwenprep.model.layouts.hybrid_fp8_quantization_config). shards=1 writes a single
    `model.safetensors` and no index. Data areas are sparse (read as zeros) unless
    random_data, which fills them with seeded random bytes (only for small configs).
    """
    cfg = json.loads(json.dumps(config if config is not None else qwen3_coder_480b_fp8_config()))
    if fp8:
        if (cfg.get("quantization_config") or {}).get("quant_method") != "fp8":
            cfg["quantization_config"] = (
                hybrid_fp8_quantization_config(cfg)
                if is_hybrid_config(cfg)
                else release_quantization_config(int(cfg["num_hidden_layers"]))
            )
    else:
        cfg.pop("quantization_config", None)
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConflictError(f"{dest}: exists and is not an empty directory.", path=str(dest))
    dest.mkdir(parents=True, exist_ok=True)

    specs = list(shaped_tensors(cfg, fp8=fp8))
    groups = _split(specs, shards)
    rng = random.Random(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for k, group in enumerate(groups, start=1):
        name = "model.safetensors" if shards == 1 else f"model-{k:05d}-of-{shards:05d}.safetensors"
        head, data_len = safetensors_header(group, {"format": "pt"})
        with open(dest / name, "wb") as f:
            f.write(head)
            if random_data:
                left = data_len
                while left:
                    n = min(left, _CHUNK)
                    f.write(rng.randbytes(n))
                    left -= n
            else:
                f.truncate(len(head) + data_len)
        for s in group:
            weight_map[s.name] = name
        total += data_len

    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (dest / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    (dest / "config.json").write_text(dump_config(cfg))
    gen = {
        "bos_token_id": 151643,
        "do_sample": True,
        "eos_token_id": [151645, 151643],
        "pad_token_id": 151643,
        "repetition_penalty": 1.05,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
        "transformers_version": "4.51.0",
    }
    (dest / "generation_config.json").write_text(dump_config(gen))
    tok_cfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": int(cfg.get("max_position_embeddings", 262144)),
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "note": "synthetic placeholder written by qwenprep.testing.synth",
    }
    (dest / "tokenizer_config.json").write_text(dump_config(tok_cfg))
    tok = {
        "version": "1.0",
        "model": {"type": "BPE", "vocab": {}, "merges": []},
        "added_tokens": [],
    }
    (dest / "tokenizer.json").write_text(json.dumps(tok) + "\n")
    return dest


# ---------------------------------------------------------------- Qwen3-Next (hybrid)


def qwen3_next_80b_config() -> dict[str, Any]:
    """Qwen/Qwen3-Next-80B-A3B-Instruct's config.json as its model card and the public copies
    give it (reconstructed: key order and version strings are not confirmed). Qwen3-Coder-Next
    has the same architecture."""
    return {
        "architectures": ["Qwen3NextForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "decoder_sparse_step": 1,
        "eos_token_id": 151645,
        "full_attention_interval": 4,
        "head_dim": 256,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 5120,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
        "linear_value_head_dim": 128,
        "max_position_embeddings": 262144,
        "mlp_only_layers": [],
        "model_type": "qwen3_next",
        "moe_intermediate_size": 512,
        "norm_topk_prob": True,
        "num_attention_heads": 16,
        "num_experts": 512,
        "num_experts_per_tok": 10,
        "num_hidden_layers": 48,
        "num_key_value_heads": 2,
        "output_router_logits": False,
        "partial_rotary_factor": 0.25,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000000,
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": 512,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.0.dev0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
    }


def is_hybrid_config(config: dict[str, Any]) -> bool:
    """A Qwen3-Next or Qwen3.5/3.6 config (flat, or with its text under text_config)."""
    text = config.get("text_config")
    kinds = {config.get("model_type"), text.get("model_type") if isinstance(text, dict) else None}
    return any(isinstance(k, str) and (k == "qwen3_next" or k.startswith("qwen3_5")) for k in kinds)


def qwen3_next_80b_fp8_config() -> dict[str, Any]:
    """Qwen/Qwen3-Next-80B-A3B-Instruct-FP8's config.json (Thinking-FP8 and Qwen3-Coder-Next-FP8
    have the same shape): the BF16 release's with the block-FP8 quantization_config the FP8
    release carries (modules_to_not_convert as a public dump of the release's config lists
    it; docs/qwen-line.md, "FP8 releases")."""
    cfg = qwen3_next_80b_config()
    cfg["quantization_config"] = hybrid_fp8_quantization_config(cfg)
    return cfg


def qwen25_7b_instruct_1m_config() -> dict[str, Any]:
    """Qwen/Qwen2.5-7B-Instruct-1M's config.json as the public copies give it (reconstructed:
    key order and the exact DCA block are not confirmed)."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "dual_chunk_attention_config": {
            "chunk_size": 262144,
            "local_size": 8192,
            "original_max_position_embeddings": 262144,
        },
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "hidden_size": 3584,
        "initializer_range": 0.02,
        "intermediate_size": 18944,
        "max_position_embeddings": 1010000,
        "max_window_layers": 28,
        "model_type": "qwen2",
        "num_attention_heads": 28,
        "num_hidden_layers": 28,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 152064,
    }


# ---------------------------------------------------------------- Qwen3.5-MoE (hybrid VL), tiny

TINY_QWEN3_5_DIR = "tiny-qwen3.5-moe"
TINY_QWEN4_EXP_DIR = "tiny-qwen3.8-flash-next"
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _tiny_values(spec: TensorSpec) -> bytes:
    """Deterministic weights for SPEC (no random module: a counter-based generator keyed by
    the tensor name, so the bytes never change): RMSNorms that scale by 1 + weight are 0, the
    gated DeltaNet norm and the vision LayerNorm scales 1, biases 0, everything else uniform in
    about +-0.035 (std 0.02). BF16 is float32 rounded to its top 16 bits."""
    import hashlib
    import math

    n = math.prod(spec.shape)
    name = spec.name
    if name.endswith("linear_attn.norm.weight") or (
        name.startswith("model.visual.") and "norm" in name and name.endswith(".weight")
    ):
        vals = [1.0] * n
    elif name.endswith(".bias") or name.endswith("norm.weight") or "pre_fc_norm" in name:
        vals = [0.0] * n
    else:
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
        scale = 0.02 * math.sqrt(3.0) / 2**53
        vals = [((_splitmix64(key + i) >> 11) * 2.0 - 2**53) * scale for i in range(n)]
    if spec.dtype == "F32":
        return struct.pack(f"<{n}f", *vals)
    out = bytearray()
    for v in vals:
        bits = struct.unpack("<I", struct.pack("<f", v))[0]
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even
        out += struct.pack("<H", bits & 0xFFFF)
    return bytes(out)


def write_tiny_qwen3_5_moe(dest: Path, *, tokenizer_from: Path | None = None) -> Path:
    """Write the embedded tiny Qwen3.5-MoE-shaped checkpoint into DEST (an empty or new
    directory): config.json (qwenprep.model.families.qwen3_5.tiny_qwen3_5_moe_config: the 35B-A3B
    release's keys in its order, shrunk), generation_config.json, one model.safetensors with
    every tensor the release's layout has (qwenprep.model.layouts.qwen3_5_tensors: language model
    under model.language_model., vision tower under model.visual., MTP under mtp.) and
    deterministic values, and the tokenizer files of TOKENIZER_FROM (default: the embedded tiny
    Qwen3-Next's). Byte-for-byte the same on every run."""
    from qwenprep.model.families.qwen3_5 import tiny_qwen3_5_moe_config

    cfg = tiny_qwen3_5_moe_config()
    return _write_tiny(dest, cfg, list(qwen3_5_tensors(cfg)), cfg["text_config"], tokenizer_from)


def write_tiny_qwen4_exp(dest: Path, *, tokenizer_from: Path | None = None) -> Path:
    """Write the embedded tiny Qwen3.8-Flash-Next checkpoint into DEST, as
    write_tiny_qwen3_5_moe does: the text-only qwen4_exp_text config
    (qwenprep.model.families.qwen4_exp.tiny_qwen4_exp_config: transformers' keys, shrunk; not the
    release's numbers) and every tensor of its layout (qwenprep.model.layouts_qwen4)."""
    from qwenprep.model.families.qwen4_exp import tiny_qwen4_exp_config
    from qwenprep.model.layouts_qwen4 import qwen4_exp_tensors

    cfg = tiny_qwen4_exp_config(nested=False)
    return _write_tiny(dest, cfg, list(qwen4_exp_tensors(cfg)), cfg, tokenizer_from)


def _write_tiny(
    dest: Path,
    cfg: dict[str, Any],
    specs: list[TensorSpec],
    text: dict[str, Any],
    tokenizer_from: Path | None,
) -> Path:
    """CFG and SPECS as a tiny checkpoint in DEST (an empty or new directory): config.json,
    generation_config.json (TEXT's token ids), one model.safetensors of deterministic values
    (_tiny_values) and the tokenizer files of TOKENIZER_FROM (default: the embedded tiny
    Qwen3-Next's). Byte-for-byte the same on every run."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConflictError(f"{dest}: exists and is not an empty directory.", path=str(dest))
    dest.mkdir(parents=True, exist_ok=True)
    head, data_len = safetensors_header(specs, {"format": "pt"})
    with open(dest / "model.safetensors", "wb") as f:
        f.write(head)
        for s in specs:
            f.write(_tiny_values(s))
    assert (dest / "model.safetensors").stat().st_size == len(head) + data_len
    (dest / "config.json").write_text(dump_config(cfg))
    gen = {
        "bos_token_id": text["bos_token_id"],
        "do_sample": True,
        "eos_token_id": [text["eos_token_id"], 512],
        "pad_token_id": 512,
        "temperature": 0.6,
        "top_k": 20,
        "top_p": 0.95,
        "transformers_version": "4.57.0.dev0",
    }
    (dest / "generation_config.json").write_text(dump_config(gen))
    if tokenizer_from is None:
        from qwenprep.util.schemas import shipped_dir

        tokenizer_from = shipped_dir("_examples") / "tiny-qwen3-next"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (dest / name).write_bytes((Path(tokenizer_from) / name).read_bytes())
    return dest
