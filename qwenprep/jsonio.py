"""Reading JSON with located errors, and writing files atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from qwenprep.errors import InputError


def load_json_file(path: Path, *, what: str = "JSON file") -> Any:
    """Parse a JSON file; errors name the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}.", path=str(path)) from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a {what}.", path=str(path)) from None
    except PermissionError:
        raise InputError(f"{path}: permission denied reading the {what}.", path=str(path)) from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}).") from None
    return loads_located(text, str(path))


def loads_located(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{where}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}.",
            hint="fix the file by hand or restore it (qwenprep revert PATH restores a "
            "config.json edited in place).",
            path=where,
        ) from None


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


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)
