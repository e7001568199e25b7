"""`qwenprep demo`: the main job end to end on the embedded tiny checkpoint. Once with the real
vLLM (CPU build) through the console script, once without serving (fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import QWENPREP_BIN, TINY, invoke, tree_state
from qwenprep.engines.vllm import core as vllm_core

VLLM_PY = os.environ.get("QWENPREP_VLLM_PYTHON") or sys.executable
INFO = vllm_core.discover(VLLM_PY)
HAVE_VLLM = INFO is not None and INFO.importable

TITLES = [
    "locate",
    "verify (headers)",
    "patch --context 1m",
    "validate",
    "plan (2 GiB KV, TP 1)",
    "engine readback + serve",
    "serve past native",
    "revert",
]
SERVING = ("engine readback + serve", "serve past native")


def _common(out: dict[str, Any], titles: list[str], workdir: Path) -> dict[str, list[str]]:
    assert out["schema_version"] == 1 and out["ok"] is True
    steps = out["steps"]
    assert [s["title"] for s in steps] == titles
    assert [(s["title"], s["status"]) for s in steps] == [(t, "pass") for t in titles]
    lines = {s["title"]: s["lines"] for s in steps}
    assert lines["locate"] == [f"embedded checkpoint {TINY}"]
    assert lines["patch --context 1m"][0] == (
        f"created overlay {workdir / 'tiny-qwen3-coder-1m'}: 1048576 tokens, YaRN factor 4, "
        f"{len([p for p in TINY.iterdir() if p.name != 'config.json'])} files linked"
    )
    assert lines["plan (2 GiB KV, TP 1)"][0].startswith(
        "KV cache size: 4,194,304 tokens, maximum concurrency for 1,048,576 tokens per request: "
        "4.00x"
    )
    assert lines["revert"][-1].endswith("unchanged")
    assert not (workdir / "tiny-qwen3-coder-1m").exists()
    return lines


def test_demo_without_serving(tmp_path: Path) -> None:
    before = tree_state(TINY)
    r = invoke("demo", "--no-serve", "--json", "--workdir", str(tmp_path))
    assert r.exit_code == 0, r.output
    titles = [t for t in TITLES if t not in SERVING]
    _common(json.loads(r.stdout), titles, tmp_path)
    assert tree_state(TINY) == before


@pytest.mark.engine
@pytest.mark.skipif(not HAVE_VLLM, reason=f"vLLM is not importable in {VLLM_PY}")
def test_demo_serves_the_tiny_overlay_at_1m(tmp_path: Path) -> None:
    before = tree_state(TINY)
    env = dict(os.environ, QWENPREP_VLLM_PYTHON=VLLM_PY)
    env.pop("VLLM_ALLOW_LONG_MAX_MODEL_LEN", None)
    p = subprocess.run(
        [str(QWENPREP_BIN), "demo", "--json", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1800,  # a hang guard only: two vLLM starts on a loaded 2-core machine
        env=env,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    lines = _common(json.loads(p.stdout), TITLES, tmp_path)
    serve = lines["engine readback + serve"]
    assert "[pass] engine.max_model_len: max model length: vLLM uses 1048576" in serve
    assert "/v1/models: tiny-qwen3-coder max_model_len 1048576" in serve
    assert any(
        ln.startswith("$ ")
        and ln.endswith(f"--max-model-len 1048576 --host=127.0.0.1 --port {ln.split()[-1]}")
        for ln in serve
    )
    tool = [ln for ln in serve if ln.startswith("tool_choice required: ")]
    assert len(tool) == 1 and tool[0].endswith(" tool call(s), first: get_weather")
    assert not tool[0].startswith("tool_choice required: 0 ")
    assert serve[-1] == "stopped (exit 0)"
    past = lines["serve past native"]
    assert past[0].startswith("tiny-qwen3-coder-native4k: the same weights with a 4,096-token")
    assert any(ln.startswith("/v1/models: ") and ln.endswith(" max_model_len 16384") for ln in past)
    ran = [ln for ln in past if ln.startswith("past native: ")]
    assert len(ran) == 1 and "(native window 4,096) ran; first token after " in ran[0], past
    assert past[-1] == "stopped (exit 0)"
    assert not (tmp_path / "tiny-qwen3-coder-native4k").exists()
    assert tree_state(TINY) == before


def test_a_file_as_workdir_is_refused_before_any_step(tmp_path: Path) -> None:
    f = tmp_path / "a-file"
    f.write_text("mine\n")
    r = invoke("demo", "--no-serve", "--json", "--workdir", str(f))
    assert r.exit_code == 2, r.output
    out = json.loads(r.stdout)
    assert "is a file, not a directory" in out["error"]["message"]
    assert f.read_text() == "mine\n"


@pytest.mark.parametrize("name", ["tiny-qwen3-coder-1m", "tiny-qwen3-coder-native4k"])
def test_the_demo_never_replaces_what_it_did_not_make(tmp_path: Path, name: str) -> None:
    """Hostile pass: an overlay the user made at WORKDIR/tiny-qwen3-coder-1m was replaced and
    then removed by the demo (and a directory at the past-native variant's name was deleted).
    The demo now refuses before any step, naming what is there."""
    theirs = tmp_path / name
    if name.endswith("-1m"):
        assert invoke("patch", str(TINY), "--context", "512k", "--out", str(theirs)).exit_code == 0
    else:
        theirs.mkdir()
        (theirs / "notes.txt").write_text("mine\n")
    before = tree_state(theirs)
    r = invoke("demo", "--no-serve", "--json", "--workdir", str(tmp_path))
    assert r.exit_code == 2, r.output
    out = json.loads(r.stdout)
    assert name in out["error"]["message"] and "never replaces" in out["error"]["message"]
    assert tree_state(theirs) == before
