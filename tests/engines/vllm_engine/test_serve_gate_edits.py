"""serve refuses what check fails on an overlay: a config.json edited after qwenprep wrote it
(the overlay's digest, which the multi-node guard compares, no longer says what would be served)
and a Qwen3.5 overlay whose M-RoPE sections were dropped (vLLM would build a 1-D rotary
embedding). Both used to be a note and exit 0 in `serve --dry-run`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from conftest import EXAMPLES, QWENPREP_BIN

NO_VLLM = "/usr/bin/python3"  # the gate judges offline: no 8 s probe


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, QWENPREP_VLLM_PYTHON=NO_VLLM)
    return subprocess.run(
        [str(QWENPREP_BIN), *args], capture_output=True, text=True, timeout=300, env=env
    )


def _overlay(tmp_path: Path, name: str) -> Path:
    src = tmp_path / name
    shutil.copytree(EXAMPLES / name, src)
    out = tmp_path / f"{name}-1m"
    r = _run("patch", str(src), "-c", "1m", "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_serve_and_its_digest_guard_refuse_an_edited_overlay(tmp_path: Path) -> None:
    ov = _overlay(tmp_path, "tiny-qwen3-coder")
    digest = json.loads((ov / ".qwenprep" / "manifest.json").read_text())["digest"]
    assert _run("serve", str(ov), "--dry-run", "--expect-digest", digest).returncode == 0
    cfg = json.loads((ov / "config.json").read_text())
    cfg["rms_norm_eps"] = 0.5  # passes every invariant; still not what qwenprep wrote
    (ov / "config.json").write_text(json.dumps(cfg, indent=2))
    for extra in ([], ["--expect-digest", digest]):
        r = _run("serve", str(ov), "--dry-run", "--json", *extra)
        assert r.returncode == 3, r.stdout
        err = json.loads(r.stdout)["error"]
        assert "was changed after qwenprep wrote it" in err["message"]
        assert f"qwenprep revert {ov} --force" in err["hint"]
    r = _run("check", str(ov), "--no-engine", "--kv-memory", "1GiB", "--json")
    assert r.returncode == 1  # the same verdict as check


def test_serve_refuses_a_qwen35_overlay_without_its_mrope_sections(tmp_path: Path) -> None:
    ov = _overlay(tmp_path, "tiny-qwen3.5-moe")
    cfg = json.loads((ov / "config.json").read_text())
    del cfg["text_config"]["rope_parameters"]["mrope_section"]
    (ov / "config.json").write_text(json.dumps(cfg, indent=2))
    for args in (["--dry-run"], ["--emit", "k8s"]):
        r = _run("serve", str(ov), *args)
        assert r.returncode == 3, r.stdout + r.stderr
        assert "[invariant.mrope_section]" in r.stderr
