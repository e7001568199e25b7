"""SGLang behind qwenprep's engine interface (qwenprep.engines.base.Engine): the object the
registry (qwenprep.engines.REGISTRY) hands to the commands and the API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenprep.engines.base import PlanOptions

if TYPE_CHECKING:
    from qwenprep.engines.base import EngineHooks
    from qwenprep.engines.sglang.core import SglangPlan
    from qwenprep.request import ServeRequest
    from qwenprep.util.report import Check


class SglangEngine:
    name = "sglang"
    display = "SGLang"
    emits_artefacts = False  # no --config file or LeaderWorkerSet emitter for SGLang here
    charts = False

    def plan_refusal(self, options: PlanOptions) -> str | None:
        if options.dcp > 1 or options.prefix_caching is not None:
            return (
                "--dcp and --[no-]prefix-caching are vLLM's; this plan is SGLang's "
                "(drop them, or plan for vLLM)."
            )
        return None

    def kv_plan(self, model: str | Path, options: PlanOptions) -> tuple[Any, list[str]]:
        from qwenprep.engines.sglang.kv import make_plan
        from qwenprep.planning.catalog import named_gpu

        def given(size: str | int | None) -> str | None:
            return None if size is None else str(size)

        _, gpu_memory, gpus, notes = named_gpu(  # --gpu NAME: its memory, as for vLLM
            options.gpu,
            gpu_memory=given(options.gpu_memory),
            kv_memory=given(options.kv_memory),
            gpus=options.gpus,
            tp=options.tp,
            pp=options.pp,
        )
        plan = make_plan(
            str(model),
            replace(options, gpus=gpus, gpu_memory=gpu_memory, kv_memory=given(options.kv_memory)),
        )
        return plan, list(notes)

    def readback_checks(self, path: Path, *, python: str | None) -> list[Check]:
        from qwenprep.engines.sglang.gate import readback_checks

        return readback_checks(path, python=python)

    def check_hooks(self) -> EngineHooks | None:
        from qwenprep.engines.sglang.gate import check_hooks

        hooks: EngineHooks = check_hooks()
        return hooks

    def serve_plan(
        self, path: str | Path, req: ServeRequest, *, python: str | None, dry_run: bool
    ) -> SglangPlan:
        from qwenprep.engines.sglang.gate import serve_plan
        from qwenprep.planning.gpus import on_this_node

        here = on_this_node()
        return serve_plan(
            str(path), req, python=python, dry_run=dry_run, gpus_here=here.count if here else None
        )

    def start(
        self, plan: Any, *, out: Any, log_file: Path | None, say: Callable[[str], None]
    ) -> Any:
        from qwenprep.engines.sglang.server import start

        return start(plan, stdout=out, stderr=out)


ENGINE = SglangEngine()
