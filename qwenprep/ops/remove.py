"""Removing an overlay without losing anything of the user's: what `qwenprep revert` deletes
(links, the config.json qwenprep wrote, its manifest), and what makes it refuse (files qwenprep
did not put there; edits to its own files, unless --force). Link targets are never touched.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from qwenprep.checks.overlay import user_content
from qwenprep.errors import ConflictError
from qwenprep.model.manifest import Manifest, read_manifest
from qwenprep.ops.overlay import (
    TMP_TAG,
    io_error,
    output_lock,
    remove_tree,
)


def foreign_entries(path: Path) -> list[str]:
    """Files in an overlay that qwenprep did not put there (links and our own files excluded)."""
    manifest = read_manifest(path)
    if manifest is None:
        return []
    return user_content(path, manifest).foreign


def refuse_user_content(
    path: Path, manifest: Manifest, *, force: bool, action: str, retry: str
) -> None:
    """Raise ConflictError when removing PATH would lose anything of the user's: foreign files
    always; edits to qwenprep's own files unless FORCE."""
    found = user_content(path, manifest)
    if found.foreign:
        raise ConflictError(
            f"{path} holds files qwenprep did not put there: {', '.join(found.foreign[:5])}"
            + (f" and {len(found.foreign) - 5} more" if len(found.foreign) > 5 else "")
            + f"; refusing to {action} (--force never deletes them).",
            hint=f"move them out, then {retry} again.",
            path=str(path),
        )
    if found.edits and not force:
        raise ConflictError(
            f"{path} was changed after qwenprep made it: {'; '.join(found.edits[:5])}; "
            "removing it would delete that.",
            hint=f"copy out what you want to keep, then {retry} --force to {action} anyway.",
            path=str(path),
        )


def remove_overlay(path: Path, *, force: bool = False) -> Manifest | None:
    """Remove an overlay qwenprep made. Only links, our config and our manifest are deleted;
    link targets are never touched. Files of the user's make us refuse; edits of the user's to
    our files (config.json, .qwenprep/) make us refuse unless FORCE. None when it is already
    gone (a concurrent revert removed it)."""
    with output_lock(path):  # checked under the lock: a concurrent revert may have won
        manifest = read_manifest(path)
        if manifest is None:
            if not path.exists():
                return None  # a concurrent revert won: the overlay is gone, as asked
            raise ConflictError(f"{path} is not a qwenprep overlay; refusing to delete it.")
        refuse_user_content(
            path, manifest, force=force, action="remove it", retry=f"qwenprep revert {path}"
        )
        from qwenprep.model.lifecycle import pin_sharer, release_pin

        sharer = pin_sharer(path, manifest)  # a copy: the pin is the original's, kept for it
        trash = path.parent / f".{path.name}{TMP_TAG}revert-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, trash)
        except OSError as e:
            raise io_error(path, e, verb="remove the overlay") from None
        if sharer is None:
            release_pin(manifest)
        try:
            remove_tree(trash)
        except OSError as e:
            raise io_error(trash, e, verb="finish removing the overlay (renamed here)") from None
    return manifest
