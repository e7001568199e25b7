"""Undo: drop an overlay, or restore a config.json that the old manual recipe edited in place.

In a Hugging Face cache snapshot, ``config.json`` links to ``blobs/<git blob sha1>``; the name
is the content address of the original bytes, so a restoration is proven, not guessed. The
same address is in ``.cache/huggingface/download/config.json.metadata`` of a ``--local-dir``
download. Candidate bytes come from backups beside the file, intact blobs, and un-patching the
edited config in the serialisations Hugging Face tools write.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from qwenprep.checkpoint import CONFIG
from qwenprep.contexts import (
    NATIVE_QWEN3_CODER,
    ContextRequest,
    effective_rope,
    native_context,
    patch_config,
    rope_type,
)
from qwenprep.errors import InputError
from qwenprep.hashing import git_blob_sha1_of as git_blob_sha1
from qwenprep.hub import local_dir_etag, snapshot_blobs
from qwenprep.jsonio import atomic_write_bytes, fsync_dir
from qwenprep.overlay import read_manifest, remove_overlay

BACKUP_NAMES = ("config.json.bak", "config.json.orig", "config.json.backup", "config.json~",
                "config.json.qwenprep-backup", "config.json.original")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_COMMON_NATIVES = (NATIVE_QWEN3_CODER, 131072, 40960, 32768)


@dataclass(frozen=True)
class RevertResult:
    action: str  # removed-overlay | restored-config | relinked | already-original
    path: str
    message: str
    proof: str | None = None
    source: str | None = None  # where the restored bytes came from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unpatched_variants(data: bytes) -> Iterator[tuple[str, bytes]]:
    """The edited config un-patched to native, in the byte layouts HF tooling writes."""
    try:
        cfg = json.loads(data)
        native = patch_config(cfg, ContextRequest("native", None), force=True).config
    except Exception:  # noqa: BLE001 - any unreadable edit simply yields no candidate
        return
    shapes = [native]
    mpe = native.get("max_position_embeddings")
    if isinstance(mpe, int) and mpe > NATIVE_QWEN3_CODER:
        # a max_position_embeddings-only edit: the native length is a guess, proven or
        # discarded by the content address like every other candidate
        shapes += [dict(native, max_position_embeddings=n) for n in _COMMON_NATIVES]
    if "rope_scaling" in native and native["rope_scaling"] is None:
        shapes.append({k: v for k, v in native.items() if k != "rope_scaling"})
    for shape in shapes:
        for sort_keys in (False, True):
            body = json.dumps(shape, indent=2, sort_keys=sort_keys, ensure_ascii=False)
            for tail in ("\n", ""):
                yield ("reconstructed by un-patching (indent 2"
                       + (", sorted keys" if sort_keys else "") + ")", (body + tail).encode())


def _candidates(path: Path, current: bytes) -> Iterator[tuple[str, bytes]]:
    yield "the file as it is", current
    for name in BACKUP_NAMES:
        b = path / name
        if b.is_file():
            yield f"backup {b}", b.read_bytes()
    yield from _unpatched_variants(current)


def _is_patched(data: bytes) -> bool:
    """Rope scaling set, a YaRN length, or a context above any native Qwen3 one without
    scaling (the max_position_embeddings-only edit, which runs unscaled)."""
    try:
        cfg = json.loads(data)
        mpe = cfg.get("max_position_embeddings")
        return rope_type(effective_rope(cfg)) != "default" or \
            mpe != native_context(cfg) or (isinstance(mpe, int) and mpe > NATIVE_QWEN3_CODER)
    except Exception:  # noqa: BLE001
        return False


def _locate(spec: str | Path) -> Path:
    """A path (symlinks resolved, so the real overlay or snapshot is acted on), or a cached
    ORG/NAME[@rev] (its snapshot, where in-place edits of the old recipe live)."""
    p = Path(spec).expanduser()
    if p.name == CONFIG and p.parent.is_dir():
        p = p.parent
    if p.exists():
        return Path(os.path.realpath(p))
    from qwenprep.hub import parse_repo_spec

    if parse_repo_spec(str(spec)) is not None:
        from qwenprep.checkpoint import resolve_model

        return resolve_model(str(spec)).path
    raise InputError(f"{Path(os.path.abspath(p))}: no such overlay or checkpoint directory.",
                     hint="pass an overlay made by qwenprep patch, a checkpoint directory, or a "
                     "cached repo id (ORG/NAME[@rev]).")


def revert_path(spec: str | Path) -> RevertResult:
    path = _locate(spec)
    if read_manifest(path) is not None:
        m = remove_overlay(path)
        return RevertResult("removed-overlay", str(path),
                            f"removed overlay {path} (source {m['source']['path']} untouched)")
    if not path.exists():  # a concurrent revert removed it between our looks
        raise InputError(f"{path}: no such overlay (removed meanwhile?).")
    cfg = path / CONFIG
    if not cfg.exists():
        raise InputError(f"{cfg}: missing; nothing to revert here.",
                         hint="pass an overlay made by qwenprep patch, or a checkpoint directory.")
    current = cfg.read_bytes()
    blobs = snapshot_blobs(path)
    if blobs is not None:
        return _revert_in_cache(path, cfg, current, blobs)
    etag = local_dir_etag(path, CONFIG)
    if etag:
        done = _restore_to_address(path, cfg, current, etag, cfg, "matches the download record")
        if done is not None:
            return done
        raise InputError(
            f"{cfg}: differs from its recorded content address {etag} and no backup or "
            "reconstruction reproduces it.",
            hint="put the original beside it as config.json.bak, or download it again: "
            "hf download ORG/NAME config.json --local-dir " + str(path))
    if not _is_patched(current):
        return RevertResult("already-original", str(path),
                            f"{cfg} is not patched (no rope scaling, native context); "
                            "nothing to revert")
    for name in BACKUP_NAMES:
        b = path / name
        if b.is_file() and not _is_patched(b.read_bytes()):
            atomic_write_bytes(cfg, b.read_bytes())
            return RevertResult("restored-config", str(path),
                                f"restored {cfg} from backup {b} (no content hash is known "
                                "here, so the bytes are the backup's, unproven)", None, str(b))
    raise InputError(
        f"{cfg}: edited in place (rope scaling set) and there is no content address or backup "
        "to restore the original bytes from.",
        hint="put the original file beside it as config.json.bak and run qwenprep revert again, "
        "or re-download config.json from the hub; from now on use qwenprep patch MODEL "
        "--context 1m --out DIR, which never edits the source.")


def _relink(cfg: Path, blob_name: str) -> None:
    tmp = cfg.parent / f".{CONFIG}.qwenprep-{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.join("..", "..", "blobs", blob_name), tmp)
    os.replace(tmp, cfg)
    fsync_dir(cfg.parent)


def _restore_to_address(root: Path, cfg: Path, current: bytes, address: str, target: Path,
                        proof_note: str) -> RevertResult | None:
    """Write the first candidate whose git blob sha1 is ADDRESS to TARGET (the file, or the
    blob behind a cache link). None when no candidate reproduces the address."""
    for origin, data in _candidates(root, current):
        if git_blob_sha1(data) != address:
            continue
        if data == current:
            return RevertResult("already-original", str(root),
                                f"{cfg} already matches its content address {address}",
                                f"git blob sha1 {address}")
        atomic_write_bytes(target, data)
        return RevertResult("restored-config", str(root),
                            f"restored {cfg} from {origin}; {proof_note}",
                            f"git blob sha1 {address}", origin)
    return None


def _revert_in_cache(snapshot: Path, cfg: Path, current: bytes, blobs: Path) -> RevertResult:
    if cfg.is_symlink():
        address = os.path.basename(os.readlink(cfg))
        if not _SHA1.match(address):
            raise InputError(f"{cfg}: links to {os.readlink(cfg)}, not a git-sha1 blob; "
                             "this cache entry is not one qwenprep understands.")
        done = _restore_to_address(snapshot, cfg, current, address, blobs / address,
                                   f"blob {address} now hashes to its name")
        if done is not None:
            return done
        raise InputError(
            f"{cfg}: the blob {address} was edited and neither a backup nor an un-patch of it "
            f"reproduces content address {address}.",
            hint="restore it from the hub: hf download ORG/NAME config.json --revision "
            f"{snapshot.name} --force-download")
    # the link was replaced by an edited file: find the intact blob it pointed to
    for origin, data in _candidates(snapshot, current):
        address = git_blob_sha1(data)
        blob = blobs / address
        if blob.is_file() and git_blob_sha1(blob.read_bytes()) == address:
            _relink(cfg, address)
            return RevertResult(
                "relinked", str(snapshot),
                f"replaced the edited file {cfg} with the link to blob {address} "
                f"(found via {origin}; the blob's git sha1 equals its name)",
                f"git blob sha1 {address}", origin)
    raise InputError(
        f"{cfg}: is a plain file (the cache link was replaced) and no intact blob in {blobs} "
        "matches it un-patched.",
        hint="restore it from the hub: hf download ORG/NAME config.json --revision "
        f"{snapshot.name} --force-download")
