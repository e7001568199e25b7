"""Overlays over their whole life: where they go by default, what keeps their source in the
Hugging Face cache, and whether they are still ok, stale or dangling.

The default place is ``$HF_HOME/qwenprep/overlays`` (``QWENPREP_OVERLAYS`` overrides it), one
directory per source and context. An overlay of a cached snapshot holds a ref
``refs/qwenprep/<id>`` in the repo's cache folder, pointing at the snapshot's commit: the cache
tools list it (``hf cache ls --revisions``) and ``hf cache prune`` keeps every revision a ref
points at, so the source is not pruned from under the overlay. ``qwenprep revert`` removes the
ref. Nothing inside a snapshot is ever written.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from qwenprep.checkpoint import CONFIG, Checkpoint
from qwenprep.contexts import ContextRequest
from qwenprep.errors import InputError
from qwenprep.jsonio import read_regular_bytes

PIN_PREFIX = "qwenprep"
State = Literal["ok", "stale", "dangling", "edited", "invalid"]
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def hf_home() -> Path:
    """HF_HOME as huggingface_hub reads it (default ~/.cache/huggingface)."""
    home = os.environ.get("HF_HOME")
    if home:
        return Path(os.path.expandvars(os.path.expanduser(home)))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "huggingface"


def overlays_home() -> Path:
    """Where `qwenprep patch` puts overlays when --out is not given, and `list` looks."""
    own = os.environ.get("QWENPREP_OVERLAYS")
    if own:
        return Path(os.path.expandvars(os.path.expanduser(own)))
    return hf_home() / "qwenprep" / "overlays"


def context_label(req: ContextRequest) -> str:
    if req.tokens is None:
        return "native"
    for unit, suffix in ((1024 * 1024, "m"), (1024, "k")):
        if req.tokens % unit == 0:
            return f"{req.tokens // unit}{suffix}"
    return str(req.tokens)


def default_overlay_dir(source: Checkpoint, req: ContextRequest) -> Path:
    """ORG--NAME@COMMIT12-1m for a cached repo; DIRNAME-PATHHASH8-1m for a directory."""
    if source.repo_id and source.revision:
        stem = f"{source.repo_id.replace('/', '--')}@{source.revision[:12]}"
    else:
        digest = hashlib.sha256(str(source.path).encode()).hexdigest()[:8]
        stem = f"{_SAFE.sub('_', source.path.name) or 'model'}-{digest}"
    return overlays_home() / f"{stem}-{context_label(req)}"


# ------------------------------------------------------------------ pins in the HF cache


def _repo_folder(snapshot: Path) -> Path | None:
    from qwenprep.hub import snapshot_repo

    return snapshot.parent.parent if snapshot_repo(snapshot) is not None else None


def refs_to(snapshot: Path) -> list[str]:
    """The cache refs (branches, tags, PR refs) that point at SNAPSHOT's commit, ours excluded."""
    repo = _repo_folder(snapshot)
    if repo is None:
        return []
    refs_dir = repo / "refs"
    found = []
    for root, _dirs, files in os.walk(refs_dir):
        for f in files:
            p = Path(root) / f
            name = p.relative_to(refs_dir).as_posix()
            if name.startswith(PIN_PREFIX + "/"):
                continue
            try:
                if read_regular_bytes(p).decode().strip() == snapshot.name:
                    found.append(name)
            except (OSError, UnicodeDecodeError):
                continue
    return sorted(found)


def pin_name(overlay: Path) -> str:
    return f"{PIN_PREFIX}/{hashlib.sha256(str(overlay).encode()).hexdigest()[:16]}"


def pin_source(snapshot: Path, overlay: Path) -> tuple[str | None, str | None]:
    """Write refs/qwenprep/<id> -> the snapshot's commit. (ref name, None) when written;
    (None, why) when the source is not a cache snapshot or the cache is not writable."""
    repo = _repo_folder(snapshot)
    if repo is None:
        return None, None
    name = pin_name(overlay)
    ref = repo / "refs" / name
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".{ref.name}.tmp")
        tmp.write_text(snapshot.name, encoding="utf-8")
        os.replace(tmp, ref)
    except OSError as e:
        return None, (
            f"could not write the cache ref {ref} ({e.strerror or e}); "
            "hf cache prune may remove the source of this overlay"
        )
    return name, None


def release_pin(manifest: dict[str, Any]) -> str | None:
    """Remove the overlay's ref from the cache (only when it still points at our commit).
    Returns the ref path removed, or None."""
    src = manifest.get("source") or {}
    name, path = src.get("pin"), src.get("path")
    if not isinstance(name, str) or not isinstance(path, str):
        return None
    repo = _repo_folder(Path(path))
    if repo is None or not name.startswith(PIN_PREFIX + "/"):
        return None
    ref = repo / "refs" / name
    try:
        if read_regular_bytes(ref).decode().strip() != Path(path).name:
            return None
        ref.unlink()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        ref.parent.rmdir()  # refs/qwenprep/ when it was the last pin
    except OSError:
        pass
    return str(ref)


# ------------------------------------------------------------------ state


@dataclass
class OverlayStatus:
    path: str
    state: State
    source: str
    context: int | None
    reasons: list[str] = field(default_factory=list)
    rebuild: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _source_label(src: dict[str, Any]) -> str:
    if src.get("repo_id"):
        rev = src.get("revision") or "?"
        return f"{src['repo_id']}@{str(rev)[:12]}"
    return str(src.get("path"))


def _rebuild(path: Path, manifest: dict[str, Any], *, ref: str | None = None) -> str:
    src = manifest["source"]
    model = src.get("repo_id") or src.get("path")
    if src.get("repo_id") and ref:
        model = f"{model}@{ref}"
    ctx = manifest.get("target_context")
    return f"qwenprep patch {model} --context {ctx} --out {path} --force"


def overlay_status(path: Path, manifest: dict[str, Any]) -> OverlayStatus:
    """ok | dangling (the source or a linked file is gone) | edited (the overlay's own
    config.json is not the one qwenprep wrote) | stale (the source moved on: its config
    changed, or a ref it was made from now points at another commit)."""
    src = manifest["source"]
    status = OverlayStatus(str(path), "ok", _source_label(src), manifest.get("target_context"))
    source = Path(src["path"])
    gone: list[str] = []
    if not source.is_dir():
        gone.append(f"the source {source} is gone")
    elif not (source / CONFIG).is_file():
        gone.append(f"the source config {source / CONFIG} is gone")
    missing = [
        f["name"]
        for f in manifest["files"]
        if os.path.islink(path / f["name"]) and not os.path.exists(path / f["name"])
    ]
    if missing:
        gone.append(
            f"{len(missing)} linked file(s) point at nothing: "
            + ", ".join(missing[:3])
            + (" ..." if len(missing) > 3 else "")
        )
    if gone:
        status.state = "dangling"
        status.reasons = gone
        status.rebuild = _rebuild(path, manifest)
        return status
    try:
        ours = hashlib.sha256(read_regular_bytes(path / CONFIG)).hexdigest()
    except OSError:
        ours = None
    if ours != manifest.get("config_sha256"):
        status.state = "edited"
        status.reasons = [
            f"{path / CONFIG} is not the config.json qwenprep wrote (edited, "
            "replaced or unreadable): what it serves is not what was checked"
        ]
        status.rebuild = _rebuild(path, manifest)
        return status
    stale: list[str] = []
    try:
        now = hashlib.sha256(read_regular_bytes(source / CONFIG)).hexdigest()
    except OSError:
        now = None
    if now != src.get("config_sha256"):
        stale.append(f"the source config {source / CONFIG} changed since the patch")
    repo = _repo_folder(source)
    for ref in src.get("refs") or []:
        if repo is None:
            break
        try:
            target = read_regular_bytes(repo / "refs" / ref).decode().strip()
        except (OSError, UnicodeDecodeError):
            stale.append(f"the ref {ref} it was made from is gone from the cache")
            continue
        if target != source.name:
            stale.append(
                f"{src.get('repo_id')}@{ref} now points at {target[:12]}, not {source.name[:12]}"
            )
    if stale:
        status.state = "stale"
        status.reasons = stale
        status.rebuild = _rebuild(path, manifest, ref=(src.get("refs") or [None])[0])
    return status


def require_live(path: Path) -> list[str]:
    """For validate/check/serve: raise (exit 3) on a dangling overlay, naming what is gone and
    the command that rebuilds it; return warnings for a stale one; [] otherwise (also for a
    directory that is no overlay)."""
    from qwenprep.manifest import read_manifest

    manifest = read_manifest(path)
    if manifest is None:
        return []
    st = overlay_status(path, manifest)
    if st.state == "dangling":
        raise InputError(
            f"{path}: the overlay is dangling: {'; '.join(st.reasons)}.",
            hint=f"rebuild it from the source where it is now: {st.rebuild}",
            path=str(path),
        )
    if st.state == "stale":
        return [f"the overlay is stale: {r}; rebuild: {st.rebuild}" for r in st.reasons]
    return []


def find_overlays(paths: list[Path]) -> list[Path]:
    """Overlays at each PATH, or one level below it (the default place when none is given)."""
    from qwenprep.manifest import MANIFEST_DIR, MANIFEST_NAME

    roots = paths or [overlays_home()]
    found: list[Path] = []
    for root in roots:
        if os.path.lexists(root / MANIFEST_DIR / MANIFEST_NAME):
            found.append(root)
            continue
        if not root.is_dir():
            if paths:
                raise InputError(f"{root}: no such directory.", path=str(root))
            continue
        for child in sorted(root.iterdir()):
            if (
                child.is_dir()
                and not child.is_symlink()
                and os.path.lexists(child / MANIFEST_DIR / MANIFEST_NAME)
            ):
                found.append(child)
    return found


def list_overlays(paths: list[Path]) -> list[OverlayStatus]:
    from qwenprep.manifest import read_manifest

    out = []
    for p in find_overlays(paths):
        try:
            manifest = read_manifest(p)
        except InputError as e:
            out.append(OverlayStatus(str(p), "invalid", "?", None, [e.message]))
            continue
        if manifest is not None:
            out.append(overlay_status(p, manifest))
    return out
