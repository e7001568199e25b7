"""Every path gives one verdict (issues 19, 20; hostile-test items 4, 5, 8, 12, 15, 18, 20):
the offline reading judges or refuses what it does not model, the gate cache keys on what an
answer depends on, what --emit-config and --emit k8s write is what was judged, a stale overlay
gets check's verdict everywhere, and vLLM's own tool-call options are the user's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import QWENPREP_BIN, TINY, invoke
from qwenprep.engines.vllm import core as vllm_core
from qwenprep.engines.vllm import deploy, gate
from qwenprep.engines.vllm import engine as eng
from qwenprep.engines.vllm import offline as gate_offline
from qwenprep.errors import QwenprepError
from qwenprep.request import ServeRequest

VLLM_PY = os.environ.get("QWENPREP_VLLM_PYTHON") or sys.executable
INFO = vllm_core.discover(VLLM_PY)
HAVE_VLLM = INFO is not None and INFO.importable
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason=f"vLLM is not importable in {VLLM_PY}")


def _no_vllm_python(tmp_path: Path) -> str:
    p = tmp_path / "python-without-vllm"
    p.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    p.chmod(0o755)
    return str(p)


def _q(*args: str, python: str | None = None, cwd: Path | None = None) -> Any:
    env = {**os.environ}
    if python is not None:
        env["QWENPREP_VLLM_PYTHON"] = python
    return subprocess.run(
        [str(QWENPREP_BIN), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=cwd,
    )


def _overlay(tmp_path: Path, name: str = "tiny-1m", src: Path = TINY) -> Path:
    ov = tmp_path / name
    r = invoke("patch", str(src), "--context", "1m", "--out", str(ov))
    assert r.exit_code == 0, r.output
    return ov


def _unscaled_1m(tmp_path: Path) -> Path:
    d = tmp_path / "unscaled"
    d.mkdir()
    cfg = json.loads((TINY / "config.json").read_text())
    cfg["max_position_embeddings"] = 1048576
    cfg.pop("rope_scaling", None)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _check_json(*args: str) -> tuple[int, dict[str, Any]]:
    r = invoke("check", args[0], "--kv-memory", "1GiB", "--json", *args[1:])
    return r.exit_code, json.loads(r.stdout)


def _failed(report: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["message"] for c in report["checks"] if c["status"] == "fail"}


# ---------------------------------------------------------------- the offline reading
def test_offline_check_reads_the_hf_config_path_as_vllm_does(tmp_path: Path) -> None:
    ov = _overlay(tmp_path)
    unscaled = _unscaled_1m(tmp_path)
    code, rep = _check_json(str(ov), "--no-engine", "--", "--hf-config-path", str(unscaled))
    assert code == 1, rep
    assert "engine.rope_scaling" in _failed(rep)
    assert "unscaled" in _failed(rep)["engine.rope_scaling"]
    # the overlay's own config there passes: the same verdict as without the option
    same = tmp_path / "same"
    same.mkdir()
    shutil.copy(ov / "config.json", same / "config.json")
    code, rep = _check_json(str(ov), "--no-engine", "--", f"--hf_config_path={same}")
    assert code == 0, _failed(rep)
    # a Hub id (not followed offline) is refused, not passed unjudged
    code, rep = _check_json(str(ov), "--no-engine", "--", "--hf-config-path", "Qwen/Other")
    assert code == 1 and "engine.offline" in _failed(rep), rep


@pytest.mark.parametrize("args", [["-q", "fp8"], ["-q=fp8"], ["-qfp8"], ["--quantization", "fp8"]])
def test_offline_check_judges_quantization(tmp_path: Path, args: list[str]) -> None:
    ov = _overlay(tmp_path)
    code, rep = _check_json(str(ov), "--no-engine", "--", *args)
    assert code == 1 and "engine.quantization" in _failed(rep), rep
    assert "fp8" in _failed(rep)["engine.quantization"]


def test_offline_check_refuses_a_config_format_it_does_not_read(tmp_path: Path) -> None:
    ov = _overlay(tmp_path)
    code, rep = _check_json(str(ov), "--no-engine", "--", "--config-format", "mistral")
    assert code == 1 and "--config-format mistral" in _failed(rep)["engine.offline"]
    code, rep = _check_json(str(ov), "--no-engine", "--", "--config-format", "hf")
    assert code == 0, _failed(rep)


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("hf-overrides: {rope_scaling: [unclosed\n", 2, "expected ',' or ']'"),
        ("max-num-seqs: 4\n---\nb: 2\n", 2, "another document"),
    ],
)
def test_offline_yaml_errors_say_file_and_line(
    tmp_path: Path, text: str, line: int, what: str
) -> None:
    ov = _overlay(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    r = _q(
        "check", str(ov), "--no-engine", "--kv-memory", "1GiB", "--json", "--", "--config", str(bad)
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    msg = _failed(json.loads(r.stdout))["engine.argv"]
    assert f"{bad}, line {line}" in msg and what in msg
    py = _no_vllm_python(tmp_path)
    r = _q("serve", str(ov), "--dry-run", "--", "--config", str(bad), python=py)
    assert r.returncode == 3 and "Traceback" not in r.stderr and f"{bad}, line {line}" in r.stderr


def test_sglang_without_sglang_judges_its_overrides_and_refuses_the_rest(tmp_path: Path) -> None:
    ov = _overlay(tmp_path)
    base = [str(ov), "--serving-engine", "sglang", "--no-engine"]
    code, rep = _check_json(*base, "--", "--json-model-override-args", '{"rope_scaling": null}')
    assert code == 1 and "engine.rope_scaling" in _failed(rep), rep
    code, rep = _check_json(*base, "--", '--json_model_override_args={"rope_theta": 10000}')
    assert code == 1 and "engine.rope_theta" in _failed(rep), rep
    # what SGLang would do with an option nobody here can read is not "ready"
    code, rep = _check_json(*base, "--", "--mem-fraction-static", "0.8")
    assert code == 1 and "--mem-fraction-static 0.8" in _failed(rep)["engine.offline"]
    # an override that leaves the rotation alone passes
    code, rep = _check_json(
        *base, "--", "--json-model-override-args", '{"attn_logit_softcapping": 1}'
    )
    assert code == 0, _failed(rep)
    py = _no_vllm_python(tmp_path)
    r = _q(
        "serve",
        str(ov),
        "--serving-engine",
        "sglang",
        "--dry-run",
        "--engine-python",
        py,
        "--",
        "--json-model-override-args",
        '{"rope_scaling": null}',
    )
    assert r.returncode == 3 and "judged offline" in r.stderr, r.stderr


# ---------------------------------------------------------------- the gate cache
def test_the_gate_cache_keys_on_the_hf_config_path_contents(tmp_path: Path) -> None:
    ov = _overlay(tmp_path)
    hfc = tmp_path / "hfc"
    hfc.mkdir()
    shutil.copy(ov / "config.json", hfc / "config.json")
    keys = []
    unscaled = _unscaled_1m(tmp_path) / "config.json"
    for extra in (["--hf-config-path", str(hfc)], [f"--hf-config-path={hfc}"]):
        plan = eng.build_launch_plan(ov, ServeRequest(extra_args=tuple(extra)), engine=None)
        before = gate_offline.fingerprint(plan, "py", gate._items(plan))
        shutil.copy(unscaled, hfc / "config.json")
        keys.append(before != gate_offline.fingerprint(plan, "py", gate._items(plan)))
        shutil.copy(ov / "config.json", hfc / "config.json")
    assert keys == [True, True]
    # and a --config=FILE's content
    user = tmp_path / "u.yaml"
    user.write_text("max-num-seqs: 2\n")
    plan = eng.build_launch_plan(ov, ServeRequest(extra_args=(f"--config={user}",)), engine=None)
    before = gate_offline.fingerprint(plan, "py", gate._items(plan))
    user.write_text("max-num-seqs: 3\n")
    assert before != gate_offline.fingerprint(plan, "py", gate._items(plan))


@pytest.mark.engine
@needs_vllm
def test_api_answers_follow_the_hf_config_path(tmp_path: Path) -> None:
    import qwenprep

    ov = _overlay(tmp_path)
    hfc = tmp_path / "hfc"
    hfc.mkdir()
    shutil.copy(ov / "config.json", hfc / "config.json")
    args = ["--hf-config-path", str(hfc)]
    assert qwenprep.serve_plan(ov, extra_args=args, vllm_python=VLLM_PY)["ok"] is True
    shutil.copy(_unscaled_1m(tmp_path) / "config.json", hfc / "config.json")
    with pytest.raises(QwenprepError):
        qwenprep.serve_plan(ov, extra_args=args, vllm_python=VLLM_PY)
    rep = qwenprep.check(ov, kv_memory="1GiB", vllm_args=args, vllm_python=VLLM_PY)
    assert rep["ok"] is False


# ---------------------------------------------------------------- tool-call options
def _coder_overlay(tmp_path: Path) -> Path:
    src = tmp_path / "Qwen3-Coder-tiny"
    shutil.copytree(TINY, src)
    return _overlay(tmp_path, "coder-1m", src)


def test_the_users_tool_call_options_win_once(tmp_path: Path) -> None:
    ov = _coder_overlay(tmp_path)
    plan = eng.build_launch_plan(ov, ServeRequest(), engine=None)
    assert "--tool-call-parser" in plan.argv  # the profile's, when the user says nothing
    for extra in (
        ("--enable-auto-tool-choice", "--tool-call-parser", "hermes"),
        ("--tool_call_parser=hermes", "--enable-auto-tool-choice"),
    ):
        plan = eng.build_launch_plan(ov, ServeRequest(extra_args=extra), engine=None)
        after = plan.argv[plan.argv.index("serve") + 2 :]
        assert "qwen3_coder" not in after and len([a for a in after if "tool" in a]) == 2, after
    # an overlay whose profile sets no parser: the user's are not "(the model profile)"
    plain = _overlay(tmp_path)
    py = _no_vllm_python(tmp_path)
    r = _q(
        "serve",
        str(plain),
        "--dry-run",
        "--",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "qwen3_coder",
        python=py,
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.engine
@needs_vllm
def test_vllm_judges_the_users_tool_call_options_as_theirs(tmp_path: Path) -> None:
    plain = _overlay(tmp_path)
    ov = _coder_overlay(tmp_path)
    for model in (plain, ov):
        r = _q(
            "serve",
            str(model),
            "--dry-run",
            "--json",
            "--",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
            python=VLLM_PY,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        argv = json.loads(r.stdout)["argv"]
        assert argv.count("--tool-call-parser") == 1 and "hermes" in argv
    # what the proof covers is still refused
    r = _q("serve", str(ov), "--dry-run", "--", "--max-model-len", "2000000", python=VLLM_PY)
    assert r.returncode == 3


# ---------------------------------------------------------------- a stale overlay
def test_a_stale_overlay_gets_checks_verdict_on_every_path(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(TINY, src)
    ov = _overlay(tmp_path, "st", src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["vocab_size"] += 1  # the source moved on after the patch
    (src / "config.json").write_text(json.dumps(cfg))
    code, rep = _check_json(str(ov), "--no-engine")
    assert code == 1 and "overlay.source" in _failed(rep)
    py = _no_vllm_python(tmp_path)
    for args in (
        ["--dry-run"],
        ["--emit-config", str(tmp_path / "e.yaml")],
        ["--emit", "k8s"],
        ["--serving-engine", "sglang", "--dry-run", "--engine-python", py],
    ):
        r = _q("serve", str(ov), *args, python=py)
        assert r.returncode == 3, (args, r.stdout, r.stderr)
        assert "the overlay is stale" in r.stderr and "--force" in r.stderr, r.stderr
    assert not (tmp_path / "e.yaml").exists()


# ---------------------------------------------------------------- --emit-config, --emit k8s
def test_emit_config_keeps_what_was_judged(tmp_path: Path) -> None:
    ov = _overlay(tmp_path)
    py = _no_vllm_python(tmp_path)
    user = tmp_path / "user.yaml"
    user.write_text("hf-overrides:\n  attn_logit_softcapping: null\nmax_num_seqs: 3\n")
    cfg = tmp_path / "n.yaml"
    r = _q(
        "serve",
        str(ov),
        "--served-model-name",
        "007",
        "--emit-config",
        str(cfg),
        "--json",
        "--",
        "--config",
        str(user),
        "-pp",
        "2",
        "--max-num-seqs",
        "5",
        python=py,
    )
    assert r.returncode == 0, r.stderr
    data = yaml.safe_load(cfg.read_text())
    assert data["served-model-name"] == "007"  # vLLM would read 7 from a bare 007
    assert data["pipeline-parallel-size"] == 2  # -pp, in its long form
    assert data["max-num-seqs"] == 5  # the command line wins over the user's file
    assert json.loads(data["hf-overrides"]) == {"attn_logit_softcapping": None}
    assert "config" not in data
    cfg2 = tmp_path / "d.yaml"
    r = _q("serve", str(ov), "--served-model-name=-x", "--emit-config", str(cfg2), python=py)
    assert r.returncode == 0, r.stderr
    assert "served-model-name" not in yaml.safe_load(cfg2.read_text())
    assert r.stdout.split()[-1] == "--served-model-name=-x"


@pytest.mark.engine
@needs_vllm
def test_emitted_yaml_reads_back_through_vllms_parser_as_the_judged_argv(tmp_path: Path) -> None:
    from qwenprep.engines.vllm.core import run_probe

    ov = _overlay(tmp_path)
    user = tmp_path / "user.yaml"
    user.write_text("hf-overrides:\n  attn_logit_softcapping: null\nmax_num_seqs: 3\n")
    cfg = tmp_path / "n.yaml"
    r = _q(
        "serve",
        str(ov),
        "--served-model-name=-x",
        "--emit-config",
        str(cfg),
        "--json",
        "--",
        "--config",
        str(user),
        "-pp",
        "2",
        "--enable-prefix-caching",
        python=VLLM_PY,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    model = str(ov.resolve())
    judged = out["argv"][out["argv"].index("serve") + 2 :]
    emitted = out["config"]["argv"][out["config"]["argv"].index("serve") + 2 :]
    got = run_probe(
        VLLM_PY,
        ["parse-args", json.dumps([["--model", model, *judged], ["--model", model, *emitted]])],
        timeout=600,
    )
    assert [res["ok"] for res in got["results"]] == [True, True], got
    direct, via_file = (res["args"] for res in got["results"])
    direct.pop("config", None)
    via_file.pop("config", None)
    assert via_file == direct
    assert via_file["served_model_name"] == ["-x"] and via_file["max_num_seqs"] == 3
    assert via_file["pipeline_parallel_size"] == 2


def test_emit_config_never_overwrites_an_edited_file(tmp_path: Path) -> None:
    ov = _overlay(tmp_path)
    py = _no_vllm_python(tmp_path)
    mine = tmp_path / "mine.yaml"
    assert _q("serve", str(ov), "--emit-config", str(mine), python=py).returncode == 0
    assert _q("serve", str(ov), "--emit-config", str(mine), python=py).returncode == 0
    with mine.open("a") as f:
        f.write("max-num-seqs: 2  # my tuning\n")
    edited = mine.read_text()
    r = _q("serve", str(ov), "--emit-config", str(mine), python=py)
    assert r.returncode == 3 and str(mine) in r.stderr and "--force" in r.stderr, r.stderr
    assert mine.read_text() == edited
    # a file that starts like qwenprep's but carries no digest is not taken for ours
    mine.write_text("# vLLM serve options for x\nmax-num-seqs: 2\n")
    r = _q("serve", str(ov), "--emit-config", str(mine), python=py)
    assert r.returncode == 3 and "--force" in r.stderr
    r = _q("serve", str(ov), "--emit-config", str(mine), "--force", python=py)
    assert r.returncode == 0 and "max-num-seqs" not in mine.read_text()


@pytest.mark.parametrize(
    "extra", [["-pp", "2"], ["--pipeline_parallel_size=2"], ["--pipeline-parallel-size", "2"]]
)
def test_emit_k8s_counts_gpus_from_the_parsed_sizes(tmp_path: Path, extra: list[str]) -> None:
    ov = _overlay(tmp_path)
    plan = eng.build_launch_plan(
        ov, ServeRequest(tp=2, extra_args=tuple(extra)), engine=None, offline_gate=False
    )
    manifest = deploy.lws_manifest(plan, image="vllm/vllm-openai:v0.11.1")
    pod = manifest["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4


def test_emit_k8s_mounts_the_files_the_argv_reads(tmp_path: Path) -> None:
    """Hostile pass: `--emit k8s -- --config /host/ck.yaml` named a host file the pods never
    mounted. What the judged argv reads from this host is mounted read-only at the same path;
    a relative path is refused (the container's working directory is not this one)."""
    ov = _overlay(tmp_path)
    ck = tmp_path / "ck.yaml"
    ck.write_text("max-num-seqs: 4\n")
    plan = eng.build_launch_plan(
        ov,
        ServeRequest(tp=1, extra_args=("--config", str(ck), "--tokenizer", str(ov))),
        engine=None,
        offline_gate=False,
    )
    manifest = deploy.lws_manifest(plan, image="vllm/vllm-openai:v0.11.1")
    pod = manifest["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]
    host = {v["hostPath"]["path"]: v["hostPath"]["type"] for v in pod["volumes"] if "hostPath" in v}
    assert host[str(ck)] == "File" and host[str(ov)] == "Directory"
    mounted = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert str(ck) in mounted
    rel = eng.build_launch_plan(
        ov, ServeRequest(tp=1, extra_args=("--config", "ck.yaml")), engine=None, offline_gate=False
    )
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(QwenprepError, match="relative path"):
            deploy.lws_manifest(rel, image="vllm/vllm-openai:v0.11.1")
    finally:
        os.chdir(here)
