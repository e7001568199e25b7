"""The running vLLM server: start it as a watched child (its own process group), wait until it
answers /v1/models with the planned length, pass signals through, stop it; and `qwenprep demo`'s
serve step.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import urllib.error
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from qwenprep.engine import (
    ENV_PYTHON,
    EngineError,
    ServerExited,
    build_launch_plan,
    discover,
    engine_python,
    readback_checks,
)
from qwenprep.engines.child import ChildGroup, exit_code
from qwenprep.errors import ChecksFailed, InputError, QwenprepError

if TYPE_CHECKING:
    from qwenprep.engines.vllm_launch import LaunchPlan


# ------------------------------------------------------------------ the running server
def _get_json(url: str, timeout: float) -> dict[str, Any]:
    import urllib.request  # lazily: check/verify/plan never need it (~14 ms to import)

    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (local URL)
        data: dict[str, Any] = json.loads(resp.read().decode("utf-8"))
        return data


def _post_json(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (local URL)
        data: dict[str, Any] = json.loads(resp.read().decode("utf-8"))
        return data


class ServerHandle(ChildGroup):
    """A vLLM server started by start_server: a child in its own process group."""

    def __init__(self, plan: LaunchPlan, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(proc)
        self.plan = plan

    @property
    def base_url(self) -> str:
        return self.plan.base_url

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def models(self, timeout: float = 10.0) -> dict[str, Any]:
        return _get_json(self.base_url + "/v1/models", timeout)

    def chat(self, body: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
        body = {"model": self.plan.served_model_name, **body}
        return _post_json(self.base_url + "/v1/chat/completions", body, timeout)

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Poll /v1/models until it answers; then check that it reports the intended
        max_model_len. Raises ServerExited (child's code) if vLLM ends first, EngineError on
        timeout, ChecksFailed (after stopping the server) on a length mismatch."""
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise ServerExited(f"vLLM exited with code {rc} before it was ready "
                                   "(its log is above).", _exit_code(rc))
            try:
                data = self.models(timeout=5.0)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"vLLM did not answer {self.base_url}/v1/models within "
                                  f"{timeout:g} s; stopped it.",
                                  hint="raise --ready-timeout for big checkpoints.")
            time.sleep(0.5)
        entries = data.get("data") or []
        got = entries[0].get("max_model_len") if entries else None
        if got != self.plan.max_model_len:
            self.stop()
            raise ChecksFailed(f"vLLM reports max_model_len {got} on /v1/models, but the plan "
                               f"asked for {self.plan.max_model_len}; stopped the server.")
        return data

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_exit_code = exit_code  # the name this module's callers use


def start_server(plan: LaunchPlan, *, stdout: IO[Any] | int | None = None,
                 stderr: IO[Any] | int | None = None) -> ServerHandle:
    """Start vLLM per PLAN as a child in its own process group (so signals reach it only
    through us). stdout/stderr: where its output goes (default: inherited)."""
    if plan.engine is None:
        raise InputError("vLLM is not installed, so there is nothing to start.",
                         hint="install vLLM, or name its interpreter with --vllm-python or "
                         f"{ENV_PYTHON}.")
    try:
        proc = subprocess.Popen(list(plan.argv), env=plan.child_env(), stdin=subprocess.DEVNULL,
                                stdout=stdout, stderr=stderr, start_new_session=True)
    except OSError as e:
        raise EngineError(f"cannot start {plan.argv[0]}: {e}") from None
    return ServerHandle(plan, proc)


# ------------------------------------------------------------------ demo
def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


TOOL_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}


def demo_serve(path: Path, *, python: str | None = None, step_cls: Any = None,
               ready_timeout: float = 600.0, log: IO[Any] | int | None = subprocess.DEVNULL) -> Any:
    """For `qwenprep demo`: read PATH back through vLLM, serve it on 127.0.0.1 (small CPU KV
    space), check /v1/models, one chat answer and one required tool call, stop.
    Returns step_cls(title, status, lines) (a dict when step_cls is None)."""
    lines: list[str] = []

    def result(status: str) -> Any:
        title = "engine readback + serve"
        return step_cls(title, status, lines) if step_cls else {"title": title, "status": status,
                                                                  "lines": lines}

    info = discover(python)
    if info is None or not info.importable:
        lines.append(f"vLLM is not installed in {engine_python(python)}")
        return result("skip")
    checks = readback_checks(Path(path), python=python)
    lines += [f"[{c.status}] {c.id}: {c.message}" for c in checks]
    if any(c.status == "fail" for c in checks):
        return result("fail")
    from dataclasses import replace

    plan = build_launch_plan(Path(path), engine=info, host="127.0.0.1", port=free_port())
    env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    plan = replace(plan, env={**plan.env, **env})
    lines.append("$ " + shlex.join(plan.argv))
    handle = start_server(plan, stdout=log, stderr=log)
    try:
        models = handle.wait_ready(ready_timeout)
        lines.append(f"/v1/models: {models['data'][0]['id']} max_model_len "
                     f"{models['data'][0]['max_model_len']}")
        chat = handle.chat({"messages": [{"role": "user", "content": "Say hello"}],
                            "max_tokens": 8})
        lines.append(f"chat: finish_reason {chat['choices'][0]['finish_reason']}, "
                     f"{chat['usage']['completion_tokens']} tokens")
        tool = handle.chat({"messages": [{"role": "user", "content": "Weather in Paris?"}],
                            "tools": [TOOL_WEATHER], "tool_choice": "required",
                            "max_tokens": 64})
        calls = tool["choices"][0]["message"].get("tool_calls") or []
        lines.append(f"tool_choice required: {len(calls)} tool call(s)"
                     + (f", first: {calls[0]['function']['name']}" if calls else ""))
        status = "pass" if calls else "fail"
    except QwenprepError as e:
        lines.append(f"error: {e.message}")
        status = "fail"
    except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as e:
        lines.append(f"error: {type(e).__name__}: {e}")
        status = "fail"
    finally:
        rc = handle.stop()
        lines.append(f"stopped (exit {rc})")
    return result(status)
