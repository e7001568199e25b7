"""Inputs from the December hostile test that used to traceback, leak or mislead: over-long
paths, unredacted API reports, unbounded JSON reads, garbled redaction, unchecked API values.

Every test here failed on the code before its fix."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

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
