"""Every --json output of validate, verify and patch validates against its shipped schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest
from click.testing import Result

from conftest import TINY, TINY_FP8
from qwenprep.util.schemas import validator

CliFn = Callable[..., Result]


def _valid(schema: str, r: Result) -> dict[str, object]:
    obj = json.loads(r.stdout)
    errors = [e.message for e in validator(schema).iter_errors(obj)]
    assert errors == [], (errors, obj)
    return obj


@pytest.mark.parametrize("cmd", ["validate", "verify"])
@pytest.mark.parametrize("ckpt", [TINY, TINY_FP8], ids=["bf16", "fp8"])
def test_reports_match_schema(cli: CliFn, cmd: str, ckpt: Path) -> None:
    r = cli(cmd, str(ckpt), "--json")
    assert r.exit_code == 0, r.output
    obj = _valid("report", r)
    assert obj["kind"] == cmd and obj["ok"] is True


def test_failing_and_error_reports_match_schema(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    cfg = json.loads((qwen_src / "config.json").read_text())
    cfg["max_position_embeddings"] = 1048576
    (qwen_src / "config.json").write_text(json.dumps(cfg))
    r = cli("validate", str(qwen_src), "--json")
    assert r.exit_code == 1 and _valid("report", r)["ok"] is False
    r = cli("validate", str(tmp_path / "missing"), "--json")
    assert r.exit_code == 3 and "error" in _valid("report", r)


def test_patch_results_match_schema(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    for ctx, code in (("1m", 0), ("1m", 0), ("huge", 2)):
        r = cli("patch", str(qwen_src), "-c", ctx, "-o", str(tmp_path / "o"), "--json")
        assert r.exit_code == code
        _valid("patch-result", r)


def test_revert_results_match_schema(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(out)).exit_code == 0
    r = cli("revert", str(out), "--json")
    assert r.exit_code == 0 and _valid("revert-result", r)["action"] == "removed-overlay"
    r = cli("revert", str(qwen_src), "--json")
    assert r.exit_code == 0 and _valid("revert-result", r)["action"] == "already-original"
    r = cli("revert", str(tmp_path / "none"), "--json")
    assert r.exit_code == 0 and _valid("revert-result", r)["action"] == "absent"
    r = cli("revert", str(tmp_path / "no" / "none"), "--json")
    assert r.exit_code == 3 and "error" in _valid("revert-result", r)


def test_demo_result_matches_schema(cli: CliFn) -> None:
    r = cli("demo", "--no-serve", "--json")
    assert r.exit_code == 0, r.output
    obj = _valid("demo-result", r)
    assert obj["ok"] is True
    assert [s["status"] for s in obj["steps"]] == ["pass"] * len(obj["steps"])
