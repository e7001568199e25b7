"""Is this checkpoint whole? Header-level checks (no tensor data read) and deep content hashes.

Header level: the index and the shards agree; every safetensors header is sane (bounded,
JSON, dtype x shape = byte span, spans contiguous and inside the file, exact file size);
FP8 structure matches quantization_config; tensor names match the config's layer and expert
counts. Index names must stay inside the checkpoint: a `../` or absolute name is reported,
never opened.

Deep (`deep=True`): every file's bytes against a content hash: the blob name in an HF cache
(sha256 for LFS files, git blob sha1 for small files), the hub's download metadata of a
`--local-dir` download, or the hash record qwenprep keeps in `.qwenprep/hashes.json`. A file
with none of these has nothing to compare against: its hash is reported (a WARN) and written
to the record only when asked (`record=True`, `verify --deep --record`); later runs compare.

The work lives in three modules, each file read once and handed on:
- qwenprep.checks.scan: the index and every safetensors header, read once; structure checks;
- qwenprep.checks.tensors: FP8 structure and tensor names vs config.json; the header level
  composed (header_scan, header_checks: what `check` runs);
- qwenprep.checks.deep: the content hashes of --deep.
This module is the entry point (verify_checkpoint); the others' names are imported from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwenprep.checks.tensors import header_scan
from qwenprep.util.hashing import ProgressFn
from qwenprep.util.report import Check, Report

__all__ = ["verify_checkpoint"]


def cache_edit_checks(root: Path) -> list[Check]:
    """A FAIL per HF cache snapshot whose small JSON files no longer match their blob names
    (qwenprep.model.hub.edited_in_cache); a PASS naming how many were compared; none elsewhere."""
    from qwenprep.model.hub import edited_in_cache, edited_in_cache_message, snapshot_blobs

    if snapshot_blobs(root) is None:
        return []
    edited = edited_in_cache(root)
    if not edited:
        n = len(list(root.glob("*.json")))
        return [Check("cache.edits", "pass", f"{n} JSON file(s) match their HF cache blob names")]
    message, hint = edited_in_cache_message(root, edited)
    return [Check("cache.edits", "fail", f"{message}. Hint: {hint}", edited[0])]


def verify_checkpoint(
    path: Path,
    *,
    deep: bool = False,
    progress: ProgressFn | None = None,
    workers: int | None = None,
    record: bool = False,
) -> Report:
    """Header-level checks; with deep, every file against its content hash (the serving
    engine's read-back is the engine's: qwenprep.engines.base.Engine.readback_checks). A file
    with nothing to compare against is reported with its hash (extra["unverified"]) and
    written to the hash record only with record=True."""
    root = Path(path)
    scan = header_scan(root)
    report = Report("verify", list(scan.checks))
    if not deep:  # deep hashes every file against its blob name, these included
        report.extend(cache_edit_checks(root))
    hashed = 0
    unverified: dict[str, dict[str, Any]] = {}
    if deep:
        from qwenprep.checks.deep import deep_checks

        found, hashed = deep_checks(
            root, scan, progress=progress, workers=workers, record=record, unverified=unverified
        )
        report.extend(found)
    report.extra.update(
        path=str(root),
        deep=deep,
        files=scan.shard_files,
        tensors=len(scan.tensors),
        bytes=scan.file_bytes,
        tensor_bytes=scan.data_bytes,
        header_bytes=scan.header_bytes,
    )
    if deep:
        report.extra["hashed_bytes"] = hashed
        if unverified:
            report.extra["unverified"] = dict(sorted(unverified.items()))
    return report
