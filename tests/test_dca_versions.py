"""Dual Chunk Attention is judged for a vLLM version: the V0 engine and its DUAL_CHUNK_FLASH_ATTN
backend exist before vLLM 0.11 and are gone from 0.11 on (docs/qwen-line.md). validate asks the
installed vLLM (its distribution metadata), and says so when there is none."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import Result

from qwenprep.validation import VllmVersion, validate_checkpoint

CliFn = Callable[..., Result]
NO_VLLM = str(Path(sys.base_prefix) / "bin" / "python3")  # an interpreter without vLLM


@pytest.fixture(scope="module")
def qwen25_1m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qwenprep.synth import make_shaped_checkpoint, qwen25_7b_instruct_1m_config

    return make_shaped_checkpoint(
        tmp_path_factory.mktemp("q25") / "Qwen2.5-7B-Instruct-1M",
        config=qwen25_7b_instruct_1m_config(),
        fp8=False,
        shards=2,
    )


def _dca(checks: list[Any]) -> Any:
    found = [c for c in checks if (c["id"] if isinstance(c, dict) else c.id) == "invariant.dca"]
    assert len(found) == 1
    return found[0]


def test_validate_without_vllm_warns_and_says_why(
    cli: CliFn, qwen25_1m: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no vLLM to judge for, a DCA config is neither passed nor failed: a warning that
    names both sides and how to decide (it used to fail as if vLLM >= 0.11 were certain)."""
    monkeypatch.setenv("QWENPREP_VLLM_PYTHON", NO_VLLM)
    r = cli("validate", str(qwen25_1m), "--json")
    assert r.exit_code == 0, r.output
    dca = _dca(json.loads(r.stdout)["checks"])
    assert dca["status"] == "warn"
    assert "No vLLM version is known" in dca["message"] and "vLLM < 0.11" in dca["message"]
    assert "--context native" in dca["message"]
    assert "not an executable interpreter" not in dca["message"]


def test_a_typo_in_the_engine_interpreter_is_named(
    cli: CliFn, qwen25_1m: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """QWENPREP_VLLM_PYTHON pointing at nothing reads as "no vLLM known": the warning says why."""
    typo = str(tmp_path / "venv" / "bin" / "pyhton")
    monkeypatch.setenv("QWENPREP_VLLM_PYTHON", typo)
    r = cli("validate", str(qwen25_1m), "--json")
    assert r.exit_code == 0, r.output
    dca = _dca(json.loads(r.stdout)["checks"])
    assert dca["status"] == "warn"
    assert f"(QWENPREP_VLLM_PYTHON={typo} is not an executable interpreter)" in dca["message"]


def test_validate_judges_for_the_installed_vllm(cli: CliFn, qwen25_1m: Path) -> None:
    pytest.importorskip("vllm")  # the test venv's vLLM (0.32): no V0 engine
    r = cli("validate", str(qwen25_1m), "--json")
    assert r.exit_code == 1, r.output
    dca = _dca(json.loads(r.stdout)["checks"])
    assert dca["status"] == "fail" and "installed in" in dca["message"]
    assert "25351" in dca["message"]


@pytest.mark.parametrize(
    "version,status",
    [((0, 10, 2), "pass"), ((0, 10, 0), "pass"), ((0, 11, 0), "fail"), ((0, 32, 0), "fail")],
)
def test_dca_by_version(qwen25_1m: Path, version: tuple[int, int, int], status: str) -> None:
    dca = _dca(validate_checkpoint(qwen25_1m, vllm=VllmVersion(version, "--vllm-version")))
    assert dca.status == status
    shown = ".".join(map(str, version))
    assert f"vLLM {shown} (--vllm-version)" in dca.message


def test_check_judges_dca_for_the_named_version(cli: CliFn, qwen25_1m: Path) -> None:
    """check --vllm-version 0.10.2 --no-engine: the config and the launch plan are judged for
    0.10.2 (DCA runs there, on the V0 engine); 0.32 refuses both. Before, the plan assumed the
    newest vLLM whatever was named, so 0.10.2 failed with '0.33.0 (assumed)'."""
    r = cli(
        "check",
        str(qwen25_1m),
        "--no-engine",
        "--vllm-version",
        "0.10.2",
        "--kv-memory",
        "60GiB",
        "--json",
    )
    out = json.loads(r.stdout)
    fails = {c["id"]: c["message"] for c in out["checks"] if c["status"] == "fail"}
    assert r.exit_code == 0, fails
    assert _dca(out["checks"])["status"] == "pass"
    r = cli(
        "check",
        str(qwen25_1m),
        "--no-engine",
        "--vllm-version",
        "0.32",
        "--kv-memory",
        "60GiB",
        "--json",
    )
    assert r.exit_code == 1
    fails = {c["id"]: c["message"] for c in json.loads(r.stdout)["checks"] if c["status"] == "fail"}
    assert "invariant.dca" in fails and "0.32" in fails["engine.plan"]


def test_validate_for_a_named_version(cli: CliFn, qwen25_1m: Path) -> None:
    r = cli("validate", str(qwen25_1m), "--vllm-version", "0.10.2", "--json")
    assert r.exit_code == 0, r.output
    assert "vLLM 0.10.2 (--vllm-version)" in _dca(json.loads(r.stdout)["checks"])["message"]
    r = cli("validate", str(qwen25_1m), "--vllm-version", "0.11")
    assert r.exit_code == 1 and "vLLM 0.11.0 (--vllm-version)" in r.output
    r = cli("validate", str(qwen25_1m), "--vllm-version", "latest")
    assert r.exit_code == 2 and "unreadable vLLM version" in r.output
