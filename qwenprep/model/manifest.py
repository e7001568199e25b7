"""The overlay manifest (`.qwenprep/manifest.json`): where it lives, reading it, and the schema
check that decides whether qwenprep may act on it. Below overlay, lifecycle and validation, so
each of them reads a manifest without importing the others."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from qwenprep.errors import InputError
from qwenprep.util.jsonio import loads_located, read_regular_bytes

MANIFEST_DIR = ".qwenprep"
MANIFEST_NAME = "manifest.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_path(path: Path) -> Path:
    return path / MANIFEST_DIR / MANIFEST_NAME


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The overlay's manifest, or None when PATH is not a qwenprep overlay.

    A manifest that claims to be qwenprep's ("tool": "qwenprep") is used only when it matches
    schemas/manifest.schema.json; a damaged or forged one is an InputError (exit 3), never a
    reason to act (delete, replace, serve)."""
    mp = manifest_path(path)
    try:
        if not os.path.lexists(mp):
            return None
        text = read_regular_text(mp)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{mp}: cannot read the overlay manifest ({e}).", path=str(mp)) from None
    try:
        obj = loads_located(text, str(mp))
    except InputError as e:
        raise _bad_manifest(path, e.message) from None
    if not isinstance(obj, dict) or obj.get("tool") != "qwenprep":
        if isinstance(obj, dict) and "tool" not in obj:
            raise _bad_manifest(path, f'{mp}: has no "tool" field')
        return None
    errors = validate_manifest(obj)
    if errors:
        raise _bad_manifest(
            path, f"{mp}: does not match the manifest schema: " + "; ".join(sorted(errors)[:5])
        )
    return obj


def _bad_manifest(path: Path, what: str) -> InputError:
    return InputError(
        f"{what}. qwenprep acts on an overlay only on the word of a valid manifest, so it will "
        f"not delete, replace or serve {path}.",
        hint=f"if qwenprep made {path}, look inside, move out what you want to keep and remove "
        "it by hand, then patch again (qwenprep patch MODEL --context C --out DIR).",
        path=str(manifest_path(path)),
    )


def read_regular_text(p: Path) -> str:
    """A regular file's text (a FIFO, device or directory is refused, never opened to block)."""
    return read_regular_bytes(p).decode("utf-8")


def validate_manifest(manifest: dict[str, Any]) -> list[str]:
    from qwenprep.util.schemas import validator

    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator("manifest").iter_errors(manifest)
    ]
