"""Reading safetensors headers without touching tensor data.

Format: 8-byte little-endian header length N, then N bytes of JSON, then the data area.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from dataclasses import dataclass
from itertools import chain, repeat
from math import prod
from operator import itemgetter, mul, sub
from pathlib import Path
from typing import Any

from qwenprep.errors import InputError

# No real header is near this; it bounds what a garbage length can make us read.
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPE_BYTES: dict[str, float] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
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
    "F4": 0.5,
    "F6_E2M3": 0.75,
    "F6_E3M2": 0.75,
}
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


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


def _utf8(text: str) -> bool:
    """JSON's \\uXXXX escapes can spell lone surrogates, which no UTF-8 file name or terminal
    takes (and safetensors' own reader rejects)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    """The header's JSON object; InputError otherwise."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise InputError(
            f"{path}: header JSON is nested too deeply to be a safetensors header."
        ) from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, over-long integer literals
        raise InputError(f"{path}: header is not valid JSON ({e}).") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: header is JSON but not an object.")
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
    widths = list(map(DTYPE_BITS.get, dtypes))  # TypeError: an unhashable dtype
    if None in widths:  # an unknown dtype (or not a string)
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
    spans = list(map(sub, ends, starts))
    if list(map(mul, map(prod, shapes), widths)) != list(map(mul, spans, repeat(8))):
        return False
    try:
        "".join(obj).encode("utf-8")  # a lone surrogate escape in a name
    except UnicodeEncodeError:
        return False
    # offsets need no range check: contiguous from 0 to data_area, each span >= 0 (dims are)
    pairs = sorted(zip(starts, ends, strict=True))
    return (
        pairs[0][0] == 0
        and pairs[-1][1] == data_area
        and [p[0] for p in pairs[1:]] == [p[1] for p in pairs[:-1]]
    )


@dataclass(frozen=True)
class LoadedHeader:
    """One shard's header as read once for every check: the raw entries (tensor name ->
    {"dtype", "shape", "data_offsets"}, `__metadata__` taken out) and whether they are sane
    (sane_entries). Entries of a header that is not sane are unchecked JSON values: pass them
    through typed_tensors before use."""

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
    """Read and parse PATH's header once, and judge it with sane_entries (raises InputError as
    read_header does for an unreadable file, bad JSON or bad `__metadata__`)."""
    n, size, raw = read_header_bytes(path)
    obj = parse_header_json(path, raw)
    meta = header_metadata(path, obj)
    try:
        sane = sane_entries(obj, size - 8 - n)
    except TypeError:  # an unhashable dtype (a list or an object)
        sane = False
    return LoadedHeader(path, n, size, obj, meta, sane)
