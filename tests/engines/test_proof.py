"""After ready, `serve` shows that a prompt past the native window runs: the real vLLM (CPU
build) serves the demo's small-native variant of the tiny checkpoint (same weights, a 4,096-token
native window) patched to 16K with YaRN x4, through the console script, and `serve --json`
prints the proof and the engine's own KV figure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sse_stub import answering as _answering

from conftest import QWENPREP_BIN, REPO, TINY, invoke
from qwenprep.engines import proof as pf
from qwenprep.engines.vllm import core as vllm_core
from qwenprep.engines.vllm import server as srv
from qwenprep.errors import UsageError
from qwenprep.ops.demo import SMALL_NATIVE, small_native_variant

VLLM_PY = os.environ.get("QWENPREP_VLLM_PYTHON") or sys.executable
INFO = vllm_core.discover(VLLM_PY)
HAVE_VLLM = INFO is not None and INFO.importable


@pytest.fixture
def small_overlay(tmp_path: Path) -> Path:
    variant = small_native_variant(TINY, tmp_path / "native4k")
    ov = tmp_path / "native4k-x4"
    r = invoke("patch", str(variant), "--context", str(SMALL_NATIVE * 4), "--out", str(ov))
    assert r.exit_code == 0, r.output
    return ov


def test_the_variant_changes_only_the_native_window(tmp_path: Path) -> None:
    variant = small_native_variant(TINY, tmp_path / "v")
    a = json.loads((TINY / "config.json").read_text())
    b = json.loads((variant / "config.json").read_text())
    assert b.pop("max_position_embeddings") == SMALL_NATIVE
    a.pop("max_position_embeddings")
    assert a == b
    assert (variant / "model.safetensors").resolve() == (TINY / "model.safetensors").resolve()


def test_the_request_goes_past_native_and_fits(small_overlay: Path) -> None:
    req = pf.proof_request(small_overlay, SMALL_NATIVE * 4)
    assert req is not None
    assert req.native == SMALL_NATIVE
    assert SMALL_NATIVE < req.prompt_tokens < SMALL_NATIVE * 4
    ids = pf.prompt_ids(req.prompt_tokens, req.vocab_size)
    assert len(ids) == req.prompt_tokens and 0 < min(ids) and max(ids) < req.vocab_size
    # a served length within the native window has nothing past native to show
    assert pf.proof_request(TINY, 4096) is None
    # --proof-tokens must be past native and leave room for one output token
    for bad in (SMALL_NATIVE, SMALL_NATIVE * 4):
        with pytest.raises(UsageError, match="--proof-tokens"):
            pf.proof_request(small_overlay, SMALL_NATIVE * 4, bad)
    assert pf.proof_request(small_overlay, SMALL_NATIVE * 4, SMALL_NATIVE + 1) is not None


def _ready_line(proc: subprocess.Popen[str], log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 900
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if line.strip():
            return dict(json.loads(line))
        assert proc.poll() is None, f"serve exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no ready line in 900 s"


@pytest.mark.engine
@pytest.mark.slow
def test_serve_runs_a_prompt_past_native_and_reports_it(
    small_overlay: Path, tmp_path: Path
) -> None:
    if not HAVE_VLLM:
        pytest.skip(f"vLLM is not importable in {VLLM_PY}")
    port = srv.free_port()
    log = tmp_path / "serve.log"
    env = dict(os.environ, QWENPREP_VLLM_PYTHON=VLLM_PY, VLLM_CPU_KVCACHE_SPACE="1")
    argv = [str(QWENPREP_BIN), "serve", str(small_overlay), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--ready-timeout", "900", "--json"]
    with open(log, "w") as errf:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errf, text=True, env=env)
    try:
        ready = _ready_line(proc, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert ready["ready"] is True and ready["max_model_len"] == SMALL_NATIVE * 4
    past = ready["proof"]["past_native"]
    assert past["ok"] is True, past
    assert past["native"] == SMALL_NATIVE and past["prompt_tokens"] > SMALL_NATIVE
    assert 0 < past["seconds_to_first_token"] <= past["seconds_total"]
    # the engine's own KV figure, read from its /metrics
    kv = ready["engine_kv"]
    assert kv["tokens"] == kv["num_gpu_blocks"] * kv["block_size"] > SMALL_NATIVE * 4
    schema = json.loads((REPO / "schemas" / "serve-plan.schema.json").read_text())
    jsonschema.validate(ready, schema)
    err = log.read_text()
    assert f"past native: a {past['prompt_tokens']:,}-token prompt" in err
    assert "first token after" in err


# ------------------------------------------------- what the proof makes of a server's answers
REQ = pf.ProofRequest(native=100, prompt_tokens=120, vocab_size=50)
TOKEN = {"choices": [{"text": "x", "index": 0}]}


@pytest.mark.parametrize(
    ("status", "events", "error"),
    [
        (400, [], "HTTP 400"),
        (200, [], "without a token"),
        (200, [TOKEN, {"choices": [], "usage": {"prompt_tokens": 7}}], "counted 7 prompt"),
    ],
)
def test_a_failed_or_short_answer_is_not_a_proof(
    status: int, events: list[dict[str, Any]], error: str
) -> None:
    server, url = _answering(status, events)
    try:
        out = pf.run_proof(url, "m", REQ, timeout=30)
    finally:
        server.shutdown()
    assert out["ok"] is False and error in out["error"]
    assert "FAILED" in pf.describe(out)


def test_a_full_answer_is_a_proof() -> None:
    server, url = _answering(200, [TOKEN, {"choices": [], "usage": {"prompt_tokens": 120}}])
    try:
        out = pf.run_proof(url, "m", REQ, timeout=30)
    finally:
        server.shutdown()
    assert out["ok"] is True and out["seconds_to_first_token"] is not None
