"""Download the files serving needs, through huggingface_hub, pinned to one commit.

The flow: ask the Hub for the revision's file list with sizes (`model_info(...,
files_metadata=True)`), pin the resolved commit, keep only what vLLM reads (weights, index,
configs, tokenizer, chat template), check free disk, `snapshot_download` exactly those names
at that commit (huggingface_hub draws the progress bars, on stderr), check sizes, then run
qwenprep's deep verify. Tokens stay with huggingface_hub: qwenprep never reads one except to
scrub it out of messages (qwenprep.util.redact), and never records one.

A --local-dir that is (or is inside) a qwenprep overlay, or that holds a symlink where the
download writes, is refused before anything is downloaded: huggingface_hub copies a cached
file onto the path, i.e. through the link, into whatever it points to.

Works with huggingface_hub 0.34 .. 2.x (only `HfApi.model_info`, `snapshot_download` and the
exception classes of `huggingface_hub.errors`, looked up by name).

The work is in three modules: qwenprep.ops.fetch.plan (what to fetch, the disk, the Hub's errors),
qwenprep.ops.fetch.local (--local-dir safety) and this one (the download, its checks and record,
and the entry point fetch()); importers take the other two's names from them.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

from qwenprep._version import __version__
from qwenprep.errors import InputError, UsageError
from qwenprep.model.hub import (
    http_status_cause,
    hub_cache_dir,
    hub_endpoint,
    offline_mode,
    own_ref,
    repo_storage,
)
from qwenprep.ops.fetch.local import (
    RECORD,
    differing_files,
    keep_aside,
    refuse_links,
    refuse_overlay,
    refuse_replacing,
)
from qwenprep.ops.fetch.plan import (
    FetchPlan,
    FetchResult,
    RemoteFile,
    check_space,
    first_line,
    hf_error,
    hub_failure,
    parse_spec,
    plan_fetch,
    selected,
    serving_file,
)
from qwenprep.util.jsonio import REPLACED_SUFFIX, atomic_write_text, dump_config
from qwenprep.util.redact import display_endpoint, scrub_hub_logs
from qwenprep.util.report import SCHEMA_VERSION, Check, Report
from qwenprep.util.sizes import format_bytes

__all__ = ["download", "fetch"]


def _write_ref(plan: FetchPlan) -> None:
    """Record branch/tag -> commit in the cache, as huggingface_hub does, so that
    `ORG/NAME@rev` resolves offline afterwards (we downloaded by commit to pin it)."""
    rev = plan.spec.rev
    if plan.local_dir is not None or rev == plan.commit or own_ref(rev):
        return  # refs/qwenprep/ holds qwenprep's pins (refused earlier by parse_spec)
    ref = repo_storage(plan.spec.repo_id, plan.cache_dir) / "refs" / rev
    ref.parent.mkdir(parents=True, exist_ok=True)
    if not ref.is_file() or ref.read_text() != plan.commit:
        atomic_write_text(ref, plan.commit)


def _changed(plan: FetchPlan) -> list[str]:
    if plan.local_dir is None:
        return []
    return differing_files(plan.local_dir, [(f.name, f.etag) for f in plan.files])


def _keep_users_files(plan: FetchPlan, force: bool) -> list[tuple[str, Path]]:
    """Nothing a user wrote in --local-dir is replaced without a copy (see download)."""
    changed = _changed(plan)
    if plan.local_dir is None or not changed:
        return []
    if not force:
        refuse_replacing(plan.spec, plan.local_dir, changed)
    return keep_aside(plan.local_dir, changed)


def _replace_check(plan: FetchPlan, force: bool) -> Check | None:
    """--dry-run: the files of the user's a download would replace (refused without --force)."""
    changed = _changed(plan)
    if not changed:
        return None
    what = f"{len(changed)} file(s) in {plan.target} differ from the Hub's: {', '.join(changed)}"
    if force:
        return Check(
            "fetch.replace",
            "warn",
            what + "; --force keeps each as NAME" + REPLACED_SUFFIX,
            str(plan.target),
        )
    return Check(
        "fetch.replace",
        "fail",
        what + "; the download refuses to replace them (exit 3) without --force, which keeps "
        f"each as NAME{REPLACED_SUFFIX}",
        str(plan.target),
    )


def _size_checks(plan: FetchPlan, path: Path) -> list[Check]:
    bad: list[str] = []
    for f in plan.files:
        p = path / f.name
        if not p.is_file():
            bad.append(f"{f.name}: missing")
        elif f.size is not None and p.stat().st_size != f.size:
            bad.append(f"{f.name}: {p.stat().st_size} bytes, the Hub lists {f.size}")
    if bad:
        return [Check("fetch.files", "fail", "; ".join(bad), str(path))]
    return [
        Check(
            "fetch.files",
            "pass",
            f"{len(plan.files)} files, {format_bytes(plan.bytes_total)}, "
            "sizes as the Hub lists them",
            str(path),
        )
    ]


def _verify(path: Path) -> Report:
    try:
        from qwenprep.checks.integrity import verify_checkpoint
    except ModuleNotFoundError as err:
        if err.name != "qwenprep.checks.integrity":
            raise
        return Report(
            "verify",
            [Check("verify.deep", "skip", "deep verification is not available in this build")],
        )
    return verify_checkpoint(path, deep=True)


def _drop_corrupt(plan: FetchPlan, path: Path, report: Report) -> Check | None:
    """Remove downloaded files whose bytes provably differ from the Hub's hash for them.

    huggingface_hub skips any file whose blob (cache) or metadata (local dir) already exists,
    so a corrupt download would stay forever; removing it lets the same command fetch it anew.
    """
    planned = {f.name for f in plan.files}
    bad = sorted(
        c.path
        for c in report.checks
        if c.id == "deep.hash"
        and c.status == "fail"
        and c.path in planned
        and "does not match" in c.message
    )
    if not bad:
        return None
    for name in bad:
        link = path / name
        targets = [Path(os.path.realpath(link)), link]
        if plan.local_dir is not None:
            meta = path / ".cache" / "huggingface" / "download" / f"{name}.metadata"
            targets = [link, meta]
        for t in targets:
            try:
                t.unlink()
            except FileNotFoundError:
                pass
    return Check(
        "fetch.corrupt",
        "fail",
        f"removed {len(bad)} downloaded file(s) whose content does not match the Hub's hash "
        f"({', '.join(bad)}). Hint: run the same command again to download them anew: "
        f"qwenprep fetch {plan.spec}",
        str(path),
    )


def _record(plan: FetchPlan, path: Path, started: datetime, seconds: float) -> None:
    record = {
        "schema_version": SCHEMA_VERSION,
        "tool": "qwenprep",
        "tool_version": __version__,
        "repo_id": plan.spec.repo_id,
        "requested_revision": plan.spec.rev,
        "revision": plan.commit,
        "files": [f.to_dict() for f in plan.files],
        "bytes": plan.bytes_total,
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
    }
    (path / RECORD).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / RECORD, dump_config(record))


def _transient(err: BaseException) -> bool:
    """A dropped connection, timeout or 5xx (worth another try), not a 4xx answer (also when
    huggingface_hub wraps the answer in another error)."""
    http = http_status_cause(err)
    if http is not None:
        status = http[0]
        return status >= 500 or status in (408, 429)
    if isinstance(err, hf_error("HfHubHTTPError")):
        return True
    return not isinstance(err, (ValueError, TypeError, PermissionError))


def _partial_verify(plan: FetchPlan, path: Path) -> Report:
    """--include/--exclude left serving files out: the checkpoint is partial, so each fetched
    file is checked against the Hub's hash for it instead of the whole-checkpoint verify."""
    from qwenprep.util.hashing import HashJob, algorithm_for_etag, hash_files

    known = [(f, algorithm_for_etag(f.etag)) for f in plan.files if f.etag]
    jobs = [HashJob(path / f.name, alg) for f, alg in known if alg is not None]
    expected = [f for f, alg in known if alg is not None]
    checks: list[Check] = []
    for f, r in zip(expected, hash_files(jobs), strict=True):
        if r.hexdigest != (f.etag or "").strip('"').lower():
            checks.append(
                Check(
                    "deep.hash",
                    "fail",
                    f"{f.name}: content does not match the "
                    "Hub's hash for it. Hint: run the same command again",
                    f.name,
                )
            )
    if not checks:
        checks.append(
            Check("deep.hash", "pass", f"{len(jobs)} file(s) match the Hub's content hash")
        )
    checks.append(
        Check(
            "verify.partial",
            "skip",
            f"--include/--exclude left out "
            f"{len(plan.left_out)} serving file(s) ({', '.join(plan.left_out[:4])}"
            f"{', ...' if len(plan.left_out) > 4 else ''}): a partial checkpoint, "
            "not verified as a whole. Run qwenprep verify PATH once it is complete",
        )
    )
    report = Report("verify", checks)
    report.extra.update(path=str(path), deep=True)
    return report


def download(
    plan: FetchPlan,
    *,
    endpoint: str | None = None,
    verify: bool = True,
    attempts: int = 3,
    max_workers: int | None = None,
    force: bool = False,
) -> FetchResult:
    """snapshot_download exactly the planned files at the pinned commit, then check them
    (max_workers: files at once; huggingface_hub's default is 8).

    A --local-dir file of the user's that the download would replace (bytes that are not the
    Hub's, nor huggingface_hub's earlier download) is refused (ConflictError, exit 3), or with
    FORCE renamed to NAME.qwenprep-replaced first.

    A transient failure (dropped connection, timeout, 5xx) is retried up to `attempts` times
    in all: finished files are kept, an unfinished one starts again (huggingface_hub 2.x also
    retries within a file; 0.x does not)."""
    if plan.local_dir is not None:  # again: the directory may have changed since the plan
        refuse_overlay(plan.spec, plan.local_dir)
        refuse_links(plan.spec, plan.local_dir, [f.name for f in plan.files])
    kept = _keep_users_files(plan, force)
    from huggingface_hub import snapshot_download

    scrub_hub_logs()
    endpoint = endpoint or hub_endpoint()
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    retried: list[str] = []
    while True:
        try:
            out = snapshot_download(
                plan.spec.repo_id,
                revision=plan.commit,
                cache_dir=str(plan.cache_dir),
                local_dir=str(plan.local_dir) if plan.local_dir is not None else None,
                allow_patterns=[f.name for f in plan.files],
                endpoint=endpoint,
                max_workers=max_workers if max_workers is not None else 8,
            )
            break
        except Exception as err:  # noqa: BLE001 - network, HTTP, size errors of any version
            if len(retried) + 1 >= attempts or not _transient(err):
                raise hub_failure(plan.spec, err, display_endpoint(endpoint)) from None
            retried.append(f"{type(err).__name__}: {first_line(err)}")
            time.sleep(min(2 ** len(retried), 10))
    seconds = time.monotonic() - t0
    path = Path(out)
    _write_ref(plan)
    checks = _size_checks(plan, path)
    if kept:
        checks.append(
            Check(
                "fetch.kept",
                "warn",
                f"--force: kept {len(kept)} file(s) of yours that the download replaced: "
                + "; ".join(f"{name} -> {k.name}" for name, k in kept),
                str(path),
            )
        )
    if retried:
        checks.append(
            Check(
                "fetch.retries",
                "warn",
                f"{len(retried)} transient failure(s) retried: {'; '.join(retried)}",
            )
        )
    if plan.local_dir is not None:
        _record(plan, path, started, seconds)
    if not verify:
        report = Report("verify")
    elif plan.left_out:
        report = _partial_verify(plan, path)
    else:
        report = _verify(path)
    dropped = _drop_corrupt(plan, path, report)
    if dropped is not None:
        checks.append(dropped)
    return FetchResult(plan, path, seconds, tuple(checks), report)


def fetch(
    spec_text: str,
    *,
    local_dir: Path | None = None,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
    reserve_bytes: int = 0,
    verify: bool = True,
    revision: str | None = None,
    include: tuple[str, ...] | list[str] = (),
    exclude: tuple[str, ...] | list[str] = (),
    dry_run: bool = False,
    max_workers: int | None = None,
    force: bool = False,
) -> FetchResult:
    """Plan, check the disk, download, check and verify. Raises QwenprepError (exit 2/3).

    dry_run: only the plan (what would be fetched, its size, the disk check as a check);
    nothing is written. With HF_HUB_OFFLINE set and the revision cached (and no --local-dir),
    the cached snapshot is the answer, as `hf download` gives it. force: files of the user's
    in --local-dir that the download replaces are kept as NAME.qwenprep-replaced (without it
    they make fetch refuse, exit 3)."""
    if max_workers is not None and max_workers < 1:
        raise UsageError(f"--max-workers {max_workers}: must be 1 or more.")
    if offline_mode() and local_dir is None:
        cached = _offline_cached(spec_text, revision, include, exclude, cache_dir)
        if cached is not None:
            return cached
    plan = plan_fetch(
        spec_text,
        local_dir=local_dir,
        cache_dir=cache_dir,
        endpoint=endpoint,
        revision=revision,
        include=include,
        exclude=exclude,
    )
    if dry_run:
        try:
            disk = check_space(plan, reserve_bytes=reserve_bytes)
        except InputError as err:
            disk = Check("fetch.disk", "fail", err.message, err.path)
        path = (
            plan.local_dir
            if plan.local_dir is not None
            else (repo_storage(plan.spec.repo_id, plan.cache_dir) / "snapshots" / plan.commit)
        )
        replace = _replace_check(plan, force)
        checks = (disk,) if replace is None else (disk, replace)
        return FetchResult(plan, path, 0.0, checks, mode="dry-run")
    disk = check_space(plan, reserve_bytes=reserve_bytes)
    result = download(plan, endpoint=endpoint, verify=verify, max_workers=max_workers, force=force)
    return FetchResult(
        result.plan, result.path, result.seconds, (disk, *result.checks), result.verify
    )


def _offline_cached(
    spec_text: str,
    revision: str | None,
    include: tuple[str, ...] | list[str],
    exclude: tuple[str, ...] | list[str],
    cache_dir: Path | None,
) -> FetchResult | None:
    """HF_HUB_OFFLINE and the revision in the cache: that snapshot (None when not cached)."""
    from qwenprep.model.hub import find_cached

    spec = parse_spec(spec_text, revision)
    cache = cache_dir if cache_dir is not None else hub_cache_dir()
    try:
        snap, commit = find_cached(spec, cache)
    except InputError:
        return None
    files = tuple(
        RemoteFile(p.name, p.stat().st_size, None)
        for p in sorted(snap.iterdir())
        if p.is_file() and serving_file(p.name) and selected(p.name, include, exclude)
    )
    total = sum(f.size or 0 for f in files)
    plan = FetchPlan(spec, commit, files, cache, None, cache, total, 0)
    check = Check(
        "fetch.offline",
        "pass",
        f"HF_HUB_OFFLINE is set and {spec.repo_id}@"
        f"{spec.rev} is cached (commit {commit[:12]}): nothing fetched",
        str(snap),
    )
    return FetchResult(plan, snap, 0.0, (check,), mode="offline")
