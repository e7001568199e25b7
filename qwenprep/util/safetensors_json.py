"""A safetensors header's JSON read as safetensors' own reader reads it.

The reader vLLM loads weights with (safetensors 0.8.0, `safetensors/src/tensor.rs`,
`SafeTensors::read_metadata`) parses the header with `serde_json::from_str::<HashMetadata>`:
a map of `TensorInfo` structs (`dtype`, `shape`, `data_offsets`; other fields ignored) beside
an optional `__metadata__` map of strings. serde_json refuses what Python's json takes:

- `NaN`, `Infinity`, `-Infinity` (not JSON), and a number beyond f64's range (`1e400`, a
  400-digit integer): "number out of range", anywhere in the header;
- a struct field written twice: `dtype`, `shape` or `data_offsets` in one entry, or
  `__metadata__` twice ("duplicate field"). A repeated tensor name, metadata key or unknown
  field is a map key: the last one wins, as in Python, but every earlier value is still read
  and must itself be well typed;
- `-0` where an integer belongs (serde_json reads it as the float -0.0);
- a lone UTF-16 surrogate escape (`"\\ud800"`) in any string;
- nesting deeper than its recursion limit: at most 127 arrays and objects inside one another,
  the header object included (a deeper unknown field is refused: "recursion limit exceeded").

parse_header reads the header with those rules; what stays for the caller is the typing of
each entry (safetensors_io.typed_tensors) and the sizes (safetensors_io.header_problems).
tests/util/test_safetensors_headers.py holds each rule beside the real loader's verdict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qwenprep.errors import InputError

# serde_json's recursion limit is 128 (serde_json::Deserializer::remaining_depth): a header
# nested 128 deep is refused; 127 arrays or objects inside one another are read
SERDE_MAX_DEPTH = 127
ENTRY_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
META_KEY = "__metadata__"


def utf8(text: str) -> bool:
    """JSON's \\uXXXX escapes can spell lone surrogates, which no UTF-8 file name or terminal
    takes (and safetensors' own reader rejects)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Repeated(dict[str, Any]):
    """A JSON object with a key written more than once: the dict json makes (the last value
    wins, as serde's maps do) and, in `shadowed`, the earlier (key, value) pairs, which serde
    reads and judges too."""

    shadowed: list[tuple[str, Any]]


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    rep = Repeated(obj)
    last = {k: i for i, (k, _) in enumerate(pairs)}
    rep.shadowed = [(k, v) for i, (k, v) in enumerate(pairs) if last[k] != i]
    return rep


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (safetensors' reader refuses it)")


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range (safetensors' reader refuses it)")
    return value


def _int(text: str) -> int | float:
    if text == "-0":  # serde_json reads -0 as the float -0.0, never as an integer
        return -0.0
    if len(text) > 20:  # past i64 and u64: serde_json holds it as an f64, if it fits one
        _float(text)
    return int(text)


def _deep_or_not_utf8(value: Any, depth: int) -> str | None:
    """Why serde_json refuses VALUE (an unknown field's value at nesting DEPTH, its own
    containers not counted): a lone surrogate in a string or a key, or nesting past its
    limit; None when it reads it."""
    stack = [(value, depth)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, str):
            if not utf8(v):
                return "a string holds a lone surrogate escape"
        elif isinstance(v, (list, dict)):
            if d + 1 > SERDE_MAX_DEPTH:
                return f"it is nested deeper than {SERDE_MAX_DEPTH} levels"
            if isinstance(v, dict):
                pairs = [*v.items(), *getattr(v, "shadowed", [])]
                stack.extend((x, d + 1) for pair in pairs for x in pair)
            else:
                stack.extend((x, d + 1) for x in v)
    return None


def _refuse(path: Path, what: str) -> InputError:
    return InputError(
        f"{path}: {what}; safetensors' own reader (what vLLM loads with) refuses this header.",
        hint="re-download this shard (qwenprep fetch re-fetches damaged files).",
    )


def _check_entry(path: Path, name: str, entry: Any, depth: int) -> None:
    """What serde refuses in one tensor entry before its types: a field written twice, an
    unknown field it cannot read."""
    if not isinstance(entry, dict):
        return  # typed_tensors says it is malformed
    twice = sorted({k for k, _ in getattr(entry, "shadowed", [])} & ENTRY_FIELDS)
    if twice:
        raise _refuse(path, f"tensor {name!r} has its {twice[0]!r} field written twice")
    pairs = list(entry.items()) + getattr(entry, "shadowed", [])
    for key, value in pairs:
        if key not in ENTRY_FIELDS:
            why = _deep_or_not_utf8(key, depth) or _deep_or_not_utf8(value, depth)
            if why:
                raise _refuse(path, f"tensor {name!r} has an extra field {key[:40]!r}: {why}")


def loader_rules(path: Path, obj: dict[str, Any]) -> list[tuple[str, Any]]:
    """Check a parsed header object (parse_header's) for what serde refuses in its structure
    (see the module's text); return the shadowed tensor entries (name, value), each of which
    the caller must type as well (serde reads them before the last one replaces them)."""
    shadowed = getattr(obj, "shadowed", [])
    if any(k == META_KEY for k, _ in shadowed):
        raise _refuse(path, f"{META_KEY} is written twice")
    meta = obj.get(META_KEY)
    if isinstance(meta, Repeated) and not all(
        isinstance(v, str) and utf8(v) for _, v in meta.shadowed
    ):
        raise _refuse(path, f"a key of {META_KEY} is written twice, once not as a string")
    earlier = [(k, v) for k, v in shadowed if k != META_KEY]
    for name, entry in [*obj.items(), *earlier]:
        if name != META_KEY:
            _check_entry(path, name, entry, 2)
    return earlier


def parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    """The header's JSON object read by serde_json's rules (the module's text), the last value
    of a repeated key kept; InputError otherwise. The caller types the entries (and the
    shadowed ones, loader_rules)."""
    try:
        obj = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_object,
            parse_constant=_constant,
            parse_float=_float,
            parse_int=_int,
        )
    except RecursionError:
        raise InputError(
            f"{path}: header JSON is nested too deeply to be a safetensors header."
        ) from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, the hooks' refusals
        raise InputError(f"{path}: header is not valid JSON ({e}).") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: header is JSON but not an object.")
    return obj
