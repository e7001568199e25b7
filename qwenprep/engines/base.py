"""One interface for a serving engine (issue 22): what the commands and the API ask of vLLM or
SGLang, whichever runs. Each engine is an object behind this protocol, found by name in one
registry (qwenprep.engines.engine_for); the commands and the API never branch on its name.

An engine answers in its own subprocess (qwenprep.engines.probe): nothing here imports vLLM or
SGLang, and an engine package never imports the other's."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from qwenprep.checks.preflight import CheckOptions
    from qwenprep.engines.parallel import Layout
    from qwenprep.engines.served import ServedPlan
    from qwenprep.engines.vllm.kv import ModelShape
    from qwenprep.planning.gpus import Inventory
    from qwenprep.request import ServeRequest
    from qwenprep.util.report import Check


@dataclass(frozen=True)
class PlanOptions:
    """`plan`'s options as given (sizes and context in text, None for "not given"); each
    engine reads the ones its arithmetic takes and refuses the other engine's
    (Engine.plan_refusal)."""

    context: str | int | None = None
    tp: int | None = None
    pp: int = 1
    ep: bool | None = None
    gpus: int | None = None
    gpu_memory: str | int | None = None
    kv_memory: str | int | None = None
    kv_cache_dtype: str = "auto"
    block_size: int = 16
    gpu: str | None = None
    vllm_version: str | None = None
    prefill_budget: float | None = None
    dcp: int = 1
    prefix_caching: bool | None = None
    mem_fraction_static: float | None = None

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> PlanOptions:
        """The options among VALUES (a command's or a function's keyword arguments: other
        names are not plan options; `gpu_model` is the command line's name for `gpu`)."""
        names = {f.name for f in fields(cls)}
        picked = {k: v for k, v in values.items() if k in names}
        if "gpu_model" in values:
            picked["gpu"] = values["gpu_model"]
        return cls(**picked)


@dataclass(frozen=True)
class EngineHooks:
    """An engine's own gate and KV checks for `check` where they are not vLLM's (SGLang's:
    qwenprep.engines.sglang.gate.check_hooks), handed to qwenprep.checks.preflight.run_checks
    so that it imports no engine package of its own."""

    name: str
    gate: Callable[[Path, CheckOptions, int | None, str | None], list[Check]]
    kv: Callable[[ModelShape, CheckOptions, Layout, Inventory, dict[str, Any]], list[Check]]


@runtime_checkable
class Engine(Protocol):
    """A serving engine as qwenprep drives it."""

    name: str  # as --serving-engine spells it: "vllm", "sglang"
    display: str  # as people read it: "vLLM", "SGLang"
    emits_artefacts: bool  # serve --emit-config / --emit k8s (a --config YAML, a LeaderWorkerSet)
    charts: bool  # plan --chart

    def plan_refusal(self, options: PlanOptions) -> str | None:
        """Why `plan` with OPTIONS is not this engine's to answer (another engine's option),
        or None."""

    def kv_plan(self, model: str | Path, options: PlanOptions) -> tuple[Any, list[str]]:
        """`plan`: the KV-cache capacity plan by this engine's arithmetic (it has to_dict() and
        fits), and the notes to show before it."""

    def readback_checks(self, path: Path, *, python: str | None) -> list[Check]:
        """`verify`'s engine part: PATH read back through the engine's own config code."""

    def check_hooks(self) -> EngineHooks | None:
        """`check`'s gate and KV checks when they are not vLLM's (None: vLLM's, built in)."""

    def serve_plan(
        self, path: str | Path, req: ServeRequest, *, python: str | None, dry_run: bool
    ) -> ServedPlan[Any, Any]:
        """`serve`: the launch plan for PATH, through the gate (refusals raise). DRY_RUN: an
        engine that is not importable is still planned for (what it would be asked)."""

    def start(
        self, plan: Any, *, out: Any, log_file: Path | None, say: Callable[[str], None]
    ) -> Any:
        """Start the server of PLAN as a watched child (a handle with wait_ready, stop,
        send_signal); OUT: where its output goes; SAY: a line for people before it starts."""
