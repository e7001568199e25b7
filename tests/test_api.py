"""The public Python API (`import qwenprep`): each function on the embedded tiny checkpoint
returns what the command prints with --json for the same input; errors are QwenprepErrors
with the command's exit code; importing the package loads nothing else."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import qwenprep
from conftest import QWENPREP_BIN, TINY
from qwenprep.errors import QwenprepError

NO_VLLM = str(Path(sys.base_prefix) / "bin" / "python3")  # an interpreter without vLLM


def cli_json(*args: str, code: int = 0) -> dict[str, Any]:
    r = subprocess.run(
        [str(QWENPREP_BIN), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == code, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


@pytest.fixture
def src(tmp_path: Path) -> Path:
    dest = tmp_path / "tiny"
    shutil.copytree(TINY, dest)
    return dest


def test_all_lists_the_api() -> None:
    assert qwenprep.__all__ == [
        "__version__",
        "check",
        "patch",
        "plan",
        "revert",
        "serve_plan",
        "validate",
        "verify",
    ]
    for name in qwenprep.__all__[1:]:
        fn = getattr(qwenprep, name)
        assert callable(fn) and fn.__doc__ and fn.__annotations__["return"] == "dict[str, Any]"
    with pytest.raises(AttributeError):
        qwenprep.no_such_function  # noqa: B018


def test_import_is_cheap() -> None:
    code = (
        "import sys, qwenprep; heavy = [m for m in ('qwenprep.api', "
        "'qwenprep.engines.vllm.engine', "
        "'huggingface_hub', 'click', 'jsonschema') if m in sys.modules]; print(heavy)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_patch_validate_revert_match_the_cli(src: Path, tmp_path: Path) -> None:
    a = qwenprep.patch(src, "1m", out=tmp_path / "a")
    b = cli_json("patch", str(src), "--context", "1m", "--out", str(tmp_path / "b"))
    assert a["path"] == str(tmp_path / "a") and b["path"] == str(tmp_path / "b")
    same = {k: v for k, v in a.items() if k not in ("path", "digest")}
    assert same == {k: v for k, v in b.items() if k not in ("path", "digest")}
    assert a["target_context"] == 1048576 and a["ok"] is True
    assert qwenprep.patch(src, "1m", out=tmp_path / "a")["status"] == "unchanged"

    va = qwenprep.validate(tmp_path / "a")
    vb = cli_json("validate", str(tmp_path / "a"))
    assert va == vb and va["ok"] is True and va["summary"]["failed"] == 0

    ra = qwenprep.revert(tmp_path / "a")
    rb = cli_json("revert", str(tmp_path / "b"))
    assert set(ra) == set(rb) and ra["ok"] is rb["ok"] is True
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_verify_matches_the_cli(src: Path) -> None:
    assert qwenprep.verify(src) == cli_json("verify", str(src))
    deep = qwenprep.verify(src, deep=True)
    assert deep == cli_json("verify", str(src), "--deep")
    assert deep["unverified"] and not (src / ".qwenprep").exists()
    assert qwenprep.verify(src, strict=True) == cli_json("verify", str(src), "--strict", code=1)


def test_plan_matches_the_cli() -> None:
    a = qwenprep.plan(
        TINY, context="1m", tp=1, kv_memory="2GiB", vllm_version="0.32", block_size=128
    )
    b = cli_json(
        "plan",
        str(TINY),
        "--context",
        "1m",
        "--tp",
        "1",
        "--kv-memory",
        "2GiB",
        "--vllm-version",
        "0.32",
        "--block-size",
        "128",
    )
    assert a == b and a["ok"] is True
    assert (
        qwenprep.plan(
            TINY, context="1m", tp=1, kv_memory=2 * 1024**3, vllm_version="0.32", block_size=128
        )
        == a
    )


def _stable(report: dict[str, Any]) -> dict[str, Any]:
    """Free disk space changes between two runs: leave the disk checks' messages out."""
    checks = [
        c if not c["id"].startswith("disk.") else {**c, "message": "-"} for c in report["checks"]
    ]
    return {**report, "checks": checks}


def test_check_matches_the_cli() -> None:
    a = qwenprep.check(TINY, engine=False, gpus=1, tp=1, gpu="H200", vllm_version="0.32")
    b = cli_json(
        "check",
        str(TINY),
        "--no-engine",
        "--gpus",
        "1",
        "--tp",
        "1",
        "--gpu",
        "h200",
        "--vllm-version",
        "0.32",
    )
    assert _stable(a) == _stable(b) and a["ok"] is True


def test_serve_plan_matches_the_cli(src: Path, tmp_path: Path) -> None:
    ov = qwenprep.patch(src, "1m", out=tmp_path / "ov")["path"]
    a = qwenprep.serve_plan(ov, vllm_python=NO_VLLM)
    r = subprocess.run(
        [str(QWENPREP_BIN), "serve", ov, "--dry-run", "--vllm-python", NO_VLLM, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert a == json.loads(r.stdout)
    assert a["dry_run"] is True and "--max-model-len" in a["argv"]


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [
        (
            lambda: qwenprep.plan(TINY, gpus=1, gpu_memory="141"),
            2,
            "--gpu-memory '141' has no unit: did you mean 141GiB or 141GB?",
        ),
        (
            lambda: qwenprep.verify(TINY, record=True),
            2,
            "--record keeps the hashes --deep computes: add --deep.",
        ),
        (
            lambda: qwenprep.check(TINY, gpu="h900"),
            2,
            "--gpu 'h900' is not in the GPU catalog; its peaks are unknown and are not guessed.",
        ),
    ],
)
def test_errors_are_qwenprep_errors(call: Any, code: int, message: str) -> None:
    with pytest.raises(QwenprepError) as e:
        call()
    assert (e.value.exit_code, e.value.message) == (code, message)


# Hostile arguments (issue 20, item 16): each is what the command line refuses with exit 2, and
# the API refuses it alike, by the same rule (qwenprep.request), never with a TypeError,
# ZeroDivisionError or AttributeError from deep inside, and never accepting it.
_KV = {"kv_memory": "1GiB"}
HOSTILE = [
    (qwenprep.plan, {**_KV, "pp": 0}, "--pp must be at least 1 (got 0)."),
    (qwenprep.plan, {**_KV, "pp": "2"}, "--pp takes a whole number (got '2')."),
    (qwenprep.plan, {**_KV, "tp": 2.0}, "--tp takes a whole number (got 2.0)."),
    (qwenprep.plan, {**_KV, "tp": True}, "--tp takes a whole number (got True)."),
    (qwenprep.plan, {"gpus": "8", "gpu_memory": "80GiB"}, "--gpus takes a whole number"),
    (
        qwenprep.plan,
        {**_KV, "kv_cache_dtype": "bogus"},
        "--kv-cache-dtype 'bogus': use auto or fp8.",
    ),
    (qwenprep.plan, {**_KV, "kv_cache_dtype": None}, "--kv-cache-dtype takes a string"),
    (qwenprep.plan, {**_KV, "block_size": "16"}, "--block-size takes a whole number"),
    (qwenprep.plan, {**_KV, "ep": "no"}, "--ep takes True or False (got 'no')."),
    (qwenprep.plan, {**_KV, "prefill_budget": "60"}, "--prefill-budget takes a number of seconds"),
    (qwenprep.plan, {**_KV, "context": 1.5}, "--context takes a token count"),
    (qwenprep.plan, {**_KV, "gpu": 5}, "--gpu takes a string (got 5)."),
    (qwenprep.plan, {**_KV, "vllm_version": ""}, "unreadable vLLM version ''"),
    (qwenprep.plan, {**_KV, "vllm_version": 0.32}, "--vllm-version takes a string (got 0.32)."),
    (qwenprep.check, {**_KV, "pp": 0, "engine": False}, "--pp must be at least 1 (got 0)."),
    (qwenprep.check, {**_KV, "vllm_args": "--max-num-seqs 4"}, "vllm_args takes a list"),
    (qwenprep.check, {**_KV, "vllm_args": ["--max-num-seqs", 4]}, "must be a string"),
    (qwenprep.check, {**_KV, "engine": "no"}, "--engine takes True or False (got 'no')."),
    (qwenprep.check, {**_KV, "strict": "yes"}, "--strict takes True or False (got 'yes')."),
    (qwenprep.check, {**_KV, "kv_cache_dtype": "bogus"}, "--kv-cache-dtype 'bogus'"),
    (qwenprep.serve_plan, {"port": "8000"}, "--port takes a whole number (got '8000')."),
    (qwenprep.serve_plan, {"port": 70000}, "--port 70000 is too large: at most 65535."),
    (qwenprep.serve_plan, {"extra_args": ["--max-num-seqs", 4]}, "(got 4)."),
    (qwenprep.serve_plan, {"extra_args": ["--hf-overrides", {"a": 1}]}, "(got {'a': 1})."),
    (qwenprep.serve_plan, {"extra_args": "--max-num-seqs 4"}, "extra_args takes a list"),
    (qwenprep.serve_plan, {"tp": 0}, "--tp must be at least 1 (got 0)."),
    (qwenprep.serve_plan, {"nnodes": 0}, "--nnodes must be at least 1 (got 0)."),
    (qwenprep.serve_plan, {"nnodes": 10**12}, "--nnodes 1000000000000 is too large"),
    (qwenprep.serve_plan, {"host": 5}, "--host takes a string (got 5)."),
    (
        qwenprep.serve_plan,
        {"multinode_mode": "x"},
        "--multinode-mode 'x': use native or dp or ray.",
    ),
    (qwenprep.serve_plan, {"max_model_len": True}, "--max-model-len takes a token count"),
    (qwenprep.verify, {"deep": "no"}, "--deep takes True or False (got 'no')."),
    (qwenprep.verify, {"vllm_python": 5, "engine": True}, "--vllm-python takes a string"),
    (qwenprep.validate, {"vllm_version": 0.32}, "--vllm-version takes a string (got 0.32)."),
    (qwenprep.validate, {"strict": "no"}, "--strict takes True or False (got 'no')."),
    (qwenprep.revert, {"force": "yes"}, "--force takes True or False (got 'yes')."),
]


@pytest.mark.parametrize(
    ("fn", "kw", "message"), HOSTILE, ids=[f"{f.__name__}-{k}" for f, k, _ in HOSTILE]
)
def test_hostile_arguments_are_usage_errors(fn: Any, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(QwenprepError) as e:
        fn(TINY, **kw)
    assert e.value.exit_code == 2 and message in e.value.message, e.value.message


def test_errors_mask_the_callers_engine_args(
    src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error an API function raises is redacted as the command line redacts what it prints
    (cli._common.fail): the values of the credential options in the engine argv the caller
    passed (not in sys.argv, so secrets() cannot know them) and this process's own secrets
    are masked in message and hint, the exception's type and exit code kept."""
    ov = qwenprep.patch(src, "1m", out=tmp_path / "ov")["path"]
    monkeypatch.setenv("VLLM_API_KEY", "env-secret-7788")
    calls = [
        # the gate's refusal quotes the stray word after --hf-token (a token split in two)
        (
            lambda: qwenprep.serve_plan(
                ov,
                vllm_python=NO_VLLM,
                extra_args=["--hf-token", "hf_abcdefghijkl", "second-half-4242"],
            ),
            "second-half-4242",
            3,
        ),
        # and a word that is this process's own API key
        (
            lambda: qwenprep.serve_plan(ov, vllm_python=NO_VLLM, extra_args=["env-secret-7788"]),
            "env-secret-7788",
            3,
        ),
        # the type checks quote the argument they refuse: a key as bytes, the argv as one string
        (
            lambda: qwenprep.check(
                ov,
                engine=False,
                gpus=1,
                tp=1,
                gpu="H200",
                vllm_args=["--api-key", b"sk-secret-123456"],
            ),
            "sk-secret-123456",
            2,
        ),
        (
            lambda: qwenprep.serve_plan(ov, extra_args="--api-key sk-secret-123456"),
            "sk-secret-123456",
            2,
        ),
        (
            lambda: qwenprep.check(ov, engine=False, vllm_args=("--hf-token", b"hf-style-9090")),
            "hf-style-9090",
            2,
        ),
    ]
    for call, secret, code in calls:
        with pytest.raises(QwenprepError) as e:
            call()
        err = e.value
        shown = f"{err.message} {err.hint} {err} {err.args}"
        assert secret not in shown and "***" in err.message, shown
        assert err.exit_code == code and str(err).startswith(err.message)
    with pytest.raises(QwenprepError) as e:  # the type is kept: the gate's refusal
        qwenprep.serve_plan(ov, vllm_python=NO_VLLM, extra_args=["env-secret-7788"])
    assert type(e.value).__name__ == "ArgsRefused"


def test_a_path_that_is_not_text_is_a_usage_error(tmp_path: Path) -> None:
    for call in (
        lambda: qwenprep.revert(5),
        lambda: qwenprep.validate(None),
        lambda: qwenprep.patch(TINY, "1m", out=5),
    ):
        with pytest.raises(QwenprepError) as e:
            call()
        assert e.value.exit_code == 2 and "as a string (got" in e.value.message


def test_missing_path_is_exit_3(tmp_path: Path) -> None:
    with pytest.raises(QwenprepError) as e:
        qwenprep.validate(tmp_path / "nope")
    assert e.value.exit_code == 3
    assert (
        cli_json("validate", str(tmp_path / "nope"), code=3)["error"]["message"] == e.value.message
    )


def test_serve_plan_multinode_matches_the_cli(tmp_path: Path) -> None:
    from qwenprep.testing.synth import qwen3_coder_480b_fp8_config

    src = tmp_path / "Qwen3-Coder-480B-A35B-Instruct-FP8"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(qwen3_coder_480b_fp8_config()))
    ov = qwenprep.patch(src, "1m", out=tmp_path / "ov")["path"]
    a = qwenprep.serve_plan(
        ov,
        vllm_python=NO_VLLM,
        nnodes=2,
        gpus_per_node=4,
        master_addr="10.0.0.1",
        max_model_len="512k",
    )
    b = cli_json(
        "serve",
        ov,
        "--dry-run",
        "--vllm-python",
        NO_VLLM,
        "--nnodes",
        "2",
        "--gpus-per-node",
        "4",
        "--master-addr",
        "10.0.0.1",
        "--max-model-len",
        "512k",
    )
    assert a == b and a["multinode_mode"] == "native" and a["max_model_len"] == 524288
    assert [n["role"] for n in a["nodes"]] == ["head", "worker"]


def test_one_request_object_and_one_reader_for_sizes_and_contexts() -> None:
    from qwenprep.engines.vllm import engine as eng
    from qwenprep.request import MultiNode, PlanRequest, ServeRequest

    # the keyword form build_launch_plan took before is the same request
    old = ServeRequest.from_keywords(
        None,
        tp=2,
        max_model_len=4096,
        extra_args=["--x"],
        nnodes=2,
        gpus_per_node=1,
        multinode_mode="dp",
    )
    assert old == ServeRequest(
        tp=2, max_model_len=4096, extra_args=("--x",), multinode=MultiNode(2, 1, None, "dp")
    )
    with pytest.raises(TypeError, match="unexpected keyword"):
        ServeRequest.from_keywords(None, nodes=2)
    with pytest.raises(TypeError, match="together"):
        ServeRequest.from_keywords(ServeRequest(), tp=1)
    a = eng.build_launch_plan(TINY, ServeRequest(port=8123, max_model_len=4096), engine=None)
    b = eng.build_launch_plan(TINY, engine=None, port=8123, max_model_len=4096)
    assert a == b and a.port == 8123
    # contexts: qwenprep's 1m, for serve and plan alike; sizes never guessed, named by option
    assert ServeRequest.from_options(max_len="1m").max_model_len == 1048576
    with pytest.raises(QwenprepError, match="--max-model-len takes a token count"):
        ServeRequest.from_options(max_len="native")
    assert PlanRequest.from_options(kv_memory=2 * 1024**3).kv_memory == f"{2 * 1024**3}B"
    assert PlanRequest.from_options(gpu_memory="141GB").gpu_memory == "141GB"
    for bad in ({"gpu_memory": "8g"}, {"kv_memory": "141"}, {"context": "2x"}):
        with pytest.raises(QwenprepError) as e:
            PlanRequest.from_options(**bad)
        assert e.value.exit_code == 2
