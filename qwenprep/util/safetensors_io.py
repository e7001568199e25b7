"""Reading safetensors headers without touching tensor data.

Format: 8-byte little-endian header length N, then N bytes of JSON, then the data area.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from math import prod
from operator import attrgetter, itemgetter, mul, sub
from pathlib import Path
from typing import Annotated, Any

import msgspec

from qwenprep.errors import InputError
from qwenprep.util.safetensors_json import ENTRY_FIELDS, loader_rules, parse_header, utf8

# safetensors' own reader refuses a longer header (MAX_HEADER_SIZE in safetensors 0.8.0,
# safetensors/src/tensor.rs): no real header is near it; it bounds what a garbage length can
# make us read.
MAX_HEADER_BYTES = 100_000_000

# dtype -> bytes per element: every dtype safetensors' own reader knows, no other (enum Dtype
# and Dtype::bitsize in safetensors 0.8.0, safetensors/src/tensor.rs)
DTYPE_BYTES: dict[str, float] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
    "F4": 0.5,
    "F6_E2M3": 0.75,
    "F6_E3M2": 0.75,
}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_WHOLE_BYTES = {k: int(v) for k, v in DTYPE_BYTES.items() if v == int(v)}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # offset inside the data area
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    header_len: int
    file_size: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] | None

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def _why(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


_utf8 = utf8


def _u64(x: object) -> int:
    """A JSON integer as safetensors stores it (u64): no bools, floats or strings."""
    if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < 2**64:
        raise ValueError(x)
    return x


def read_header_bytes(path: Path) -> tuple[int, int, bytes]:
    """Return (header_len, file_size, the header's JSON bytes), unparsed. Raises InputError
    naming the file."""
    try:
        # O_NONBLOCK: opening a FIFO (or a device) must not hang; only regular files are read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(f"{path}: shard is missing.") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied reading the shard.") from None
    except (OSError, ValueError) as e:  # ENAMETOOLONG, ELOOP, EISDIR, embedded NUL, ...
        raise InputError(f"{path}: cannot open the shard ({_why(e)}).") from None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"{path}: not a regular file, so not a safetensors shard.")
            size = st.st_size
            head = f.read(8)
            if len(head) < 8:
                raise InputError(f"{path}: {size} bytes, too short to be a safetensors file.")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or n + 8 > size:
                raise InputError(
                    f"{path}: header length {n} is impossible for a {size}-byte file "
                    "(truncated or not safetensors).",
                    hint="re-download this shard (qwenprep fetch re-fetches damaged files).",
                )
            raw = f.read(n)
    except OSError as e:  # EIO, EISDIR on read, ...
        raise InputError(f"{path}: cannot read the shard ({_why(e)}).") from None
    if len(raw) < n:
        raise InputError(f"{path}: the file shrank while its header was read (truncated?).")
    return n, size, raw


def parse_header_json(path: Path, raw: bytes) -> dict[str, Any]:
    """The header's JSON object, read as safetensors' own reader reads it (safetensors_json:
    no NaN, no field written twice, ...); InputError otherwise. A tensor name written twice
    keeps its last entry, as that reader does, once each earlier one is typed as well."""
    obj = parse_header(path, raw)
    for name, entry in loader_rules(path, obj):
        dtype = typed_tensors(path, {name: entry})[name].dtype
        if dtype not in DTYPE_BYTES:
            raise InputError(
                f"{path}: tensor {name!r} is written twice, once with the unknown dtype "
                f"{short_text(dtype)!r}; safetensors' own reader refuses this header."
            )
    return obj


def read_raw_header(path: Path) -> tuple[int, int, dict[str, Any]]:
    """Return (header_len, file_size, parsed JSON). Raises InputError naming the file."""
    n, size, raw = read_header_bytes(path)
    return n, size, parse_header_json(path, raw)


def header_metadata(path: Path, obj: dict[str, Any]) -> dict[str, str] | None:
    """Pop and check `__metadata__` from a parsed header (read_raw_header's object)."""
    meta = obj.pop("__metadata__", None)
    if meta is not None and (
        not isinstance(meta, dict)
        or not all(isinstance(v, str) and _utf8(v) and _utf8(k) for k, v in meta.items())
    ):
        raise InputError(f"{path}: __metadata__ is not an object of strings.")
    return meta


def typed_tensors(path: Path, obj: dict[str, Any]) -> dict[str, TensorInfo]:
    """The tensors of a parsed header (without `__metadata__`), typed; InputError naming the
    first malformed entry."""
    tensors: dict[str, TensorInfo] = {}
    for name, info in obj.items():
        if not _utf8(name) or (
            isinstance(info, dict)
            and isinstance(info.get("dtype"), str)
            and not _utf8(info["dtype"])
        ):
            raise InputError(
                f"{path}: tensor name or dtype {name!r} is not valid UTF-8 (a lone "
                "surrogate escape); safetensors readers refuse this header."
            )
        try:
            if not isinstance(info, dict):
                raise ValueError
            dtype, shape_raw, offsets = info["dtype"], info["shape"], info["data_offsets"]
            if (
                not isinstance(dtype, str)
                or not isinstance(shape_raw, list)
                or not isinstance(offsets, list)
                or len(offsets) != 2
            ):
                raise ValueError
            shape = tuple(_u64(x) for x in shape_raw)
            start, end = _u64(offsets[0]), _u64(offsets[1])
        except (KeyError, ValueError):
            raise InputError(
                f"{path}: tensor {name!r} has a malformed header entry (dtype must "
                "be a string, shape a list of integers, data_offsets two integers; "
                "all non-negative, below 2**64)."
            ) from None
        tensors[name] = TensorInfo(name, dtype, shape, start, end)
    return tensors


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and structurally type the header (no consistency checks beyond types)."""
    n, size, obj = read_raw_header(path)
    meta = header_metadata(path, obj)
    return SafetensorsHeader(path, n, size, typed_tensors(path, obj), meta)


# dtype -> bits per element, for exact sizes (F4 is 4 bits, F6 6)
DTYPE_BITS: dict[str, int] = {k: round(v * 8) for k, v in DTYPE_BYTES.items()}
_ENTRY = itemgetter("dtype", "shape", "data_offsets")


def sane_entries(obj: dict[str, Any], data_area: int) -> bool:
    """True when every entry of a parsed header (without `__metadata__`) is well formed and
    the whole is sane: names valid UTF-8, known dtypes, shapes and offsets of integers (no
    bool, no float) below 2**64, dtype x shape = the byte span of each tensor, spans
    contiguous from 0 and filling the data area exactly (DATA_AREA bytes).

    A fast path over whole columns (C-level builtins, no object per tensor): when it says
    True, typed_tensors accepts the header and integrity finds no problem in it; when False,
    the caller takes the slow path that says what is wrong. An empty header is False."""
    infos = list(obj.values())
    if not infos or set(map(type, infos)) != {dict}:
        return False
    try:
        dtypes, shapes, offsets = zip(*map(_ENTRY, infos), strict=True)
    except KeyError:
        return False
    if (
        set(map(type, shapes)) != {list}
        or set(map(type, offsets)) != {list}
        or set(map(len, offsets)) != {2}
    ):
        return False
    dims = list(chain.from_iterable(shapes))
    starts, ends = zip(*offsets, strict=True)
    if (
        set(map(type, dims)) - {int}
        or set(map(type, starts)) - {int}
        or set(map(type, ends)) - {int}
    ):
        return False
    if dims and (min(dims) < 0 or max(dims) >= 2**64):
        return False
    return _spans_sane(obj, dtypes, shapes, starts, ends, data_area)


def _spans_sane(
    names: Iterable[str],
    dtypes: Sequence[Any],
    shapes: Sequence[Sequence[int]],
    starts: Sequence[int],
    ends: Sequence[int],
    data_area: int,
) -> bool:
    """The part of sane_entries and sane_structs that is one: each tensor's dtype x shape is
    its byte span (whole-byte dtypes in bytes, else in bits; an unknown dtype is False), the
    names are valid UTF-8, and the spans are contiguous from 0 and fill DATA_AREA exactly (in
    the header's own order, the writers' order, else sorted). Offsets need no range check:
    contiguous from 0 to data_area with each span >= 0 (dims are), every offset is in range.
    The sizes fit the reader's 64 bits (size_overflows). TypeError for an unhashable dtype."""
    counts = list(map(prod, shapes))
    if 0 in counts and any(
        size_overflows(s, 8) for s, n in zip(shapes, counts, strict=True) if n == 0
    ):
        return False
    if set(dtypes) <= _WHOLE_BYTES.keys():  # every width a whole number of bytes
        sizes = list(map(mul, counts, map(_WHOLE_BYTES.__getitem__, dtypes)))
        if sizes != list(map(sub, ends, starts)) or max(sizes) >= 2**61:  # bits >= 2**64
            return False
    else:
        widths = list(map(DTYPE_BITS.get, dtypes))
        if None in widths:  # an unknown dtype (or none, or not a string)
            return False
        bits = list(map(mul, counts, widths))
        if bits != list(map(mul, map(sub, ends, starts), repeat(8))) or max(bits) >= 2**64:
            return False
    try:
        "".join(names).encode("utf-8")  # a lone surrogate escape in a name
    except UnicodeEncodeError:
        return False
    if starts[1:] != ends[:-1]:
        first, last = zip(*sorted(zip(starts, ends, strict=True)), strict=True)
        starts, ends = first, last
    return starts[0] == 0 and ends[-1] == data_area and starts[1:] == ends[:-1]


def size_overflows(shape: Sequence[int], bits: int) -> bool:
    """Whether safetensors' reader overflows computing SHAPE's size (Metadata::validate in
    safetensors 0.8.0, safetensors/src/tensor.rs): it folds the dims in their order with
    checked 64-bit multiplication, so [2**32, 2**32, 0] overflows before the 0 makes it empty,
    then multiplies by the dtype's BITS; a header it overflows on is refused."""
    count = 1
    for d in shape:
        count *= d
        if count >= 2**64:
            return True
    return count * bits >= 2**64


# what the fast path decodes as an integer: 0 .. 2**63 - 1 (msgspec's bounds stop at int64;
# a larger value, legal in safetensors up to 2**64 - 1, takes the json path)
_U63 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class Entry(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """One tensor's header entry, decoded straight from the header's JSON (msgspec: no dict per
    tensor, types checked while parsing). None: the field is absent. Reads like the JSON
    object it was (entry["shape"]); the column checks use the attributes."""

    dtype: str | None = None
    shape: tuple[_U63, ...] | None = None
    data_offsets: tuple[_U63, _U63] | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


_DTYPE_OF, _SHAPE_OF, _OFFSETS_OF = (
    attrgetter("dtype"),
    attrgetter("shape"),
    attrgetter("data_offsets"),
)
_DECODE_ENTRIES = msgspec.json.Decoder(dict[str, Entry]).decode
# what msgspec raises on input the fast paths leave to json: bad JSON or types (DecodeError,
# ValidationError), bytes that are not UTF-8 (UnicodeDecodeError, a ValueError), nesting
_NOT_PLAIN = (msgspec.DecodeError, ValueError, RecursionError)
_META_KEY = b"__metadata__"
_FIELD_TOKENS = [b'"%s"' % f.encode() for f in sorted(ENTRY_FIELDS)]
_NO_PATH = Path("header")
_META_HEAD = b'{"__metadata__":'


class _Index(msgspec.Struct, forbid_unknown_fields=True):
    """model.safetensors.index.json as the releases write it, nothing else."""

    weight_map: dict[str, str]
    metadata: dict[str, int | str] | None = None


_DECODE_INDEX = msgspec.json.Decoder(_Index).decode


def fast_index(raw: bytes) -> dict[str, Any] | None:
    """The index as {"weight_map": {...}, "metadata": {...}} when it is plainly what the
    releases write (a weight_map of strings; metadata of integers and strings; nothing else;
    no JSON escape, each key once), decoded at C speed; None otherwise, and the caller parses
    it with jsonio.loads_located, which says what is wrong. What it accepts, loads_located
    accepts alike: no escapes means no lone surrogates, the forbidden unknown fields leave
    nothing unread, and integers of over 40 digits are sent back."""
    if b"\\" in raw or raw.count(b'"weight_map"') != 1 or raw.count(b'"metadata"') > 1:
        return None
    try:
        index = _DECODE_INDEX(raw)
    except _NOT_PLAIN:
        return None
    meta = index.metadata
    if meta is None and b'"metadata"' in raw:  # "metadata": null, which json keeps as None
        return None
    if meta is not None and any(
        isinstance(v, int) and not -(10**40) < v < 10**40 for v in meta.values()
    ):
        return None
    out: dict[str, Any] = {"weight_map": index.weight_map}
    if meta is not None:
        out["metadata"] = meta
    return out


def entry_of(t: TensorInfo) -> Entry:
    """A typed tensor (typed_tensors) as the entry the scan keeps."""
    return Entry(t.dtype, t.shape, (t.start, t.end))


def fast_entries(
    raw: bytes, data_area: int
) -> tuple[dict[str, Entry], dict[str, str] | None] | None:
    """(entries, metadata) of a header that is plainly well formed and sane, decoded into
    Entry objects at C speed; None whenever anything is unusual (a JSON escape, metadata not
    first, a field Entry does not have, an entry of the wrong types, a problem sane_structs
    sees), and the caller takes the json path that says what is wrong. Never accepts what that
    path refuses (tests/checks/test_scan_fast_paths.py):

    - no backslash at all, so every string is its bytes (no escapes, no lone surrogates);
    - `__metadata__`, when there, must be the first key and its only mention: the object up to
      the first `}` after it is then the whole of it (a `}` inside one of its strings would
      leave that piece unparseable: None); it is decoded as strict UTF-8 (no surrogates
      written as UTF-8) and must hold strings only, and the entries are decoded from the rest;
    - every other value is an Entry with no field but its three (forbid_unknown_fields: msgspec
      would otherwise skip an unknown field's value unchecked, bad UTF-8 or a 5000-digit
      number or deep nesting that json refuses); msgspec checks the types and ranges while
      parsing and that the bytes are UTF-8; sane_structs checks the rest as sane_entries
      does;
    - msgspec keeps the last of a repeated key where safetensors' reader refuses a field
      written twice and reads every repeated tensor name: each of `"dtype"`, `"shape"` and
      `"data_offsets"` must appear once per entry decoded (the strings hold no quote, so each
      such token is a key, or a name spelled so, which only costs the fast path); and a `-0`,
      an integer to msgspec, a float to that reader, is left to the json path."""
    if b"\\" in raw:
        return None
    meta: dict[str, str] | None = None
    if raw.startswith(_META_HEAD):
        close = raw.find(b"}", len(_META_HEAD))
        rest = raw[close + 1 :].lstrip(b" \t\r\n")
        if close < 0 or raw.count(_META_KEY) != 1 or not rest.startswith(b","):
            return None
        try:
            obj = parse_header(_NO_PATH, raw[len(_META_HEAD) : close + 1])
        except InputError:  # (bad UTF-8 too)
            return None
        if type(obj) is not dict or not all(isinstance(v, str) for v in obj.values()):
            return None  # (a key written twice: a Repeated, for the json path)
        meta = obj
        raw = b"{" + rest[1:]
    elif _META_KEY in raw:
        return None
    try:
        entries = _DECODE_ENTRIES(raw)
    except _NOT_PLAIN:
        return None
    if b"-0" in raw or any(raw.count(f) != len(entries) for f in _FIELD_TOKENS):
        return None  # a -0, a field or a tensor name written twice (or a name like "dtype")
    return (entries, meta) if sane_structs(entries, data_area) else None


def sane_structs(entries: dict[str, Entry], data_area: int) -> bool:
    """sane_entries for decoded Entry objects (their types and ranges are already checked:
    integers from 0 to 2**63 - 1): every field there, known dtypes, dtype x shape = each byte
    span, spans contiguous from 0 and filling DATA_AREA exactly. An empty header is False."""
    infos = list(entries.values())
    if not infos:
        return False
    shapes = list(map(_SHAPE_OF, infos))
    offsets = list(map(_OFFSETS_OF, infos))
    if None in shapes or None in offsets:
        return False
    flat = list(chain.from_iterable(offsets))  # start0, end0, start1, end1, ...
    return _spans_sane(
        entries, list(map(_DTYPE_OF, infos)), shapes, flat[0::2], flat[1::2], data_area
    )


@dataclass(frozen=True)
class LoadedHeader:
    """One shard's header as read once for every check: the entries (tensor name -> its
    entry, `__metadata__` taken out) and whether they are sane. Entries of a sane header are
    Entry objects; those of a header that is not are unchecked JSON values: pass them through
    typed_tensors before use."""

    path: Path
    header_len: int
    file_size: int
    entries: dict[str, Any]
    metadata: dict[str, str] | None
    sane: bool

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def load_header(path: Path) -> LoadedHeader:
    """Read and parse PATH's header once, and judge it: fast_entries, else json and
    sane_entries (raises InputError as read_header does for an unreadable file, bad JSON or bad
    `__metadata__`)."""
    n, size, raw = read_header_bytes(path)
    fast = fast_entries(raw, size - 8 - n)
    if fast is not None:
        return LoadedHeader(path, n, size, fast[0], fast[1], True)
    obj = parse_header_json(path, raw)
    meta = header_metadata(path, obj)
    try:
        sane = sane_entries(obj, size - 8 - n)
    except TypeError:  # an unhashable dtype (a list or an object)
        sane = False
    if sane:  # (a JSON escape in a name, say): kept as Entry objects like the fast path's
        obj = {
            k: Entry(v["dtype"], tuple(v["shape"]), tuple(v["data_offsets"]))
            for k, v in obj.items()
        }
    return LoadedHeader(path, n, size, obj, meta, sane)


def short_text(x: object, limit: int = 80) -> str:
    """str(x) cut to a readable length (hostile headers hold 4000-digit numbers)."""
    text = str(x)
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text)} chars)"


def header_problems(h: SafetensorsHeader) -> list[str]:
    """What is wrong in a header that sane_entries did not pass (the slow path): unknown
    dtypes, spans that are not dtype x shape, overlaps, holes, truncation, trailing bytes."""
    from fractions import Fraction

    probs: list[str] = []
    spans: list[tuple[int, int, str]] = []
    for t in h.tensors.values():
        width = DTYPE_BYTES.get(t.dtype)
        if width is None:
            probs.append(f"tensor {t.name}: unknown dtype {t.dtype!r}")
            continue
        # exact integer bits: shapes may be hostile (10**200 x 10**200) and widths fractional
        # (F4 is 4 bits, F6 6); a Fraction per tensor cost 0.3 s on the 480B's 60k tensors
        bits = prod(t.shape) * round(width * 8)
        want: int | Fraction = bits // 8 if bits % 8 == 0 else Fraction(bits, 8)
        if t.start < 0 or t.end < t.start:
            probs.append(f"tensor {t.name}: data_offsets [{t.start}, {t.end}] are not a span")
            continue
        if size_overflows(t.shape, round(width * 8)):
            probs.append(
                f"tensor {t.name}: {t.dtype} x {short_text(list(t.shape))} overflows 64 bits "
                "computing its size (safetensors' own reader refuses this header)"
            )
        elif want != t.nbytes:
            probs.append(
                f"tensor {t.name}: {t.dtype} x {short_text(list(t.shape))} = "
                f"{short_text(want)} bytes but data_offsets span {t.nbytes}"
            )
        spans.append((t.start, t.end, t.name))
    spans.sort()
    cursor, prev = 0, None
    for start, end, name in spans:
        if start < cursor:
            probs.append(f"tensors {prev} and {name} overlap (bytes {start}..{min(cursor, end)})")
        elif start > cursor:
            probs.append(f"{start - cursor} unindexed bytes before tensor {name} (a hole)")
        if end >= cursor:
            cursor, prev = end, name
    data_area = h.file_size - h.data_start
    if cursor > data_area:
        probs.append(
            f"truncated: the header indexes {cursor} data bytes, the file holds "
            f"{data_area} (file is {h.file_size} bytes, should be "
            f"{h.data_start + cursor})"
        )
    elif cursor < data_area:
        probs.append(
            f"{data_area - cursor} trailing bytes after the last tensor (file is "
            f"{h.file_size} bytes, should be {h.data_start + cursor})"
        )
    return probs
