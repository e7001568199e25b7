"""Reading JSON with located errors, and writing files atomically."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from qwenprep.errors import InputError

# The most qwenprep reads of a small JSON file (config.json, the safetensors index, a manifest,
# a backup, a ref) before parsing it whole. The largest real one is the index of a big MoE:
# the 480B FP8's lists about 60,000 tensors (62 layers x 160 experts x 3 projections x weight
# and scale), a few MB; 64 MiB is over ten times that. A larger file is damage or an attack, and
# parsing it would take several times its size in memory (a 1.5 GB config.json took 3 GB).
MAX_JSON_BYTES = 64 << 20


def refuse_oversized(path: Path | str, size: int, limit: int = MAX_JSON_BYTES) -> None:
    """InputError when a small JSON file of SIZE bytes is over LIMIT, naming both."""
    if size > limit:
        raise InputError(
            f"{path}: {size:,} bytes, over the {limit >> 20} MiB qwenprep reads of a JSON file "
            "like this one; it is not a real config or index (damaged, or not what it claims).",
            hint="restore the file from the original release (hf download ORG/NAME FILE).",
            path=str(path),
        )


def read_regular_bytes(path: Path, limit: int = MAX_JSON_BYTES) -> bytes:
    """The bytes of PATH (links followed) when it is a regular file of at most LIMIT bytes
    (InputError beyond: refuse_oversized). A FIFO, socket or device raises OSError(EINVAL) at
    once (opened non-blocking, refused by fstat): nothing hangs."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)", str(path))
        refuse_oversized(path, st.st_size, limit)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        refuse_oversized(path, len(data), limit)  # grown since the fstat
        return data
    finally:
        os.close(fd)


def load_json_file(path: Path, *, what: str = "JSON file") -> Any:
    """Parse a JSON file; errors name the file, line and column."""
    try:
        text = read_regular_bytes(path).decode("utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}.", path=str(path)) from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a {what}.", path=str(path)) from None
    except PermissionError:
        raise InputError(f"{path}: permission denied reading the {what}.", path=str(path)) from None
    except OSError as e:
        raise InputError(
            f"{path}: cannot read the {what}: {e.strerror or e}.", path=str(path)
        ) from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}).") from None
    return loads_located(text, str(path))


# No value in a config, an index or a manifest comes near these; anything past them is damage or
# an attack, refused before Python's own limits turn it into a traceback.
MAX_INT_DIGITS = 40
MAX_DEPTH = 64
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class _Refused(ValueError):
    def __init__(self, what: str, token: str) -> None:
        super().__init__(what)
        self.what = what
        self.token = token


def _no_constant(token: str) -> Any:
    raise _Refused(f"{token} is not a number JSON allows (no NaN or Infinity in a config)", token)


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _Refused(f"the number {token[:24]} overflows to infinity", token)
    return value


def _bounded_int(token: str) -> int:
    if len(token.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(token.lstrip('-'))} digits is far too large", token)
    return int(token)


def _position(text: str, token: str) -> str:
    i = text.find(token)
    if i < 0:
        return ""
    line = text.count("\n", 0, i) + 1
    return f"{line}:{i - (text.rfind(chr(10), 0, i) + 1) + 1}:"


def _depth(text: str) -> int:
    """Bracket depth outside strings, counted without recursion."""
    depth = deepest = 0
    for m in _NESTING.finditer(text):
        tok = m.group()
        if tok[0] == '"':
            continue
        depth += 1 if tok in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def loads_located(text: str, where: str) -> Any:
    """Parse JSON text strictly: errors name WHERE (file:line:col where known). Refused as
    malformed: NaN/Infinity, numbers that overflow a float, integers of more than 40 digits,
    nesting deeper than 64, and lone UTF-16 surrogates (which cannot be written back)."""
    hint = (
        "fix the file by hand or restore it (qwenprep revert PATH restores a "
        "config.json edited in place)."
    )
    if "[" in text or "{" in text:
        if text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
            raise InputError(
                f"{where}: malformed JSON: nested more than {MAX_DEPTH} levels deep.",
                hint=hint,
                path=where,
            )
    try:
        obj = json.loads(
            text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int
        )
    except json.JSONDecodeError as e:
        raise InputError(
            f"{where}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}.",
            hint=hint,
            path=where,
        ) from None
    except _Refused as e:
        raise InputError(
            f"{where}:{_position(text, e.token)} malformed JSON: {e.what}.", hint=hint, path=where
        ) from None
    except RecursionError:
        raise InputError(
            f"{where}: malformed JSON: nested too deeply.", hint=hint, path=where
        ) from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                f"{where}: malformed JSON: a string holds a lone UTF-16 surrogate "
                "(\\uD800-\\uDFFF without its pair), which is not text.",
                hint=hint,
                path=where,
            ) from None
    return obj


def dump_config(obj: Any) -> str:
    """Serialise a config the way Hugging Face writes config.json: indent 2, key order kept."""
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write beside the target, fsync, then rename over it: readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


REPLACED_SUFFIX = ".qwenprep-replaced"  # what a user had, kept beside what replaced it


def replaced_names(path: Path, limit: int = 1000) -> Iterator[Path]:
    """Where the bytes about to replace PATH's are kept, in order: NAME.qwenprep-replaced, then
    .1, .2 ... (revert and fetch --force --local-dir keep a user's file there)."""
    base = path.with_name(path.name + REPLACED_SUFFIX)
    yield base
    for i in range(1, limit):
        yield base.with_name(f"{base.name}.{i}")


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def output_target(
    flag: str, path: Path, why_not_ours: Callable[[Path], str | None], *, force: bool
) -> Path:
    """Where an output option (FLAG PATH) may write, as an absolute path, judged before any
    work: a directory that exists, and no file there but one WHY_NOT_OURS accepts (None: a
    file qwenprep wrote and nobody edited since; else why not); FORCE replaces any other
    regular file. A symlink (or anything not a regular file) is never written through, even
    with FORCE: it may lead into a source checkpoint; nor is a symlinked parent directory.
    UsageError (exit 2) / ConflictError (exit 3)."""
    from qwenprep.errors import ConflictError, UsageError

    target = Path.cwd() / path if not path.is_absolute() else path
    if target.parent.is_symlink():
        real = os.path.realpath(target.parent)
        raise UsageError(
            f"{flag} {path}: the directory {target.parent} is a symlink (to "
            f"{os.readlink(target.parent)}), which may lead into a source checkpoint; not "
            "writing through it.",
            hint="name the file in a plain directory"
            + (
                f", e.g. the one it leads to if that is meant: {real}"
                if Path(real).is_dir()
                else ""
            ),
            path=str(target.parent),
        )
    if not target.parent.is_dir():
        raise UsageError(f"{flag} {path}: the directory {target.parent} does not exist.")
    if target.is_symlink() or target.exists():
        regular = target.is_file() and not target.is_symlink()
        why = (
            why_not_ours(target)
            if regular
            else f"is a symlink (to {os.readlink(target)}), never written through"
            if target.is_symlink()
            else "is not a regular file"
        )
        if why is not None and (not force or not regular):
            raise ConflictError(
                f"{flag} {path}: {target} exists and {why}; refusing to overwrite it.",
                hint="choose another file name, move that file away, or add --force to "
                "replace it" + ("" if regular else " (a regular file)"),
                path=str(target),
            )
    return target
