"""verify --deep: every file's bytes against a content hash (the blob name in an HF cache, the
hub's download metadata of a `--local-dir` download, or qwenprep's hash record), hashed in
parallel (qwenprep.util.hashing). A file with none of these has nothing to compare against: its
hash is reported (a WARN) and written to the record only when asked (`record=True`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenprep.checks.scan import FETCH_HINT, SKIP_DIRS, Scan, overlay_manifest, rel_path
from qwenprep.model.checkpoint import CONFIG, INDEX
from qwenprep.model.hub import (
    edited_in_cache_message,
    local_dir_etag,
    snapshot_blobs,
    snapshot_repo,
)
from qwenprep.util.hashing import (
    Algorithm,
    HashJob,
    ProgressFn,
    RecordError,
    algorithm_for_etag,
    hash_files,
    not_regular,
    read_record,
    record_path,
    write_record,
)
from qwenprep.util.report import Check

if TYPE_CHECKING:
    from qwenprep.model.manifest import Manifest


@dataclass(frozen=True)
class _Expect:
    name: str  # relative posix name
    algorithm: Algorithm | None  # None: nothing to compare against (yet)
    digest: str | None
    source: str  # where the expected hash comes from, for messages


def _hf_blob_etag(p: Path) -> str | None:
    """The blob name when p is a link into an HF cache `blobs/` directory."""
    if not p.is_symlink():
        return None
    target = Path(os.path.realpath(p))
    if target.parent.name != "blobs":
        return None
    return target.name if algorithm_for_etag(target.name) else None


def _download_etag(root: Path, name: str) -> str | None:
    """hub.local_dir_etag, but never opening a metadata file that is not a regular file (a
    FIFO there would block the read). The path is the one huggingface_hub writes."""
    if not_regular(root / ".cache" / "huggingface" / "download" / f"{name}.metadata"):
        return None
    return local_dir_etag(root, name)


def _source_root(manifest: Manifest | None) -> Path | None:
    src = manifest.source.path if manifest is not None else None
    return Path(src) if isinstance(src, str) and src else None


def _trusted_roots(root: Path, manifest: Manifest | None) -> list[tuple[str, str]]:
    """(real path, what it is) of the places a checkpoint's files may really live: the
    directory itself, its HF repo folder (models--ORG--NAME: the snapshot links into blobs/),
    and an overlay's recorded source (and that source's repo folder)."""
    out: list[tuple[str, str]] = []
    for base, what in (
        (root, "the checkpoint directory"),
        (_source_root(manifest), "the overlay's source"),
    ):
        if base is None:
            continue
        real = os.path.realpath(base)
        out.append((real, what))
        if snapshot_repo(base) is not None or snapshot_repo(Path(real)) is not None:
            owner = "its" if base == root else "the source's"
            out.append((os.path.dirname(os.path.dirname(real)), f"{owner} HF repo folder"))
    return out


def _inside(real: str, roots: list[tuple[str, str]]) -> bool:
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r, _ in roots)


def _where(roots: list[tuple[str, str]]) -> str:
    names = [what for _, what in roots]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _deep_names(
    root: Path, scan: Scan, roots: list[tuple[str, str]], notes: list[Check]
) -> list[str]:
    """What --deep hashes: every file under root, through linked directories that stay inside
    the trusted roots (each real directory once: no loops), plus every shard the index names
    (or the single model.safetensors), links followed wherever they go."""
    names: set[str] = set(scan.shard_names)
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        seen.add(os.path.realpath(dirpath))
        rel_dir = Path(dirpath).relative_to(root)
        keep = []
        for d in sorted(dirnames):
            if rel_dir == Path(".") and d in SKIP_DIRS:
                continue
            p = os.path.join(dirpath, d)
            real = os.path.realpath(p)
            if real in seen:
                continue
            if os.path.islink(p) and not _inside(real, roots):
                name = (rel_dir / d).as_posix()
                notes.append(
                    Check(
                        "deep.outside",
                        "warn",
                        f"{name}/: a linked directory "
                        f"resolving to {real}, outside {_where(roots)}; only the "
                        f"files {INDEX} references through it are hashed",
                        name,
                    )
                )
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        names.update((rel_dir / fn).as_posix() for fn in filenames)
    return sorted(names)


def _expectations(
    root: Path,
    names: list[str],
    manifest: Manifest | None,
    records: list[tuple[Path, dict[str, dict[str, Any]]]],
    notes: list[Check],
) -> list[_Expect]:
    snapshot = snapshot_blobs(root) is not None
    out: list[_Expect] = []
    for name in names:
        p = root / name
        if manifest is not None and name == CONFIG:
            notes.append(
                Check(
                    "deep.config",
                    "skip",
                    "config.json is the overlay's patched one "
                    "and has no content hash; the source config's sha256 is checked "
                    "by overlay.source",
                    name,
                )
            )
            continue
        etag = _hf_blob_etag(p)
        if etag:
            out.append(_Expect(name, algorithm_for_etag(etag), etag, "its HF cache blob name"))
            continue
        if snapshot:
            notes.append(
                Check(
                    "deep.hash",
                    "fail",
                    f"{name}: not a link into the cache's blobs "
                    "(replaced or edited in place?), so its content cannot be "
                    "checked. Hint: qwenprep revert PATH restores config.json; "
                    f"otherwise {FETCH_HINT}",
                    name,
                )
            )
            continue
        found = None
        for r, rec in records:
            etag = _download_etag(r, name)
            if etag:
                found = _Expect(name, algorithm_for_etag(etag), etag, "the hub's download metadata")
                break
            entry = rec.get(name)
            if entry and isinstance(entry.get("sha256"), str):
                found = _Expect(
                    name,
                    "sha256",
                    entry["sha256"].lower(),
                    f"the hash record {rel_path(root, record_path(r))}",
                )
                break
        out.append(found or _Expect(name, None, None, "none"))
    return out


def _read_records(
    root: Path, manifest: Manifest | None
) -> list[tuple[Path, dict[str, dict[str, Any]]]] | Check:
    """The hash records of root and of an overlay's source, or the failed check of one that is
    there but unreadable (a FIFO, not JSON): such a record is never compared with nor
    replaced."""
    roots = [root] + [r for r in (_source_root(manifest),) if r is not None]
    out = []
    for r in roots:
        try:
            out.append((r, read_record(r)))
        except RecordError as e:
            what = rel_path(root, record_path(r))
            why = e.strerror or "unreadable"
            head = (
                f"{what}: {why}, so the hash record cannot be read"
                if why.startswith("not a regular file")
                else f"{what}: not a readable hash record ({why})"
            )
            return Check(
                "deep.record",
                "fail",
                f"{head}; it was left alone and nothing was "
                "compared or recorded. Remove it, then run qwenprep verify --deep "
                "again to record afresh.",
                what,
            )
    return out


def _fix_hint(root: Path, name: str) -> str:
    """What restores NAME: in an HF cache snapshot, a JSON file was edited in place
    (qwenprep.model.hub.edited_in_cache_message) and any other file is fetched again by the repo's
    name; elsewhere the generic FETCH_HINT."""
    repo = snapshot_repo(root)
    if repo is None:
        return FETCH_HINT
    if name.endswith(".json") and "/" not in name:
        return edited_in_cache_message(root, [name])[1]
    return f"re-download the damaged file(s): qwenprep fetch {repo[0]}@{repo[1]}"


def deep_checks(
    root: Path,
    scan: Scan,
    *,
    progress: ProgressFn | None,
    workers: int | None,
    record: bool = False,
    unverified: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[Check], int]:
    manifest = overlay_manifest(root)
    records = _read_records(root, manifest)
    if isinstance(records, Check):
        return [records], 0
    roots = _trusted_roots(root, manifest)
    checks: list[Check] = []
    names = _deep_names(root, scan, roots, checks)
    expects = _expectations(root, names, manifest, records, checks)
    for e in expects:
        real = os.path.realpath(root / e.name)
        if not _inside(real, roots) and os.path.exists(real):
            checks.append(
                Check(
                    "deep.outside",
                    "warn",
                    f"{e.name}: resolves to {real}, outside "
                    f"{_where(roots)}; it is hashed, but whoever can write there "
                    "can change this checkpoint",
                    e.name,
                )
            )
    jobs = [HashJob(root / e.name, e.algorithm or "sha256") for e in expects]
    results = hash_files(jobs, workers=workers, progress=progress)
    matched: dict[str, int] = {}
    to_record: dict[str, dict[str, Any]] = {}
    hashed = 0
    for e, r in zip(expects, results, strict=True):
        if r.not_regular:
            checks.append(
                Check(
                    "deep.hash",
                    "fail",
                    f"{e.name}: {r.error}, so there is nothing "
                    "to hash; remove it, or put the real file in its place",
                    e.name,
                )
            )
            continue
        if r.hexdigest is None:
            checks.append(
                Check(
                    "deep.hash",
                    "fail",
                    f"{e.name}: cannot read ({r.error}). Hint: {FETCH_HINT}",
                    e.name,
                )
            )
            continue
        hashed += r.size
        if e.digest is None:
            to_record[e.name] = {"size": r.size, "sha256": r.hexdigest}
        elif r.hexdigest == e.digest:
            matched[e.source] = matched.get(e.source, 0) + 1
        else:
            checks.append(
                Check(
                    "deep.hash",
                    "fail",
                    f"{e.name}: content does not match "
                    f"{e.source} ({e.algorithm} {r.hexdigest[:16]}... expected "
                    f"{e.digest[:16]}...). Hint: {_fix_hint(root, e.name)}",
                    e.name,
                )
            )
    if matched:
        by = ", ".join(f"{n} by {s}" for s, n in sorted(matched.items()))
        checks.insert(
            0,
            Check(
                "deep.hash",
                "pass",
                f"{sum(matched.values())} file(s) match their content hash ({by})",
            ),
        )
    if unverified is not None and not record:
        unverified.update(to_record)
    if to_record and not record:
        shown = "; ".join(f"{n} sha256 {v['sha256']}" for n, v in sorted(to_record.items()))
        checks.append(
            Check(
                "deep.record",
                "warn",
                f"{len(to_record)} file(s) have nothing to "
                "compare against (no HF cache blob name, no download metadata, no "
                "hash record); pass --record to keep these hashes for next time. "
                f"Computed: {shown}",
            )
        )
    elif to_record:
        try:
            rp = write_record(root, to_record)
            checks.append(
                Check(
                    "deep.record",
                    "warn",
                    f"recorded the sha256 of "
                    f"{len(to_record)} file(s) in {rel_path(root, rp)}; nothing to "
                    "compare yet (the next verify --deep compares against it)",
                    rel_path(root, rp),
                )
            )
        except OSError as e:
            checks.append(
                Check(
                    "deep.record",
                    "warn",
                    f"{len(to_record)} file(s) have no known "
                    f"content hash and the record could not be written ({e})",
                )
            )
    return checks, hashed
