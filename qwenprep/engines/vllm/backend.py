"""vLLM behind qwenprep's engine interface (qwenprep.engines.base.Engine): the object the
registry (qwenprep.engines.REGISTRY) hands to the commands and the API."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenprep.engines.base import PlanOptions

if TYPE_CHECKING:
    from qwenprep.engines.base import EngineHooks
    from qwenprep.engines.vllm.launch import LaunchPlan
    from qwenprep.request import ServeRequest
    from qwenprep.util.report import Check


class VllmEngine:
    name = "vllm"
    display = "vLLM"
    emits_artefacts = True
    charts = True

    def plan_refusal(self, options: PlanOptions) -> str | None:
        if options.mem_fraction_static is not None:
            return (
                "--mem-fraction-static is SGLang's; vLLM's is "
                "gpu_memory_utilization (pass --serving-engine sglang)."
            )
        return None

    def kv_plan(self, model: str | Path, options: PlanOptions) -> tuple[Any, list[str]]:
        from qwenprep.planning.capacity import make_plan
        from qwenprep.request import PlanRequest

        req = PlanRequest.from_options(
            context=options.context,
            tp=options.tp,
            pp=options.pp,
            gpus=options.gpus,
            gpu_memory=options.gpu_memory,
            kv_memory=options.kv_memory,
            kv_cache_dtype=options.kv_cache_dtype,
            ep=options.ep,
            vllm_version=options.vllm_version,
            block_size=options.block_size,
            gpu=options.gpu,
            prefill_budget=options.prefill_budget,
            dcp=options.dcp,
            prefix_caching=options.prefix_caching,
        )
        return make_plan(str(model), **req.plan_options()), []

    def readback_checks(self, path: Path, *, python: str | None) -> list[Check]:
        from qwenprep.engines.vllm.engine import readback_checks

        return readback_checks(path, python=python)

    def check_hooks(self) -> EngineHooks | None:
        return None  # check's own gate and KV checks are vLLM's

    def serve_plan(
        self, path: str | Path, req: ServeRequest, *, python: str | None, dry_run: bool
    ) -> LaunchPlan:
        from qwenprep.engines.vllm import core, gate
        from qwenprep.engines.vllm import engine as eng
        from qwenprep.model.checkpoint import resolve_model
        from qwenprep.planning.gpus import on_this_node

        ckpt = resolve_model(path)
        info = core.discover(python) if dry_run else core.require_engine(python)
        plan = eng.build_launch_plan(
            ckpt.path,
            replace(req, repo_id=ckpt.repo_id),
            engine=info,
            gpus_here=on_this_node(),
            offline_gate=False,
        )
        return gate.enforce(plan, engine=info)

    def start(
        self, plan: Any, *, out: Any, log_file: Path | None, say: Callable[[str], None]
    ) -> Any:
        from qwenprep.engines.vllm import server

        log = log_file if log_file is not None else server.default_log_path()
        note = server.cpu_kv_note(plan)
        if note:
            say(f"note: {note}")
        say(f"vLLM log: {log}")
        return server.start_server(plan, log=log, echo=out)


ENGINE = VllmEngine()
