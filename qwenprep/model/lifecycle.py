"""Overlays over their whole life: where they go by default, what keeps their source in the
Hugging Face cache, and whether they are still ok, stale or dangling.

The default place is ``$HF_HOME/qwenprep/overlays`` (``QWENPREP_OVERLAYS`` overrides it), one
directory per source and context. An overlay of a cached snapshot holds a ref
``refs/qwenprep/<id>`` in the repo's cache folder, pointing at the snapshot's commit: the cache
tools list it (``hf cache ls --revisions``) and ``hf cache prune`` keeps every revision a ref
points at, so the source is not pruned from under the overlay. ``qwenprep revert`` removes the
ref. Nothing inside a snapshot is ever written.

Each overlay instance has a pin of its own: ``<id>`` is a random id made when the overlay is
built, kept in its manifest (``id``) with the path it was built at (``path``). A copy (``cp -a``)
or a move carries the manifest along, so a manifest whose ``path`` is not where it lies is a copy
(the overlay at ``path`` still holds the same pin: reverting the copy leaves the pin to it) or a
move (nothing there holds it: the moved overlay owns it). ``list`` says when an overlay's pin is
missing (a prune may then delete its source) and how to re-pin it. Manifests written before ids
(pin ``qwenprep/<sha256(path)[:16]>``) are read by the same rules.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from qwenprep.errors import InputError
from qwenprep.model.checkpoint import CONFIG, Checkpoint, check_path_length
from qwenprep.model.contexts import ContextRequest
from qwenprep.model.hub import OWN_REFS as PIN_PREFIX
from qwenprep.model.manifest import Manifest, Source
from qwenprep.util.jsonio import read_regular_bytes

State = Literal["ok", "stale", "dangling", "edited", "unpinned", "invalid"]
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
    from qwenprep.model.hub import snapshot_repo

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


def new_overlay_id() -> str:
    """A fresh id for one overlay instance (its pin is refs/qwenprep/<id>)."""
    import uuid

    return uuid.uuid4().hex


def _legacy_pin_name(overlay: Path) -> str:
    """The pin of a manifest written before overlay ids: named by the overlay's path."""
    return f"{PIN_PREFIX}/{hashlib.sha256(str(overlay).encode()).hexdigest()[:16]}"


def pin_source(snapshot: Path, overlay_id: str) -> tuple[str | None, str | None]:
    """Write refs/qwenprep/<overlay_id> -> the snapshot's commit. (ref name, None) when written;
    (None, why) when the source is not a cache snapshot or the cache is not writable."""
    repo = _repo_folder(snapshot)
    if repo is None:
        return None, None
    name = f"{PIN_PREFIX}/{overlay_id}"
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


def _same_place(a: str, b: Path) -> bool:
    return a == str(b) or os.path.realpath(a) == os.path.realpath(b)


def dir_id(path: Path) -> str | None:
    """device:inode of the directory PATH (the manifest's dir_id), None when unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"


def made_here(path: Path, manifest: Manifest) -> bool:
    """PATH is the overlay as it was built: where it was built, or the same directory moved
    (its device:inode, dir_id, unchanged); a copy is neither."""
    made = manifest.path
    recorded = manifest.dir_id
    if isinstance(recorded, str) and recorded == dir_id(path):
        return True
    if isinstance(made, str):
        return _same_place(made, path)
    pin = manifest.source.pin  # a manifest written before overlay ids
    return pin is None or pin in (
        _legacy_pin_name(path),
        _legacy_pin_name(Path(os.path.realpath(path))),
    )


def pin_sharer(path: Path, manifest: Manifest) -> Path | None:
    """The overlay PATH is a copy of, when that one still holds the same pin (so reverting
    PATH must leave the pin alone); None when PATH's pin is its own."""
    from qwenprep.model.manifest import read_manifest

    pin = manifest.source.pin
    made = manifest.path
    if not isinstance(pin, str) or made_here(path, manifest):
        return None
    # where it was made; a manifest from before overlay ids says no path: the default place
    places = [Path(made)] if isinstance(made, str) else find_overlays([])
    for place in places:
        if _same_place(str(place), path):
            continue
        try:
            other = read_manifest(place)
        except InputError:
            continue
        if other is not None and other.source.pin == pin:
            return place
    if isinstance(made, str) and isinstance(manifest.dir_id, str):
        # a copy whose original moved away: it may still hold the pin, so a copy never
        # releases it (a pin left behind keeps a source in the cache; one released early
        # lets a prune delete a live overlay's files)
        return Path(made)
    return None


def pin_missing(manifest: Manifest) -> str | None:
    """Why the overlay's source is not pinned in the cache (None when it is, or when the source
    is no cache snapshot and needs no pin)."""
    src = manifest.source
    source = Path(str(src.path))
    repo = _repo_folder(source)
    if repo is None:
        return None
    name = src.pin
    if not isinstance(name, str) or not name.startswith(PIN_PREFIX + "/"):
        return "the overlay has no pin in the cache"
    ref = repo / "refs" / name
    try:
        target = read_regular_bytes(ref).decode().strip()
    except (OSError, UnicodeDecodeError):
        return f"its pin {ref} is gone"
    if target != source.name:
        return f"its pin {ref} now points at {target[:12]}, not {source.name[:12]}"
    return None


def release_pin(manifest: Manifest) -> str | None:
    """Remove the overlay's ref from the cache (only when it still points at our commit; the
    caller asks pin_sharer first whether a copy's pin is another overlay's).
    Returns the ref path removed, or None."""
    name, path = manifest.source.pin, manifest.source.path
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


def _source_label(src: Source) -> str:
    if src.repo_id:
        rev = src.revision or "?"
        return f"{src.repo_id}@{str(rev)[:12]}"
    return str(src.path)


def _rebuild(path: Path, manifest: Manifest, *, ref: str | None = None) -> str:
    """The command that rebuilds the overlay at PATH: from its own commit (fetched first when
    that snapshot is gone), or from REF (a stale overlay: where the ref points now)."""
    src = manifest.source
    model = src.repo_id or src.path
    fetch = ""
    if src.repo_id and (ref or src.revision):
        model = f"{model}@{ref or src.revision}"
        if not ref and not Path(str(src.path)).is_dir():
            fetch = f"qwenprep fetch {model} && "
    ctx = manifest.target_context
    if ref and _default_named(path, src):  # the new commit's default name; the old one goes
        return f"qwenprep patch {model} --context {ctx} && qwenprep revert {path}"
    return f"{fetch}qwenprep patch {model} --context {ctx} --out {path} --force"


def _default_named(path: Path, src: Source) -> bool:
    """PATH is where plain `patch ORG/NAME` put it: ORG--NAME@COMMIT12-CTX in overlays_home()
    (default_overlay_dir), a name that holds the commit it was built from."""
    repo, rev = src.repo_id, str(src.revision or "")
    return (
        bool(repo)
        and len(rev) == 40
        and path.parent == overlays_home()
        and path.name.startswith(f"{str(repo).replace('/', '--')}@{rev[:12]}-")
    )


def _pin_reasons(path: Path, manifest: Manifest) -> tuple[list[str], list[str]]:
    """(why the overlay is unpinned, notes): a missing pin (a prune may delete the source),
    or a copy sharing another overlay's pin (it goes when that one is reverted)."""
    missing = pin_missing(manifest)
    if missing is not None:
        return [f"pin missing: {missing}; a cache prune may delete its source"], []
    sharer = pin_sharer(path, manifest)
    if sharer is not None:
        pin = manifest.source.pin
        return [], [
            f"a copy of {sharer}: it shares that overlay's pin {pin}, which goes when {sharer} "
            f"is reverted; give this one its own with: {_repin(path, manifest)}"
        ]
    return [], []


def _repin(path: Path, manifest: Manifest) -> str:
    """patch with the same source, context and --out: the unchanged overlay gets its own pin."""
    return _rebuild(path, manifest).removesuffix(" --force")


def overlay_status(path: Path, manifest: Manifest) -> OverlayStatus:
    """ok | dangling (the source or a linked file is gone) | edited (the overlay's own
    config.json is not the one qwenprep wrote) | stale (the source moved on: its config
    changed, or a ref it was made from now points at another commit) | unpinned (its source is
    a cache snapshot and its pin is gone: hf cache prune may delete the source)."""
    src = manifest.source
    status = OverlayStatus(str(path), "ok", _source_label(src), manifest.target_context)
    source = Path(str(src.path))
    gone: list[str] = []
    if not source.is_dir():
        gone.append(f"the source {source} is gone")
    elif not (source / CONFIG).is_file():
        gone.append(f"the source config {source / CONFIG} is gone")
    missing = [
        f.name
        for f in manifest.files
        if os.path.islink(path / f.name) and not os.path.exists(path / f.name)
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
    if ours != manifest.config_sha256:
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
    if now != src.config_sha256:
        stale.append(f"the source config {source / CONFIG} changed since the patch")
    repo = _repo_folder(source)
    for ref in src.refs:
        if repo is None:
            break
        try:
            target = read_regular_bytes(repo / "refs" / ref).decode().strip()
        except (OSError, UnicodeDecodeError):
            stale.append(f"the ref {ref} it was made from is gone from the cache")
            continue
        if target != source.name:
            stale.append(f"{src.repo_id}@{ref} now points at {target[:12]}, not {source.name[:12]}")
    unpinned, notes = _pin_reasons(path, manifest)
    if stale:
        status.state = "stale"
        status.reasons = stale + unpinned + notes
        status.rebuild = _rebuild(path, manifest, ref=src.refs[0] if src.refs else None)
    elif unpinned:
        status.state = "unpinned"
        status.reasons = [f"{unpinned[0]}; re-pin with: {_repin(path, manifest)}"]
        status.rebuild = _repin(path, manifest)
    else:
        status.reasons = notes
    return status


def require_live(path: Path) -> list[str]:
    """For validate/check/serve: raise (exit 3) on a dangling overlay, naming what is gone and
    the command that rebuilds it; return warnings for a stale one; [] otherwise (also for a
    directory that is no overlay)."""
    from qwenprep.model.manifest import read_manifest

    manifest = read_manifest(path)
    if manifest is None:
        return []
    st = overlay_status(path, manifest)
    if st.state == "dangling":
        raise InputError(
            f"{path}: the overlay is dangling: {'; '.join(st.reasons)}.",
            hint=f"dangling: rebuild with {st.rebuild}",
            path=str(path),
        )
    if st.state == "stale":
        return [f"the overlay is stale: {r}; rebuild: {st.rebuild}" for r in st.reasons]
    if st.state == "unpinned":
        return [f"the overlay is unpinned: {r}" for r in st.reasons]
    return []


def find_overlays(paths: list[Path]) -> list[Path]:
    """Overlays at each PATH, or one level below it (the default place when none is given)."""
    from qwenprep.model.manifest import MANIFEST_DIR, MANIFEST_NAME

    roots = [check_path_length(p) for p in paths] or [overlays_home()]
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
    from qwenprep.model.manifest import read_manifest

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


def default_overlays_of(snapshot: Path) -> list[Path]:
    """The overlays plain `patch ORG/NAME` made of SNAPSHOT: at their default place and name
    (_default_named), built from it. What `revert ORG/NAME` removes."""
    from qwenprep.model.manifest import read_manifest

    found = []
    for p in find_overlays([]):
        m = read_manifest(p)
        if m is not None and m.source.path == str(snapshot) and _default_named(p, m.source):
            found.append(p)
    return found
