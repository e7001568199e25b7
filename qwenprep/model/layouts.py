"""Tensor layouts: the tensors (name, shape, dtype) a checkpoint of a config must hold, per
family, as the engines' loaders name them. Pure: a config in, specs out; imports nothing of the
rest of qwenprep, so families (which declare their layout) and synth (which writes checkpoints
from it) both build on it."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple


class TensorSpec(NamedTuple):
    """One tensor a checkpoint must hold. A named tuple: the 480B's layout is 60k of them, and
    a tuple is made several times faster than a frozen dataclass (verify builds them all)."""

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


def expert_projs(inter: int, hidden: int) -> tuple[tuple[str, int, int], ...]:
    """The linear layers of one routed expert (name, out, in): gate and up from the hidden
    size to INTER, down back."""
    return (("gate_proj", inter, hidden), ("up_proj", inter, hidden), ("down_proj", hidden, inter))


def experts_of(
    linear: Callable[[str, int, int], Iterator[TensorSpec]],
    prefix: str,
    n: int,
    projs: tuple[tuple[str, int, int], ...],
    kept: frozenset[str] | set[str],
) -> Iterator[TensorSpec]:
    """The N experts under PREFIX (`....mlp.experts.`), each with the linear layers PROJS
    (name, out, in) as LINEAR writes them. When no module of KEPT lies inside PREFIX, LINEAR
    decides alike for every expert (a kept module above them covers them all; its other rules
    look at the projection's name only): expert 0 is written once and the rest follow its
    pattern, which is what makes the 480B's 59,520 expert tensors cheap. Otherwise each expert
    is written through LINEAR."""
    if any(m.startswith(prefix) for m in kept):
        for e in range(n):
            for proj, out, inp in projs:
                yield from linear(f"{prefix}{e}.{proj}", out, inp)
        return
    cut = len(prefix) + 1  # the names of expert 0, less "PREFIX0"
    pattern = [
        (s.name[cut:], s.dtype, s.shape)
        for proj, out, inp in projs
        for s in linear(f"{prefix}0.{proj}", out, inp)
    ]
    for e in range(n):
        head = f"{prefix}{e}"
        for tail, dtype, shape in pattern:
            yield TensorSpec(head + tail, dtype, shape)


def is_moe_layer(config: dict[str, Any], i: int) -> bool:
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
    projs = expert_projs(moe_inter, hidden)

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
        if is_moe_layer(config, i):
            yield TensorSpec(f"{p}.mlp.gate.weight", "BF16", (experts, hidden))
            yield from experts_of(linear, f"{p}.mlp.experts.", experts, projs, not_convert)
        else:
            yield from linear(f"{p}.mlp.gate_proj", dense_inter, hidden)
            yield from linear(f"{p}.mlp.up_proj", dense_inter, hidden)
            yield from linear(f"{p}.mlp.down_proj", hidden, dense_inter)
    yield TensorSpec("model.norm.weight", "BF16", (hidden,))
    if not config.get("tie_word_embeddings", False):
        yield from linear("lm_head", vocab, hidden)


def layer_types_of(config: dict[str, Any]) -> list[str]:
    """Each layer's kind, as transformers' Qwen3NextConfig derives it: layer_types when given,
    else every full_attention_interval-th layer (default 4) is full attention."""
    layers = int(config["num_hidden_layers"])
    types = config.get("layer_types")
    if isinstance(types, list):
        if len(types) != layers:
            raise ValueError(f"layer_types has {len(types)} entries for {layers} layers")
        return [str(t) for t in types]
    interval = int(config.get("full_attention_interval") or 4)
    return [
        "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)
    ]


# ---------------------------------------------------------------- FP8 of the hybrid families

# Modules vLLM 0.32 builds without a quantization method whatever the config lists, so an FP8
# release keeps them BF16: the router (GateLinear, qwen3_next.py), the shared-expert gate
# (ReplicatedLinear with quant_config=None), lm_head (ParallelLMHead: Fp8Config gives it no
# method), and the Gated DeltaNet b/a projection ("ba_proj doesn't support blockwise fp8
# quantization", layers/mamba/gdn/qwen_gdn_linear_attn.py; the releases list it).
HYBRID_BF16_SUFFIXES = (
    ".mlp.gate",
    ".mlp.shared_expert_gate",
    ".linear_attn.in_proj_ba",
    ".linear_attn.in_proj_a",
    ".linear_attn.in_proj_b",
)
# Block-FP8 scale dtype of the hybrid releases: BF16 (docs/qwen-line.md, "FP8 releases").
HYBRID_SCALE_DTYPE = "BF16"


def _hybrid_fp8(q: dict[str, Any], family: str) -> tuple[bool, int, int, frozenset[str]]:
    """(fp8, block_n, block_k, the modules kept BF16) of a hybrid config's quantization_config.
    vLLM's Fp8Config reads ignored_layers, else modules_to_not_convert; another quant_method
    is not derived (ValueError)."""
    method = q.get("quant_method")
    if not method:
        return False, 128, 128, frozenset()
    if method != "fp8":
        raise ValueError(f"the {method} tensor layout of {family} is not derived by qwenprep")
    block = q.get("weight_block_size") or [128, 128]
    if not (
        isinstance(block, list)
        and len(block) == 2
        and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)
    ):
        raise ValueError(f"weight_block_size is {block!r}; expected two positive integers")
    keep = q.get("ignored_layers") or q.get("modules_to_not_convert") or []
    if not isinstance(keep, list):
        raise ValueError(f"modules_to_not_convert is {keep!r}; expected a list of module names")
    return True, block[0], block[1], frozenset(m for m in keep if isinstance(m, str))


class _Linear:
    """linear(module, out, in) of a hybrid release, and the modules it keeps BF16 (`keep`)."""

    def __init__(
        self, write: Callable[[str, int, int], Iterator[TensorSpec]], keep: frozenset[str]
    ):
        self.write, self.keep = write, keep

    def __call__(self, module: str, out: int, inp: int) -> Iterator[TensorSpec]:
        return self.write(module, out, inp)


def linear_writer(fp8: bool, block_n: int, block_k: int, keep: frozenset[str]) -> _Linear:
    """linear(module, out, in): the weight of a linear layer of a hybrid checkpoint. FP8
    (block FP8, as the releases): F8_E4M3 with a `weight_scale_inv` of
    [ceil(out/block_n), ceil(in/block_k)], unless the module is kept BF16 (in the config's
    list, or one vLLM never quantises: lm_head, HYBRID_BF16_SUFFIXES)."""

    def linear(module: str, out: int, inp: int) -> Iterator[TensorSpec]:
        if (
            fp8
            and module != "lm_head"
            and not module.endswith(HYBRID_BF16_SUFFIXES)
            and not module_in(module, keep)
        ):
            yield TensorSpec(f"{module}.weight", "F8_E4M3", (out, inp))
            yield TensorSpec(
                f"{module}.weight_scale_inv",
                HYBRID_SCALE_DTYPE,
                (-(-out // block_n), -(-inp // block_k)),
            )
        else:
            yield TensorSpec(f"{module}.weight", "BF16", (out, inp))

    return _Linear(linear, keep)


def hybrid_fp8_not_convert(config: dict[str, Any]) -> list[str]:
    """modules_to_not_convert as the hybrid FP8 releases list it (Qwen3-Next-80B-A3B-*-FP8,
    Qwen3-Coder-Next-FP8; Qwen3.5/3.6-*-FP8 by the same rule): lm_head; per layer, in layer
    order, its norms, router and shared-expert gate, the Gated DeltaNet parts that stay BF16
    (A_log, conv1d, dt_bias, the b/a projection(s), the gated norm) or the q/k norms; the
    MTP layer's likewise and mtp.fc / mtp.norm / mtp.pre_fc_norm_*. A vision-language config
    (text_config) names its layers under model.language_model., lists model.embed_tokens and
    the vision tower's linear layers (vLLM hands the tower the quantization config). What is
    and is not confirmed from the releases: docs/qwen-line.md, "FP8 releases"."""
    text = config.get("text_config")
    nested = isinstance(text, dict)
    t: dict[str, Any] = text if isinstance(text, dict) else config
    moe = int(t.get("num_experts", t.get("num_local_experts", 0)) or 0) > 0
    split_ba = nested or "qwen3_5" in str(t.get("model_type", config.get("model_type")))
    lm = "model.language_model" if nested else "model"
    ba = ("in_proj_a", "in_proj_b", "in_proj_ba") if split_ba else ("in_proj_ba",)

    def layer(p: str, kind: str) -> list[str]:
        mods = [f"{p}.input_layernorm", f"{p}.post_attention_layernorm"]
        if moe:
            mods += [f"{p}.mlp.gate", f"{p}.mlp.shared_expert_gate"]
        if kind == "linear_attention":
            mods += [f"{p}.linear_attn.{m}" for m in ("A_log", "conv1d", "dt_bias", *ba, "norm")]
        else:
            mods += [f"{p}.self_attn.k_norm", f"{p}.self_attn.q_norm"]
        return sorted(mods)

    out = ["lm_head"] + (["model.embed_tokens"] if nested else [])
    for i, kind in enumerate(layer_types_of(t)):
        out += layer(f"{lm}.layers.{i}", kind)
    mtp = int(t.get("mtp_num_hidden_layers", t.get("num_nextn_predict_layers", 1)) or 0)
    mtp_mods = [m for j in range(mtp) for m in layer(f"mtp.layers.{j}", "full_attention")]
    if mtp:
        mtp_mods += ["mtp.fc", "mtp.norm", "mtp.pre_fc_norm_embedding", "mtp.pre_fc_norm_hidden"]
    out += sorted(mtp_mods)
    vc = config.get("vision_config") if nested else None
    if isinstance(vc, dict):
        v = "model.visual"
        for b in range(int(vc.get("depth", 27))):
            out += [
                f"{v}.blocks.{b}.{m}"
                for m in ("attn.proj", "attn.qkv", "mlp.linear_fc1", "mlp.linear_fc2")
            ]
        out += [f"{v}.merger.linear_fc1", f"{v}.merger.linear_fc2"]
        for k in range(len(vc.get("deepstack_visual_indexes") or [])):
            out += [
                f"{v}.deepstack_merger_list.{k}.linear_fc1",
                f"{v}.deepstack_merger_list.{k}.linear_fc2",
            ]
    return out


def hybrid_fp8_quantization_config(config: dict[str, Any]) -> dict[str, Any]:
    """The quantization_config of a hybrid FP8 release (block FP8 128 x 128, dynamic
    activations, e4m3) for CONFIG's shape."""
    return {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "modules_to_not_convert": hybrid_fp8_not_convert(config),
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    }


class HybridBlocks:
    """The blocks Qwen3-Next and Qwen3.5/3.6 share (TEXT: the text config; LINEAR: the
    linear_writer of the release's quantization): the gated full attention, the Gated DeltaNet
    layer's conv/state/norm/out part, the routed and shared experts, the dense MLP, the norms
    and the MTP head."""

    def __init__(self, text: dict[str, Any], linear: _Linear):
        self.linear = linear
        self.hidden = int(text["hidden_size"])
        self.head_dim = int(text["head_dim"])
        self.heads = int(text["num_attention_heads"])
        self.nkv = int(text["num_key_value_heads"]) * self.head_dim
        self.vocab = int(text["vocab_size"])
        self.experts = int(text.get("num_experts", text.get("num_local_experts", 0)) or 0)
        self.moe_inter = int(text.get("moe_intermediate_size", 0) or 0)
        self.shared = int(text.get("shared_expert_intermediate_size", 0) or 0)
        self.dense_inter = int(text.get("intermediate_size", 0) or 0)
        self.nv = int(text["linear_num_value_heads"])
        self.hv = int(text["linear_value_head_dim"])
        self.key_dim = int(text["linear_num_key_heads"]) * int(text["linear_key_head_dim"])
        self.value_dim = self.nv * self.hv
        self.kernel = int(text["linear_conv_kernel_dim"])
        self.gate = 2 if text.get("attn_output_gate", True) else 1

    @staticmethod
    def w(name: str, *shape: int, dtype: str = "BF16") -> TensorSpec:
        return TensorSpec(name, dtype, tuple(shape))

    def full_attention(self, p: str) -> Iterator[TensorSpec]:
        lin, hidden, hd = self.linear, self.hidden, self.head_dim
        yield from lin(f"{p}.self_attn.q_proj", self.heads * hd * self.gate, hidden)
        yield from lin(f"{p}.self_attn.k_proj", self.nkv, hidden)
        yield from lin(f"{p}.self_attn.v_proj", self.nkv, hidden)
        yield from lin(f"{p}.self_attn.o_proj", hidden, self.heads * hd)
        yield self.w(f"{p}.self_attn.q_norm.weight", hd)
        yield self.w(f"{p}.self_attn.k_norm.weight", hd)

    def gdn_state(self, la: str) -> Iterator[TensorSpec]:
        """A Gated DeltaNet layer after its input projections."""
        nv = self.nv
        yield self.w(f"{la}.conv1d.weight", 2 * self.key_dim + self.value_dim, 1, self.kernel)
        yield self.w(f"{la}.dt_bias", nv)
        yield self.w(f"{la}.A_log", nv, dtype="F32")
        yield self.w(f"{la}.norm.weight", self.hv)
        yield from self.linear(f"{la}.out_proj", self.hidden, self.value_dim)

    def split_gdn(self, la: str) -> Iterator[TensorSpec]:
        """A Gated DeltaNet layer with split input projections (Qwen3.5/3.6, Qwen3.8-Flash-Next):
        in_proj_qkv, in_proj_z, in_proj_b, in_proj_a, then gdn_state."""
        lin, hidden = self.linear, self.hidden
        yield from lin(f"{la}.in_proj_qkv", 2 * self.key_dim + self.value_dim, hidden)
        yield from lin(f"{la}.in_proj_z", self.value_dim, hidden)
        yield from lin(f"{la}.in_proj_b", self.nv, hidden)
        yield from lin(f"{la}.in_proj_a", self.nv, hidden)
        yield from self.gdn_state(la)

    def experts_mlp(self, p: str, stacked: bool) -> Iterator[TensorSpec]:
        lin, hidden, inter, e_n = self.linear, self.hidden, self.moe_inter, self.experts
        yield from lin(f"{p}.mlp.gate", e_n, hidden)
        if stacked:
            yield self.w(f"{p}.mlp.experts.gate_up_proj", e_n, 2 * inter, hidden)
            yield self.w(f"{p}.mlp.experts.down_proj", e_n, hidden, inter)
        else:
            projs = expert_projs(inter, hidden)
            yield from experts_of(lin, f"{p}.mlp.experts.", e_n, projs, lin.keep)
        if self.shared > 0:
            sh = self.shared
            yield from lin(f"{p}.mlp.shared_expert.gate_proj", sh, hidden)
            yield from lin(f"{p}.mlp.shared_expert.up_proj", sh, hidden)
            yield from lin(f"{p}.mlp.shared_expert.down_proj", hidden, sh)
            yield from lin(f"{p}.mlp.shared_expert_gate", 1, hidden)

    def dense_mlp(self, p: str) -> Iterator[TensorSpec]:
        lin, hidden, inter = self.linear, self.hidden, self.dense_inter
        yield from lin(f"{p}.mlp.gate_proj", inter, hidden)
        yield from lin(f"{p}.mlp.up_proj", inter, hidden)
        yield from lin(f"{p}.mlp.down_proj", hidden, inter)

    def norms(self, p: str) -> Iterator[TensorSpec]:
        yield self.w(f"{p}.input_layernorm.weight", self.hidden)
        yield self.w(f"{p}.post_attention_layernorm.weight", self.hidden)

    def mtp(
        self, layers: int, mlp: Callable[[str, int], Iterator[TensorSpec]]
    ) -> Iterator[TensorSpec]:
        """The MTP head under mtp.: LAYERS decoder layers (full attention, MLP by MLP) and the
        fc joining the embedding and the hidden state."""
        for j in range(layers):
            p = f"mtp.layers.{j}"
            yield from self.full_attention(p)
            yield from self.norms(p)
            yield from mlp(p, j)
        if layers:
            yield from self.linear("mtp.fc", self.hidden, 2 * self.hidden)
            yield self.w("mtp.pre_fc_norm_embedding.weight", self.hidden)
            yield self.w("mtp.pre_fc_norm_hidden.weight", self.hidden)
            yield self.w("mtp.norm.weight", self.hidden)


def _bad_layer(i: int, kind: str) -> ValueError:
    return ValueError(f"layer_types[{i}] is {kind!r}; expected full_attention or linear_attention")


def qwen3_next_tensors(config: dict[str, Any]) -> Iterator[TensorSpec]:
    """Every tensor of a Qwen3-Next checkpoint for this config, in model order. Names and
    shapes as vLLM 0.32's qwen3_next.py / qwen3_next_mtp.py and the Gated DeltaNet layer
    (vllm/model_executor/layers/mamba/gdn/qwen_gdn_linear_attn.py) load them: full-attention
    q_proj carries the output gate (2 x heads x head_dim rows); linear-attention layers hold
    in_proj_qkvz, in_proj_ba, conv1d (depthwise, [conv_dim, 1, kernel]), dt_bias, A_log, a
    gated norm and out_proj; MoE layers add a shared expert and its gate; MTP weights live
    under mtp. (num_nextn_predict_layers, default 1, as vLLM's MTP model reads it). With an
    fp8 quantization_config (the -FP8 releases) each linear weight is block FP8 unless kept
    BF16 (linear_writer); everything else is as in the BF16 release."""
    linear = linear_writer(*_hybrid_fp8(config.get("quantization_config") or {}, "qwen3_next"))
    b = HybridBlocks(config, linear)
    hidden, w = b.hidden, b.w

    def mlp(p: str, i: int) -> Iterator[TensorSpec]:
        return b.experts_mlp(p, stacked=False) if is_moe_layer(config, i) else b.dense_mlp(p)

    yield w("model.embed_tokens.weight", b.vocab, hidden)
    for i, kind in enumerate(layer_types_of(config)):
        p = f"model.layers.{i}"
        if kind == "full_attention":
            yield from b.full_attention(p)
        elif kind == "linear_attention":
            la = f"{p}.linear_attn"
            yield from linear(f"{la}.in_proj_qkvz", 2 * b.key_dim + 2 * b.value_dim, hidden)
            yield from linear(f"{la}.in_proj_ba", 2 * b.nv, hidden)
            yield from b.gdn_state(la)
        else:
            raise _bad_layer(i, kind)
        yield from b.norms(p)
        yield from mlp(p, i)
    yield w("model.norm.weight", hidden)
    if not config.get("tie_word_embeddings", False):
        yield from linear("lm_head", b.vocab, hidden)
    yield from b.mtp(int(config.get("num_nextn_predict_layers", 1) or 0), mlp)


# ---------------------------------------------------------------- Qwen2 / Qwen2.5


def qwen2_tensors(config: dict[str, Any]) -> Iterator[TensorSpec]:
    """Every tensor of a Qwen2/Qwen2.5 checkpoint (BF16): q/k/v projections with biases, no
    q/k norms, a dense MLP (transformers' Qwen2DecoderLayer, vLLM's qwen2.py)."""
    q = config.get("quantization_config") or {}
    if q.get("quant_method"):
        raise ValueError(
            f"the {q.get('quant_method')} tensor layout of qwen2 is not derived by qwenprep"
        )
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    nkv = int(config.get("num_key_value_heads") or heads) * head_dim
    inter = int(config["intermediate_size"])
    vocab = int(config["vocab_size"])

    def w(name: str, *shape: int) -> TensorSpec:
        return TensorSpec(name, "BF16", tuple(shape))

    yield w("model.embed_tokens.weight", vocab, hidden)
    for i in range(int(config["num_hidden_layers"])):
        p = f"model.layers.{i}"
        yield w(f"{p}.input_layernorm.weight", hidden)
        for proj, out in (("q_proj", heads * head_dim), ("k_proj", nkv), ("v_proj", nkv)):
            yield w(f"{p}.self_attn.{proj}.weight", out, hidden)
            yield w(f"{p}.self_attn.{proj}.bias", out)
        yield w(f"{p}.self_attn.o_proj.weight", hidden, heads * head_dim)
        yield w(f"{p}.post_attention_layernorm.weight", hidden)
        yield w(f"{p}.mlp.gate_proj.weight", inter, hidden)
        yield w(f"{p}.mlp.up_proj.weight", inter, hidden)
        yield w(f"{p}.mlp.down_proj.weight", hidden, inter)
    yield w("model.norm.weight", hidden)
    if not config.get("tie_word_embeddings", False):
        yield w("lm_head.weight", vocab, hidden)


# ---------------------------------------------------------------- Qwen3.5 / Qwen3.6 (hybrid VL)


def qwen3_5_tensors(config: dict[str, Any]) -> Iterator[TensorSpec]:
    """Every tensor of a Qwen3.5/3.6 checkpoint for this whole config, in model order, as
    the releases name them and vLLM 0.32's qwen3_5.py / qwen3_5_mtp.py / qwen3_vl.py load them.

    Vision-language configs (text settings under ``text_config``): the language model under
    ``model.language_model.``, the vision tower under ``model.visual.``, ``lm_head`` at the top.
    A text-only config (``qwen3_5_text`` / ``qwen3_5_moe_text`` at the top level): ``model.``,
    no vision tower. Linear-attention layers keep the four projections the releases ship
    (``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``, ``in_proj_a``: vLLM stacks them into
    in_proj_qkvz / in_proj_ba on load); full-attention ``q_proj`` carries the output gate;
    routed experts are stacked per layer (``mlp.experts.gate_up_proj`` [E, 2 x I, H],
    ``mlp.experts.down_proj`` [E, H, I]) beside a shared expert and its gate; MTP weights under
    ``mtp.`` (``mtp_num_hidden_layers``, default 1), experts there one by one. With an fp8
    quantization_config (the -FP8 releases) the routed experts are one by one in every layer
    (``mlp.experts.E.{gate,up,down}_proj``) and each linear weight is block FP8 unless kept
    BF16 (linear_writer); the vision tower stays BF16."""
    text = config.get("text_config")
    nested = isinstance(text, dict)
    t: dict[str, Any] = text if isinstance(text, dict) else config
    q = config.get("quantization_config") or t.get("quantization_config") or {}
    fp8, block_n, block_k, keep = _hybrid_fp8(q, "Qwen3.5")
    linear = linear_writer(fp8, block_n, block_k, keep)
    moe = "moe" in str(t.get("model_type", config.get("model_type")))
    lm = "model.language_model" if nested else "model"
    b = HybridBlocks(t, linear)
    hidden, w = b.hidden, b.w

    def mlp(p: str, stacked: bool) -> Iterator[TensorSpec]:
        return b.experts_mlp(p, stacked) if moe else b.dense_mlp(p)

    yield w(f"{lm}.embed_tokens.weight", b.vocab, hidden)
    for i, layer_kind in enumerate(layer_types_of(t)):
        p = f"{lm}.layers.{i}"
        if layer_kind == "full_attention":
            yield from b.full_attention(p)
        elif layer_kind == "linear_attention":
            yield from b.split_gdn(f"{p}.linear_attn")
        else:
            raise _bad_layer(i, layer_kind)
        yield from b.norms(p)
        yield from mlp(p, stacked=not fp8)
    yield w(f"{lm}.norm.weight", hidden)
    if nested and isinstance(config.get("vision_config"), dict):
        yield from qwen3_vl_vision_tensors(config["vision_config"])
    if not (t.get("tie_word_embeddings", config.get("tie_word_embeddings", False))):
        yield from linear("lm_head", b.vocab, hidden)
    yield from b.mtp(int(t.get("mtp_num_hidden_layers", 1) or 0), lambda p, j: mlp(p, False))


def qwen3_vl_vision_tensors(vc: dict[str, Any]) -> Iterator[TensorSpec]:
    """The vision tower of Qwen3-VL / Qwen3.5 under ``model.visual.`` (vLLM 0.32 qwen3_vl.py
    Qwen3_VisionTransformer): a Conv3d patch embedding, learnt position embeddings, ``depth``
    blocks (LayerNorms, fused qkv, proj, a two-layer MLP, all with biases), and the patch merger
    (LayerNorm over the hidden size, then hidden x merge^2 -> out_hidden_size); one extra merger
    per ``deepstack_visual_indexes`` entry."""
    h = int(vc.get("hidden_size", 1152))
    inter = int(vc.get("intermediate_size", 4304))
    depth = int(vc.get("depth", 27))
    chans = int(vc.get("in_channels", 3))
    patch = int(vc.get("patch_size", 16))
    temporal = int(vc.get("temporal_patch_size", 2))
    merge = int(vc.get("spatial_merge_size", 2))
    out = int(vc.get("out_hidden_size", 3584))
    positions = int(vc.get("num_position_embeddings", 2304))
    deepstack = vc.get("deepstack_visual_indexes") or []
    merged = h * merge * merge
    v = "model.visual"

    def wb(name: str, *shape: int) -> Iterator[TensorSpec]:
        yield TensorSpec(f"{name}.weight", "BF16", tuple(shape))
        yield TensorSpec(f"{name}.bias", "BF16", (shape[0],))

    yield from wb(f"{v}.patch_embed.proj", h, chans, temporal, patch, patch)
    yield TensorSpec(f"{v}.pos_embed.weight", "BF16", (positions, h))
    for b in range(depth):
        p = f"{v}.blocks.{b}"
        yield from wb(f"{p}.norm1", h)
        yield from wb(f"{p}.norm2", h)
        yield from wb(f"{p}.attn.qkv", 3 * h, h)
        yield from wb(f"{p}.attn.proj", h, h)
        yield from wb(f"{p}.mlp.linear_fc1", inter, h)
        yield from wb(f"{p}.mlp.linear_fc2", h, inter)
    yield from wb(f"{v}.merger.norm", h)
    yield from wb(f"{v}.merger.linear_fc1", merged, merged)
    yield from wb(f"{v}.merger.linear_fc2", out, merged)
    for k in range(len(deepstack)):
        p = f"{v}.deepstack_merger_list.{k}"
        yield from wb(f"{p}.norm", merged)
        yield from wb(f"{p}.linear_fc1", merged, merged)
        yield from wb(f"{p}.linear_fc2", out, merged)
