"""Overlay directories: every source file linked, config.json patched, a manifest beside.

The source checkpoint is never written. An overlay is built in a hidden sibling directory and
renamed into place under a lock, so a crash or a concurrent run never leaves a half-made one.
Removing one (qwenprep revert) is qwenprep.ops.remove; checking one (links resolve,
nothing edited since the patch) is qwenprep.checks.overlay.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import difflib
import errno
import fcntl
import json
import os
import shutil
import stat
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from qwenprep._version import __version__
from qwenprep.checks.overlay import overlay_checks, user_content
from qwenprep.errors import ConflictError, InputError, QwenprepError, UsageError
from qwenprep.model.checkpoint import CONFIG, Checkpoint, check_path_length, resolve_dir
from qwenprep.model.contexts import ContextRequest, PatchResult, patch_config
from qwenprep.model.manifest import (
    MANIFEST_DIR,
    Manifest,
    manifest_path,
    read_manifest,
    sha256_bytes,
)
from qwenprep.util.jsonio import (
    REPLACED_SUFFIX,
    atomic_write_bytes,
    dump_config,
    fsync_dir,
    loads_located,
    read_regular_bytes,
)

# Made here: OverlayResult, create_overlay and the lock and atomic-swap helpers. The self-checks
# are qwenprep.checks.overlay's and the manifest qwenprep.model.manifest's.
__all__ = [
    "LOCK_TIMEOUT_S",
    "SKIP_TOP",
    "TMP_TAG",
    "OverlayResult",
    "config_diff",
    "create_overlay",
    "output_lock",
    "writable_dir_error",
]

SKIP_TOP = {MANIFEST_DIR, ".git", ".cache"}  # never linked: our own state, VCS, hub download state
TMP_TAG = ".qwenprep-tmp-"
LOCK_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class OverlayResult:
    path: Path
    source: Checkpoint
    manifest: dict[str, Any]
    patch: PatchResult
    source_config_text: str
    status: str  # "created" | "replaced" | "unchanged"
    notes: list[str] = field(default_factory=list)

    @property
    def diff(self) -> list[str]:
        return config_diff(self.source_config_text, dump_config(self.patch.config))


def config_diff(old_text: str, new_text: str) -> list[str]:
    return list(
        difflib.unified_diff(
            old_text.splitlines(),
            new_text.splitlines(),
            "source/config.json",
            "overlay/config.json",
            lineterm="",
            n=1,
        )
    )


def _digest(config_sha: str, files: list[dict[str, Any]]) -> str:
    blob = json.dumps({"config_sha256": config_sha, "files": files}, sort_keys=True)
    return sha256_bytes(blob.encode())


def _source_entries(src: Path) -> Iterator[tuple[str, Path, bool]]:
    """(relative name, absolute source path, is_dir) for everything to link, sorted."""
    for root, dirs, files in os.walk(src, followlinks=False):
        rel_root = os.path.relpath(root, src)
        if rel_root == ".":
            dirs[:] = sorted(d for d in dirs if d not in SKIP_TOP)
        else:
            dirs.sort()
        for d in dirs:
            p = Path(root) / d
            if p.is_symlink():  # a linked directory: link it as one entry
                yield os.path.normpath(os.path.join(rel_root, d)), p, True
        dirs[:] = [d for d in dirs if not (Path(root) / d).is_symlink()]
        for f in sorted(files):
            if (rel_root == "." and f == CONFIG) or REPLACED_SUFFIX in f:
                continue  # the patched config is written; kept copies (jsonio.REPLACED_SUFFIX) stay
            yield os.path.normpath(os.path.join(rel_root, f)), Path(root) / f, False


def _file_size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        raise InputError(
            f"{p}: broken link in the source checkpoint.",
            hint="re-download the checkpoint (qwenprep fetch ORG/NAME).",
        ) from None


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Serialise every qwenprep writer of OUT: an flock on OUT's parent directory itself, so no
    lock file is left behind (it also serialises writers of OUT's siblings, which is cheap)."""
    try:
        fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise io_error(out.parent, e) from None
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConflictError(
                        f"{out}: another qwenprep run has held the lock on {out.parent} for "
                        f"{LOCK_TIMEOUT_S:.0f} s.",
                        hint="wait for it to finish, then retry.",
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def io_error(
    where: Path,
    e: OSError,
    *,
    verb: str = "write here",
    hint: str = "choose an --out directory on a writable filesystem.",
) -> QwenprepError:
    if e.errno == errno.EROFS:
        return InputError(
            f"{where}: cannot {verb}: the filesystem is mounted read-only.",
            hint=hint,
            path=str(where),
        )
    if e.errno in (errno.EACCES, errno.EPERM):
        return InputError(
            f"{where}: cannot {verb} ({os.strerror(e.errno)}).", hint=hint, path=str(where)
        )
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return InputError(
            f"{where}: out of space ({os.strerror(e.errno)}).",
            hint="free some space or choose another --out.",
            path=str(where),
        )
    return InputError(f"{where}: cannot {verb}: {e.strerror or e}.", path=str(where))


def writable_dir_error(
    d: Path,
    *,
    verb: str = "write here",
    hint: str = "choose an --out directory on a writable filesystem.",
) -> QwenprepError | None:
    """Why D cannot be written (read-only filesystem named as such), or None."""
    try:
        if os.statvfs(d).f_flag & os.ST_RDONLY:
            return io_error(d, OSError(errno.EROFS, os.strerror(errno.EROFS)), verb=verb, hint=hint)
    except OSError as e:
        return io_error(d, e, verb=verb, hint=hint)
    if not os.access(d, os.W_OK):
        return io_error(d, PermissionError(errno.EACCES, "Permission denied"), verb=verb, hint=hint)
    return None


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2). False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return bool(rc == 0)


def remove_tree(p: Path) -> None:
    """Delete a tree we made; links inside are unlinked, never followed."""
    if p.is_symlink() or p.is_file():
        p.unlink()
    elif p.exists():
        shutil.rmtree(p)


def _clean_stale(out: Path) -> None:
    for stale in out.parent.glob(f".{out.name}{TMP_TAG}*"):
        with contextlib.suppress(OSError):
            remove_tree(stale)


def _check_out(source: Path, out: Path) -> None:
    src = source.resolve()
    tgt = out.parent.resolve() / out.name
    if tgt == src or src in tgt.parents:
        raise UsageError(
            f"--out {out} is inside the source checkpoint {src}; the source is never written.",
            hint=f"choose a directory outside it, e.g. --out {src.parent / (src.name + '-1m')}",
        )
    if tgt in src.parents:
        raise UsageError(
            f"--out {out} contains the source checkpoint {src}; replacing it would delete the "
            "source.",
            hint=f"choose a directory beside it, e.g. --out {src.parent / (src.name + '-1m')}",
        )


def _existing_state(out: Path, force: bool) -> str:
    """'absent' | 'empty' | 'ours'; raises for anything we must not clobber."""
    if out.is_symlink():
        raise ConflictError(
            f"--out {out} is a symbolic link (to {os.readlink(out)}); refusing to replace it.",
            hint="pass the real directory, or another --out.",
        )
    if out.exists() and not out.is_dir():
        raise ConflictError(
            f"--out {out} exists and is not a directory; refusing to replace it.",
            hint="choose another --out.",
        )
    if not out.exists():
        return "absent"
    if not any(out.iterdir()):
        return "empty"
    if read_manifest(out) is None:
        raise ConflictError(
            f"--out {out} is a non-empty directory that qwenprep did not make; "
            "refusing to touch it.",
            hint="choose a new or empty --out directory.",
        )
    if not force:
        return "ours-keep"
    manifest = read_manifest(out)
    assert manifest is not None
    found = user_content(out, manifest)
    if found.foreign:
        raise ConflictError(
            f"--out {out} is a qwenprep overlay but holds files qwenprep did not put there: "
            f"{', '.join(found.foreign[:5])}; --force will not delete them.",
            hint="move them out, or choose another --out.",
        )
    if found.edits:
        raise ConflictError(
            f"--out {out} was changed after qwenprep made it: {'; '.join(found.edits[:5])}; "
            "replacing it would delete that.",
            hint=f"copy out what you want to keep, then remove it with qwenprep revert {out} "
            "--force (or choose another --out), and patch again.",
        )
    return "ours"


def create_overlay(
    model: Checkpoint,
    out: Path | None,
    req: ContextRequest,
    *,
    force: bool = False,
) -> OverlayResult:
    """Patch MODEL's config for REQ into the overlay OUT (None: the default place,
    qwenprep.model.lifecycle.default_overlay_dir). See the module docstring."""
    from qwenprep.model import lifecycle

    source = model
    prior = read_manifest(model.path)
    if prior is not None:  # patching an overlay: start from its source
        src_path = Path(str(prior.source.path))
        if not (src_path / CONFIG).is_file():
            raise InputError(
                f"{model.path} is an overlay of {src_path}, which is gone or has no config.json.",
                hint="patch the checkpoint where it is now: qwenprep patch NEW_PATH --context C "
                f"--out {model.path} --force",
            )
        source = resolve_dir(src_path)
        source = Checkpoint(source.path, prior.source.repo_id, prior.source.revision)
    edit_notes = _cache_edits(source, force)
    raw = _read_source_config(source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{source.config_path}: not UTF-8 text ({e.reason} at byte {e.start}).",
            hint=f"restore the original config.json (qwenprep revert {source.path}).",
        ) from None
    config = loads_located(text, str(source.config_path))
    if not isinstance(config, dict):
        raise InputError(f"{source.config_path}: top level is not a JSON object.")
    _refuse_unpatchable(source, text)
    patched = patch_config(config, req, force=force)
    if out is None:
        out = lifecycle.default_overlay_dir(source, req)
    out = Path(os.path.abspath(check_path_length(out, "--out")))
    _check_out(source.path, out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise io_error(out.parent, e) from None
    denied = writable_dir_error(out.parent)
    if denied is not None:
        raise denied

    new_config = dump_config(patched.config).encode("utf-8")
    entries = list(_source_entries(source.path))
    files = [{"name": n, "size": _file_size(p)} for n, p, is_dir in entries if not is_dir]
    config_sha = sha256_bytes(new_config)
    manifest: dict[str, Any] = {
        "schema_version": 1,
        "tool": "qwenprep",
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "id": lifecycle.new_overlay_id(),
        "path": str(out),
        "source": {
            "path": str(source.path),
            "repo_id": source.repo_id,
            "revision": source.revision,
            "config_sha256": sha256_bytes(raw),
            "refs": lifecycle.refs_to(source.path),
            "pin": None,
        },
        "config_sha256": config_sha,
        "native_context": patched.native,
        "target_context": patched.target,
        "factor": patched.factor,
        "rope_style": patched.style,
        "files": files,
        "digest": _digest(config_sha, files),
    }

    with output_lock(out):
        _clean_stale(out)
        state = _existing_state(out, force)
        if state == "ours-keep":
            current = read_manifest(out)
            if (
                current is not None
                and _same_overlay(current, Manifest.from_dict(manifest))
                and not [c for c in overlay_checks(out) if c.status == "fail"]
            ):
                if lifecycle.pin_missing(current) is None and lifecycle.made_here(out, current):
                    return OverlayResult(out, source, current.raw, patched, text, "unchanged")
                # a copy, a move or a lost pin: rebuilt as it is, with a pin of its own
                state = _existing_state(out, force=True)
        if state == "ours-keep":
            current = read_manifest(out)
            raise ConflictError(
                f"--out {out} is already a qwenprep overlay (of "
                f"{current.source.path if current is not None else None}"
                f" at {current.target_context if current is not None else None} tokens).",
                hint=f"pass --force to replace it, or qwenprep revert {out} to remove it.",
            )
        tmp = out.parent / f".{out.name}{TMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        old_manifest = read_manifest(out) if state == "ours" else None
        shared = old_manifest is not None and lifecycle.pin_sharer(out, old_manifest) is not None
        pin, pin_note = lifecycle.pin_source(source.path, manifest["id"])
        manifest["source"]["pin"] = pin
        try:
            _build(tmp, entries, new_config, manifest)
            if state != "absent":  # the directory's mode stays the user's (a private 0700)
                os.chmod(tmp, stat.S_IMODE(os.stat(out).st_mode))
            if state == "absent":
                os.rename(tmp, out)
            elif state == "empty":
                os.rmdir(out)
                os.rename(tmp, out)
            else:  # ours: swap atomically, then drop the old one
                if not _exchange(tmp, out):
                    old = out.parent / f".{out.name}{TMP_TAG}old-{uuid.uuid4().hex[:8]}"
                    os.rename(out, old)
                    os.rename(tmp, out)
                    tmp = old
                remove_tree(tmp)
            fsync_dir(out.parent)
        except OSError as e:
            with contextlib.suppress(OSError):
                remove_tree(tmp)
            lifecycle.release_pin(Manifest.from_dict(manifest))  # the failed build's own pin
            raise io_error(out, e) from None
        except BaseException:
            with contextlib.suppress(OSError):
                remove_tree(tmp)
            lifecycle.release_pin(Manifest.from_dict(manifest))
            raise
        if old_manifest is not None and not shared:  # a copy's pin is the original's
            lifecycle.release_pin(old_manifest)
    status = {"absent": "created", "empty": "created", "ours": "replaced"}[state]
    return OverlayResult(
        out, source, manifest, patched, text, status, edit_notes + ([pin_note] if pin_note else [])
    )


def _cache_edits(source: Checkpoint, force: bool) -> list[str]:
    """A source whose JSON files were edited in place in the HF cache (qwenprep.model.hub.
    edited_in_cache) is refused: the overlay would carry the edit as if it were the release.
    With --force it goes ahead, and the note says so."""
    from qwenprep.model.hub import edited_in_cache, edited_in_cache_message

    edited = edited_in_cache(source.path)
    if not edited:
        return []
    message, hint = edited_in_cache_message(source.path, edited)
    if not force:
        raise InputError(f"{message}.", hint=f"{hint}, then patch again (or pass --force)")
    return [f"{message}; patched anyway (--force). {hint}"]


def _refuse_unpatchable(source: Checkpoint, text: str) -> None:
    """A source whose native context cannot be known, or that is not a Qwen3 config, is refused
    with every reason (file:line: JSON path: what) and the next step."""
    from qwenprep.checks.validate import validate_config_text

    bad = [
        c
        for c in validate_config_text(text, str(source.config_path))
        if c.status == "fail" and c.id in ("schema", "invariant.context_needs_rope")
    ]
    if not bad:
        return
    if any("model_type" in (c.path or "") for c in bad):
        from qwenprep.model.families import REGISTRY

        hint = (
            "qwenprep patches "
            + "; ".join(f"{f.title} ({', '.join(sorted(f.model_types))})" for f in REGISTRY)
            + "."
        )
    elif any(c.id == "invariant.context_needs_rope" for c in bad):
        hint = (
            f"this config was edited in place; restore it first (qwenprep revert "
            f"{source.path}), then patch the original."
        )
    else:
        hint = f"fix the fields above, or restore the original (qwenprep revert {source.path})."
    raise InputError(
        f"{source.config_path}: not a config qwenprep can patch:\n  "
        + "\n  ".join(c.message for c in bad),
        hint=hint,
    )


def _same_overlay(a: Manifest, b: Manifest) -> bool:
    return (
        a.config_sha256 == b.config_sha256
        and a.digest == b.digest
        and a.target_context == b.target_context
        and a.source.path == b.source.path
    )


def _read_source_config(source: Checkpoint) -> bytes:
    try:
        return read_regular_bytes(source.config_path)
    except FileNotFoundError:
        raise InputError(
            f"{source.config_path}: missing.",
            hint="the checkpoint needs its config.json; re-download it.",
        ) from None
    except OSError as e:
        raise io_error(source.config_path, e) from None


def _build(
    tmp: Path, entries: list[tuple[str, Path, bool]], config: bytes, manifest: dict[str, Any]
) -> None:
    tmp.mkdir()
    st = os.stat(tmp)  # renamed into place, the directory keeps it; a copy gets another
    manifest["dir_id"] = f"{st.st_dev}:{st.st_ino}"
    for rel, src, _is_dir in entries:
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(src, dest)
    atomic_write_bytes(tmp / CONFIG, config)
    (tmp / MANIFEST_DIR).mkdir()
    atomic_write_bytes(manifest_path(tmp), (json.dumps(manifest, indent=2) + "\n").encode())
    fsync_dir(tmp)
