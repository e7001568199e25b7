"""What a model family declares to the rest of qwenprep. One module per family fills one of
these; ``qwenprep.model.families`` holds the table. Nothing outside the family modules names a
model_type."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qwenprep.model.view import ModelView


@dataclass(frozen=True)
class ServeProfile:
    """How `qwenprep serve` launches a model of the family, when MATCHES says it applies.

    MATCHES gets the model view and the names the model is known by (repo name, source
    directory, overlay directory), most specific first."""

    name: str
    matches: Callable[[ModelView, Sequence[str]], bool]
    # the TP and expert parallel the model needs, where it needs one (None: the layout rule's,
    # qwenprep.engines.parallel.choose_layout)
    tp: int | None = None
    ep: bool | None = None
    tool_parser: str | None = None
    reasoning_parser: str | None = None
    served_model_name: str | None = None  # None: the first of the model's names
    # launch settings the family's releases need: vLLM flags and environment variables
    flags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    # why the profile sets FLAGS (said when the user turns one off after --: engine.profile_flags)
    flags_why: str = ""
    # the newest vLLM (exclusive) that can run the profile at all; serve refuses newer ones
    # with UNSUPPORTED_WHY (DCA ran only on the V0 engine, removed in 0.11.0)
    before_vllm: tuple[int, int, int] | None = None
    unsupported_why: str = ""


@dataclass(frozen=True)
class Family:
    name: str  # "qwen3-moe"
    title: str  # "Qwen3-MoE (Qwen3-Coder-480B/30B, Qwen3-235B/30B)"
    model_types: frozenset[str]
    schema: str  # schemas/<schema>.schema.json, applied to the text config
    native_context: int  # the usual native context of the family's releases
    max_yarn_factor: float = 4.0  # the largest factor the releases claim
    moe: bool = False
    # the tensors a checkpoint of this config must hold (name, shape, dtype); None: not derived
    tensors: Callable[[ModelView], list[Any]] | None = None
    profiles: tuple[ServeProfile, ...] = field(default_factory=tuple)
    hybrid: bool = False  # linear-attention (Gated DeltaNet) layers beside full attention
    derive_head_dim: bool = False  # head_dim may be absent: hidden_size / heads (Qwen2)
    # extra invariants of the family's configs (qwenprep.util.report.Check list)
    invariants: Callable[[ModelView], list[Any]] | None = None
    # how the releases reach their long context, for people: "YaRN x4", "DCA", ...
    method: str = "YaRN"
    # How vLLM's weight loader reads a checkpoint's tensor names (its WeightsMapper and the
    # FusedMoE loader), so that verify accepts what the engine loads and no more:
    # - name prefixes the loader skips (the MTP head's "mtp.": only the MTP draft model
    #   loads it), so their absence is a warning, not a failure;
    optional_prefixes: tuple[str, ...] = ()
    # - (checkpoint prefix, the layout's prefix) pairs it renames, for a given config;
    loader_renames: Callable[[ModelView], tuple[tuple[str, str], ...]] | None = None
    # - routed experts stored stacked per layer (mlp.experts.gate_up_proj [E, 2I, H],
    #   mlp.experts.down_proj [E, H, I]) or one by one (mlp.experts.N.{gate,up,down}_proj),
    #   either read (vllm/model_executor/layers/fused_moe/routed_experts.py,
    #   RoutedExperts.load_weights with get_expert_mapping(include_fused=True), vLLM 0.32).
    experts_either_form: bool = False

    def profile_for(self, view: ModelView, names: Sequence[str]) -> ServeProfile:
        for p in self.profiles:
            if p.matches(view, names):
                return p
        return ServeProfile("default", lambda v, n: True)


def any_name_has(*words: str) -> Callable[[ModelView, Sequence[str]], bool]:
    """A profile matcher: one of the model's names contains one of WORDS (case-insensitive)."""
    low = tuple(w.lower() for w in words)
    return lambda view, names: any(w in n.lower() for n in names for w in low)


def tensors_of(
    layout: Callable[[dict[str, Any]], Iterable[Any]], *, whole_config: bool = False
) -> Callable[[ModelView], list[Any]]:
    """A family's ``tensors``: LAYOUT (a qwenprep.model.layouts function) of the text config,
    or, WHOLE_CONFIG, of the config as written (a layout that reads text_config and the vision
    tower itself)."""
    if whole_config:
        return lambda view: list(layout(view.raw))
    return lambda view: list(layout(view.text))
