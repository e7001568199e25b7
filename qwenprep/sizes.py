"""Memory sizes as people write them: ``61.31GiB``, ``141GB``, ``80 GiB``, ``2g``, plain bytes.

Units: ``KiB MiB GiB TiB`` are binary (1024^n); ``KB MB GB TB`` are decimal (1000^n), as GPU
vendors print them (an H200 is "141 GB"); the single letters ``k m g t`` (what vLLM's own
``--kv-cache-memory-bytes 8g`` style takes) are binary. ``B`` or no unit means bytes.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from qwenprep.errors import UsageError

GiB = 1024**3
MiB = 1024**2

_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "k": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "tib": 1024**4, "tb": 1000**4,
}
_SIZE = re.compile(r"^\s*(\d{1,20}(?:\.\d{0,12})?|\.\d{1,12})\s*([a-zA-Z]*)\s*$", re.ASCII)
MAX_SIZE = 2**60  # 1 EiB: far past any machine; a larger number is a typo


def parse_size(text: str | int) -> int:
    """Bytes for a size string (rounded down to a whole byte). Raises UsageError when unreadable."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise UsageError(f"size {text} is negative.")
        if text > MAX_SIZE:
            raise UsageError(f"size {text} is more than 1 EiB; no GPU or disk is that large.")
        return text
    raw = str(text)
    m = _SIZE.match(raw)
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        shown = repr(raw) if len(raw) <= 24 else repr(raw[:20]) + f"... ({len(raw)} characters)"
        raise UsageError(
            f"unreadable size {shown}.",
            hint="write a size like 61.31GiB, 80GiB, 141GB (decimal), 2g or a byte count.",
        )
    try:
        value = Decimal(m.group(1)) * _UNITS[unit]
    except InvalidOperation:  # pragma: no cover - the regex admits only digits
        raise UsageError(f"unreadable size {raw!r}.") from None
    if value > MAX_SIZE:
        raise UsageError(f"size {raw!r} is more than 1 EiB; no GPU or disk is that large.",
                         hint="write a size like 61.31GiB, 80GiB or 141GB.")
    return int(value)


def format_gib(n: int | float) -> str:
    """The way vLLM prints memory: two decimals of GiB."""
    return f"{n / GiB:.2f} GiB"


def format_bytes(n: int | float) -> str:
    """A size for people in the largest binary unit below it: 512 B, 1.16 MiB, 449.69 GiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return f"{size:.2f} TiB"
