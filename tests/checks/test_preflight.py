"""qwenprep check: every pre-flight check as data, the schema it validates against, and the
two failures the project exists to catch before a deploy: TP 8 without expert parallel on the
FP8 480B (2560 / 8 = 320, not a multiple of the 128 block) and 1M not fitting in 8x80 GiB."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import QWENPREP_BIN, TINY, invoke, run_capped
from qwenprep.checks.preflight import CheckOptions, run_checks
from qwenprep.engines.parallel import parallel_checks
from qwenprep.engines.vllm.kv import ModelShape
from qwenprep.planning.shapes import shape_from_dir


def validate(obj: dict[str, Any]) -> None:
    from jsonschema import Draft202012Validator

    from qwenprep.util.schemas import load_schema

    errors = list(Draft202012Validator(load_schema("check-report")).iter_errors(obj))
    assert errors == [], [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def by_id(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in out["checks"]}


def check_json(path: str, *args: str, engine: bool = False) -> tuple[int, dict[str, Any]]:
    """qwenprep check PATH --json [--no-engine] ARGS (the vLLM readback, a few seconds a run,
    is left to the tests that are about it)."""
    r = invoke("check", path, "--json", *([] if engine else ["--no-engine"]), *args)
    out = json.loads(r.stdout)
    validate(out)
    return r.exit_code, out


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qwenprep.testing.synth import make_shaped_checkpoint

    return make_shaped_checkpoint(tmp_path_factory.mktemp("q480") / "Qwen3-Coder-480B-FP8")


@pytest.fixture(scope="module")
def overlay_1m(big: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real job: the 480B-shaped checkpoint patched to 1M into an overlay."""
    out = tmp_path_factory.mktemp("ov") / "q480-1m"
    r = invoke("patch", str(big), "--context", "1m", "--out", str(out))
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def shape480(big: Path) -> ModelShape:
    return shape_from_dir(big)


@pytest.fixture
def no_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    try:
        import pynvml  # noqa: F401

        pytest.skip("nvidia-ml-py installed; this test needs a machine without GPUs")
    except ImportError:
        pass
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))


# ------------------------------------------------------------------ TP / EP


def test_tp8_without_ep_fails_on_the_fp8_block(overlay_1m: Path) -> None:
    code, out = check_json(
        str(overlay_1m),
        "--tp",
        "8",
        "--no-ep",
        "--gpus",
        "8",
        "--gpu-memory",
        "141GiB",
        "--vllm-version",
        "0.32",
    )
    assert code == 1 and out["ok"] is False
    c = by_id(out)["parallel.fp8_block"]
    assert c["status"] == "fail"
    assert c["message"].startswith(
        "The output_size of gate's and up's weight = 320 is not divisible by weight "
        "quantization block_n = 128 (moe_intermediate_size 2560 / TP 8)"
    )
    assert "--enable-expert-parallel" in c["message"]
    assert out["parallel"] == {"tp": 8, "pp": 1, "dp": 1, "ep": False, "source": "--tp/--ep"}
    # everything else about this deploy is fine: the block is the only failure
    assert [c["id"] for c in out["checks"] if c["status"] == "fail"] == ["parallel.fp8_block"]


def test_tp8_with_ep_passes(overlay_1m: Path) -> None:
    code, out = check_json(
        str(overlay_1m),
        "--tp",
        "8",
        "--ep",
        "--gpus",
        "8",
        "--gpu-memory",
        "141GiB",
        "--vllm-version",
        "0.32",
    )
    checks = by_id(out)
    assert checks["parallel.fp8_block"]["status"] == "pass"
    assert (
        checks["parallel.experts"]["message"]
        == "expert parallel: 20 whole experts per GPU (160 over 8)"
    )
    assert checks["parallel.heads"]["message"] == "TP 8: 12 query and 1 KV heads per GPU"
    assert checks["kv.fits"]["status"] == "pass"
    assert checks["kv.fits"]["message"].startswith("1,048,576 tokens need 31.00 GiB of KV per GPU")
    assert checks["overlay.links"]["status"] == "pass"
    assert code == 0 and out["ok"] is True, [c for c in out["checks"] if c["status"] == "fail"]
    assert out["plan"]["fits"] is True and out["plan"]["context"] == 1048576


def test_ep_is_the_default_for_moe(overlay_1m: Path) -> None:
    code, out = check_json(str(overlay_1m), "--tp", "8", "--kv-memory", "61.31GiB")
    assert out["parallel"]["ep"] is True
    assert by_id(out)["parallel.fp8_block"]["status"] == "pass"


@pytest.mark.parametrize(
    ("tp", "ep", "cid", "status", "text"),
    [
        (5, True, "parallel.heads", "fail", "TP 5 does not divide the 96 query heads"),
        (3, True, "parallel.heads", "fail", "TP 3 does not divide the 8 KV heads"),
        (
            16,
            True,
            "parallel.heads",
            "pass",
            "TP 16: 6 query and 1 KV heads per GPU (each KV head replicated 2x)",
        ),
        (12, True, "parallel.heads", "fail", "TP 12 is above the 8 KV heads and not a multiple"),
        (
            256,
            True,
            "parallel.experts",
            "fail",
            "Tensor parallel size 256 is greater than the number of experts 160",
        ),
        (
            4,
            False,
            "parallel.fp8_block",
            "pass",
            "FP8 block 128x128 divides every TP shard (2560 / TP 4)",
        ),
        (32, True, "parallel.experts", "pass", "expert parallel: 5 whole experts per GPU"),
        (64, True, "parallel.experts", "warn", "160 experts split unevenly (2 or 3 per GPU)"),
    ],
)
def test_parallel_rules(
    shape480: ModelShape, tp: int, ep: bool, cid: str, status: str, text: str
) -> None:
    checks = {c.id: c for c in parallel_checks(shape480, tp=tp, ep=ep)}
    assert checks[cid].status == status
    assert text in checks[cid].message


def test_single_gpu_texts(tiny_src: Path) -> None:
    """One GPU: no "expert parallel" talk; GPUs from the flags read as a sentence."""
    code, out = check_json(
        str(tiny_src),
        "--tp",
        "1",
        "--ep",
        "--gpus",
        "1",
        "--gpu-memory",
        "80GiB",
        "--vllm-version",
        "0.32",
    )
    checks = by_id(out)
    assert checks["parallel.experts"]["message"] == "one GPU holds all 4 experts"
    assert (
        checks["gpus.visible"]["message"] == "1 GPU of 80.00 GiB (as given by --gpus/--gpu-memory)"
    )
    code, out = check_json(
        str(tiny_src), "--tp", "2", "--gpus", "8", "--gpu-memory", "141GB", "--vllm-version", "0.32"
    )
    assert (
        by_id(out)["gpus.visible"]["message"]
        == "8 GPUs of 131.32 GiB each (as given by --gpus/--gpu-memory)"
    )


def test_gpus_visible_names_the_gpus_found(
    tiny_src: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    from fakes import H200_CSV, fake_smi

    fake_smi(tmp_path / "bin", H200_CSV)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(sys.modules, "pynvml", None)
    code, out = check_json(str(tiny_src), "--tp", "2", "--vllm-version", "0.32")
    assert (
        by_id(out)["gpus.visible"]["message"]
        == "8 x NVIDIA H200 of 140.40 GiB each (found by nvidia-smi)"
    )


def test_dense_fp8_block_rule() -> None:
    cfg = json.loads((TINY / "config.json").read_text())
    cfg.update(
        num_experts=0,
        intermediate_size=2560,
        num_attention_heads=8,
        num_key_value_heads=8,
        head_dim=128,
        quantization_config={"quant_method": "fp8", "weight_block_size": [128, 128]},
    )
    shape = ModelShape.from_config(cfg)
    bad = {c.id: c for c in parallel_checks(shape, tp=8, ep=False)}["parallel.fp8_block"]
    assert bad.status == "fail"
    assert (
        "intermediate_size 2560 / TP 8 = 320 is not divisible by weight quantization "
        "block_n = 128" in bad.message
    )
    ok = {c.id: c for c in parallel_checks(shape, tp=4, ep=False)}["parallel.fp8_block"]
    assert ok.status == "pass"


# ------------------------------------------------------------------ default layout = serve's


def test_readme_deploy_line_passes_on_8x141_gib(overlay_1m: Path) -> None:
    """README: `qwenprep check /models/qwen3-coder-1m --gpus 8 --gpu-memory 141GiB` then
    `qwenprep serve` (TP 8 + EP from the model profile). check must assume the same layout."""
    code, out = check_json(
        str(overlay_1m), "--gpus", "8", "--gpu-memory", "141GiB", "--vllm-version", "0.32"
    )
    assert [c for c in out["checks"] if c["status"] == "fail"] == []
    assert code == 0 and out["ok"] is True
    assert out["parallel"] == {
        "tp": 8,
        "pp": 1,
        "dp": 1,
        "ep": True,
        "source": "model profile qwen3-coder-480b",
    }
    assert out["plan"]["parallel"] == {"tp": 8, "pp": 1, "dp": 1, "ep": True, "gpus": 8, "dcp": 1}
    assert out["plan"]["max_concurrency_printed"] == "1.98x"


def test_readme_deploy_line_fails_only_on_kv_on_8x80_gib(overlay_1m: Path) -> None:
    code, out = check_json(str(overlay_1m), "--gpus", "8", "--gpu-memory", "80GiB")
    assert code == 1
    assert [c["id"] for c in out["checks"] if c["status"] == "fail"] == ["kv.fits"]
    assert out["parallel"]["tp"] == 8 and out["parallel"]["ep"] is True


def test_serve_and_check_agree_on_the_layout(overlay_1m: Path) -> None:
    from qwenprep.engines.vllm.engine import build_launch_plan

    argv = build_launch_plan(overlay_1m, engine=None).argv
    code, out = check_json(str(overlay_1m), "--kv-memory", "61.31GiB")
    tp = int(argv[argv.index("--tensor-parallel-size") + 1])
    assert (
        (out["parallel"]["tp"], out["parallel"]["ep"])
        == (tp, "--enable-expert-parallel" in argv)
        == (8, True)
    )


def test_flags_override_the_profile(overlay_1m: Path) -> None:
    code, out = check_json(
        str(overlay_1m), "--tp", "4", "--no-ep", "--gpus", "8", "--gpu-memory", "141GiB"
    )
    assert out["parallel"] == {"tp": 4, "pp": 1, "dp": 2, "ep": False, "source": "--tp/--ep"}
    assert out["plan"]["parallel"]["dp"] == 2


def test_dp_comes_from_the_inventory_in_both_blocks(
    tiny_src: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """GPUs found by nvidia-smi (no --gpus): the top-level parallel block and the plan behind
    kv.fits give the same DP."""
    from fakes import fake_smi

    fake_smi(tmp_path / "bin", "NVIDIA H100 80GB HBM3, 81559, 81000\n" * 4)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)  # NVML absent
    code, out = check_json(str(tiny_src), "--tp", "2", "--vllm-version", "0.32")
    assert out["gpus"]["source"] == "nvidia-smi"
    assert out["parallel"]["dp"] == 2 == out["plan"]["parallel"]["dp"]
    assert out["plan"]["parallel"]["gpus"] == 4


def test_a_model_without_a_pinned_layout_takes_one_replica_over_the_gpus(tiny_src: Path) -> None:
    """A profile that sets no TP (every one but the 480B's): check takes the rule plan and
    serve take (qwenprep.engines.parallel.choose_layout), one replica over the GPUs with EP on
    for a MoE model; before, check took TP 1 x DP 4 where plan took TP 4."""
    flags = ("--gpus", "4", "--gpu-memory", "80GiB", "--vllm-version", "0.32")
    code, out = check_json(str(tiny_src), *flags)
    assert out["parallel"] == {
        "tp": 4,
        "pp": 1,
        "dp": 1,
        "ep": True,
        "source": "one replica over the GPUs: TP = GPUs / PP",
    }
    r = invoke("plan", str(tiny_src), *flags, "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)["parallel"]
    assert {k: plan[k] for k in ("tp", "pp", "dp", "ep", "source")} == out["parallel"]


# ------------------------------------------------------------------ memory


def test_1m_does_not_fit_on_8x80_gib(overlay_1m: Path) -> None:
    code, out = check_json(
        str(overlay_1m),
        "--tp",
        "8",
        "--gpus",
        "8",
        "--gpu-memory",
        "80GiB",
        "--vllm-version",
        "0.32",
    )
    assert code == 1
    c = by_id(out)["kv.fits"]
    assert c["status"] == "fail"
    assert c["message"].startswith("1,048,576 tokens need 31.00 GiB of KV per GPU; ")
    assert "(estimated from GPU memory; see plan.estimate)" in c["message"]
    assert "does not fit. --kv-cache-dtype fp8 halves the KV cache" in c["message"]
    assert [x["id"] for x in out["checks"] if x["status"] == "fail"] == ["kv.fits"]
    assert out["plan"]["fits"] is False and out["plan"]["exact"] is False


def test_exact_kv_memory_too_small(overlay_1m: Path) -> None:
    code, out = check_json(str(overlay_1m), "--tp", "8", "--kv-memory", "30GiB")
    assert code == 1
    c = by_id(out)["kv.fits"]
    assert c["status"] == "fail"
    assert c["message"].startswith(
        "1,048,576 tokens need 31.00 GiB of KV per GPU; 30.00 GiB available: KV cache"
    )
    # the same at the native context fits
    code, out = check_json(
        str(overlay_1m), "--tp", "8", "--kv-memory", "30GiB", "--context", "native"
    )
    assert by_id(out)["kv.fits"]["status"] == "pass"
    assert out["plan"]["context"] == 262144


def test_no_gpus_no_flags_skips(tiny_src: Path, no_gpus: None) -> None:
    code, out = check_json(str(tiny_src))
    checks = by_id(out)
    assert checks["gpus.visible"]["status"] == "skip"
    assert checks["gpus.visible"]["message"].startswith(
        "no GPUs visible here and no --gpus/--gpu-memory given"
    )
    assert checks["kv.fits"]["status"] == "skip"
    assert "pass --kv-memory SIZE or --gpus N --gpu-memory SIZE" in checks["kv.fits"]["message"]
    assert code == 0 and out["ok"] is True
    assert out["gpus"]["source"] == "none"


def test_too_few_gpus_from_nvidia_smi(
    tiny_src: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from fakes import fake_smi

    fake_smi(tmp_path / "bin", "NVIDIA H100 80GB HBM3, 81559, 81000\n" * 1)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    code, out = check_json(str(tiny_src), "--tp", "2")
    assert code == 1
    c = by_id(out)["gpus.visible"]
    assert c == {
        "id": "gpus.visible",
        "status": "fail",
        "message": "1 GPU(s) from nvidia-smi but TP 2 x PP 1 needs 2 on this node",
    }


# ------------------------------------------------------------------ flags, disk, composition


def test_flags_the_installed_vllm_would_reject(tiny_src: Path) -> None:
    code, out = check_json(
        str(tiny_src),
        "--kv-memory",
        "2GiB",
        "--vllm-version",
        "0.32",
        "--",
        "--rope-scaling",
        '{"rope_type":"yarn","factor":4}',
    )
    assert code == 1
    c = by_id(out)["engine.flags"]
    assert c["status"] == "fail"
    assert c["message"].startswith(
        "vLLM 0.32 would reject: --rope-scaling: removed in vLLM 0.11.1 (PR #28006)"
    )
    code, out = check_json(
        str(tiny_src),
        "--kv-memory",
        "2GiB",
        "--vllm-version",
        "0.10.0",
        "--",
        "--rope-scaling",
        "{}",
        "--kv-cache-memory-bytes=8g",
    )
    msg = by_id(out)["engine.flags"]["message"]
    assert "--kv-cache-memory-bytes: added in vLLM 0.10.2" in msg
    assert "--rope-scaling" not in msg
    code, out = check_json(
        str(tiny_src),
        "--kv-memory",
        "2GiB",
        "--vllm-version",
        "0.33",
        "--",
        "--kv-cache-memory-bytes=8g",
        "--enable-expert-parallel",
    )
    assert by_id(out)["engine.flags"]["status"] == "pass"


@pytest.mark.parametrize(
    "version",
    ["0.9.2", "0.10.0", "0.10.1", "0.10.2", "0.11.0", "0.11.1", "0.29.0", "0.32.0", "0.33"],
)
def test_flag_verdicts_come_from_the_engine_capabilities(version: str) -> None:
    """One table: check's flag verdicts are what vllm_core.capabilities_for says per version."""
    import qwenprep.checks.preflight as pf
    from qwenprep.checks.preflight_items import flag_checks
    from qwenprep.engines.vllm import core as vllm_core
    from qwenprep.planning.capacity import vllm_rule

    assert not hasattr(pf, "FLAG_VERSIONS")  # the old duplicate table is gone
    caps = vllm_core.capabilities_for(vllm_core.parse_version(version)).to_dict()
    for flag, (field, why) in vllm_core.FLAG_CAPABILITY.items():
        (c,) = flag_checks(vllm_rule(version), (f"{flag}=1",))
        if caps[field]:
            assert c.status == "pass", (flag, version)
        else:
            assert c.status == "fail" and c.message.endswith(f"would reject: {flag}: {why}")
    # flags whose acceptance does not depend on the version are never refused
    (c,) = flag_checks(vllm_rule(version), ("--enable-expert-parallel", "--port=8001"))
    assert c.status == "pass"


def test_disk_warning(tiny_src: Path) -> None:
    rep = run_checks(
        tiny_src, CheckOptions(kv_memory=2 * 1024**3, disk_warn_bytes=10**18, engine=False)
    )
    disk = [c for c in rep.checks if c.id == "disk.model_dir"][0]
    assert disk.status == "warn"
    assert disk.message.startswith("only ") and "(below 931322574.62 GiB)" in disk.message
    assert rep.ok  # a warning does not fail the gate


def test_composed_checks_are_present(overlay_1m: Path) -> None:
    """With the engine readback: vLLM's config layer (installed here: the CPU build) reads the
    1M overlay back; without vLLM it is one skip check."""
    code, out = check_json(str(overlay_1m), "--tp", "8", "--kv-memory", "61.31GiB", engine=True)
    ids = [c["id"] for c in out["checks"]]
    assert len(ids) == len(set(ids)), ids
    for expected in (
        "schema",
        "overlay.manifest",
        "overlay.links",
        "shard.headers",
        "parallel.heads",
        "parallel.experts",
        "parallel.fp8_block",
        "kv.fits",
        "gpus.visible",
        "disk.model_dir",
    ):
        assert expected in ids, ids
    engine = [
        c for c in out["checks"] if c["id"].startswith("engine.") and c["id"] != "engine.flags"
    ]
    assert engine, ids
    if engine[0]["id"] == "engine.found":  # vLLM present: it must agree with the overlay
        got = {c["id"]: c for c in engine}
        assert got["engine.max_model_len"]["message"] == "max model length: vLLM uses 1048576"
        assert all(c["status"] == "pass" for c in engine), engine
    else:  # no vLLM: one skip, then the offline reading's own checks (none failing)
        assert engine[0]["status"] == "skip", engine
        assert all(c["status"] in ("pass", "warn", "skip") for c in engine), engine
    assert code == 0, [c for c in out["checks"] if c["status"] == "fail"]


def test_each_check_is_reported_once(overlay_1m: Path, tiny_src: Path) -> None:
    """integrity.header_checks already includes the overlay checks for an overlay: check must
    not list overlay.manifest/config/links/source a second time."""
    for path in (overlay_1m, tiny_src):
        code, out = check_json(str(path), "--kv-memory", "61.31GiB")
        ids = [c["id"] for c in out["checks"]]
        assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    code, out = check_json(str(overlay_1m), "--kv-memory", "61.31GiB")
    ids = [c["id"] for c in out["checks"]]
    for cid in ("overlay.manifest", "overlay.config", "overlay.links", "overlay.source"):
        assert ids.count(cid) == 1, cid


def test_broken_overlay_link_fails(big: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    assert invoke("patch", str(big), "--context", "1m", "--out", str(out)).exit_code == 0
    (out / "model-00007-of-00050.safetensors").unlink()
    code, rep = check_json(str(out), "--tp", "8", "--kv-memory", "61.31GiB")
    assert code == 1
    assert by_id(rep)["overlay.links"]["status"] == "fail"


def test_human_table(overlay_1m: Path) -> None:
    r = invoke(
        "check", str(overlay_1m), "--tp", "8", "--no-ep", "--kv-memory", "61.31GiB", "--no-engine"
    )
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert any(line.startswith("[FAIL] parallel.fp8_block") for line in lines)
    assert any(line.startswith("[ok  ] kv.fits") for line in lines)
    assert lines[-1] == "NOT ready: see the FAIL lines above"


def test_not_a_checkpoint(tmp_path: Path) -> None:
    r = invoke("check", str(tmp_path), "--json")
    assert r.exit_code == 3
    out = json.loads(r.stdout)
    validate(out)
    assert out["ok"] is False and out["error"]["exit_code"] == 3
    assert "no config.json here" in out["error"]["message"]


def test_bad_invocation(tiny_src: Path) -> None:
    r = invoke("check", str(tiny_src), "--gpus", "8")
    assert r.exit_code == 2 and "--gpus and --gpu-memory go together." in r.stderr
    r = invoke("check", str(tiny_src), "--tp", "0")
    assert r.exit_code == 2


def test_console_script_json_validates(tiny_src: Path) -> None:
    res = subprocess.run(
        [
            str(QWENPREP_BIN),
            "check",
            str(tiny_src),
            "--kv-memory",
            "2GiB",
            "--context",
            "1m",
            "--vllm-version",
            "0.32",
            "--json",
            "--no-engine",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = json.loads(res.stdout)
    validate(out)
    assert res.returncode == (0 if out["ok"] else 1)
    assert by_id(out)["kv.fits"]["status"] == "pass"
    assert out["plan"]["kv_cache_tokens"] == 4194304  # block 16 (CUDA): the same bytes
    # KV fits, but the unpatched config allows 262144: serve would refuse 1m, so check fails
    fails = [c for c in out["checks"] if c["status"] == "fail"]
    assert [c["id"] for c in fails] == ["engine.plan"]
    assert fails[0]["message"].startswith(
        f"qwenprep serve would refuse (exit 3): {tiny_src / 'config.json'}: --max-model-len "
        "1048576 is above the 262144 tokens this config allows"
    )
    assert res.returncode == 1


# ------------------------------------------------------------------ examples/pipelines

PIPELINES = Path(__file__).resolve().parents[2] / "examples" / "pipelines"


def _run_preflight_sh(
    tmp_path: Path, tiny_src: Path, tp: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """The shell pipeline with nothing on PATH but python3: no jq (a fresh machine has none)."""
    import shutil
    import sys

    bin_ = tmp_path / "only-python"
    bin_.mkdir(exist_ok=True)
    if not (bin_ / "python3").exists():
        (bin_ / "python3").symlink_to(sys.executable)
    env = dict(
        os.environ,
        MODEL=str(tiny_src),
        OUT=str(tmp_path / "overlay"),
        TP=tp,
        CONTEXT="1m",
        REPORT=str(tmp_path / "report.json"),
        QWENPREP=str(QWENPREP_BIN),
        PATH=str(bin_),
    )
    sh = shutil.which("sh")
    assert sh is not None
    return subprocess.run(
        [sh, str(PIPELINES / "preflight.sh"), *(args or ("--kv-memory", "2GiB")), "--no-engine"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_shell_pipeline_gates_on_the_report(tmp_path: Path, tiny_src: Path) -> None:
    ok = _run_preflight_sh(tmp_path, tiny_src, "1")
    assert ok.returncode == 0, ok.stderr
    assert "preflight: ready:" in ok.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    validate(report)
    assert report["ok"] is True and report["plan"]["context"] == 1048576

    bad = _run_preflight_sh(tmp_path, tiny_src, "8")  # 4 query heads cannot split 8 ways
    assert bad.returncode == 1
    assert "preflight: NOT ready to serve" in bad.stderr
    assert "  FAIL parallel.heads: TP 8 does not divide the 4 query heads" in bad.stderr


def test_shell_pipeline_passes_on_qwenprep_errors(tmp_path: Path, tiny_src: Path) -> None:
    res = _run_preflight_sh(tmp_path, tiny_src, "1", "--gpus", "8")  # no --gpu-memory
    assert res.returncode == 2
    assert res.stderr.splitlines()[-3:] == [
        "preflight: qwenprep check could not run (exit 2):",
        "--gpus and --gpu-memory go together.",
        "Hint: e.g. --gpus 8 --gpu H200, or --gpus 8 --gpu-memory 143771MiB",
    ], res.stderr


def _commands(obj: Any) -> list[str]:
    """Every command string in a parsed YAML document (run: steps, command: lists)."""
    found: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "run" and isinstance(v, str):
                found.append(v)
            elif k == "command" and isinstance(v, list):
                found.append(" ".join(map(str, v)))
            else:
                found += _commands(v)
    elif isinstance(obj, list):
        for v in obj:
            found += _commands(v)
    return found


def test_kubernetes_init_container_and_job_gate_on_check() -> None:
    import yaml  # pyyaml: in the test extra

    docs = list(yaml.safe_load_all((PIPELINES / "k8s-vllm-preflight.yaml").read_text()))
    kinds = [d["kind"] for d in docs]
    assert kinds == ["Deployment", "Job"]
    pod = docs[0]["spec"]["template"]["spec"]
    init = " ".join(pod["initContainers"][0]["command"])
    assert init.startswith("qwenprep check /models/q480-1m") and "--json" in init
    assert " ".join(pod["containers"][0]["command"]).startswith("qwenprep serve /models/q480-1m")
    job = docs[1]["spec"]
    assert job["backoffLimit"] == 0
    assert "qwenprep check" in _commands(job)[0] and "--json" in _commands(job)[0]
    # the flags used there are ones qwenprep check really takes
    r = invoke("check", "--help")
    for flag in ("--tp", "--ep", "--json"):
        assert flag in r.stdout


def test_ci_workflow_gates_deploy_on_check() -> None:
    import yaml  # pyyaml: in the test extra

    wf = yaml.safe_load((PIPELINES / "github-actions.yml").read_text())
    jobs = wf["jobs"]
    assert jobs["deploy"]["needs"] == "preflight"
    runs = _commands(jobs["preflight"])
    assert any("qwenprep check" in r and "--json" in r for r in runs)
    # patch reads a repo id from the HF cache only: the workflow fetches it first
    first = [r.split()[1] for r in runs if r.startswith("qwenprep ")]
    assert first[:3] == ["fetch", "patch", "check"], runs
    fetch = next(r for r in runs if r.startswith("qwenprep fetch"))
    assert fetch.startswith('qwenprep fetch "$MODEL"')
    r = invoke("fetch", "--help")
    assert r.exit_code == 0 and "--json" in r.stdout


def test_pipelines_need_no_jq() -> None:
    """A fresh machine has python3 (qwenprep runs on it) but not necessarily jq."""
    for f in sorted(PIPELINES.iterdir()):
        assert "jq " not in f.read_text(), f.name


def test_check_gpus_is_a_count_with_a_maximum() -> None:
    """check --gpus 3e7 reached 8 GB (a GPU object per GPU, then each in the JSON): refused
    with the maximum and why, in a 1 GiB address space (issue 20, item 17)."""
    args = ["check", str(TINY), "--gpus", "30000000", "--gpu-memory", "80GiB", "--no-engine"]
    r = run_capped([*args, "--json"])
    assert r.returncode == 2, r.stderr
    assert json.loads(r.stdout)["error"]["message"].startswith(
        "--gpus 30000000 is too large: at most 65,536: qwenprep plans one deployment"
    )
