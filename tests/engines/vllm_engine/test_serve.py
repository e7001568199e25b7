"""`qwenprep serve` for real: the embedded tiny checkpoint patched to 1M, served by the real
vLLM (CPU build) through the console script, queried, stopped with SIGINT. Plus the watch
logic (length mismatch, early exit) against a stand-in HTTP server process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import QWENPREP_BIN, TINY, invoke
from qwenprep.cli import cli
from qwenprep.engines.child import EngineStartFailed, cause_lines
from qwenprep.engines.vllm import core as vllm_core
from qwenprep.engines.vllm import engine as eng
from qwenprep.engines.vllm import server as srv
from qwenprep.engines.vllm.launch import LaunchPlan
from qwenprep.errors import ChecksFailed, Interrupted

VLLM_PY = os.environ.get("QWENPREP_VLLM_PYTHON") or sys.executable
INFO = vllm_core.discover(VLLM_PY)
HAVE_VLLM = INFO is not None and INFO.importable


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


class Served:
    def __init__(self, proc: subprocess.Popen[str], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if not HAVE_VLLM:
        pytest.skip(f"vLLM is not importable in {VLLM_PY}")
    tmp = tmp_path_factory.mktemp("serve")
    ov = tmp / "tiny-1m"
    r = invoke("patch", str(TINY), "--context", "1m", "--out", str(ov))
    assert r.exit_code == 0, r.output
    port = srv.free_port()
    log = tmp / "serve.log"
    env = dict(os.environ, QWENPREP_VLLM_PYTHON=VLLM_PY, VLLM_CPU_KVCACHE_SPACE="1")
    with open(log, "w") as errf:
        proc = subprocess.Popen(
            [
                str(QWENPREP_BIN),
                "serve",
                str(ov),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--ready-timeout",
                "600",
                "--no-proof",  # native is 262,144 here: tests/engines/test_proof.py serves one
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=errf,
            text=True,
            env=env,
        )
    s = Served(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 600
        while "ready: " not in log.read_text():
            tail = log.read_text()[-3000:]
            assert proc.poll() is None, f"serve exited {proc.returncode}:\n{tail}"
            assert time.monotonic() < deadline, "vLLM not ready in 600 s"
            time.sleep(1)
        yield s
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.engine
def test_models_reports_1m(served: Served) -> None:
    data = _get(served.url + "/v1/models")
    assert [(m["id"], m["max_model_len"]) for m in data["data"]] == [("tiny-qwen3-coder", 1048576)]
    assert "ready: http://127.0.0.1:" in served.log.read_text()
    assert "with max_model_len 1048576" in served.log.read_text()
    # launched as `vllm serve` through vLLM's CLI main, after the gate judged the argv
    start = [ln for ln in served.log.read_text().splitlines() if ln.startswith("starting vLLM")]
    assert start and " serve /" in start[0] and "api_server" not in start[0]


@pytest.mark.engine
def test_chat_completion_answers(served: Served) -> None:
    out = _post(
        served.url + "/v1/chat/completions",
        {
            "model": "tiny-qwen3-coder",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "Write hello world in Python"}],
        },
    )
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert out["usage"]["completion_tokens"] >= 1
    assert choice["finish_reason"] in ("length", "stop")


@pytest.mark.engine
def test_required_tool_choice_returns_a_tool_call(served: Served) -> None:
    out = _post(
        served.url + "/v1/chat/completions",
        {
            "model": "tiny-qwen3-coder",
            "max_tokens": 64,
            "tool_choice": "required",
            "tools": [srv.TOOL_WEATHER],
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        },
    )
    calls = out["choices"][0]["message"]["tool_calls"]
    assert len(calls) >= 1
    assert calls[0]["type"] == "function" and calls[0]["function"]["name"] == "get_weather"
    json.loads(calls[0]["function"]["arguments"])  # arguments are JSON


@pytest.mark.engine
def test_sigint_is_forwarded_and_exit_code_passed_through(served: Served) -> None:
    # runs last in this module (pytest keeps file order): stops the shared server
    assert served.proc.stdout is not None
    served.proc.send_signal(signal.SIGINT)
    rc = served.proc.wait(90)
    ready = json.loads(served.proc.stdout.read())
    assert ready["ok"] is True and ready["ready"] is True
    assert list(_plan_validator().iter_errors(ready)) == []
    assert ready["max_model_len"] == 1048576 and ready["url"] == served.url
    assert rc == 0
    assert "vLLM exited with code 0" in served.log.read_text()
    with pytest.raises(ProcessLookupError):  # the vLLM child went with it
        os.kill(ready["pid"], 0)


# ---------------------------------------------------------------- watching, with a stand-in
STAND_IN = textwrap.dedent("""
    import json, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    import time
    port, length, code = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    if code < 0:  # loads for ever
        time.sleep(600)
    if code:
        print(sys.argv[4] if len(sys.argv) > 4 else "", file=sys.stderr, flush=True)
        sys.exit(code)
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"data": [{"id": "m", "max_model_len": length}]}).encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
        def log_message(self, *a):
            pass
    HTTPServer(("127.0.0.1", port), H).serve_forever()
""")


def _stand_in_plan(tmp_path: Path, length: int, code: int = 0, said: str = "") -> LaunchPlan:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    ov = tmp_path / "ov"
    if not ov.exists():
        assert invoke("patch", str(TINY), "--context", "1m", "--out", str(ov)).exit_code == 0
    engine = vllm_core.EngineInfo(
        "x", "0.32.0", "vllm", True, None, None, vllm_core.capabilities_for((0, 32, 0))
    )
    port = srv.free_port()
    plan = eng.build_launch_plan(ov, engine=engine, host="127.0.0.1", port=port)
    return replace(
        plan, argv=(sys.executable, str(script), str(port), str(length), str(code), said)
    )


def test_length_mismatch_stops_the_server_and_fails(tmp_path: Path) -> None:
    plan = _stand_in_plan(tmp_path, 4096)
    handle = srv.start_server(plan)
    with pytest.raises(ChecksFailed) as ei:
        handle.wait_ready(30)
    assert ei.value.exit_code == 1
    assert ei.value.message == (
        "vLLM reports max_model_len 4096 on /v1/models, but the plan "
        "asked for 1048576; stopped the server."
    )
    assert handle.returncode is not None


def test_ready_and_stop_with_matching_length(tmp_path: Path) -> None:
    plan = _stand_in_plan(tmp_path, 1048576)
    with srv.start_server(plan) as handle:
        data = handle.wait_ready(30)
        assert data["data"][0]["max_model_len"] == 1048576
        assert handle.models()["data"][0]["id"] == "m"
    assert handle.returncode is not None


def test_early_exit_is_exit_3_with_the_engines_code(tmp_path: Path) -> None:
    # before ready, serve's exit codes are qwenprep's: 3, the engine's own code beside it
    plan = _stand_in_plan(tmp_path, 1048576, code=7)
    handle = srv.start_server(plan)
    with pytest.raises(EngineStartFailed) as ei:
        handle.wait_ready(30)
    assert ei.value.exit_code == 3 and ei.value.engine_exit_code == 7
    assert ei.value.message == "vLLM exited with code 7 before it was ready (its log is above)."


# vLLM 0.32's own words (vllm/config/device.py), as the CUDA build prints them without a GPU
NO_DEVICE = (
    "RuntimeError: Failed to infer device type, please set the environment variable "
    "`VLLM_LOGGING_LEVEL=DEBUG` to turn on verbose logging to help debug the issue."
)


def test_early_exit_names_the_log_lines_and_the_cause(tmp_path: Path) -> None:
    plan = _stand_in_plan(tmp_path, 1048576, code=1, said=NO_DEVICE)
    log = tmp_path / "vllm.log"
    handle = srv.start_server(plan, log=log)
    with pytest.raises(EngineStartFailed) as ei:
        handle.wait_ready(30)
    err = ei.value
    assert err.exit_code == 3 and err.engine_exit_code == 1
    assert err.cause == [NO_DEVICE] and err.causes == ["device"]
    assert err.message == (
        f"vLLM exited with code 1 before it was ready; from its log ({log}):\n  {NO_DEVICE}"
    )
    assert err.hint is not None and "found no device it can run on" in err.hint
    assert f"(whole log: {log})" in err.hint
    assert log.read_text().strip() == NO_DEVICE


def test_killed_before_ready_points_at_memory(tmp_path: Path) -> None:
    plan = _stand_in_plan(tmp_path, 1048576, code=137)
    handle = srv.start_server(plan, log=tmp_path / "vllm.log")
    with pytest.raises(EngineStartFailed) as ei:
        handle.wait_ready(30)
    assert ei.value.exit_code == 3 and ei.value.engine_exit_code == 137
    assert ei.value.hint is not None and "out-of-memory killer" in ei.value.hint


def test_cause_lines_pick_the_errors_out_of_a_vllm_traceback() -> None:
    # the shape vLLM 0.32 printed here for a KV cache too small for 1M (abridged, real lines)
    kv = (
        "ValueError: To serve at least one request with the model's max seq len (1048576), "
        "(0.5 GiB KV cache is needed, which is larger than the available KV cache memory "
        "(0.06 GiB). Based on the available memory, the estimated maximum model length is "
        "130944."
    )
    pre = "(EngineCore pid=1048) ERROR 11-26 02:17:10 [core.py:1510] "
    log = "\n".join(
        [
            "(APIServer pid=1003) INFO 11-26 02:16:30 [api_utils.py:286] non-default args: {}",
            pre + "EngineCore failed to start.",
            pre + "Traceback (most recent call last):",
            pre + '  File "core.py", line 1482, in run_engine_core',
            pre + "    engine_core = EngineCoreProc(*args, engine_index=dp_rank, **kwargs)",
            pre + "                  ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
            pre + kv,
            "Traceback (most recent call last):",
            '  File "<string>", line 1, in <module>',
            kv,
            "RuntimeError: Engine core initialization failed. See root cause above. Failed core "
            "proc(s): {}",
            "/usr/lib/python3.11/multiprocessing/resource_tracker.py:254: UserWarning: leaked",
            "  warnings.warn('resource_tracker: There appear to be %d '",
        ]
    )
    lines = cause_lines(log)
    assert [ln.split(":")[0] for ln in lines] == [
        "EngineCore failed to start.",
        "ValueError",
        "RuntimeError",
    ]
    plan = eng.build_launch_plan(
        TINY, engine=INFO or None, host="127.0.0.1", port=8123, offline_gate=False
    )
    causes, hint = srv.explain(plan, log)
    assert causes == ["kv_memory"] and hint is not None
    assert "vLLM estimates 130,944 tokens fit" in hint


def test_a_signal_before_ready_is_an_interruption(tmp_path: Path) -> None:
    plan = _stand_in_plan(tmp_path, 1048576, code=-1)
    handle = srv.start_server(plan, log=tmp_path / "vllm.log")
    handle.send_signal(signal.SIGINT)
    with pytest.raises(Interrupted) as ei:
        handle.wait_ready(30)
    assert ei.value.exit_code == 130


def _serve_failing(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], str]:
    ov = tmp_path / "tiny-1m"
    if not ov.exists():
        assert invoke("patch", str(TINY), "--context", "1m", "--out", str(ov)).exit_code == 0
    base = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    r = subprocess.run(
        [
            str(QWENPREP_BIN),
            "serve",
            str(ov),
            "--host",
            "127.0.0.1",
            "--ready-timeout",
            "600",
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=700,
        env={**base, "QWENPREP_VLLM_PYTHON": VLLM_PY, **(env or {})},
    )
    return r.returncode, json.loads(r.stdout), r.stderr


@pytest.mark.engine
@pytest.mark.slow
def test_serve_on_a_port_in_use_says_so(tmp_path: Path) -> None:
    if not HAVE_VLLM:
        pytest.skip(f"vLLM is not importable in {VLLM_PY}")
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        rc, out, err = _serve_failing(
            tmp_path,
            "--port",
            str(port),
            "--log-file",
            str(tmp_path / "vllm.log"),
            env={"VLLM_CPU_KVCACHE_SPACE": "1"},
        )
    assert rc == 3, err[-3000:]
    assert _errors(out) == []
    e = out["error"]
    assert e["exit_code"] == 3 and e["engine_exit_code"] == 1
    assert e["causes"] == ["port_in_use"] and e["log"] == str(tmp_path / "vllm.log")
    assert e["cause"] == ["OSError: [Errno 98] Address already in use"]
    assert e["hint"].startswith(
        f"port {port} on 127.0.0.1 is already taken by another process: serve on another (--port N)"
    )
    # people get the same: the cause lines once at the end, not only in the scroll above
    tail = err[err.index("error: vLLM exited with code 1 before it was ready") :]
    assert "  OSError: [Errno 98] Address already in use\nHint: port" in tail
    assert "note: the CPU build of vLLM keeps its KV cache in RAM" not in err  # it is set


@pytest.mark.engine
@pytest.mark.slow
def test_serve_with_kv_memory_too_small_for_the_length_says_so(tmp_path: Path) -> None:
    if not HAVE_VLLM:
        pytest.skip(f"vLLM is not importable in {VLLM_PY}")
    if INFO is None or INFO.distribution != "vllm-cpu":
        pytest.skip("the CPU build's messages")
    rc, out, err = _serve_failing(
        tmp_path, "--port", str(srv.free_port()), "--", "--kv-cache-memory-bytes", "64M"
    )
    assert rc == 3, err[-3000:]
    assert _errors(out) == []
    e = out["error"]
    assert e["engine_exit_code"] == 1 and e["causes"] == ["kv_memory"]
    assert any(
        c.startswith(
            "ValueError: To serve at least one request with the model's max seq len (1048576)"
        )
        for c in e["cause"]
    )
    assert len(e["cause"]) <= 8
    assert "on the CPU build set VLLM_CPU_KVCACHE_SPACE=N" in e["hint"]
    assert "tokens fit in the memory it had" in e["hint"]
    # without VLLM_CPU_KVCACHE_SPACE, serve says what the CPU build does before it starts
    assert (
        "note: the CPU build of vLLM keeps its KV cache in RAM: without "
        "VLLM_CPU_KVCACHE_SPACE" in err
    )
    assert Path(e["log"]).is_file() and "ValueError: To serve" in Path(e["log"]).read_text()


# ---------------------------------------------------------------- GPUs on this node
def _480b_overlay(tmp_path: Path) -> Path:
    from qwenprep.testing.synth import qwen3_coder_480b_fp8_config

    src = tmp_path / "Qwen3-Coder-480B-A35B-Instruct-FP8"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(qwen3_coder_480b_fp8_config(), indent=2))
    ov = tmp_path / "qwen480b-1m"
    r = invoke("patch", str(src), "--context", "1m", "--out", str(ov))
    assert r.exit_code == 0, r.output
    return ov


def _dry_run_notes(ov: Path, *args: str) -> list[str]:
    r = invoke("serve", str(ov), "--dry-run", "--json", *args)
    assert r.exit_code == 0, r.output
    notes: list[str] = json.loads(r.stdout)["notes"]
    return notes


def test_too_few_gpus_on_this_node_is_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fakes import fake_smi

    try:
        import pynvml  # noqa: F401

        pytest.skip("nvidia-ml-py is installed: the inventory would not ask nvidia-smi")
    except ImportError:
        pass
    ov = _480b_overlay(tmp_path)
    bin_dir = tmp_path / "bin"
    four = "".join(f"NVIDIA H200, 143771, {143000 - i}\n" for i in range(4))
    fake_smi(bin_dir, four)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    note = (
        "this node has 4 GPU(s) (nvidia-smi: NVIDIA H200) but TP 8 x PP 1 needs 8; "
        "vLLM cannot start here alone. For per-node commands: qwenprep serve "
        f"{ov.resolve()} --nnodes 2 --gpus-per-node 4 --master-addr HEAD_NODE_IP"
    )
    assert note in _dry_run_notes(ov, "--tp", "8")
    # without --tp the layout rule (plan's and check's) fits the node: TP 4, the profile's
    # TP 8 said
    assert (
        "the model profile qwen3-coder-480b launches TP 8 with expert parallel; this layout is "
        "TP 4 with expert parallel (4 GPUs do not hold whole TP 8 x PP 1 replicas)"
    ) in _dry_run_notes(ov)
    assert not any("GPU(s)" in n for n in _dry_run_notes(ov, "--tp", "4"))
    assert not any(
        "GPU(s)" in n for n in _dry_run_notes(ov, "--nnodes", "2", "--gpus-per-node", "4")
    )
    # PP after -- counts: TP 4 x PP 2 needs 8
    notes = _dry_run_notes(ov, "--tp", "4", "--", "--pipeline-parallel-size", "2")
    assert any("but TP 4 x PP 2 needs 8" in n for n in notes)
    # eight GPUs: enough, no note; a broken nvidia-smi never fails the plan
    fake_smi(bin_dir, "".join(f"NVIDIA H200, 143771, {143000 - i}\n" for i in range(8)))
    assert not any("GPU(s)" in n for n in _dry_run_notes(ov))
    fake_smi(bin_dir, "", rc=9)
    assert not any("GPU(s)" in n for n in _dry_run_notes(ov))


def test_serve_takes_the_layout_plan_and_check_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a node with 4 GPUs, serve of a model whose profile sets no TP launches the layout plan
    and check name for those GPUs (one replica over them, EP for MoE: TP 4 + EP on the tiny
    Qwen3-Coder, whose 4 heads allow it), and says why. Before: serve launched TP 1 on one of
    the 4 GPUs while plan named TP 4 and check TP 1 x DP 4."""
    from fakes import fake_smi

    try:
        import pynvml  # noqa: F401

        pytest.skip("nvidia-ml-py is installed: the inventory would not ask nvidia-smi")
    except ImportError:
        pass
    bin_dir = tmp_path / "bin"
    fake_smi(bin_dir, "".join(f"NVIDIA H200, 143771, {143000 - i}\n" for i in range(4)))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    r = invoke("serve", str(TINY), "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    served = json.loads(r.stdout)
    argv = served["argv"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4", argv
    assert "--enable-expert-parallel" in argv, argv
    assert (
        "TP 4 with expert parallel: one replica over the GPUs: TP = GPUs / PP, of the 4 GPU(s) "
        "found; --tp N chooses another"
    ) in served["notes"]
    flags = ("--kv-memory", "1GiB", "--vllm-version", "0.32")
    c = invoke("check", str(TINY), "--no-engine", *flags, "--json")
    p = invoke("plan", str(TINY), *flags, "--json")
    check, plan = json.loads(c.stdout)["parallel"], json.loads(p.stdout)["parallel"]
    assert (check["tp"], check["dp"], check["ep"]) == (4, 1, True), check
    assert {k: plan[k] for k in check} == check
    # --tp given: that, and no note from the GPUs
    r = invoke("serve", str(TINY), "--dry-run", "--json", "--tp", "2")
    argv = json.loads(r.stdout)["argv"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2", argv
    assert not any("GPU(s) found" in n for n in json.loads(r.stdout)["notes"])


# ---------------------------------------------------------------- serve-plan.schema.json
def _plan_validator() -> Any:
    from qwenprep.util.schemas import validator

    return validator("serve-plan")


def _errors(obj: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in _plan_validator().iter_errors(obj)]


def test_dry_run_outputs_match_the_serve_plan_schema(tmp_path: Path) -> None:
    ov = _480b_overlay(tmp_path)
    runs = {
        "single": ("--vllm-python", VLLM_PY),
        "native": ("--nnodes", "2", "--gpus-per-node", "4", "--master-addr", "10.0.0.1"),
        "dp": ("--nnodes", "2", "--gpus-per-node", "8"),
        "ray": ("--nnodes", "2", "--gpus-per-node", "4", "--multinode-mode", "ray"),
    }
    for label, args in runs.items():
        r = invoke("serve", str(ov), "--dry-run", "--json", *args)
        assert r.exit_code == 0, (label, r.output)
        out = json.loads(r.stdout)
        assert _errors(out) == [], label
        assert (out["multinode_mode"] or "single") == label
    # a plain checkpoint (no digest, no guard) with vLLM's environment cleaned
    plain = tmp_path / "plain"
    shutil.copytree(TINY, plain)
    env_r = CliRunner().invoke(
        cli,
        [
            "serve",
            str(plain),
            "--dry-run",
            "--json",
            "--tp",
            "2",
            "--nnodes",
            "2",
            "--gpus-per-node",
            "1",
        ],
        env={"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"},
        catch_exceptions=False,
    )
    out = json.loads(env_r.stdout)
    assert out["digest"] is None and out["unset_env"] == ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"]
    assert all(n["guard"] == [] for n in out["nodes"])
    assert _errors(out) == []
    # no vLLM anywhere: engine null
    no_vllm = eng.build_launch_plan(ov, engine=None).to_dict()
    assert _errors({"schema_version": 1, "ok": True, "dry_run": True, **no_vllm}) == []
    # a refusal is the error object
    r = invoke("serve", str(TINY), "--max-model-len", "1m", "--dry-run", "--json")
    assert r.exit_code == 3 and _errors(json.loads(r.stdout)) == []


def test_the_serve_plan_schema_rejects_what_serve_never_prints(tmp_path: Path) -> None:
    ov = _480b_overlay(tmp_path)
    r = invoke("serve", str(ov), "--dry-run", "--json", "--nnodes", "2", "--gpus-per-node", "4")
    good = json.loads(r.stdout)
    assert _errors(good) == []
    for bad in (
        {**good, "max_model_len": "1048576"},  # a string
        {**good, "extra": 1},  # an unknown key
        {**good, "multinode_mode": None},  # nodes without a mode
        {**good, "nodes": [good["nodes"][1], good["nodes"][0]]},  # rank 0 must be the head
        {k: v for k, v in good.items() if k != "argv"},
        {**good, "ok": False},
    ):
        assert _errors(bad), bad
