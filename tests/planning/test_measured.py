"""The user's own GPUs (issue 23 item 4): the past-native request `serve` makes after ready is
kept with the GPU, layout and engine version, and a later `plan` for the same model, GPU and
layout shows it as "measured here" beside its estimate, the band narrowed toward it.

The request goes to a local HTTP server that answers as vLLM's /v1/completions streams
(tests/sse_stub.py: a real socket, the real proof client); no vLLM is started here
(tests/engines/test_proof.py serves one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
from sse_stub import answering

from conftest import REPO, TINY, invoke
from qwenprep.cli.serving import _run_proofs
from qwenprep.engines.proof import proof_request, run_proof
from qwenprep.engines.vllm import core as vllm_core
from qwenprep.engines.vllm import engine as eng
from qwenprep.planning import measured

PLAN_SCHEMA = json.loads((REPO / "schemas" / "plan.schema.json").read_text())
READY_SCHEMA = json.loads((REPO / "schemas" / "serve-plan.schema.json").read_text())


@pytest.fixture
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "hf" / "qwenprep" / "measurements.jsonl"
    monkeypatch.setenv(measured.ENV_FILE, str(path))
    monkeypatch.delenv(measured.ENV_OFF, raising=False)
    return path


@pytest.fixture
def server() -> Iterator[str]:
    """vLLM's streamed completion, as far as the proof reads it: one token."""
    httpd, url = answering(200, [{"choices": [{"text": "x", "index": 0}]}])
    yield url
    httpd.shutdown()


@pytest.fixture
def overlay(tmp_path: Path) -> Path:
    ov = tmp_path / "ov"
    r = invoke("patch", str(TINY), "--context", "1m", "--out", str(ov))
    assert r.exit_code == 0, r.output
    return ov


def _serve_plan(model: Path, url: str, *extra: str) -> Any:
    """serve's own plan for MODEL (vLLM 0.32's argv), pointed at URL."""
    info = vllm_core.EngineInfo(
        "x", "0.32.0", "vllm", True, None, None, vllm_core.capabilities_for((0, 32, 0))
    )
    port = int(url.rsplit(":", 1)[1])
    return eng.build_launch_plan(
        model, engine=info, host="127.0.0.1", port=port, extra_args=list(extra)
    )


def _served(plan: Any) -> dict[str, Any]:
    req = proof_request(plan.model_path, plan.max_model_len)
    assert req is not None
    result = run_proof(plan.base_url, plan.served_model_name, req, timeout=60)
    assert result["ok"], result
    return result


def _plan(model: Path, *args: str) -> dict[str, Any]:
    r = invoke("plan", str(model), "--context", "256k", "--json", *args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    if "measured" in out:
        jsonschema.validate(out["measured"], PLAN_SCHEMA["properties"]["measured"])
    return dict(out)


def test_a_served_request_appears_in_a_later_plan_for_the_same_gpu_and_layout(
    records: Path, server: str, overlay: Path
) -> None:
    plan = _serve_plan(overlay, server)
    result = _served(plan)
    kept = measured.record_proof(plan, result, gpu="NVIDIA H200")
    assert kept == {"recorded": True, "file": str(records), "gpu": "NVIDIA H200", "gpus": 1}
    line = json.loads(records.read_text().splitlines()[0])
    assert line["prompt_tokens"] == result["prompt_tokens"]
    assert (line["tp"], line["pp"], line["dp"], line["engine_version"]) == (1, 1, 1, "0.32.0")

    out = _plan(overlay, "--gpu", "H200", "--gpus", "1")
    m = out["measured"]
    assert m["seconds_to_first_token"] == result["seconds_to_first_token"]
    assert m["prompt_tokens"] == result["prompt_tokens"] and m["context"] == 256 * 1024
    floor_n = m["estimate_at_prompt"]["seconds_at_peak"]
    assert m["ratio_to_floor"] == pytest.approx(result["seconds_to_first_token"] / floor_n, 1e-4)
    floor = out["prefill"]["seconds_at_peak"]
    assert m["seconds_scaled"] == pytest.approx(floor * m["ratio_to_floor"], 1e-4)
    lo, hi = m["band"]
    assert lo == pytest.approx(max(floor, 0.8 * m["seconds_scaled"]), 1e-4)
    assert hi == pytest.approx(max(floor, 1.25 * m["seconds_scaled"]), 1e-4)

    text = invoke("plan", str(overlay), "--context", "256k", "--gpu", "H200", "--gpus", "1")
    assert "measured here" in text.stdout
    assert f"to first token at {result['prompt_tokens']:,} tokens" in text.stdout
    assert "NVIDIA H200 x 1, vllm 0.32.0" in text.stdout

    # the unpatched checkpoint is the same model (its length keys aside)
    assert "measured" in _plan(TINY, "--gpu", "H200", "--gpus", "1")
    # another GPU, another layout, another KV-cache dtype: no record matches
    assert "measured" not in _plan(overlay, "--gpu", "B200", "--gpus", "1")
    assert "measured" not in _plan(overlay, "--gpu", "H200", "--gpus", "2")
    assert "measured" not in _plan(
        overlay, "--gpu", "H200", "--gpus", "1", "--kv-cache-dtype", "fp8"
    )
    other = invoke("plan", str(overlay), "--context", "256k", "--gpu", "B200", "--gpus", "1")
    assert "measured here" not in other.stdout


def test_a_layout_is_read_from_the_served_argv(records: Path, server: str, overlay: Path) -> None:
    plan = _serve_plan(overlay, server, "--pipeline-parallel-size", "2")
    measured.record_proof(plan, _served(plan), gpu="NVIDIA H200")
    assert "measured" not in _plan(overlay, "--gpu", "H200", "--gpus", "1")
    out = _plan(overlay, "--gpu", "H200", "--gpus", "2", "--pp", "2")
    assert out["measured"]["layout"] == {"tp": 1, "pp": 2, "dp": 1, "ep": False}
    assert out["measured"]["gpus"] == 2


def test_serve_keeps_the_proof_unless_told_not_to(
    records: Path, server: str, overlay: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _serve_plan(overlay, server)
    req = proof_request(plan.model_path, plan.max_model_len)
    out = _run_proofs(plan, None, req, 60, True)
    here = measured.machine_gpu("vllm")
    assert out["measurement"] == {"recorded": True, "file": str(records), "gpu": here, "gpus": 1}
    ready = {"schema_version": 1, "ok": True, "ready": True, "url": plan.base_url}
    jsonschema.validate({**ready, "model": "m", "max_model_len": 1, "pid": 1, **out}, READY_SCHEMA)
    [line] = records.read_text().splitlines()
    assert json.loads(line)["gpu"] == here
    if here == "cpu":  # this machine's record is for its CPU: an H200 plan does not show it
        assert json.loads(line)["cpu"]
        assert "measured" not in _plan(overlay, "--gpu", "H200", "--gpus", "1")

    assert "measurement" not in _run_proofs(plan, None, req, 60, True, record=False)
    monkeypatch.setenv(measured.ENV_OFF, "1")
    off = _run_proofs(plan, None, req, 60, True)
    assert off["measurement"] == {"recorded": False, "why": "QWENPREP_NO_RECORD is set"}
    assert len(records.read_text().splitlines()) == 1
    assert "--no-record" in invoke("serve", "--help").stdout


def test_a_record_that_cannot_be_written_is_said_and_serve_goes_on(
    tmp_path: Path, server: str, overlay: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(measured.ENV_FILE, str(blocker / "measurements.jsonl"))
    plan = _serve_plan(overlay, server)
    kept = measured.record_proof(plan, _served(plan), gpu="NVIDIA H200")
    assert kept["recorded"] is False and "measurements.jsonl" in kept["why"]
    assert measured.describe_kept(kept).startswith("measured: not kept (")


def test_bad_lines_are_skipped_without_a_traceback(
    records: Path, server: str, overlay: Path
) -> None:
    plan = _serve_plan(overlay, server)
    measured.record_proof(plan, _served(plan), gpu="NVIDIA H200")
    good = records.read_text()
    bad = [
        "not json",
        "[1, 2]",
        json.dumps({"model_id": "x"}),
        good.replace('"seconds_to_first_token":', '"seconds_to_first_token":-'),
        good.replace('"tp":1', '"tp":true'),
        "\x00\xff",
    ]
    records.write_text("\n".join(bad) + "\n" + good + '{"truncated": ')
    out = _plan(overlay, "--gpu", "H200", "--gpus", "1")
    assert out["measured"]["records_matching"] == 1
    assert out["measured"]["lines_skipped"] == 7
    # a records "file" that is a directory holds no records
    records.unlink()
    records.mkdir()
    assert "measured" not in _plan(overlay, "--gpu", "H200", "--gpus", "1")
