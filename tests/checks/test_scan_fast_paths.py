"""The C-speed fast paths of verify (issue 10, item 7) never accept what the slow, explaining
paths refuse, and give the same data when they accept:

- safetensors_io.fast_entries (headers decoded by msgspec straight into Entry objects) against
  json + header_metadata + typed_tensors + header_problems, over hostile header bytes
  (hypothesis) and hand-made traps (a second `__metadata__`, a `}` inside metadata, escapes,
  metadata not first, numbers past int64);
- safetensors_io.fast_index against jsonio.loads_located;
- layouts.experts_of (expert 0 written once, the rest by its pattern) against writing every
  expert through the linear writer, for kept-module lists that touch the experts or not;
- every layout's names are distinct (integrity's one-comparison pass relies on it).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwenprep.checks.scan import header_problems
from qwenprep.errors import InputError
from qwenprep.model.families import lookup
from qwenprep.model.families.qwen3_5 import qwen3_5_35b_a3b_fp8_config, tiny_qwen3_5_moe_config
from qwenprep.model.layouts import TensorSpec, experts_of, module_in, qwen3_moe_tensors
from qwenprep.model.view import ModelView
from qwenprep.testing import synth
from qwenprep.util.jsonio import loads_located
from qwenprep.util.safetensors_io import (
    SafetensorsHeader,
    fast_entries,
    fast_index,
    header_metadata,
    parse_header_json,
    typed_tensors,
)

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PATH = Path("x.safetensors")


def _slow(raw: bytes, area: int) -> tuple[dict[str, Any], dict[str, str] | None] | None:
    """What the json path makes of RAW: (entries as plain tuples, metadata), or None when it
    refuses the header or finds a problem in it."""
    try:
        obj = parse_header_json(PATH, raw)
        meta = header_metadata(PATH, obj)
        typed = typed_tensors(PATH, obj)
    except InputError:
        return None
    if not typed or header_problems(
        SafetensorsHeader(PATH, len(raw), 8 + len(raw) + area, typed, meta)
    ):
        return None
    return {n: (t.dtype, t.shape, (t.start, t.end)) for n, t in typed.items()}, meta


def _agrees(raw: bytes, area: int) -> bool:
    """fast_entries accepts RAW only when the slow path does, with the same data; returns
    whether it accepted."""
    fast = fast_entries(raw, area)
    if fast is None:
        return False
    slow = _slow(raw, area)
    assert slow is not None, raw
    entries, meta = fast
    assert {n: (e.dtype, e.shape, e.data_offsets) for n, e in entries.items()} == slow[0]
    assert meta == slow[1]
    return True


def _header(entries: dict[str, Any], meta: Any = None, meta_first: bool = True) -> bytes:
    obj: dict[str, Any] = {}
    if meta is not None and meta_first:
        obj["__metadata__"] = meta
    obj.update(entries)
    if meta is not None and not meta_first:
        obj["__metadata__"] = meta
    return json.dumps(obj, separators=(",", ":")).encode()


_E = b'{"dtype":"U8","shape":[4],"data_offsets":[0,4]'  # an entry, less its closing brace
GOOD = {
    "a.weight": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
    "b.weight": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [12, 16]},
}


def test_a_plain_header_takes_the_fast_path() -> None:
    assert _agrees(_header(GOOD, {"format": "pt"}), 16)
    assert _agrees(_header(GOOD), 16)
    # padded with spaces to 8 bytes, as safetensors writes it
    assert _agrees(_header(GOOD, {"format": "pt"}) + b"   ", 16)


@pytest.mark.parametrize(
    "raw",
    [
        # a second __metadata__: json keeps the last (not strings), so the slow path refuses
        b'{"__metadata__":{"format":"pt"},'
        + _header(GOOD)[1:-1]
        + b',"__metadata__":{"format":5}}',
        # metadata not first
        _header(GOOD, {"format": "pt"}, meta_first=False),
        # a "}" inside a metadata string
        _header(GOOD, {"format": "p}t"}),
        # metadata not of strings
        _header(GOOD, {"format": 1}),
        # an escape anywhere
        _header({"a\\u0041": GOOD["a.weight"], "b.weight": GOOD["b.weight"]}),
        # a lone surrogate escape in a name
        b'{"\\ud800":'
        + json.dumps(GOOD["a.weight"]).encode()
        + b',"b.weight":'
        + json.dumps(GOOD["b.weight"]).encode()
        + b"}",
        # a dimension past int64 (legal up to 2**64 - 1 in the format: json decides)
        _header({"a": {"dtype": "U8", "shape": [2**63], "data_offsets": [0, 16]}}),
        # bools and floats where integers belong
        _header({"a": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}),
        _header({"a": {"dtype": "U8", "shape": [1.0], "data_offsets": [0, 1]}}),
        # a field missing, an unknown dtype, three offsets
        _header({"a": {"dtype": "U8", "data_offsets": [0, 1]}}),
        _header({"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}),
        _header({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 1]}}),
        # a hole, an overlap, a span that is not dtype x shape
        _header({"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}),
        _header(
            {
                "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]},
            }
        ),
        _header({"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 2]}}),
        # not UTF-8, not an object, empty
        b'{"\xff":' + json.dumps(GOOD["a.weight"]).encode() + b"}",
        # what msgspec would skip unchecked in a field Entry does not have (found by a
        # hostile pass): bad UTF-8, a number json refuses for its length, deep nesting
        b'{"a":' + _E + b',"x":"\xff"}}',
        b'{"a":' + _E + b',"\xff":1}}',
        b'{"a":' + _E + b',"x":"\xed\xa0\x80"}}',
        b'{"a":' + _E + b',"x":1' + b"0" * 4300 + b"}}",
        b'{"a":' + _E + b',"x":' + b"[" * 994 + b"]" * 994 + b"}}",
        # a surrogate written as UTF-8 in the metadata (json reads bytes with surrogatepass)
        b'{"__metadata__":{"format":"\xed\xa0\x80"},"a":' + _E + b"}}",
        b'{"__metadata__":{"\xed\xb0\x80":"pt"},"a":' + _E + b"}}",
        # metadata alone; the key mentioned again further on
        b'{"__metadata__":{"format":"pt"}}',
        b'{"a":' + _E + b',"__metadata__":"x"}}',
        b"[1, 2]",
        b"{}",
    ],
)
def test_traps_leave_the_fast_path(raw: bytes) -> None:
    for area in (4, 16):
        assert fast_entries(raw, area) is None, raw


def test_metadata_with_space_before_the_next_key_is_read() -> None:
    raw = b'{"__metadata__":{"format":"pt"} ,\n "a":' + _E + b"}}"
    assert _agrees(raw, 4)


def test_a_header_out_of_order_is_sorted_first() -> None:
    rev = dict(reversed(list(GOOD.items())))
    assert _agrees(_header(rev, {"format": "pt"}), 16)


_DTYPES = ["F8_E4M3", "BF16", "F32", "F4", "F6_E2M3", "I64", "BOOL", "Q4"]
_WIDTH = {"F8_E4M3": 8, "BF16": 16, "F32": 32, "F4": 4, "F6_E2M3": 6, "I64": 64, "BOOL": 8}
_ODD: Any = st.one_of(
    st.integers(min_value=-2, max_value=2**64 + 2),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=2),
)


@st.composite
def header_bytes(draw: Any) -> tuple[bytes, int]:
    """Header bytes, mostly well formed and contiguous, with hostile damage drawn in: in the
    entries, in the metadata, and in the bytes themselves."""
    entries: dict[str, Any] = {}
    cursor = 0
    for i in range(draw(st.integers(min_value=0, max_value=5))):
        dtype = draw(st.sampled_from(_DTYPES))
        shape = draw(st.lists(st.integers(min_value=0, max_value=5), max_size=3))
        bits = _WIDTH.get(dtype, 8)
        for d in shape:
            bits *= d
        size = -(-bits // 8)
        entry: Any = {"dtype": dtype, "shape": shape, "data_offsets": [cursor, cursor + size]}
        cursor += size
        damage = draw(st.integers(min_value=0, max_value=8))
        if damage == 1:
            entry["shape"] = [*shape, draw(_ODD)]
        elif damage == 2:
            entry["data_offsets"] = [draw(_ODD), entry["data_offsets"][1]]
        elif damage == 3:
            entry.pop(draw(st.sampled_from(["dtype", "shape", "data_offsets"])))
        elif damage == 4:
            entry = draw(_ODD)
        elif damage == 5:
            entry["extra"] = draw(_ODD)
        entries[draw(st.sampled_from([f"t{i}", f"\ud800{i}", f"m.{i}", f"n}}{i}"]))] = entry
    meta = draw(
        st.one_of(
            st.none(),
            st.just({"format": "pt"}),
            st.dictionaries(st.sampled_from(["format", "x}", "dtype", "shape"]), _ODD, max_size=2),
        )
    )
    try:
        raw = _header(entries, meta, meta_first=draw(st.booleans()))
    except UnicodeEncodeError:
        raw = json.dumps(entries).encode()
    if draw(st.booleans()) and raw:
        at = draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw = raw[:at] + bytes([draw(st.integers(min_value=0, max_value=255))]) + raw[at + 1 :]
    area = cursor + draw(st.sampled_from([0, 0, 0, 1, -1]))
    return raw, area


@SETTINGS
@given(header_bytes())
def test_fast_entries_never_accepts_what_the_json_path_refuses(h: tuple[bytes, int]) -> None:
    _agrees(*h)


# ------------------------------------------------------------------ the index


def _index(wm: Any, meta: Any = None, **extra: Any) -> bytes:
    obj: dict[str, Any] = {"weight_map": wm}
    if meta is not None:
        obj["metadata"] = meta
    obj.update(extra)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    "raw, fast",
    [
        (_index({"a": "s1.safetensors", "b": "s2.safetensors"}, {"total_size": 10}), True),
        (_index({"a": "s1"}, {"total_size": 10, "total_parameters": 5, "format": "pt"}), True),
        (_index({"a": "s1"}), True),
        # what loads_located refuses or reads otherwise: leave it to it
        (_index({"a": "s1"}, {"total_size": 10**41}), False),
        (_index({"a": "s1"}, {"total_size": 1.5}), False),
        (_index({"a": 1}), False),
        (_index({"a": "s1"}, other={"deep": [[[]]]}), False),
        (_index({"a\\u0041": "s1"}), False),
        (b'{"weight_map": {"a": "s1"}, "weight_map": {"b": "s2"}}', False),
        (b'{"weight_map": {"a": "s1"}, "metadata": {"total_size": NaN}}', False),
        (b'{"weight_map": {"a": "s1"}} trailing', False),
        # json keeps "metadata": null as None; the fast path leaves it to json
        (b'{"weight_map": {"a": "s1"}, "metadata": null}', False),
    ],
)
def test_fast_index_reads_only_plain_indexes(raw: bytes, fast: bool) -> None:
    got = fast_index(raw)
    assert (got is not None) == fast
    if got is not None:
        assert got == loads_located(raw.decode(), "index")


# ------------------------------------------------------------------ layouts


@pytest.mark.parametrize(
    "kept",
    [
        [],
        ["lm_head"],
        ["model.layers.1.mlp.experts.2"],  # one expert kept
        ["model.layers.1.mlp.experts.2.up_proj"],  # one projection of one expert
        ["model.layers.1.mlp.experts"],  # every expert of a layer
        ["model.layers.1.mlp"],  # above the experts
        ["model.layers.1"],
        ["model"],
        ["model.layers.1.mlp.experts.1"],  # a prefix of experts.10 as a string, not a module
    ],
)
def test_experts_of_is_every_expert_through_the_writer(kept: list[str]) -> None:
    keep = frozenset(kept)

    def linear(module: str, out: int, inp: int) -> Iterator[TensorSpec]:  # as the layouts do
        if module_in(module, keep):
            yield TensorSpec(f"{module}.weight", "BF16", (out, inp))
        else:
            yield TensorSpec(f"{module}.weight", "F8_E4M3", (out, inp))
            yield TensorSpec(f"{module}.weight_scale_inv", "F32", (-(-out // 128), -(-inp // 128)))

    projs = (("gate_proj", 256, 128), ("up_proj", 256, 128), ("down_proj", 128, 256))
    for layer in (0, 1):
        prefix = f"model.layers.{layer}.mlp.experts."
        one_by_one = [
            s for e in range(12) for p, o, i in projs for s in linear(f"{prefix}{e}.{p}", o, i)
        ]
        assert list(experts_of(linear, prefix, 12, projs, keep)) == one_by_one

    # and through a whole layout: the kept experts, and only they, stay BF16
    config = synth.tiny_fp8_config(layers=2, experts=12)
    config["quantization_config"]["modules_to_not_convert"] = kept
    bf16 = {s.name for s in qwen3_moe_tensors(config) if s.dtype == "BF16"}
    for layer in (0, 1):
        for e in range(12):
            for p, _, _ in projs:
                name = f"model.layers.{layer}.mlp.experts.{e}.{p}"
                assert (f"{name}.weight" in bf16) == module_in(name, keep), name


def _configs() -> dict[str, dict[str, Any]]:
    c480 = synth.qwen3_coder_480b_fp8_config()
    bf16 = copy.deepcopy(c480)
    bf16.pop("quantization_config")
    return {
        "480b-fp8": c480,
        "480b-bf16": bf16,
        "tiny-fp8": synth.tiny_fp8_config(),
        "next": synth.qwen3_next_80b_config(),
        "next-fp8": synth.qwen3_next_80b_fp8_config(),
        "qwen2.5": synth.qwen25_7b_instruct_1m_config(),
        "qwen3.5-fp8": qwen3_5_35b_a3b_fp8_config(),
        "qwen3.5-tiny": tiny_qwen3_5_moe_config(),
    }


@pytest.mark.parametrize("name, config", list(_configs().items()))
def test_layout_names_are_distinct(name: str, config: dict[str, Any]) -> None:
    family = lookup(config["model_type"])
    assert family is not None and family.tensors is not None
    names = [s.name for s in family.tensors(ModelView(config))]
    assert len(set(names)) == len(names), name


# ------------------------------------------------------------------ FP8 scales by position


def test_fp8_scales_by_position_and_by_name_agree() -> None:
    """_scales_ok reads each scale right after its weight when the header order has it there
    (what writers do), else by name: both readings give the same verdict, and a wrong scale
    shape is caught on both."""
    from conftest import TINY_FP8
    from qwenprep.checks.scan import scan_headers
    from qwenprep.checks.tensors import _Ordered, _scales_ok
    from qwenprep.util.safetensors_io import Entry

    def verdict(tensors: dict[str, Entry]) -> bool:
        entries = list(tensors.values())
        at = [i for i, e in enumerate(entries) if (e.dtype or "").startswith("F8_")]
        return _scales_ok(tensors, _Ordered(list(tensors), entries), at, [128, 128])

    tensors = scan_headers(TINY_FP8).tensors
    names = list(tensors)
    first = next(n for n in names if n.endswith(".weight") and tensors[n].dtype == "F8_E4M3")
    assert names[names.index(first) + 1] == first[:-6] + "weight_scale_inv"  # by position
    assert verdict(tensors)
    shuffled = dict(reversed(list(tensors.items())))  # every scale before its weight: by name
    assert verdict(shuffled)
    scale = first[:-6] + "weight_scale_inv"
    for order in (tensors, shuffled):
        bad = dict(order)
        e = bad[scale]
        bad[scale] = Entry(e.dtype, (99, 99), e.data_offsets)
        assert not verdict(bad)
    gone = {k: v for k, v in tensors.items() if k != scale}
    assert not verdict(gone)
