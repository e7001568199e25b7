"""The overlay manifest (`.qwenprep/manifest.json`): where it lives, reading it, and the schema
check that decides whether qwenprep may act on it. Below overlay, lifecycle and validation, so
each of them reads a manifest without importing the others."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwenprep.errors import InputError
from qwenprep.util.jsonio import loads_located, read_regular_bytes

MANIFEST_DIR = ".qwenprep"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class Source:
    """The manifest's "source": the checkpoint the overlay links to. Every field is what the
    JSON says, None when absent (an older manifest has no refs or pin)."""

    path: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    config_sha256: str | None = None
    refs: tuple[str, ...] = ()
    pin: str | None = None  # refs/<pin> in the repo's cache folder, once qwenprep wrote it

    @classmethod
    def from_dict(cls, obj: Any) -> Source:
        """From the JSON object; anything but an object reads as an empty source."""
        d = obj if isinstance(obj, dict) else {}
        refs = d.get("refs")
        return cls(
            path=d.get("path"),
            repo_id=d.get("repo_id"),
            revision=d.get("revision"),
            config_sha256=d.get("config_sha256"),
            refs=tuple(refs) if isinstance(refs, list) else (),
            pin=d.get("pin"),
        )


@dataclass(frozen=True)
class ManifestFile:
    """One linked file of the overlay, as the manifest lists it."""

    name: str
    size: int | None


@dataclass(frozen=True)
class Manifest:
    """The overlay manifest (schemas/manifest.schema.json) as values. Built from the JSON
    object by from_dict, which reads what the schema leaves optional (id, path, dir_id; a
    source's refs, pin, repo_id, revision) as None or empty, never KeyError. RAW is the object
    itself, for output that prints the manifest as it is on disk."""

    source: Source
    config_sha256: str | None = None
    native_context: int | None = None
    target_context: int | None = None
    factor: float | None = None
    rope_style: str | None = None
    files: tuple[ManifestFile, ...] = ()
    digest: str | None = None
    id: str | None = None  # absent before overlay ids: the pin is named by the overlay's path
    path: str | None = None  # where the overlay was built
    dir_id: str | None = None  # device:inode of the overlay directory when built
    tool_version: str | None = None
    created: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Manifest:
        files = obj.get("files")
        return cls(
            source=Source.from_dict(obj.get("source")),
            config_sha256=obj.get("config_sha256"),
            native_context=obj.get("native_context"),
            target_context=obj.get("target_context"),
            factor=obj.get("factor"),
            rope_style=obj.get("rope_style"),
            files=tuple(
                ManifestFile(f["name"], f.get("size"))
                for f in (files if isinstance(files, list) else [])
                if isinstance(f, dict) and "name" in f
            ),
            digest=obj.get("digest"),
            id=obj.get("id"),
            path=obj.get("path"),
            dir_id=obj.get("dir_id"),
            tool_version=obj.get("tool_version"),
            created=obj.get("created"),
            raw=obj,
        )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_path(path: Path) -> Path:
    return path / MANIFEST_DIR / MANIFEST_NAME


def read_manifest(path: Path) -> Manifest | None:
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
    return Manifest.from_dict(obj)


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
