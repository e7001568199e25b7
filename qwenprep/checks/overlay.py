"""An overlay's self-checks: does it still say what its manifest says (overlay_checks: links
resolve, sizes match, config.json and the source config unchanged since the patch), and what
would removing it lose (user_content: files qwenprep did not put there, edits to those it did).

Read-only: nothing here writes. Making an overlay is qwenprep.ops.overlay, removing one
qwenprep.ops.remove.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qwenprep.errors import InputError
from qwenprep.model.checkpoint import CONFIG
from qwenprep.model.manifest import (
    MANIFEST_DIR,
    MANIFEST_NAME,
    Manifest,
    manifest_path,
    read_manifest,
    read_regular_text,
    sha256_bytes,
)
from qwenprep.util.jsonio import read_regular_bytes
from qwenprep.util.report import Check


def overlay_checks(path: Path) -> list[Check]:
    """Does the overlay still say what its manifest says? Links resolve, sizes match,
    config.json unchanged since patch, the source config unchanged since patch."""
    try:
        manifest = read_manifest(path)
    except InputError as e:
        return [Check("overlay.manifest", "fail", e.message, str(manifest_path(path)))]
    if manifest is None:
        return [Check("overlay", "skip", f"{path} is not a qwenprep overlay (no manifest).")]
    checks: list[Check] = []
    checks.append(Check("overlay.manifest", "pass", "manifest present and well formed"))
    try:
        cfg_sha = sha256_bytes(read_regular_bytes(path / CONFIG))
    except OSError as e:
        cfg_sha = f"unreadable ({e})"
    if cfg_sha == manifest.config_sha256:
        checks.append(Check("overlay.config", "pass", "config.json is the one qwenprep wrote"))
    else:
        checks.append(
            Check(
                "overlay.config",
                "fail",
                "config.json was changed after qwenprep wrote it",
                str(path / CONFIG),
            )
        )
    bad: list[str] = []
    for f in manifest.files:
        name = f.name
        p = path / name
        if os.path.isabs(name) or ".." in Path(name).parts:
            bad.append(f"{name}: path escapes the overlay")
            continue
        if not p.is_symlink():
            bad.append(f"{name}: missing" if not p.exists() else f"{name}: not a link")
        elif not p.exists():
            bad.append(f"{name}: link target {os.readlink(p)} is gone")
        elif p.stat().st_size != f.size:
            bad.append(f"{name}: size {p.stat().st_size} != {f.size} in the manifest")
    if bad:
        checks.append(
            Check(
                "overlay.links",
                "fail",
                f"{len(bad)} linked file(s) wrong: "
                + "; ".join(bad[:5])
                + (" ..." if len(bad) > 5 else ""),
                str(path),
            )
        )
    else:
        checks.append(
            Check(
                "overlay.links",
                "pass",
                f"{len(manifest.files)} linked files resolve and match the manifest",
            )
        )
    src_cfg = Path(str(manifest.source.path)) / CONFIG
    try:
        src_sha = sha256_bytes(read_regular_bytes(src_cfg))
    except OSError:
        src_sha = None
    if src_sha == manifest.source.config_sha256:
        checks.append(Check("overlay.source", "pass", f"source config unchanged ({src_cfg})"))
    else:
        checks.append(
            Check(
                "overlay.source",
                "fail",
                f"the source config {src_cfg} changed or vanished since the patch",
                str(src_cfg),
            )
        )
    return checks


OWN_STATE = {MANIFEST_NAME, "hashes.json"}  # what qwenprep itself writes under .qwenprep/


@dataclass(frozen=True)
class UserContent:
    """What removing an overlay would lose: files qwenprep did not put there (never deleted),
    and edits to what it did put there (deleted only with --force)."""

    foreign: list[str]
    edits: list[str]


def user_content(path: Path, manifest: Manifest) -> UserContent:
    """Anything in the overlay but links, the config.json qwenprep wrote (same sha256 as the
    manifest says) and qwenprep's own files under .qwenprep/. Removing a link never touches its
    target, so links are never user content."""
    foreign: list[str] = []
    edits: list[str] = []
    for root, dirs, files in os.walk(path, followlinks=False):
        rel_root = os.path.relpath(root, path)
        ours = rel_root == MANIFEST_DIR or rel_root.startswith(MANIFEST_DIR + os.sep)
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            rel = os.path.normpath(os.path.join(rel_root, name))
            p = Path(root) / name
            if ours:
                if rel_root != MANIFEST_DIR or name not in OWN_STATE or p.is_symlink():
                    edits.append(
                        f"{rel} (a file under {MANIFEST_DIR}/ that qwenprep did not write)"
                    )
            elif p.is_symlink():
                continue
            elif rel == CONFIG:
                if _sha256_file(p) != manifest.config_sha256:
                    edits.append(f"{CONFIG} (changed after qwenprep wrote it)")
            else:
                foreign.append(rel)
    return UserContent(sorted(foreign), sorted(edits))


def _sha256_file(p: Path) -> str | None:
    try:
        return sha256_bytes(read_regular_text(p).encode("utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
