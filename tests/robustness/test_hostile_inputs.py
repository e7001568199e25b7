"""Inputs from the December hostile test that used to traceback, leak or mislead: over-long
paths, unredacted API reports, unbounded JSON reads, garbled redaction, unchecked API values.

Every test here failed on the code before its fix."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import Result

import qwenprep
from conftest import TINY
from qwenprep.errors import QwenprepError

CliFn = Callable[..., Result]
LONG = "a" * 300  # one path component over NAME_MAX (255 bytes): os.stat raises ENAMETOOLONG
OFFLINE = ["--engine-python", "/usr/bin/python3"]  # no vLLM there: the offline gate


@pytest.fixture
def overlay(tmp_path: Path) -> Path:
    src = tmp_path / "S1"
    shutil.copytree(TINY, src)
    out = tmp_path / "OVA"
    qwenprep.patch(src, "1m", out=out)
    return out


@pytest.mark.parametrize(
    "argv",
    [
        ["verify", LONG],
        ["validate", LONG],
        ["list", LONG],
        ["revert", LONG],
        ["plan", LONG, "--kv-memory", "1GiB"],
        ["check", LONG, *OFFLINE],
        ["patch", LONG, "-c", "1m"],
        ["patch", str(TINY), "-c", "1m", "--out", LONG],
        ["serve", LONG, *OFFLINE, "--dry-run"],
        ["verify", "x/" + LONG],
    ],
    ids=lambda a: " ".join(x[:8] for x in a),
)
def test_path_too_long_is_an_input_error(cli: CliFn, argv: list[str]) -> None:
    res = cli(*argv)
    assert res.exit_code in (2, 3), res.output
    assert "too long" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("fn", ["verify", "validate", "check", "serve_plan", "revert"])
def test_path_too_long_in_the_api(fn: str) -> None:
    with pytest.raises(QwenprepError, match="too long") as err:
        getattr(qwenprep, fn)(LONG)
    assert err.value.exit_code in (2, 3)


API_KEY, HF_TOKEN = "sk-SECRETabc123456", "hf_SECRETargABCDEFGH5678"


def test_api_check_redacts_the_engine_args(overlay: Path) -> None:
    rep = qwenprep.check(
        overlay,
        engine=False,
        kv_memory="1GiB",
        vllm_args=["--api-key", API_KEY, "--hf-token", HF_TOKEN],
    )
    text = repr(rep)
    assert API_KEY not in text and HF_TOKEN not in text and "SECRET" not in text
    assert rep["path"] == str(overlay)


def test_api_serve_plan_redacts_the_engine_args(overlay: Path) -> None:
    try:
        rep = qwenprep.serve_plan(
            overlay, vllm_python="/usr/bin/python3", extra_args=["--api-key", API_KEY]
        )
    except QwenprepError as err:  # refused by the gate: the message must be clean as well
        text = str(err)
    else:
        text = repr(rep)
    assert API_KEY not in text and "SECRET" not in text


def _sparse(path: Path, size: int) -> None:
    """PATH made SIZE bytes long without writing them (a sparse file: no disk used)."""
    path.unlink()
    with open(path, "wb") as f:
        f.truncate(size)


@pytest.mark.parametrize("argv", [["validate"], ["verify"], ["check", *OFFLINE]])
def test_huge_config_is_refused_unread(cli: CliFn, overlay: Path, argv: list[str]) -> None:
    cfg = overlay / "config.json"
    cfg.unlink()  # the overlay's own file, not the linked source's
    cfg.write_text("{}")
    _sparse(cfg, 100_000_000)  # over 64 MiB; the hostile test used 1.5 GB
    res = cli(argv[0], str(overlay), *argv[1:])
    assert res.exit_code in (1, 3), res.output
    assert "64 MiB" in res.output and "config.json" in res.output


def test_huge_index_is_refused_unread(cli: CliFn, tmp_path: Path) -> None:
    src = tmp_path / "S1"
    shutil.copytree(TINY, src)
    index = src / "model.safetensors.index.json"
    if not index.exists():
        index.write_text("{}")
    _sparse(index, 100_000_000)  # over 64 MiB; the hostile test used 1.5 GB
    res = cli("verify", str(src))
    assert res.exit_code == 1, res.output
    assert "64 MiB" in res.output and "model.safetensors.index.json" in res.output


@pytest.mark.parametrize(
    "text",
    [
        "--emit k8s: the engine arguments after -- carry a credential (--api-key, --hf-token or "
        "another); the manifest would hold it in plain text.",
        "env VLLM_API_KEY (vLLM reads it when --api-key is not given) or HF_TOKEN",
        "set --hf-token when the repo is gated, and --api-key --port 8000 for clients",
    ],
)
def test_redaction_leaves_prose_after_an_option_alone(text: str) -> None:
    from qwenprep.util.redact import redact

    assert redact(text, []) == text


def test_redaction_masks_the_value_and_keeps_the_sentence() -> None:
    from qwenprep.util.redact import redact

    text = (
        "SGLang is not here to judge --api-key X: without it qwenprep reads only "
        "--json-model-override-args."
    )
    assert redact(text, []) == text.replace(" X:", " ***:")
    two = "vllm serve /m --api-key K1abcdef Second9Key and more"
    assert redact(two, []) == "vllm serve /m --api-key *** *** and more"


def test_emit_k8s_refusal_reads_as_written(cli: CliFn, overlay: Path) -> None:
    res = cli("serve", str(overlay), *OFFLINE, "--emit", "k8s", "--", "--api-key", "X")
    assert res.exit_code == 2, res.output
    assert "(--api-key, --hf-token or another)" in res.output
    assert "when --api-key is not given)" in res.output


@pytest.mark.parametrize("dcp", [None, "abc", [], True])
def test_api_plan_refuses_a_bad_dcp(overlay: Path, dcp: Any) -> None:
    with pytest.raises(QwenprepError, match="--dcp") as err:
        qwenprep.plan(overlay, kv_memory="1GiB", dcp=dcp)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("value", ["yes", 1, 0, "false"])
def test_api_plan_refuses_a_non_bool_prefix_caching(overlay: Path, value: Any) -> None:
    with pytest.raises(QwenprepError, match="prefix-caching") as err:
        qwenprep.plan(overlay, kv_memory="1GiB", prefix_caching=value)
    assert err.value.exit_code == 2


@pytest.mark.parametrize(
    "call",
    [
        lambda ov: qwenprep.verify(str(ov) + "\0x"),
        lambda ov: qwenprep.validate(str(ov) + "\0"),
        lambda ov: qwenprep.serve_plan(ov, host="0.0.0.0\0", vllm_python="/usr/bin/python3"),
        lambda ov: qwenprep.serve_plan(ov, served_model_name="m\0", vllm_python="/usr/bin/python3"),
        lambda ov: qwenprep.serve_plan(ov, extra_args=["--seed", "1\0"]),
        lambda ov: qwenprep.serve_plan(ov, vllm_python="/usr/bin/python3\0"),
        lambda ov: qwenprep.check(ov, engine=False, kv_memory="1GiB", vllm_args=["a\0"]),
        lambda ov: qwenprep.patch(ov, "1m", out=str(ov) + "-x\0"),
    ],
    ids=[
        "verify",
        "validate",
        "host",
        "served_model_name",
        "extra_args",
        "vllm_python",
        "vllm_args",
        "out",
    ],
)
def test_api_refuses_nul_bytes(overlay: Path, call: Callable[[Path], Any]) -> None:
    with pytest.raises(QwenprepError, match="NUL") as err:
        call(overlay)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_serve_ready_timeout_must_be_finite_and_positive(
    cli: CliFn, overlay: Path, value: str
) -> None:
    res = cli("serve", str(overlay), *OFFLINE, "--dry-run", "--ready-timeout", value)
    assert res.exit_code == 2, res.output
    assert "--ready-timeout must be a finite number of seconds above 0" in res.output


def test_serve_dry_run_judges_proof_tokens(cli: CliFn, overlay: Path) -> None:
    res = cli("serve", str(overlay), *OFFLINE, "--dry-run", "--proof-tokens", "9" * 21)
    assert res.exit_code == 2, res.output
    assert "--proof-tokens" in res.output and "at most 1,048,575" in res.output
    ok = cli("serve", str(overlay), *OFFLINE, "--dry-run", "--proof-tokens", "300000")
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("count", ["1000000000000000", "9" * 60, "5000000000"])
def test_a_context_count_too_large_is_said_so(cli: CliFn, overlay: Path, count: str) -> None:
    res = cli("plan", str(overlay), "--context", count, "--kv-memory", "1GiB")
    assert res.exit_code == 2, res.output
    assert "too large" in res.output and "4,294,967,296" in res.output
    assert "unknown context" not in res.output


def test_sizes_in_pib_are_read() -> None:
    from qwenprep.util.sizes import parse_size

    assert parse_size("1PiB") == 1024**5 and parse_size("2PB") == 2 * 1000**5
    with pytest.raises(QwenprepError, match="more than 1 EiB"):
        parse_size("5000PiB", "--kv-memory")


def test_plan_kv_memory_in_pib(cli: CliFn, overlay: Path) -> None:
    res = cli("plan", str(overlay), "--kv-memory", "1PiB")
    assert res.exit_code == 0, res.output
    assert "unreadable size" not in res.output
