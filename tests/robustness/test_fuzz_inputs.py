"""Hostile manifests, index files and command-line numbers, generated: no traceback ever, exactly
one JSON object under --json, exit 0-3, and nothing deleted on the word of a bad manifest."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY, tree_state

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**6),
    st.sampled_from([0, -1, 2**63, 10**39]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.sampled_from(["qwenprep", "../../etc", "/abs", "a" * 64, "0" * 64]),
)
hostile = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=8,
)
MANIFEST_KEYS = [
    "schema_version",
    "tool",
    "tool_version",
    "created",
    "source",
    "config_sha256",
    "native_context",
    "target_context",
    "factor",
    "rope_style",
    "files",
    "digest",
]
# the interpreter this venv was made from: no vLLM there, so serve judges offline (no probe)
NO_VLLM = str(Path(sys.base_prefix) / "bin" / "python3")
RAW_JSON_TAILS = ["NaN", "Infinity", "1e999", "9" * 60, '"\\udc00"', "[" * 80 + "]" * 80]


def _invoke(*args: str) -> Any:
    from qwenprep.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def _sound(r: Any, *, allowed: tuple[int, ...] = (0, 1, 2, 3)) -> dict[str, Any]:
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code in allowed, (r.exit_code, r.output)
    obj = json.loads(r.stdout)  # exactly one object
    assert isinstance(obj, dict) and "ok" in obj
    return obj


@st.composite
def manifests(draw: st.DrawFn) -> str:
    m: dict[str, Any] = {"tool": "qwenprep", "schema_version": 1}
    for k in draw(st.lists(st.sampled_from(MANIFEST_KEYS), max_size=6, unique=True)):
        m[k] = draw(hostile)
    text = json.dumps(m)
    if draw(st.booleans()):
        text = text[:-1] + f', "x": {draw(st.sampled_from(RAW_JSON_TAILS))}}}'
    return text


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=manifests())
def test_hostile_manifests(tmp_path_factory: Any, text: str) -> None:
    d = tmp_path_factory.mktemp("m") / "ov"
    shutil.copytree(TINY, d)
    (d / ".qwenprep").mkdir()
    (d / ".qwenprep" / "manifest.json").write_text(text)
    (d / "mine.txt").write_text("keep")
    before = tree_state(d)
    for args in (
        ["revert", str(d)],
        ["validate", str(d)],
        ["verify", str(d)],
        ["list", str(d)],
        ["patch", str(TINY), "-c", "1m", "-o", str(d), "--force"],
    ):
        _sound(_invoke(*args, "--json"))
    assert tree_state(d) == before


@st.composite
def indexes(draw: st.DrawFn) -> str:
    idx: dict[str, Any] = {}
    if draw(st.booleans()):
        idx["metadata"] = draw(hostile)
    wm = draw(
        st.one_of(
            hostile,
            st.dictionaries(st.text(max_size=12), hostile, max_size=4),
            st.just({"model.embed_tokens.weight": "model.safetensors"}),
        )
    )
    idx["weight_map"] = wm
    text = json.dumps(idx)
    if draw(st.booleans()):
        text = text[:-1] + f', "x": {draw(st.sampled_from(RAW_JSON_TAILS))}}}'
    return text


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=indexes())
def test_hostile_index_files(tmp_path_factory: Any, text: str) -> None:
    d = tmp_path_factory.mktemp("i") / "ck"
    shutil.copytree(TINY, d)
    (d / "model.safetensors.index.json").write_text(text)
    for args in (
        ["verify", str(d)],
        ["plan", str(d), "--gpus", "1", "--kv-memory", "1GiB"],
        ["check", str(d), "--no-engine", "--gpus", "1", "--kv-memory", "1GiB"],
    ):
        _sound(_invoke(*args, "--json"))


numbers = st.one_of(
    st.integers(-(10**6), 10**400).map(str),
    st.text(max_size=12),
    st.sampled_from(
        [
            "1m",
            "1M",
            "256k",
            "0",
            "-1",
            "1e9",
            "nan",
            "inf",
            "1.5k",
            "٣",
            "1_000",
            "0x10",
            " 8 GiB ",
            "8g",
            "141GB",
            "1EiB",
            "9" * 500,
        ]
    ),
)


@settings(max_examples=80, deadline=None)
@given(context=numbers, kv=numbers)
def test_hostile_cli_numbers(context: str, kv: str) -> None:
    if context.startswith("-") or kv.startswith("-"):
        context, kv = context.lstrip("-") or "x", kv.lstrip("-") or "x"  # not an option name
    _sound(_invoke("plan", str(TINY), "-c", context, "--gpus", "1", "--kv-memory", kv, "--json"))
    _sound(
        _invoke(
            "serve",
            str(TINY),
            "--dry-run",
            "--max-model-len",
            context,
            "--vllm-python",
            NO_VLLM,
            "--json",
        )
    )
