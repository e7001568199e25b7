"""The gate against the vLLM people deploy: vLLM 0.34.0's CUDA wheel, on this GPU-less machine.

./dev test installs it into REPO/.venv-vllm034 without its GPU kernel packages
(tools/vllm_requirements.py); $QWENPREP_VLLM034_PYTHON names another interpreter that has it.
The CUDA build detects no platform without a GPU and its parser would end in "Failed to infer
device type"; qwenprep's probe (and only the probe) then uses vLLM's CPU platform
(vllm_probe.cpu_platform_without_gpu). `check` and `serve --dry-run` must pass a correct 1M
overlay and refuse a trap, with vLLM 0.34's own parser and config code. The probe (one import
of vLLM 0.34, about 40 s here) is paid once: the module fixture asks about every plan at once
(gate.probe_plans) and the commands find the answers by the same fingerprint.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, TINY, invoke
from qwenprep.engines.vllm import core as vllm_core
from qwenprep.engines.vllm import engine as eng
from qwenprep.engines.vllm import gate
from qwenprep.engines.vllm.core import PROBE

V034 = os.environ.get("QWENPREP_VLLM034_PYTHON") or str(REPO / ".venv-vllm034" / "bin" / "python")
pytestmark = [
    pytest.mark.engine,
    pytest.mark.vllm034,
    pytest.mark.skipif(
        not Path(V034).is_file(),
        reason=f"vLLM 0.34.0's interpreter {V034} is absent (./dev test installs the CUDA wheel "
        "into .venv-vllm034; QWENPREP_NO_VLLM034=1 skips it)",
    ),
]

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 262144}
CASES: dict[str, list[str]] = {
    "plain": [],
    "habitual-utilization": ["--gpu-memory-utilization", "0.9"],
    "rope_scaling-removed": ["--hf-overrides", '{"rope_scaling": null}'],
    "rope-without-theta": ["--hf-overrides", json.dumps({"rope_scaling": YARN})],
}


def _run(ov: Path, extra: list[str]) -> tuple[Any, Any]:
    c = invoke(
        "check", str(ov), "--json", "--kv-memory", "2GiB", "--vllm-python", V034, "--", *extra
    )
    s = invoke("serve", str(ov), "--dry-run", "--json", "--vllm-python", V034, "--", *extra)
    return c, s


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any]]:
    ov = tmp_path_factory.mktemp("v034") / "ov"
    r = invoke("patch", str(TINY), "--context", "1m", "--out", str(ov), "--json")
    assert r.exit_code == 0, r.output
    info = vllm_core.discover(V034)
    assert info is not None and info.version == "0.34.0" and info.distribution == "vllm", info
    plans = [
        eng.build_launch_plan(ov, engine=info, extra_args=a, offline_gate=False)
        for a in CASES.values()
    ]
    gate.probe_plans(plans, V034)  # one import of vLLM 0.34 for every case
    return {name: _run(ov, extra) for name, extra in CASES.items()}


def _checks(result: Any) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in json.loads(result.stdout)["checks"]}


def test_the_cuda_wheel_judges_a_correct_1m_overlay(answers: dict[str, tuple[Any, Any]]) -> None:
    c, s = answers["plain"]
    assert (c.exit_code, s.exit_code) == (0, 0), (c.output, s.output)
    checks = _checks(c)
    # vLLM 0.34 itself parsed the argv and read the config back (no offline reading)
    judged = [x for x in checks.values() if x["id"].startswith("engine.")]
    assert judged and all("offline" not in x["message"] for x in judged), judged
    assert any("0.34.0" in x["message"] for x in judged), judged
    argv = json.loads(s.stdout)["argv"]
    assert "1048576" in argv
    # the CUDA build's own console script, as vLLM's docs run it (not a python -c one-liner)
    assert argv[:2] == [str(Path(V034).parent / "vllm"), "serve"], argv
    # 0.34 sizes the KV cache after warmup at utilisation 1.0: serve passes none of its own
    assert not any(a.startswith("--gpu-memory-utilization") for a in argv), argv
    assert checks["engine.flags"]["status"] == "pass"


def test_a_habitual_utilization_passes_with_a_warning(
    answers: dict[str, tuple[Any, Any]],
) -> None:
    c, s = answers["habitual-utilization"]
    assert (c.exit_code, s.exit_code) == (0, 0), (c.output, s.output)
    warn = _checks(c)["engine.flags"]
    assert warn["status"] == "warn"
    assert warn["message"].startswith("--gpu-memory-utilization 0.9 caps vLLM 0.34's KV cache")
    assert any("caps vLLM 0.34" in n for n in json.loads(s.stdout)["notes"])


@pytest.mark.parametrize("trap", ["rope_scaling-removed", "rope-without-theta"])
def test_the_cuda_wheel_refuses_a_trap(answers: dict[str, tuple[Any, Any]], trap: str) -> None:
    c, s = answers[trap]
    assert (c.exit_code, s.exit_code) == (1, 3), (c.output, s.output)
    failed = [x for x in _checks(c).values() if x["status"] == "fail"]
    assert any(x["id"] == "engine.rope_theta" for x in failed), failed
    assert "rope_theta" in json.loads(s.stdout)["error"]["message"]


# In vLLM 0.34.0's own interpreter: the probe's platform choice, three ways. The 0.10 way swaps
# in a resolver shaped like vLLM 0.10.0's resolve_current_platform_cls_qualname
# (vllm/platforms/__init__.py, read from the 0.10.0 wheel): no explicit CPU target, and its
# cpu_platform_plugin says CPU only when "cpu" is in the installed version string (or on macOS),
# so VLLM_TARGET_DEVICE=cpu selects nothing there.
PLATFORM_SCRIPT = """
import importlib.metadata as md, json, os, sys
sys.path.insert(0, sys.argv[1])
import vllm_probe
import vllm.platforms as p
from vllm.config import DeviceConfig
UNSPECIFIED = "vllm.platforms.interface.UnspecifiedPlatform"

def cpu_010():
    cpu = "cpu" in md.version("vllm") or sys.platform.startswith("darwin")
    return "vllm.platforms.cpu.CpuPlatform" if cpu else None

def resolve_010():
    plugins = (p.cuda_platform_plugin, p.rocm_platform_plugin, cpu_010)
    found = [q for q in (f() for f in plugins) if q]
    return found[0] if len(found) == 1 else UNSPECIFIED

out = {}
for way in ("user-cuda", "0.34", "0.10"):
    p._current_platform = None
    os.environ.pop("VLLM_TARGET_DEVICE", None)
    if way == "user-cuda":
        os.environ["VLLM_TARGET_DEVICE"] = "cuda"
    if way == "0.10":
        p.resolve_current_platform_cls_qualname = resolve_010
    how = vllm_probe.cpu_platform_without_gpu()
    try:
        device = DeviceConfig().device_type
    except RuntimeError as e:
        device = str(e)
    out[way] = [how, device]
print(json.dumps(out))
"""


def test_the_probe_picks_the_cpu_platform_as_each_version_allows(tmp_path: Path) -> None:
    """Issue 19, "the CUDA builds, no GPU needed to judge": on a host without a GPU the CUDA
    wheel's parser ends in "Failed to infer device type" (DeviceConfig). The probe (only the
    probe) picks vLLM's CPU platform: on 0.34 by VLLM_TARGET_DEVICE=cpu, which vLLM's own
    resolver honours; where the resolver ignores it (0.10.0, whose CPU detection reads only the
    version string) by installing CpuPlatform as vllm.platforms' lazily resolved
    _current_platform. A VLLM_TARGET_DEVICE the user set is left alone."""
    r = subprocess.run(
        [V034, "-c", PLATFORM_SCRIPT, str(PROBE.parent)],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "VLLM_TARGET_DEVICE"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["user-cuda"][0] is None and "Failed to infer device type" in got["user-cuda"][1]
    assert got["0.34"] == ["VLLM_TARGET_DEVICE=cpu", "cpu"], got
    assert got["0.10"] == ["vllm.platforms.cpu.CpuPlatform", "cpu"], got
