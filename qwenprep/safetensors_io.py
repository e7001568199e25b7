"""Reading safetensors headers without touching tensor data.

Format: 8-byte little-endian header length N, then N bytes of JSON, then the data area.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenprep.errors import InputError

# No real header is near this; it bounds what a garbage length can make us read.
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPE_BYTES: dict[str, float] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
    "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75,
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


def read_raw_header(path: Path) -> tuple[int, int, dict[str, Any]]:
    """Return (header_len, file_size, parsed JSON). Raises InputError naming the file."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
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
    except FileNotFoundError:
        raise InputError(f"{path}: shard is missing.") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied reading the shard.") from None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: header is not valid JSON ({e}).") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: header is JSON but not an object.")
    return n, size, obj


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and structurally type the header (no consistency checks beyond types)."""
    n, size, obj = read_raw_header(path)
    meta = obj.pop("__metadata__", None)
    if meta is not None and not isinstance(meta, dict):
        raise InputError(f"{path}: __metadata__ is not an object.")
    tensors: dict[str, TensorInfo] = {}
    for name, info in obj.items():
        try:
            dtype = info["dtype"]
            shape = tuple(int(x) for x in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
            if not isinstance(dtype, str) or any(s < 0 for s in shape):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: tensor {name!r} has a malformed header entry.") from None
        tensors[name] = TensorInfo(name, dtype, shape, start, end)
    return SafetensorsHeader(path, n, size, tensors, meta)
