"""Nothing runs code from a checkpoint, tokens never reach the output.

A copy of the tiny checkpoint whose config.json carries ``"auto_map"`` pointing at an
``evil.py`` beside it (which writes a marker file when imported): the engine readback, ``verify
--engine`` and dry-run launch plans must not import it, and the plan never contains
``--trust-remote-code`` unless the user wrote it after ``--`` (then a note says what it means).
A positive control shows the marker really appears when vLLM is told to trust the code, so the
absence of the marker means something.

Manifest names that climb out of an overlay are flagged (tests/robustness/test_faults.py,
test_manifest_naming_an_escaping_path_is_flagged); here the same case is watched with inotify
to show the file outside is never opened (index names: tests/util/test_safetensors_headers.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import QWENPREP_BIN, TINY, invoke
from fakes import OpenWatch
from hubserver import HubServer, hub_env
from qwenprep.checks.overlay import overlay_checks
from qwenprep.engines.vllm import core as vllm_core
from qwenprep.engines.vllm import engine as eng

VLLM_PY = os.environ.get("QWENPREP_VLLM_PYTHON") or sys.executable
INFO = vllm_core.discover(VLLM_PY)
HAVE_VLLM = INFO is not None and INFO.importable
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason=f"vLLM is not importable in {VLLM_PY}")
TOKEN = "hf_qwenprepSECURITYtestTOKEN0123456789"

EVIL_PY = """
from pathlib import Path
Path({marker!r}).write_text("evil.py was imported\\n")
from transformers import PretrainedConfig


class EvilConfig(PretrainedConfig):
    model_type = "qwen3_moe"
"""


def evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """(checkpoint, marker): the tiny bf16 checkpoint plus auto_map -> evil.EvilConfig."""
    ck = tmp_path / "evil-ckpt"
    shutil.copytree(TINY, ck)
    marker = tmp_path / "MARKER-evil-code-ran"
    (ck / "evil.py").write_text(EVIL_PY.format(marker=str(marker)))
    cfg = json.loads((ck / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (ck / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return ck, marker


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """Transformers' dynamic-module cache in tmp (so a run that did import evil.py leaves no
    trace elsewhere), nothing that enables remote code by environment."""
    env = {k: v for k, v in os.environ.items() if "TRUST_REMOTE_CODE" not in k}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf-modules")
    env["HF_HUB_OFFLINE"] = "1"
    return env


# ------------------------------------------------------------------ remote code


@needs_vllm
def test_readback_and_verify_engine_never_import_checkpoint_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ck, marker = evil_checkpoint(tmp_path)
    for k, v in isolated_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    checks = eng.readback_checks(ck, python=VLLM_PY)
    assert not marker.exists(), "the readback imported evil.py from the checkpoint"
    by = {c.id: c for c in checks}
    rc = by["engine.remote_code"]
    assert rc.status == "warn"
    assert rc.message.startswith(
        "config.json asks for custom code (auto_map: AutoConfig -> "
        "evil.EvilConfig, AutoModelForCausalLM -> evil.EvilModel); "
        "none of it ran: the readback used trust_remote_code=False "
        "and loaded transformers."
    )
    assert "Qwen3MoeConfig" in rc.message and "evil" not in rc.message.split("loaded ")[1]
    # the rest of the readback still ran and agrees with config.json
    assert [c.id for c in checks if c.status == "fail"] == []
    assert by["engine.max_model_len"].status == "pass"

    r = subprocess.run(
        [str(QWENPREP_BIN), "verify", str(ck), "--engine", "--json", "--vllm-python", VLLM_PY],
        capture_output=True,
        text=True,
        timeout=300,
        env=isolated_env(tmp_path),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert {c["id"]: c["status"] for c in out["checks"]}["engine.remote_code"] == "warn"
    assert not marker.exists(), "verify --engine imported evil.py from the checkpoint"


@needs_vllm
def test_positive_control_trusting_the_code_does_run_it(tmp_path: Path) -> None:
    """Without this, 'no marker' could just mean evil.py is never reachable."""
    ck, marker = evil_checkpoint(tmp_path)
    code = (
        "import sys\nfrom vllm.config import ModelConfig\n"
        "try:\n    ModelConfig(model=sys.argv[1], trust_remote_code=True)\n"
        "except Exception as e:\n    print('refused:', type(e).__name__)\n"
    )
    subprocess.run(
        [VLLM_PY, "-c", code, str(ck)],
        capture_output=True,
        text=True,
        timeout=300,
        env=isolated_env(tmp_path),
    )
    assert marker.read_text() == "evil.py was imported\n"


def test_launch_plans_never_add_trust_remote_code(tmp_path: Path) -> None:
    ck, marker = evil_checkpoint(tmp_path)
    r = invoke("serve", str(ck), "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert "--trust-remote-code" not in plan["argv"]
    assert "trust-remote-code" not in plan["command"]
    assert all("trust-remote-code" not in n for n in plan["notes"])
    for fake in ("0.10.0", "0.11.1", "0.32.0"):  # every version's plan, multi-node included
        p = eng.build_launch_plan(
            ck,
            engine=vllm_core.EngineInfo(
                python="/opt/vllm/bin/python",
                version=fake,
                distribution="vllm",
                importable=True,
                transformers=None,
                torch=None,
                capabilities=vllm_core.capabilities_for(vllm_core.parse_version(fake)),
            ),
            tp=4,
            nnodes=2,
            gpus_per_node=2,
        )
        every = [p.argv, *(n.argv for n in p.nodes)]
        assert all("--trust-remote-code" not in argv for argv in every)
    assert not marker.exists()


def test_trust_remote_code_after_dashdash_is_passed_and_said(tmp_path: Path) -> None:
    ck, marker = evil_checkpoint(tmp_path)
    r = invoke("serve", str(ck), "--dry-run", "--json", "--", "--trust-remote-code")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["argv"][-1] == "--trust-remote-code"
    note = (
        f"--trust-remote-code was given after --: vLLM will import and run Python files "
        f"from {ck} (config.json auto_map); qwenprep never adds this flag itself"
    )
    assert note in plan["notes"]
    assert f"note: {note}" in r.stderr
    assert not marker.exists()  # a dry run runs nothing


# ------------------------------------------------------------------ tokens


def _no_token(*texts: str) -> None:
    for t in texts:
        assert TOKEN not in t
        assert TOKEN[3:15] not in t  # not even a fragment of it


@pytest.mark.parametrize("command", [["verify"], ["verify", "--json"], ["serve", "--dry-run"]])
def test_uncached_repo_names_fetch_and_never_shows_the_token(
    tmp_path: Path, command: list[str]
) -> None:
    hub = HubServer().start()  # no repos: nothing is served, and no request leaves this host
    try:
        env = hub_env(hub, tmp_path / "hf", HF_TOKEN=TOKEN)
        r = subprocess.run(
            [str(QWENPREP_BIN), command[0], "Org/Not-Cached", *command[1:]],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    finally:
        hub.stop()
    assert r.returncode == 3, r.stderr
    assert "qwenprep fetch Org/Not-Cached" in r.stderr
    assert (
        f"Org/Not-Cached is not in the Hugging Face cache ({tmp_path / 'hf' / 'hub'})" in r.stderr
    )
    if "--json" in command:
        err = json.loads(r.stdout)["error"]
        assert err["exit_code"] == 3 and "qwenprep fetch Org/Not-Cached" in err["hint"]
    _no_token(r.stdout, r.stderr)


def test_plan_of_an_unknown_hub_repo_never_shows_the_token(tmp_path: Path) -> None:
    """plan reads a repo that is not downloaded from the Hub (with the token as a header):
    the refusal names qwenprep fetch, and the token is in no output."""
    hub = HubServer().start()
    try:
        env = hub_env(hub, tmp_path / "hf", HF_TOKEN=TOKEN)
        for extra in ([], ["--json"]):
            r = subprocess.run(
                [str(QWENPREP_BIN), "plan", "Org/Not-On-The-Hub", "--kv-memory", "1GiB", *extra],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
            )
            assert r.returncode == 3, r.stderr
            assert "qwenprep fetch Org/Not-On-The-Hub" in r.stderr
            assert "cannot read config.json and safetensors headers from " + hub.url in r.stderr
            _no_token(r.stdout, r.stderr)
        assert hub.auth_headers, "the token was not even sent: this test would prove nothing"
        assert all(h == f"Bearer {TOKEN}" for h in hub.auth_headers)
    finally:
        hub.stop()


# ------------------------------------------------------------------ manifest paths


def test_manifest_names_outside_the_overlay_are_never_opened(tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel.safetensors"
    shutil.copyfile(TINY / "model.safetensors", sentinel)
    ov = tmp_path / "ov"
    assert invoke("patch", str(TINY), "-c", "1m", "-o", str(ov)).exit_code == 0
    mp = ov / ".qwenprep" / "manifest.json"
    m = json.loads(mp.read_text())
    size = sentinel.stat().st_size
    m["files"] += [
        {"name": "../sentinel.safetensors", "size": size},
        {"name": str(sentinel), "size": size},
        {"name": "x/../../sentinel.safetensors", "size": size},
    ]
    mp.write_text(json.dumps(m))
    watch = OpenWatch(sentinel)
    try:
        checks = {c.id: c for c in overlay_checks(ov)}
        r = invoke("verify", str(ov), "--json")
        r2 = invoke("verify", str(ov), "--deep", "--json")
        assert watch.events() == 0, "a file outside the overlay was opened"
    finally:
        watch.close()
    assert checks["overlay.manifest"].status == "fail"
    assert r.exit_code == 1 and r2.exit_code == 1
    assert not json.loads(r.stdout)["ok"]
