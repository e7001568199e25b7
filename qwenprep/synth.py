"""Synthetic checkpoints shaped like the real Qwen3-Coder FP8 release, for tests and benchmarks.

`make_shaped_checkpoint` writes every tensor name, dtype and shape the release has, split over
N shards with valid safetensors headers and exact file sizes. The data areas are sparse (the
file is truncated up to its size after the header), so the 480B shape takes ~450 GiB of
apparent size but only a few MB of disk, and is written in seconds. Header-level tools
(`qwenprep verify`, `patch`, `plan`) see the real structure; nothing here is loadable weights.

`qwen3_moe_tensors(config)` is the name/dtype/shape list itself; `qwenprep.integrity` uses it
to compare a checkpoint's tensor names with its config.
"""

from __future__ import annotations

import json
import math
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenprep.errors import ConflictError
from qwenprep.jsonio import dump_config

INDEX_NAME = "model.safetensors.index.json"
_CHUNK = 8 * 1024 * 1024


def release_not_convert(layers: int) -> list[str]:
    """modules_to_not_convert as the FP8 release lists it: lm_head, then per layer the two
    norms and the router."""
    out = ["lm_head"]
    for i in range(layers):
        out += [f"model.layers.{i}.{m}"
                for m in ("input_layernorm", "mlp.gate", "post_attention_layernorm")]
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


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _DTYPE_SIZE[self.dtype]


_DTYPE_SIZE = {"F8_E4M3": 1, "BF16": 2, "F16": 2, "F32": 4}


def module_in(module: str, modules: frozenset[str] | set[str]) -> bool:
    """Is module one of `modules`, or inside one of them (dot boundaries, as vLLM matches)?"""
    if module in modules:
        return True
    i = module.rfind(".")
    while i > 0:
        if module[:i] in modules:
            return True
        i = module.rfind(".", 0, i)
    return False


def _is_moe_layer(config: dict[str, Any], i: int) -> bool:
    """Whether layer I has routed experts (as transformers' Qwen3MoeDecoderLayer decides).
    ValueError naming the field when num_experts, mlp_only_layers or decoder_sparse_step is not
    what that rule can use."""
    experts = config.get("num_experts") or 0
    if not isinstance(experts, int) or isinstance(experts, bool):
        raise ValueError(f"num_experts is {experts!r}; expected an integer")
    if experts <= 0:
        return False
    mlp_only = config.get("mlp_only_layers") or []
    if not isinstance(mlp_only, list):
        raise ValueError(f"mlp_only_layers is {mlp_only!r}; expected a list of layer indices")
    if i in mlp_only:
        return False
    step = config.get("decoder_sparse_step") or 1
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise ValueError(f"decoder_sparse_step is {step!r}; expected a positive integer")
    return (i + 1) % step == 0


def qwen3_moe_tensors(config: dict[str, Any], *, fp8: bool | None = None) -> Iterator[TensorSpec]:
    """Every tensor of a Qwen3(-MoE) checkpoint for this config, in model order.

    With fp8 (default: whether the config has an fp8 quantization_config), linear weights not
    in modules_to_not_convert are F8_E4M3 with an F32 `weight_scale_inv` of shape
    [ceil(out/block_n), ceil(in/block_k)]; everything else is BF16.
    """
    q = config.get("quantization_config") or {}
    if fp8 is None:
        fp8 = q.get("quant_method") == "fp8"
    block_n, block_k = (q.get("weight_block_size") or [128, 128]) if fp8 else (128, 128)
    not_convert = frozenset(q.get("modules_to_not_convert") or []) if fp8 else frozenset()
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // int(config["num_attention_heads"]))
    nq = int(config["num_attention_heads"]) * head_dim
    nkv = int(config["num_key_value_heads"]) * head_dim
    vocab = int(config["vocab_size"])
    experts = int(config.get("num_experts", 0) or 0)
    moe_inter = int(config.get("moe_intermediate_size", 0) or 0)
    dense_inter = int(config.get("intermediate_size", 0) or 0)

    def linear(module: str, out: int, inp: int) -> Iterator[TensorSpec]:
        if fp8 and not module_in(module, not_convert):
            yield TensorSpec(f"{module}.weight", "F8_E4M3", (out, inp))
            yield TensorSpec(
                f"{module}.weight_scale_inv", "F32", (-(-out // block_n), -(-inp // block_k))
            )
        else:
            yield TensorSpec(f"{module}.weight", "BF16", (out, inp))

    yield TensorSpec("model.embed_tokens.weight", "BF16", (vocab, hidden))
    for i in range(int(config["num_hidden_layers"])):
        p = f"model.layers.{i}"
        yield TensorSpec(f"{p}.input_layernorm.weight", "BF16", (hidden,))
        yield from linear(f"{p}.self_attn.q_proj", nq, hidden)
        yield from linear(f"{p}.self_attn.k_proj", nkv, hidden)
        yield from linear(f"{p}.self_attn.v_proj", nkv, hidden)
        yield from linear(f"{p}.self_attn.o_proj", hidden, nq)
        yield TensorSpec(f"{p}.self_attn.q_norm.weight", "BF16", (head_dim,))
        yield TensorSpec(f"{p}.self_attn.k_norm.weight", "BF16", (head_dim,))
        yield TensorSpec(f"{p}.post_attention_layernorm.weight", "BF16", (hidden,))
        if _is_moe_layer(config, i):
            yield TensorSpec(f"{p}.mlp.gate.weight", "BF16", (experts, hidden))
            for e in range(experts):
                ep = f"{p}.mlp.experts.{e}"
                yield from linear(f"{ep}.gate_proj", moe_inter, hidden)
                yield from linear(f"{ep}.up_proj", moe_inter, hidden)
                yield from linear(f"{ep}.down_proj", hidden, moe_inter)
        else:
            yield from linear(f"{p}.mlp.gate_proj", dense_inter, hidden)
            yield from linear(f"{p}.mlp.up_proj", dense_inter, hidden)
            yield from linear(f"{p}.mlp.down_proj", hidden, dense_inter)
    yield TensorSpec("model.norm.weight", "BF16", (hidden,))
    if not config.get("tie_word_embeddings", False):
        yield from linear("lm_head", vocab, hidden)


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
            "dtype": s.dtype, "shape": list(s.shape), "data_offsets": [off, off + s.nbytes]
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
    quantization_config when the config has none. shards=1 writes a single
    `model.safetensors` and no index. Data areas are sparse (read as zeros) unless
    random_data, which fills them with seeded random bytes (only for small configs).
    """
    cfg = json.loads(json.dumps(config if config is not None else qwen3_coder_480b_fp8_config()))
    if fp8:
        if (cfg.get("quantization_config") or {}).get("quant_method") != "fp8":
            cfg["quantization_config"] = release_quantization_config(int(cfg["num_hidden_layers"]))
    else:
        cfg.pop("quantization_config", None)
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConflictError(f"{dest}: exists and is not an empty directory.", path=str(dest))
    dest.mkdir(parents=True, exist_ok=True)

    specs = list(qwen3_moe_tensors(cfg, fp8=fp8))
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
        "note": "synthetic placeholder written by qwenprep.synth",
    }
    (dest / "tokenizer_config.json").write_text(dump_config(tok_cfg))
    tok = {"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []},
           "added_tokens": []}
    (dest / "tokenizer.json").write_text(json.dumps(tok) + "\n")
    return dest
