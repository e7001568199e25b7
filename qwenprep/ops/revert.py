"""Undo (`qwenprep revert`): drop an overlay, or restore a config.json that the old manual
recipe edited in place.

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

from qwenprep.errors import InputError, QwenprepError
from qwenprep.model.checkpoint import CONFIG, check_path_length
from qwenprep.model.contexts import (
    NATIVE_QWEN3_CODER,
    YARN_KEYS,
    ContextRequest,
    effective_rope,
    patch_config,
    rope_type,
)
from qwenprep.model.hub import local_dir_etag, snapshot_blobs
from qwenprep.model.manifest import read_manifest
from qwenprep.ops.overlay import io_error
from qwenprep.ops.remove import remove_overlay
from qwenprep.util.hashing import git_blob_sha1_of as git_blob_sha1
from qwenprep.util.jsonio import (
    REPLACED_SUFFIX,
    atomic_write_bytes,
    fsync_dir,
    loads_located,
    read_regular_bytes,
    replaced_names,
)

BACKUP_NAMES = (
    "config.json.bak",
    "config.json.orig",
    "config.json.backup",
    "config.json~",
    "config.json.qwenprep-backup",
    "config.json.original",
)
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_COMMON_NATIVES = (NATIVE_QWEN3_CODER, 131072, 40960, 32768)


@dataclass(frozen=True)
class RevertResult:
    action: str  # removed-overlay | restored-config | relinked | already-original | absent
    path: str
    message: str
    proof: str | None = None
    source: str | None = None  # where the restored bytes came from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unpatched_variants(data: bytes) -> Iterator[tuple[str, bytes]]:
    """The edited config un-patched to native, in the byte layouts HF tooling writes."""
    cfg = _parse_config(data)
    if cfg is None:
        return
    try:
        native = patch_config(cfg, ContextRequest("native", None), force=True).config
    except QwenprepError:
        # an inconsistent edit (say a YaRN block with the length left at native): guess the
        # native shape; a guess is only ever used when the content address proves it
        native = dict(cfg, rope_scaling=None)
        block = cfg.get("rope_scaling")
        orig = block.get("original_max_position_embeddings") if isinstance(block, dict) else None
        if isinstance(orig, int) and not isinstance(orig, bool) and orig > 0:
            native["max_position_embeddings"] = orig
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
                yield (
                    "its un-patched text (indent 2" + (", sorted keys" if sort_keys else "") + ")",
                    (body + tail).encode(),
                )


def _candidates(path: Path, current: bytes) -> Iterator[tuple[str, bytes]]:
    yield "the file as it is", current
    for name in BACKUP_NAMES:
        b = path / name
        if b.is_file():
            yield f"backup {b}", read_regular_bytes(b)
    yield from _unpatched_variants(current)


def _parse_config(data: bytes) -> dict[str, Any] | None:
    try:
        cfg = loads_located(data.decode("utf-8"), CONFIG)
    except (InputError, UnicodeDecodeError):
        return None
    return cfg if isinstance(cfg, dict) else None


def _is_patched_config(cfg: dict[str, Any]) -> bool:
    """Rope scaling set, or a context above any native Qwen3 one (the
    max_position_embeddings-only edit, which runs unscaled)."""
    mpe = cfg.get("max_position_embeddings")
    try:
        kind = rope_type(effective_rope(cfg))
    except (AttributeError, TypeError):
        return True  # a rope block qwenprep cannot read is not a native config
    return (
        kind != "default"
        or not isinstance(mpe, int)
        or isinstance(mpe, bool)
        or mpe > NATIVE_QWEN3_CODER
    )


def _is_patched(data: bytes) -> bool:
    cfg = _parse_config(data)
    return cfg is not None and _is_patched_config(cfg)


_LONG_CONTEXT_KEYS = ("max_position_embeddings", "rope_scaling")


def _without_long_context(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config minus what a long-context edit changes (length and rope scaling)."""
    out = {k: v for k, v in cfg.items() if k not in _LONG_CONTEXT_KEYS}
    params = out.get("rope_parameters")
    if isinstance(params, dict):
        out["rope_parameters"] = {
            k: v for k, v in params.items() if k not in YARN_KEYS and k != "rope_type"
        }
    return out


def backup_problem(current: bytes, backup: bytes) -> str | None:
    """Why BACKUP is not the original of CURRENT (None when it is): it must parse, be native,
    and equal CURRENT with the long-context edit undone (same model, same everything else)."""
    if not backup.strip():
        return "it is empty"
    cfg = _parse_config(backup)
    if cfg is None:
        return "it is not a JSON config object"
    now = _parse_config(current)
    if now is None:
        return "the current config.json is not JSON, so the backup cannot be matched to it"
    if _is_patched_config(cfg):
        return "it is itself patched for a long context"
    a, b = _without_long_context(now), _without_long_context(cfg)
    if a != b:
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        what = (
            "a config of another model"
            if any(
                k in diff
                for k in (
                    "model_type",
                    "architectures",
                    "hidden_size",
                    "num_hidden_layers",
                    "vocab_size",
                )
            )
            else "another config"
        )
        return (
            f"it is {what} (differs in {', '.join(diff[:5])}"
            + (" ..." if len(diff) > 5 else "")
            + ")"
        )
    rope = effective_rope(now)
    orig = rope.get("original_max_position_embeddings")
    if (
        rope_type(rope) == "yarn"
        and isinstance(orig, int)
        and cfg.get("max_position_embeddings") != orig
    ):
        return (
            f"its max_position_embeddings {cfg.get('max_position_embeddings')!r} is not the "
            f"native {orig} the edit scaled from"
        )
    return None


def keep_replaced(cfg: Path, data: bytes) -> Path:
    """Keep bytes revert is about to replace beside the file (config.json.qwenprep-replaced,
    then .1, .2 ...), so an undo can itself be undone."""
    for p in replaced_names(cfg):
        if p.is_symlink() or p.exists():
            if p.is_file() and not p.is_symlink() and read_regular_bytes(p) == data:
                return p
            continue
        atomic_write_bytes(p, data)
        return p
    raise InputError(f"{cfg.parent}: 1000 {REPLACED_SUFFIX} files already; clean some up.")


def _locate(spec: str | Path) -> Path | None:
    """A path (symlinks resolved, so the real overlay or snapshot is acted on), or a cached
    ORG/NAME[@rev] (its snapshot, where in-place edits of the old recipe live). None when SPEC
    names a path that is not there (an overlay already reverted)."""
    p = check_path_length(spec)
    if p.name == CONFIG and p.parent.is_dir():
        p = p.parent
    if p.exists():
        return Path(os.path.realpath(p))
    from qwenprep.model.hub import parse_repo_spec

    if parse_repo_spec(str(spec)) is not None and not p.parent.is_dir():
        from qwenprep.model.checkpoint import resolve_model

        return resolve_model(str(spec)).path
    if p.parent.is_dir() or p.is_symlink():
        return None
    raise InputError(
        f"{Path(os.path.abspath(p))}: no such overlay or checkpoint directory.",
        hint="pass an overlay made by qwenprep patch, a checkpoint directory, or a "
        "cached repo id (ORG/NAME[@rev]).",
    )


def revert_path(spec: str | Path, *, force: bool = False) -> RevertResult:
    """Undo for SPEC (see the module docstring). FORCE also deletes edits the user made inside
    an overlay (never files the user added)."""
    path = _locate(spec)
    if path is None:
        shown = os.path.abspath(Path(spec).expanduser())
        return RevertResult(
            "absent", shown, f"nothing at {shown}: no overlay to remove (already reverted?)"
        )
    try:
        res = _revert_at(path, force)
        if res.action == "already-original" and not Path(spec).expanduser().exists():
            return _revert_default_overlay(str(spec), path, force) or res
        return res
    except OSError as e:
        raise io_error(
            path,
            e,
            verb="revert here",
            hint="revert needs write access to the directory (and, in a Hugging Face "
            "cache, to its blobs); remount read-write or run as the owner",
        ) from None


def _revert_default_overlay(spec: str, snapshot: Path, force: bool) -> RevertResult | None:
    """`revert ORG/NAME` undoes `patch ORG/NAME`: the snapshot's config is the release's, so
    the overlay that patch made at its default place goes. None when there is none; several
    (one per context) are listed, to pick one."""
    from qwenprep.model.lifecycle import default_overlays_of

    found = default_overlays_of(snapshot)
    if len(found) > 1:
        raise InputError(
            f"{spec}: its config.json is the release's, and {len(found)} overlays were made "
            f"of it: {', '.join(map(str, found))}.",
            hint=f"revert the one to remove: qwenprep revert {found[0]}",
        )
    return _revert_at(found[0], force) if found else None


def _revert_at(path: Path, force: bool) -> RevertResult:
    manifest = read_manifest(path)
    if manifest is not None:
        from qwenprep.model.lifecycle import pin_sharer

        sharer = pin_sharer(path, manifest)
        m = remove_overlay(path, force=force)
        if m is None:
            return RevertResult(
                "absent", str(path), f"nothing at {path}: no overlay to remove (removed meanwhile?)"
            )
        src = Path(str(m.source.path))
        said = (
            f"source {src} untouched"
            if src.is_dir()
            else f"it was dangling: its source {src} was already gone"
        )
        pin_note = (
            f"; its cache pin {m.source.pin} is kept for {sharer}, the overlay it was copied from"
            if sharer is not None and sharer.is_dir()
            else f"; its cache pin {m.source.pin} is left in place: this was a copy of "
            f"the overlay made at {sharer}, which may still use it from wherever it was moved"
            if sharer is not None
            else ""
        )
        return RevertResult(
            "removed-overlay", str(path), f"removed overlay {path} ({said}){pin_note}"
        )
    if not path.exists():  # a concurrent revert removed it between our looks
        return RevertResult(
            "absent", str(path), f"nothing at {path}: no overlay to remove (removed meanwhile?)"
        )
    cfg = path / CONFIG
    if not cfg.exists():
        raise InputError(
            f"{cfg}: missing; nothing to revert here.",
            hint="pass an overlay made by qwenprep patch, or a checkpoint directory.",
        )
    if not cfg.is_file():
        raise InputError(f"{cfg}: not a regular file; nothing qwenprep can restore.", path=str(cfg))
    current = read_regular_bytes(cfg)
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
            "hf download ORG/NAME config.json --local-dir " + str(path),
        )
    if not _is_patched(current):
        if _parse_config(current) is None:
            raise InputError(
                f"{cfg}: is not a JSON config object, and there is no content "
                "address here to restore the original from.",
                hint="put the original file beside it as config.json.bak and run "
                "qwenprep revert again, or re-download config.json.",
                path=str(cfg),
            )
        return RevertResult(
            "already-original",
            str(path),
            f"{cfg} is not patched (no rope scaling, native context); nothing to revert",
        )
    rejected: list[str] = []
    for name in BACKUP_NAMES:
        b = path / name
        if not b.is_file():
            continue
        data = read_regular_bytes(b)
        why = backup_problem(current, data)
        if why is not None:
            rejected.append(f"{name}: {why}")
            continue
        kept = keep_replaced(cfg, current)
        atomic_write_bytes(cfg, data)
        return RevertResult(
            "restored-config",
            str(path),
            f"restored {cfg} from backup {b} (no content hash is known "
            "here, so the bytes are the backup's, unproven; it matches the "
            f"edited file with the long-context edit undone); the edited file "
            f"is kept as {kept}",
            None,
            str(b),
        )
    if rejected:
        raise InputError(
            f"{cfg}: edited in place (rope scaling set), and no backup beside it is its "
            "original: " + "; ".join(rejected) + ". Nothing was changed.",
            hint="put the original file beside it as config.json.bak (a native config of the "
            "same model) and run qwenprep revert again, or re-download config.json.",
            path=str(cfg),
        )
    raise InputError(
        f"{cfg}: edited in place (rope scaling set) and there is no content address or backup "
        "to restore the original bytes from.",
        hint="put the original file beside it as config.json.bak and run qwenprep revert again, "
        "or re-download config.json from the hub; from now on use qwenprep patch MODEL "
        "--context 1m --out DIR, which never edits the source.",
    )


def _relink(cfg: Path, blob_name: str) -> None:
    tmp = cfg.parent / f".{CONFIG}.qwenprep-{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.join("..", "..", "blobs", blob_name), tmp)
    os.replace(tmp, cfg)
    fsync_dir(cfg.parent)


def _restore_to_address(
    root: Path, cfg: Path, current: bytes, address: str, target: Path, proof_note: str
) -> RevertResult | None:
    """Write the first candidate whose git blob sha1 is ADDRESS to TARGET (the file, or the
    blob behind a cache link). None when no candidate reproduces the address."""
    for origin, data in _candidates(root, current):
        if git_blob_sha1(data) != address:
            continue
        if data == current:
            return RevertResult(
                "already-original",
                str(root),
                f"{cfg} already matches its content address {address}",
                f"git blob sha1 {address}",
            )
        kept = keep_replaced(cfg, current)
        atomic_write_bytes(target, data)
        return RevertResult(
            "restored-config",
            str(root),
            f"restored {cfg} from {origin}; {proof_note}; the edited bytes are kept as {kept}",
            f"git blob sha1 {address}",
            origin,
        )
    return None


def _revert_in_cache(snapshot: Path, cfg: Path, current: bytes, blobs: Path) -> RevertResult:
    if cfg.is_symlink():
        address = os.path.basename(os.readlink(cfg))
        if not _SHA1.match(address):
            raise InputError(
                f"{cfg}: links to {os.readlink(cfg)}, not a git-sha1 blob; "
                "this cache entry is not one qwenprep understands."
            )
        done = _restore_to_address(
            snapshot,
            cfg,
            current,
            address,
            blobs / address,
            f"blob {address} now hashes to its name",
        )
        if done is not None:
            return done
        raise InputError(
            f"{cfg}: the blob {address} was edited and neither a backup nor an un-patch of it "
            f"reproduces content address {address}.",
            hint="restore it from the hub: hf download ORG/NAME config.json --revision "
            f"{snapshot.name} --force-download",
        )
    # the link was replaced by an edited file: find the intact blob it pointed to
    for origin, data in _candidates(snapshot, current):
        address = git_blob_sha1(data)
        blob = blobs / address
        if blob.is_file() and git_blob_sha1(read_regular_bytes(blob)) == address:
            kept = keep_replaced(cfg, current)
            _relink(cfg, address)
            return RevertResult(
                "relinked",
                str(snapshot),
                f"replaced the edited file {cfg} with the link to blob {address} "
                f"(found via {origin}; the blob's git sha1 equals its name); the edited file "
                f"is kept as {kept}",
                f"git blob sha1 {address}",
                origin,
            )
    raise InputError(
        f"{cfg}: is a plain file (the cache link was replaced) and no intact blob in {blobs} "
        "matches it un-patched.",
        hint="restore it from the hub: hf download ORG/NAME config.json --revision "
        f"{snapshot.name} --force-download",
    )
