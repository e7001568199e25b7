"""The running SGLang server: start it as a watched child (its own process group), wait until
it answers /v1/models and /server_info with the planned length, stop it. The plan it runs is
qwenprep.engines.sglang.core's build_plan; vLLM's counterpart is qwenprep.engines.vllm.server.
"""

from __future__ import annotations

import subprocess
import urllib.error
from typing import IO, TYPE_CHECKING, Any

from qwenprep.engines.child import ChildGroup, EngineStartFailed, exit_code, get_json, spawn
from qwenprep.errors import ChecksFailed, InputError

if TYPE_CHECKING:  # not at run time: qwenprep.engines.sglang.core imports this module
    from qwenprep.engines.sglang.core import SglangPlan


class SglangServer(ChildGroup):
    """SGLang started by start(): a child in its own process group."""

    def __init__(self, plan: SglangPlan, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(proc)
        self.plan = plan

    def _get(self, route: str, timeout: float) -> dict[str, Any]:
        return get_json(self.plan.base_url + route, timeout)

    def server_info(self, timeout: float = 10.0) -> dict[str, Any]:
        """/server_info (SGLang 0.5.23), else the older /get_server_info."""
        try:
            return self._get("/server_info", timeout)
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
            return self._get("/get_server_info", timeout)

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Poll /v1/models until it answers; then require max_model_len == the plan's and a
        server-info max_req_input_len within it. ChecksFailed (server stopped) otherwise."""

        def ended(rc: int) -> Exception:  # exit 3, as for vLLM: before ready, codes are ours
            return EngineStartFailed(
                f"SGLang exited with code {exit_code(rc)} before it was ready (its log is above).",
                engine_exit_code=exit_code(rc),
                log_path=None,
                cause=[],
                causes=[],
                hint="read SGLang's last lines above; qwenprep check PATH "
                "--serving-engine sglang runs the same gate without starting it.",
            )

        models = self.poll_models(
            timeout,
            models=lambda: self._get("/v1/models", 5.0),
            ended=ended,
            who="SGLang",
            url=self.plan.base_url,
        )
        entries = models.get("data") or []
        got = entries[0].get("max_model_len") if entries else None
        want = self.plan.max_model_len
        try:
            info = self.server_info()
        except (urllib.error.URLError, OSError, ValueError) as e:
            info = {"error": str(e)}
        max_in = info.get("max_req_input_len")
        problems = []
        if got != want:
            problems.append(f"/v1/models reports max_model_len {got}, the plan asked for {want}")
        if not isinstance(max_in, int) or isinstance(max_in, bool) or not 0 < max_in <= want:
            problems.append(
                f"server info reports max_req_input_len {max_in!r}; expected a "
                f"positive count up to {want}"
            )
        if problems:
            self.stop()
            raise ChecksFailed(
                "SGLang is not serving what was planned: "
                + "; ".join(problems)
                + "; stopped the server."
            )
        models["server_info"] = {
            k: info.get(k) for k in ("max_req_input_len", "max_total_num_tokens")
        }
        return models

    def __enter__(self) -> SglangServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    plan: SglangPlan, *, stdout: IO[Any] | int | None = None, stderr: IO[Any] | int | None = None
) -> SglangServer:
    if plan.engine is None:
        raise InputError(
            "SGLang is not installed, so there is nothing to start.",
            hint="name the interpreter that has it with --engine-python.",
        )
    return SglangServer(plan, spawn(plan.argv, plan.child_env(), stdout, stderr))
