"""Read once (issue 10, item 7): verify and check read config.json, the index and each
safetensors header once, and the fast paths that make that cheap agree with the slow ones.

- Every shard and the index are opened exactly once by `verify` and by `check --no-engine`
  (counted with an audit hook on `open`, in a subprocess, on a real checkpoint).
- safetensors_io.sane_entries (the column-wise fast path) never passes a header that the
  entry-by-entry path finds a problem in (hypothesis over hostile headers), and passes every
  header synth writes.
- The bisect walks of integrity_tensors find what the regexes and layouts.module_in find.
- schemas.is_valid_fast agrees with jsonschema on real configs and their mutations.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY, TINY_FP8
from qwenprep.checks.scan import header_problems
from qwenprep.checks.tensors import _tokens, _under
from qwenprep.errors import InputError
from qwenprep.model.layouts import module_in
from qwenprep.testing.synth import make_shaped_checkpoint, tiny_fp8_config
from qwenprep.util.safetensors_io import (
    SafetensorsHeader,
    load_header,
    sane_entries,
    typed_tensors,
)
from qwenprep.util.schemas import is_valid_fast, load_schema, validator

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

COUNT_OPENS = """
import collections, os, sys
from pathlib import Path
root = os.path.realpath(sys.argv[2])
counts = collections.Counter()
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        p = os.path.realpath(os.fsdecode(args[0]))
        if p.startswith(root + os.sep):
            counts[os.path.relpath(p, root)] += 1
sys.addaudithook(hook)
if sys.argv[1] == "verify":
    from qwenprep.checks.integrity import verify_checkpoint
    ok = verify_checkpoint(Path(sys.argv[2])).ok
else:
    from qwenprep.checks.preflight import check_options, run_checks
    ok = run_checks(Path(sys.argv[2]), check_options(engine=False)).ok
print(__import__("json").dumps({"ok": ok, "opens": counts}))
"""


def _opens(command: str, path: Path) -> tuple[bool, dict[str, int]]:
    r = subprocess.run(
        [sys.executable, "-c", COUNT_OPENS, command, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    return out["ok"], out["opens"]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tiny_fp8_config(layers=4)
    return make_shaped_checkpoint(tmp_path_factory.mktemp("ro") / "ck", config=cfg, shards=5)


@pytest.mark.parametrize("command", ["verify", "check"])
def test_each_shard_and_the_index_are_read_once(sharded: Path, command: str) -> None:
    ok, opens = _opens(command, sharded)
    assert ok
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) == 5
    assert {s: opens.get(s) for s in shards} == {s: 1 for s in shards}
    assert opens.get("model.safetensors.index.json") == 1
    if command == "verify":
        assert opens.get("config.json") == 1


def test_synth_headers_take_the_fast_path(sharded: Path) -> None:
    for p in [
        *sharded.glob("*.safetensors"),
        *TINY_FP8.glob("*.safetensors"),
        *TINY.glob("*.safetensors"),
    ]:
        assert load_header(p).sane, p


# ------------------------------------------------------------------ sane_entries is sound

_DTYPES = ["F8_E4M3", "BF16", "F32", "F4", "F6_E2M3", "I64", "BOOL", "Q4", "bf16"]
_VALUES: Any = st.one_of(
    st.integers(min_value=-3, max_value=2**64 + 2),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
)


@st.composite
def headers(draw: Any) -> tuple[dict[str, Any], int]:
    """A header's entries, mostly well formed and contiguous, with hostile damage drawn in."""
    n = draw(st.integers(min_value=0, max_value=6))
    entries: dict[str, Any] = {}
    cursor = 0
    for i in range(n):
        dtype = draw(st.sampled_from(_DTYPES))
        shape = draw(st.lists(st.integers(min_value=0, max_value=5), max_size=3))
        width = {
            "F8_E4M3": 8,
            "BF16": 16,
            "F32": 32,
            "F4": 4,
            "F6_E2M3": 6,
            "I64": 64,
            "BOOL": 8,
        }.get(dtype, 8)
        bits = width
        for d in shape:
            bits *= d
        size = -(-bits // 8)
        start, end = cursor, cursor + size
        cursor = end
        entry: dict[str, Any] = {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}
        damage = draw(st.integers(min_value=0, max_value=9))
        if damage == 1:
            entry["shape"] = [*shape, draw(_VALUES)]
        elif damage == 2:
            entry["data_offsets"] = [draw(_VALUES), end]
        elif damage == 3:
            entry["data_offsets"] = [start, draw(_VALUES)]
        elif damage == 4:
            entry.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])))
        elif damage == 5:
            entry["data_offsets"] = [start, end, end]
        elif damage == 6:
            entry["shape"] = draw(_VALUES)
        elif damage == 7:
            entry = draw(_VALUES)
        entries[draw(st.sampled_from([f"t{i}", f"\ud800{i}", f"m.{i}"]))] = entry
    area = cursor + draw(st.sampled_from([0, 0, 0, 1, -1]))
    return entries, area


@SETTINGS
@given(headers())
def test_sane_entries_never_passes_a_header_with_problems(h: tuple[dict[str, Any], int]) -> None:
    entries, area = h
    if not sane_entries(entries, area):
        return
    path = Path("x.safetensors")
    typed = typed_tensors(path, entries)  # raises InputError if an entry is malformed
    assert not header_problems(SafetensorsHeader(path, 8, 8 + 8 + area, typed, None))


def test_load_header_reads_floats_and_bools_the_slow_way(tmp_path: Path) -> None:
    for bad in ([2.0, 3], [True, 3]):
        head = json.dumps({"w": {"dtype": "U8", "shape": bad, "data_offsets": [0, 6]}}).encode()
        p = tmp_path / "x.safetensors"
        p.write_bytes(len(head).to_bytes(8, "little") + head + bytes(6))
        h = load_header(p)
        assert not h.sane
        with pytest.raises(InputError, match="malformed header entry"):
            typed_tensors(p, h.entries)


# ------------------------------------------------------------------ bisect walks

_NAME = st.text(alphabet=st.sampled_from(list("ml.ayers0129٣x/_")), max_size=24)
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")
_EXPERT_RE = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.")


@SETTINGS
@given(
    st.lists(
        st.one_of(
            _NAME,
            _NAME.map(lambda s: "model.layers." + s),
            _NAME.map(lambda s: "model.layers.1.mlp.experts." + s),
        ),
        max_size=40,
    )
)
def test_tokens_find_what_the_regexes_find(names: list[str]) -> None:
    names = sorted(set(names))
    layers = {int(m.group(1)) for n in names if (m := _LAYER_RE.match(n))}
    assert {i for _, i, _, _ in _tokens(names, "model.layers.")} == layers
    experts = {(int(m.group(1)), int(m.group(2))) for n in names if (m := _EXPERT_RE.match(n))}
    found = {
        (i, e)
        for tok, i, lo, hi in _tokens(names, "model.layers.")
        for _, e, _, _ in _tokens(names, f"model.layers.{tok}.mlp.experts.", lo, hi)
    }
    assert found == experts


@SETTINGS
@given(st.lists(_NAME, max_size=30), st.frozensets(_NAME, max_size=5))
def test_under_finds_what_module_in_finds(names: list[str], modules: frozenset[str]) -> None:
    names = sorted(set(names))
    assert _under(names, modules) == {n for n in names if module_in(n.rsplit(".", 1)[0], modules)}


# ------------------------------------------------------------------ schemas without jsonschema


def _configs() -> list[dict[str, Any]]:
    return [
        json.loads((d / "config.json").read_text())
        for d in sorted(TINY.parent.iterdir())
        if (d / "config.json").is_file()
    ]


_MUTANT: Any = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-2, max_value=2**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
    st.just([128, 128]),
    st.just({"rope_type": "yarn", "factor": 4.0}),
)


@SETTINGS
@given(st.data())
def test_is_valid_fast_agrees_with_jsonschema(data: Any) -> None:
    from jsonschema import Draft202012Validator, validators

    from qwenprep.util.schemas import _strict_integer

    cfg = dict(data.draw(st.sampled_from(_configs())))
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
        key = data.draw(st.sampled_from(sorted(cfg) + ["rope_scaling", "head_dim"]))
        if data.draw(st.booleans()):
            cfg[key] = data.draw(_MUTANT)
        else:
            cfg.pop(key, None)
    checker = Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer)
    strict = validators.extend(Draft202012Validator, type_checker=checker)
    for name in ("qwen3-config", "qwen2-config", "qwen3-next-config"):
        schema = load_schema(name)
        real = not list(strict(schema).iter_errors(cfg))
        assert is_valid_fast(schema, schema, cfg) == real, name
        assert (not list(validator(name).iter_errors(cfg))) == real, name
