"""--local-dir safety for fetch: a directory that is (or is inside) a qwenprep overlay, or that
holds a symlink where the download writes, is refused before anything is downloaded:
huggingface_hub copies a cached file onto the path, i.e. through the link, into whatever it
points to."""

from __future__ import annotations

import os
from pathlib import Path

from qwenprep.errors import ConflictError
from qwenprep.model.hub import RepoSpec

RECORD = Path(".qwenprep") / "fetch.json"  # what qwenprep records of a --local-dir download


def _overlay_root(local: Path) -> Path | None:
    """The qwenprep overlay LOCAL is, or is inside: the nearest directory, of LOCAL as given
    and of where its links lead, that holds .qwenprep/manifest.json (valid or not)."""
    from qwenprep.model.manifest import MANIFEST_DIR, MANIFEST_NAME

    real = Path(os.path.realpath(local))
    for start in (local, real):
        for d in (start, *start.parents):
            if os.path.lexists(d / MANIFEST_DIR / MANIFEST_NAME):
                return d
    return None


def _overlay_context(root: Path) -> str:
    """The context an overlay was made for (for the hint), or C when its manifest says none."""
    import json

    from qwenprep.model.manifest import MANIFEST_DIR, MANIFEST_NAME

    try:
        manifest = json.loads((root / MANIFEST_DIR / MANIFEST_NAME).read_text(encoding="utf-8"))
        ctx = manifest["target_context"]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        return "C"
    return str(ctx) if isinstance(ctx, int) and not isinstance(ctx, bool) and ctx > 0 else "C"


def refuse_overlay(spec: RepoSpec, local: Path) -> None:
    """A --local-dir that is (or is inside) a qwenprep overlay: huggingface_hub would write
    through the overlay's links into the source checkpoint and over its patched config.json."""
    from qwenprep.model.manifest import MANIFEST_DIR, MANIFEST_NAME

    root = _overlay_root(local)
    if root is None:
        return
    manifest = root / MANIFEST_DIR / MANIFEST_NAME
    what = (
        f"--local-dir {root} is a qwenprep overlay"
        if root in (local, Path(os.path.realpath(local)))
        else f"--local-dir {local} is inside a qwenprep overlay, {root}"
    )
    raise ConflictError(
        f"{what} ({manifest}): a download into it would write through its links into the "
        "checkpoint they point to, and replace its patched config.json.",
        hint=f"fetch into the Hugging Face cache (qwenprep fetch {spec}) or into another "
        f"directory (qwenprep fetch {spec} --local-dir DIR), then rebuild the overlay from it: "
        f"qwenprep patch {spec} --context {_overlay_context(root)} --out {root} --force "
        "(patch DIR for a --local-dir download)",
        path=str(manifest),
    )


def _write_paths(local: Path, names: list[str]) -> list[Path]:
    """Every path under LOCAL that a --local-dir download writes or creates: each file and
    its parent directories, huggingface_hub's .cache/huggingface (metadata, locks, partial
    files), and qwenprep's own .qwenprep/fetch.json."""
    rels = {Path(".cache"), Path(".cache/huggingface"), *RECORD.parents, RECORD}
    for name in names:
        rel = Path(*name.split("/"))
        rels.add(rel)
        rels.update(p for p in rel.parents if p != Path("."))
    paths = [local / r for r in rels if r != Path(".")]
    hub_dir = local / ".cache" / "huggingface"
    if hub_dir.is_dir() and not hub_dir.is_symlink():
        for root, dirs, files in os.walk(hub_dir):  # never follows links
            paths += [Path(root) / n for n in (*dirs, *files)]
    return sorted(set(paths))


def refuse_links(spec: RepoSpec, local: Path, names: list[str]) -> None:
    """A --local-dir holding a symlink where the download writes (a file, a parent directory,
    huggingface_hub's or qwenprep's state): huggingface_hub would write through it (it copies
    a cached file onto the path), changing whatever it points to."""
    links = [p for p in _write_paths(local, names) if p.is_symlink()]
    if not links:
        return
    shown = "; ".join(f"{p} -> {os.readlink(p)}" for p in links[:5])
    more = f" (and {len(links) - 5} more)" if len(links) > 5 else ""
    raise ConflictError(
        f"--local-dir {local} holds "
        + ("a symlink" if len(links) == 1 else f"{len(links)} symlinks")
        + f" the download would write through: {shown}{more}.",
        hint=f"fetch into a directory without links (qwenprep fetch {spec} --local-dir DIR) or "
        f"into the Hugging Face cache (qwenprep fetch {spec}); a qwenprep overlay is rebuilt "
        "from there with: qwenprep patch SOURCE --context C --out OVERLAY --force",
        path=str(links[0]),
    )


# ------------------------------------------------------------------ files the user has there


def _fresh_record(local: Path, name: str) -> tuple[str, str] | None:
    """(commit, etag) huggingface_hub recorded for NAME in LOCAL (its .metadata file), when the
    file was not modified after that record: huggingface_hub's own rule
    (huggingface_hub 2.4 _local_folder.read_download_metadata: st_mtime - 1 <= timestamp)."""
    meta = local / ".cache" / "huggingface" / "download" / f"{name}.metadata"
    try:
        lines = meta.read_text(encoding="utf-8").splitlines()
        commit, etag, stamp = lines[0].strip(), lines[1].strip(), float(lines[2])
        fresh = (local / name).stat().st_mtime - 1 <= stamp
    except (OSError, UnicodeDecodeError, ValueError, IndexError):
        return None
    return (commit, etag.strip('"').lower()) if fresh else None


def differing_files(local: Path, files: list[tuple[str, str | None]]) -> list[str]:
    """The files (NAME, Hub etag) of a --local-dir download that exist in LOCAL with bytes the
    download would replace and that are not huggingface_hub's own earlier download: the user's
    (edited, or copied in). A file huggingface_hub recorded and nobody touched since is its
    own; any other is hashed and compared with the Hub's content hash for it."""
    from qwenprep.util.hashing import HashJob, algorithm_for_etag, hash_files

    todo: list[tuple[str, str | None]] = []
    for name, etag in files:
        p = local / name
        if p.is_symlink() or not p.is_file():
            continue  # absent; a link is refused by refuse_links
        if _fresh_record(local, name) is not None:
            continue  # huggingface_hub's own bytes (of this commit or an earlier one)
        todo.append((name, etag))
    jobs = []
    changed = []
    for name, etag in todo:
        alg = algorithm_for_etag(etag) if etag else None
        if alg is None:
            changed.append(name)  # nothing to compare with: treat it as the user's
        else:
            jobs.append((name, etag or "", HashJob(local / name, alg)))
    results = hash_files([j for _, _, j in jobs])
    for (name, etag, _), r in zip(jobs, results, strict=True):
        if r.hexdigest != etag.strip('"').lower():
            changed.append(name)
    return sorted(changed)


def keep_aside(local: Path, names: list[str]) -> list[tuple[str, Path]]:
    """Rename each of NAMES in LOCAL to NAME.qwenprep-replaced (.1, .2 ... when taken), as
    revert keeps what it replaces: the download then writes a new file, and the user's bytes
    stay whole beside it."""
    from qwenprep.util.jsonio import fsync_dir, replaced_names

    kept = []
    for name in names:
        p = local / name
        for dest in replaced_names(p):
            if not os.path.lexists(dest):
                os.rename(p, dest)
                fsync_dir(dest.parent)
                kept.append((name, dest))
                break
        else:
            raise ConflictError(
                f"{p}: 1000 .qwenprep-replaced copies beside it already; clean some up."
            )
    return kept


def refuse_replacing(spec: RepoSpec, local: Path, changed: list[str]) -> None:
    """--local-dir holds files of the user's that the download would replace: refuse (exit 3)
    naming them and --force."""
    if not changed:
        return
    shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
    raise ConflictError(
        f"--local-dir {local} holds {len(changed)} file(s) whose bytes differ from "
        f"{spec}'s and that the download would replace: {shown}.",
        hint="move them out (or fetch into another directory: qwenprep fetch "
        f"{spec} --local-dir DIR), or pass --force to download anyway: each of them is then "
        "kept beside itself as NAME.qwenprep-replaced",
        path=str(local / changed[0]),
    )
