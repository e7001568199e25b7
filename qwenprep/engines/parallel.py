"""Parallel layouts: the one rule that picks TP, EP and DP for `plan`, `check` and `serve`
(choose_layout, both engines), and the layouts vLLM refuses while it builds the model:
attention heads vs TP, experts vs TP/EP, FP8 weight blocks vs each TP shard (parallel_checks:
pure checks on a ModelShape, used by `check` as report lines and by `serve` as a refusal
before launch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from qwenprep.engines.vllm.kv import ModelShape
from qwenprep.util.report import Check

# --------------------------------------------------------------------------- the layout rule


@dataclass(frozen=True)
class Layout:
    """TP x PP x DP (+ EP) for one deployment, and where each part came from (SOURCE, said
    in plan's and check's output; NOTE: what the model profile would launch instead, when
    the flags differ from it)."""

    tp: int
    pp: int
    dp: int
    ep: bool
    source: str
    note: str = ""

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    def to_dict(self) -> dict[str, Any]:
        return {"tp": self.tp, "pp": self.pp, "dp": self.dp, "ep": self.ep, "source": self.source}


class Dims(Protocol):
    """What the layout rule reads of a model (a ModelShape has it; ConfigDims reads it from
    config.json alone, leniently: serve asks before anything else is judged)."""

    @property
    def num_attention_heads(self) -> int: ...
    @property
    def num_kv_heads(self) -> int: ...
    @property
    def num_experts(self) -> int: ...


@dataclass(frozen=True)
class ConfigDims:
    num_attention_heads: int
    num_kv_heads: int
    num_experts: int

    @classmethod
    def of(cls, config: dict[str, Any]) -> ConfigDims:
        """The counts from the text config; a missing or odd value reads as no constraint
        (validate and the parallel checks say what is wrong with it)."""
        from qwenprep.model.view import ModelView

        view = ModelView.of(config)
        cfg = view.text

        def count(key: str, default: int) -> int:
            v = cfg.get(key)
            return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else default

        heads = count("num_attention_heads", 1)
        return cls(heads, count("num_key_value_heads", heads), count(view.key_of("num_experts"), 0))


def largest_tp(n: int, shape: Dims) -> int:
    """The largest TP that divides N (the GPUs of one replica) and that vLLM accepts for the
    model's heads and experts (parallel_checks: num_attention_heads % TP == 0, KV heads divided
    or replicated whole, TP <= experts); 1 at worst."""
    h, kv, e = shape.num_attention_heads, shape.num_kv_heads, shape.num_experts
    for t in range(n, 1, -1):
        if n % t == 0 and heads_refusal(h, kv, t) is None and not (e and t > e):
            return t
    return 1


def choose_layout(
    shape: Dims,
    *,
    gpus: int | None,
    pp: int = 1,
    tp: int | None = None,
    ep: bool | None = None,
    profile: Any = None,
) -> Layout:
    """The one layout rule of plan, check and serve, for vLLM and SGLang alike:

    - TP: --tp; else the model profile's, where it sets one and the GPUs hold whole replicas
      of it (the 480B's TP 8: its FP8 blocks need whole experts per GPU,
      qwenprep.model.families.qwen3_moe); else one replica over
      the GPUs (GPUS / PP, as the model cards' `--tensor-parallel-size 8`), cut to the largest
      TP the heads and experts allow (largest_tp); 1 when no GPU count is known.
    - EP: --ep; else the profile's, where it sets one; else on for a MoE model whenever more
      than one GPU holds its experts (TP x DP > 1) and each can hold a whole one.
    - DP: the GPUs left over (GPUS / (TP x PP) when that divides evenly, else 1).

    PROFILE: the model's serve profile (qwenprep.model.profile.model_profile; None for a model
    not on disk). GPUS: the deploy target's (plan's --gpus, check's inventory, serve's node)."""
    pinned_tp: int | None = getattr(profile, "tp", None)
    pinned_ep: bool | None = getattr(profile, "ep", None)
    name = getattr(profile, "name", "")
    # the profile's TP where the GPUs hold whole replicas of it (else the GPUs decide, noted)
    holds = pinned_tp is not None and (
        not gpus or (gpus >= pinned_tp * pp and gpus % (pinned_tp * pp) == 0)
    )
    parts: list[str] = []
    if tp is not None:
        t = tp
        parts.append("--tp")
    elif holds and pinned_tp is not None:
        t = pinned_tp
        parts.append(f"model profile {name}")
    elif gpus:
        t = largest_tp(max(1, gpus // pp), shape)
        parts.append(
            "one replica over the GPUs: TP = GPUs / PP"
            if t * pp == gpus
            else f"TP {t}: the largest <= GPUs / PP that the model's heads allow"
        )
    else:
        t = 1
        parts.append("no GPU count given: one GPU per replica")
    per_replica = t * pp
    dp = gpus // per_replica if gpus and gpus >= per_replica and gpus % per_replica == 0 else 1
    moe = bool(shape.num_experts)
    if ep is not None:
        e = ep and moe
        parts = ["--tp/--ep"] if tp is not None else [*parts, "--ep given"]
    elif pinned_ep is not None:
        e = pinned_ep and moe
    else:  # more than one GPU holds the experts, each at least one whole expert
        e = moe and 1 < t * dp <= shape.num_experts
    note = ""
    if pinned_tp is not None and (t, e) != (pinned_tp, bool(pinned_ep) and moe):
        why = (
            "the flags given"
            if tp is not None or ep is not None
            else f"{gpus} GPUs do not hold whole TP {pinned_tp} x PP {pp} replicas"
        )
        note = (
            f"the model profile {name} launches TP {pinned_tp}"
            + (" with expert parallel" if pinned_ep and moe else "")
            + f"; this layout is TP {t}"
            + (" with expert parallel" if e else "")
            + f" ({why})"
        )
    return Layout(t, pp, dp, e, "; ".join(parts), note)


def serve_layout(
    config: dict[str, Any],
    profile: Any,
    *,
    tp: int | None,
    ep: bool | None,
    pp: int,
    gpus: int | None,
    notes: list[str],
) -> tuple[int, bool]:
    """serve's TP and EP (either engine): --tp/--ep where given, else choose_layout over GPUS
    (the GPUs --nnodes x --gpus-per-node name, else those found on this node; None: none
    found, one GPU). Where the GPUs chose TP, or the layout is not the profile's, a note says
    so."""
    from qwenprep.errors import UsageError

    if tp is not None and tp < 1:
        raise UsageError(f"--tp {tp}: tensor parallel size must be at least 1.")
    if tp is not None and ep is not None:
        return tp, ep
    lay = choose_layout(ConfigDims.of(config), gpus=gpus, pp=pp, tp=tp, ep=ep, profile=profile)
    if lay.note:  # not the profile's layout: said, as plan and check say it
        notes.append(lay.note)
    elif tp is None and getattr(profile, "tp", None) is None and gpus:
        notes.append(
            f"TP {lay.tp}"
            + (" with expert parallel" if lay.ep and ep is None else "")
            + f": {lay.source}, of the {gpus} GPU(s) found; --tp N chooses another"
        )
    return (tp if tp is not None else lay.tp), (ep if ep is not None else lay.ep)


# --------------------------------------------------------------------------- what vLLM refuses


def heads_refusal(h: int, kv: int, tp: int) -> tuple[str, str] | None:
    """(message, config path) when vLLM refuses TP for H query and KV key/value heads (query
    heads split evenly; KV heads split evenly, or replicated whole when TP is a multiple of
    them); None when it accepts it. The one reading of that rule: parallel_checks says it,
    largest_tp picks by it."""
    if h % tp:
        return (
            f"TP {tp} does not divide the {h} query heads (num_attention_heads); "
            "vLLM asserts total_num_heads % tp_size == 0",
            "config.json:$.num_attention_heads",
        )
    if kv >= tp and kv % tp:
        return (
            f"TP {tp} does not divide the {kv} KV heads (num_key_value_heads)",
            "config.json:$.num_key_value_heads",
        )
    if kv < tp and tp % kv:
        return (
            f"TP {tp} is above the {kv} KV heads and not a multiple of them; vLLM "
            "can only replicate KV heads when tp % num_key_value_heads == 0",
            "config.json:$.num_key_value_heads",
        )
    return None


def parallel_checks(shape: ModelShape, *, tp: int, ep: bool, dp: int = 1) -> list[Check]:
    """What vLLM asserts while building Qwen3-MoE layers for TP/EP (read in its source:
    Qwen3MoeAttention, Qwen3MoeSparseMoeBlock, fp8_utils.validate_fp8_block_shape*)."""
    out: list[Check] = []
    h, kv = shape.num_attention_heads, shape.num_kv_heads
    refused = heads_refusal(h, kv, tp)
    if refused is not None:
        out.append(Check("parallel.heads", "fail", *refused))
    else:
        rep = f" (each KV head replicated {tp // kv}x)" if kv < tp else ""
        out.append(
            Check(
                "parallel.heads",
                "pass",
                f"TP {tp}: {h // tp} query and {max(1, kv // tp)} KV heads per GPU{rep}",
            )
        )

    if shape.num_experts:
        e = shape.num_experts
        if tp * (dp if ep else 1) == 1:
            out.append(Check("parallel.experts", "pass", f"one GPU holds all {e} experts"))
        elif tp > e:
            out.append(
                Check(
                    "parallel.experts",
                    "fail",
                    f"Tensor parallel size {tp} is greater than the number of experts "
                    f"{e} (vLLM refuses this)",
                    "config.json:$.num_experts",
                )
            )
        elif ep:
            ep_size = tp * dp
            if e % ep_size:
                out.append(
                    Check(
                        "parallel.experts",
                        "warn",
                        f"expert parallel over {ep_size} GPUs: {e} experts split "
                        f"unevenly ({e // ep_size} or {e // ep_size + 1} per GPU)",
                    )
                )
            else:
                out.append(
                    Check(
                        "parallel.experts",
                        "pass",
                        f"expert parallel: {e // ep_size} whole experts per GPU "
                        f"({e} over {ep_size})",
                    )
                )
        else:
            out.append(
                Check(
                    "parallel.experts",
                    "pass",
                    f"no expert parallel: each of the {e} experts is split over TP {tp}",
                )
            )

    block = shape.quant_block
    if block is None:
        out.append(Check("parallel.fp8_block", "skip", "not block-FP8 quantised"))
        return out
    bn, bk = block
    problems: list[str] = []
    if shape.num_experts and shape.moe_intermediate_size:
        if not ep and tp > 1:
            part = shape.moe_intermediate_size / tp
            if part != int(part) or int(part) % bn:
                problems.append(
                    f"The output_size of gate's and up's weight = {part:g} is not divisible by "
                    f"weight quantization block_n = {bn} (moe_intermediate_size "
                    f"{shape.moe_intermediate_size} / TP {tp}); enable expert parallel "
                    f"(--enable-expert-parallel, qwenprep check --ep) so each GPU holds whole "
                    "experts"
                )
    elif shape.intermediate_size and tp > 1:
        part = shape.intermediate_size / tp
        if part != int(part) or int(part) % bn:
            problems.append(
                f"intermediate_size {shape.intermediate_size} / TP {tp} = {part:g} "
                f"is not divisible by weight quantization block_n = {bn}"
            )
    q_part = shape.num_attention_heads * shape.head_dim / tp
    if tp > 1 and (q_part != int(q_part) or int(q_part) % bk):
        problems.append(
            f"attention output size per GPU {q_part:g} (heads x head_dim / TP) is "
            f"not divisible by block_k = {bk}"
        )
    if problems:
        out.append(
            Check(
                "parallel.fp8_block",
                "fail",
                "; ".join(problems),
                "config.json:$.quantization_config.weight_block_size",
            )
        )
    else:
        what = (
            "whole experts per GPU"
            if ep and shape.num_experts
            else f"{shape.moe_intermediate_size or shape.intermediate_size} / TP {tp}"
        )
        out.append(
            Check(
                "parallel.fp8_block", "pass", f"FP8 block {bn}x{bk} divides every TP shard ({what})"
            )
        )
    return out
