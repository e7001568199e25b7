"""Memory sizes as people write them: ``61.31GiB``, ``141GB``, ``80 GiB``, ``1024B``.

Units: ``KiB MiB GiB TiB PiB EiB`` are binary (1024^n); ``KB MB GB TB PB EB`` are decimal
(1000^n). A GPU datasheet's "GB" is neither exactly (an H200's "141 GB" is 143,771 MiB =
140.40 GiB as NVML reports it): ``--gpu NAME`` or nvidia-smi's MiB figure is exact; ``B`` means
bytes. Sizes never guess: a number without a unit (``141``) and the single letters ``k m g t``
(``8g``: vLLM's own parser reads a lowercase suffix as decimal, other tools as binary) are
refused with "did you mean 8GiB or 8GB?" (UsageError, exit 2). A Python int is a byte count.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from qwenprep.errors import UsageError

GiB = 1024**3
MiB = 1024**2

_UNITS: dict[str, int] = {
    "b": 1,
    "kib": 1024,
    "kb": 1000,
    "mib": 1024**2,
    "mb": 1000**2,
    "gib": 1024**3,
    "gb": 1000**3,
    "tib": 1024**4,
    "tb": 1000**4,
    "pib": 1024**5,  # read so that a size past any machine is told "too large", not "unreadable"
    "pb": 1000**5,
    "eib": 1024**6,
    "eb": 1000**6,
}
_AMBIGUOUS = {"", "k", "m", "g", "t"}  # binary or decimal? never guessed
_KUBERNETES = {"ki", "mi", "gi", "ti", "pi", "ei"}  # a resource quantity's binary suffixes
_SIZE = re.compile(r"^\s*(\d{1,20}(?:\.\d{0,12})?|\.\d{1,12})\s*([a-zA-Z]*)\s*$", re.ASCII)
MAX_SIZE = 2**60  # 1 EiB: far past any machine; a larger number is a typo


def _shown(raw: str) -> str:
    return repr(raw) if len(raw) <= 24 else repr(raw[:20]) + f"... ({len(raw)} characters)"


def parse_size(text: str | int, option: str | None = None) -> int:
    """Bytes for a size string (rounded down to a whole byte). Raises UsageError (exit 2) when
    unreadable or ambiguous (no unit, or k/m/g/t); `option` (``--gpu-memory``) names where."""
    where = f"{option} " if option else ""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise UsageError(f"{where}size {text} is negative.")
        if text > MAX_SIZE:
            raise UsageError(
                f"{where}size {text} is more than 1 EiB; no GPU or disk is that large."
            )
        return text
    raw = str(text)
    m = _SIZE.match(raw)
    unit = m.group(2).lower() if m else ""
    if m and unit in _AMBIGUOUS:
        num = m.group(1) if len(m.group(1)) <= 24 else "N"
        big = unit.upper() or "G"
        what = (
            "has no unit"
            if unit == ""
            else f"is ambiguous ('{m.group(2)}' is binary in some tools, decimal in others)"
        )
        raise UsageError(
            f"{where or 'size '}{_shown(raw.strip())} {what}: "
            f"did you mean {num}{big}iB or {num}{big}B?",
            hint="write the unit: GiB/MiB (binary, as nvidia-smi and vLLM's logs count), GB/MB "
            "(decimal), or B for a byte count, e.g. "
            f"{option or '--gpu-memory'} {num}{big}iB.",
        )
    if m and unit in _KUBERNETES:  # 141Gi: Kubernetes' binary unit, one letter short
        num = m.group(1) if len(m.group(1)) <= 24 else "N"
        raise UsageError(
            f"{where}unreadable size {_shown(raw)}: did you mean {num}{m.group(2)}B? (Kubernetes "
            f"writes {m.group(2)} for {m.group(2)}B; qwenprep spells the unit out)",
            hint=f"write {option or '--gpu-memory'} {num}{m.group(2)}B.",
        )
    if not m or unit not in _UNITS:
        raise UsageError(
            f"{where}unreadable size {_shown(raw)}.",
            hint="write a size like 61.31GiB, 143771MiB (binary), 80GB (decimal) or 1024B (bytes).",
        )
    try:
        value = Decimal(m.group(1)) * _UNITS[unit]
    except InvalidOperation:  # pragma: no cover - the regex admits only digits
        raise UsageError(f"unreadable size {raw!r}.") from None
    if value > MAX_SIZE:
        raise UsageError(
            f"{where}{_shown(raw)} is more than 1 EiB; no GPU or disk is that large.",
            hint="write a size like 61.31GiB, 143771MiB or 80GB.",
        )
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
