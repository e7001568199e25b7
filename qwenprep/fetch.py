"""Download the files serving needs, through huggingface_hub, pinned to one commit.

The flow: ask the Hub for the revision's file list with sizes (`model_info(...,
files_metadata=True)`), pin the resolved commit, keep only what vLLM reads (weights, index,
configs, tokenizer, chat template), check free disk, `snapshot_download` exactly those names
at that commit (huggingface_hub draws the progress bars, on stderr), check sizes, then run
qwenprep's deep verify. Tokens stay with huggingface_hub: qwenprep never reads one except to
scrub it out of messages (qwenprep.redact), and never records one.

A --local-dir that is (or is inside) a qwenprep overlay, or that holds a symlink where the
download writes, is refused before anything is downloaded: huggingface_hub copies a cached
file onto the path, i.e. through the link, into whatever it points to.

Works with huggingface_hub 0.34 .. 2.x (only `HfApi.model_info`, `snapshot_download` and the
exception classes of `huggingface_hub.errors`, looked up by name).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qwenprep import __version__
from qwenprep.errors import ConflictError, InputError, UsageError
from qwenprep.hub import (
    RepoSpec,
    http_status_cause,
    hub_cache_dir,
    hub_endpoint,
    offline_hint,
    offline_mode,
    parse_repo_spec,
    repo_storage,
    unreachable_cause,
)
from qwenprep.jsonio import atomic_write_text, dump_config
from qwenprep.redact import display_endpoint, redact, scrub_hub_logs
from qwenprep.report import SCHEMA_VERSION, Check, Report
from qwenprep.sizes import format_bytes

RECORD = Path(".qwenprep") / "fetch.json"

# Top-level files vLLM and the tokenizer read. Everything else (README, LICENSE, .gitattributes,
# original/ consolidated weights, *.bin/*.pth duplicates, custom code) is left on the Hub.
_SERVING_SUFFIXES = (".safetensors", ".json", ".jinja")
_SERVING_NAMES = {
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
}


def serving_file(name: str) -> bool:
    """True for the files a serving engine needs from a model repo."""
    return "/" not in name and (name.endswith(_SERVING_SUFFIXES) or name in _SERVING_NAMES)


def _patterns(patterns: tuple[str, ...] | list[str]) -> list[str]:
    # as huggingface_hub's filter_repo_objects: "dir/" means everything under dir/
    return [p + "*" if p.endswith("/") else p for p in patterns]


def selected(name: str, include: tuple[str, ...] | list[str] = (),
             exclude: tuple[str, ...] | list[str] = ()) -> bool:
    """`hf download --include/--exclude` on top of the serving filter: glob patterns (fnmatch,
    as huggingface_hub matches them); a name must match an include (when any is given) and no
    exclude."""
    from fnmatch import fnmatch

    if include and not any(fnmatch(name, p) for p in _patterns(include)):
        return False
    return not any(fnmatch(name, p) for p in _patterns(exclude))


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int | None  # None when the Hub gave no size
    etag: str | None  # sha256 for LFS files, git blob sha1 for the others

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size}


@dataclass(frozen=True)
class FetchPlan:
    spec: RepoSpec
    commit: str
    files: tuple[RemoteFile, ...]
    target: Path  # where bytes land: the local dir, or the HF cache
    local_dir: Path | None
    cache_dir: Path
    bytes_total: int
    bytes_needed: int  # not already present at the target
    left_out: tuple[str, ...] = ()  # serving files --include/--exclude left on the Hub


@dataclass(frozen=True)
class FetchResult:
    plan: FetchPlan
    path: Path
    seconds: float
    checks: tuple[Check, ...]
    verify: Report = field(default_factory=lambda: Report("verify"))
    mode: str = "download"  # "dry-run": nothing written; "offline": the cached snapshot

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks) and self.verify.ok

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.mode == "dry-run":
            extra = {"dry_run": True, "bytes_to_download": self.plan.bytes_needed}
        elif self.mode == "offline":
            extra = {"offline": True}
        if self.plan.left_out:
            extra["left_out"] = list(self.plan.left_out)
        return {**self._base(), **extra}

    def _base(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "ok": self.ok,
            "path": str(self.path),
            "repo_id": self.plan.spec.repo_id,
            "revision": self.plan.commit,
            "requested_revision": self.plan.spec.rev,
            "files": [f.to_dict() for f in self.plan.files],
            "bytes": self.plan.bytes_total,
            "seconds": round(self.seconds, 3),
            "checks": [c.to_dict() for c in self.checks],
            "verify": self.verify.to_dict(),
        }




def _hf_error(name: str) -> type[BaseException]:
    from huggingface_hub import errors

    found = getattr(errors, name, None)
    return found if isinstance(found, type) else type(f"_Absent{name}", (Exception,), {})


def _failed_file(err: BaseException) -> str | None:
    """The repo file a failed /resolve/ request was for, from the error's response URL."""
    from urllib.parse import unquote, urlsplit

    url = str(getattr(getattr(err, "response", None), "url", "") or "")
    path = urlsplit(url).path
    if "/resolve/" not in path:
        return None
    rest = path.split("/resolve/", 1)[1]
    return unquote(rest.split("/", 1)[1]) if "/" in rest else None


def _first_line(err: BaseException) -> str:
    return redact(str(err).splitlines()[0] if str(err) else type(err).__name__)


def _hub_failure(spec: RepoSpec, err: BaseException, endpoint: str) -> InputError:
    """One table from huggingface_hub's exceptions to messages that say what to do next."""
    from http import HTTPStatus

    detail = _first_line(err)
    retry = f"run the same command again: qwenprep fetch {spec}"
    if isinstance(err, _hf_error("GatedRepoError")):
        return InputError(
            f"{spec.repo_id} is gated on {endpoint}: accept its terms on the model page first.",
            hint="then log in (hf auth login, or set HF_TOKEN) and " + retry,
        )
    if isinstance(err, _hf_error("RepositoryNotFoundError")):
        return InputError(
            f"{spec.repo_id}: no such model repository on {endpoint} (or it is private).",
            hint="check the repo id; for a private repo log in (hf auth login, or set HF_TOKEN)",
        )
    if isinstance(err, _hf_error("RevisionNotFoundError")):
        return InputError(
            f"{spec.repo_id}: revision {spec.rev!r} does not exist on {endpoint}.",
            hint="use a branch, tag or commit hash of the repo, e.g. qwenprep fetch "
            f"{spec.repo_id}@main",
        )
    http = http_status_cause(err)
    if http is not None and http[0] in (401, 403):
        status, carrier = http
        return InputError(
            f"{spec}: the Hub at {endpoint} refused access (HTTP {status} "
            f"{HTTPStatus(status).phrase}): {_first_line(carrier).rstrip('.')}.",
            hint="check the token huggingface_hub sends (HF_TOKEN, or hf auth login) and that "
            f"it may read {spec.repo_id}; a gated repo also needs its terms accepted on the "
            "model page",
        )
    cause = unreachable_cause(err)
    if cause is not None:
        return InputError(
            f"{spec}: the Hub could not be reached at {endpoint} "
            f"({type(cause).__name__}: {_first_line(cause)}).",
            hint=offline_hint(),
        )
    if isinstance(err, (_hf_error("RemoteEntryNotFoundError"), _hf_error("EntryNotFoundError"))):
        return InputError(
            f"{spec}: a file listed by the Hub could not be downloaded (404): "
            f"{_failed_file(err) or detail}",
            hint="the revision may have changed under you; " + retry,
        )
    return InputError(
        f"{spec}: download from {endpoint} failed: {type(err).__name__}: {detail}",
        hint=retry + " (finished files are kept; unfinished ones restart)",
    )


def _overlay_root(local: Path) -> Path | None:
    """The qwenprep overlay LOCAL is, or is inside: the nearest directory, of LOCAL as given
    and of where its links lead, that holds .qwenprep/manifest.json (valid or not)."""
    from qwenprep.overlay import MANIFEST_DIR, MANIFEST_NAME

    real = Path(os.path.realpath(local))
    for start in (local, real):
        for d in (start, *start.parents):
            if os.path.lexists(d / MANIFEST_DIR / MANIFEST_NAME):
                return d
    return None


def _overlay_context(root: Path) -> str:
    """The context an overlay was made for (for the hint), or C when its manifest says none."""
    import json

    from qwenprep.overlay import MANIFEST_DIR, MANIFEST_NAME

    try:
        manifest = json.loads((root / MANIFEST_DIR / MANIFEST_NAME).read_text(encoding="utf-8"))
        ctx = manifest["target_context"]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        return "C"
    return str(ctx) if isinstance(ctx, int) and not isinstance(ctx, bool) and ctx > 0 else "C"


def refuse_overlay(spec: RepoSpec, local: Path) -> None:
    """A --local-dir that is (or is inside) a qwenprep overlay: huggingface_hub would write
    through the overlay's links into the source checkpoint and over its patched config.json."""
    from qwenprep.overlay import MANIFEST_DIR, MANIFEST_NAME

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


def _present(f: RemoteFile, storage: Path, local_dir: Path | None) -> bool:
    if f.size is None:
        return False
    if local_dir is not None:
        p = local_dir / f.name
    elif f.etag:
        p = storage / "blobs" / f.etag
    else:
        return False
    try:
        return p.stat().st_size == f.size
    except OSError:
        return False


def _free_bytes(path: Path) -> tuple[Path, int]:
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free


def parse_spec(spec_text: str, revision: str | None = None) -> RepoSpec:
    """ORG/NAME[@REV] plus `--revision REV` (the two must agree when both are given)."""
    spec = parse_repo_spec(spec_text)
    if spec is None:
        raise UsageError(
            f"{spec_text!r} is not a repo id: expected ORG/NAME or ORG/NAME@REVISION "
            "(letters, digits, '-', '_', '.').",
            hint="for example: qwenprep fetch Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8",
        )
    if revision is not None:
        bad = parse_repo_spec(f"{spec.repo_id}@{revision}")
        if bad is None:
            raise UsageError(f"--revision {revision!r} is not a branch, tag or commit hash.",
                             hint=f"for example: qwenprep fetch {spec.repo_id} --revision main")
        if spec.revision is not None and spec.revision != revision:
            raise UsageError(
                f"{spec_text} names revision {spec.revision!r} but --revision says "
                f"{revision!r}.",
                hint=f"give one of them: qwenprep fetch {spec.repo_id} --revision {revision}")
        spec = RepoSpec(spec.repo_id, revision)
    return spec


def plan_fetch(
    spec_text: str,
    *,
    local_dir: Path | None = None,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
    revision: str | None = None,
    include: tuple[str, ...] | list[str] = (),
    exclude: tuple[str, ...] | list[str] = (),
) -> FetchPlan:
    """Ask the Hub what ORG/NAME[@rev] is (commit, files, sizes); no download yet. include /
    exclude (glob patterns) narrow the serving files further."""
    spec = parse_spec(spec_text, revision)
    if offline_mode():
        raise InputError(
            f"cannot fetch {spec}: HF_HUB_OFFLINE is set, so the Hub may not be contacted.",
            hint="unset HF_HUB_OFFLINE (or run the fetch on a machine with network access)",
        )
    local = local_dir.expanduser().absolute() if local_dir is not None else None
    if local is not None:
        refuse_overlay(spec, local)
    from huggingface_hub import HfApi

    scrub_hub_logs()
    endpoint = endpoint or hub_endpoint()
    shown = display_endpoint(endpoint)
    try:
        info = HfApi(endpoint=endpoint).model_info(
            spec.repo_id, revision=spec.rev, files_metadata=True
        )
    except Exception as err:  # noqa: BLE001 - hub exception types vary across 0.34 .. 2.x
        raise _hub_failure(spec, err, shown) from None
    commit = info.sha
    if not commit:
        raise InputError(f"{spec}: {shown} did not say which commit {spec.rev!r} is.")
    siblings = info.siblings or []
    files = tuple(
        RemoteFile(
            s.rfilename,
            s.size,
            s.lfs.sha256 if s.lfs is not None else s.blob_id,
        )
        for s in siblings
        if serving_file(s.rfilename)
    )
    names = {f.name for f in files}
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise InputError(
            f"{spec} at {commit[:12]} has no "
            + ("config.json" if "config.json" not in names else "*.safetensors weights")
            + f": not a safetensors model checkpoint ({len(siblings)} files in the repo).",
            hint="check the repo id and revision",
        )
    left_out = tuple(f.name for f in files if not selected(f.name, include, exclude))
    files = tuple(f for f in files if selected(f.name, include, exclude))
    if not files:
        raise UsageError(
            f"--include/--exclude leave no file of {spec} to fetch (serving files: "
            f"{', '.join(sorted(names)[:8])}{', ...' if len(names) > 8 else ''}).",
            hint="patterns are globs matched against file names, e.g. --include '*.json'",
        )
    if local is not None:
        refuse_links(spec, local, [f.name for f in files])
    cache = cache_dir if cache_dir is not None else hub_cache_dir()
    storage = repo_storage(spec.repo_id, cache)
    total = sum(f.size or 0 for f in files)
    needed = sum(f.size or 0 for f in files if not _present(f, storage, local))
    return FetchPlan(spec, commit, files, local or cache, local, cache, total, needed, left_out)


def check_space(plan: FetchPlan, *, reserve_bytes: int = 0) -> Check:
    """Free disk at the target against the bytes still to download (+ a reserve)."""
    probe, free = _free_bytes(plan.target)
    need = plan.bytes_needed + reserve_bytes
    if need > free:
        raise InputError(
            f"not enough free disk for {plan.spec} at {probe}: the download needs "
            f"{format_bytes(need)} ({plan.bytes_needed} bytes), "
            f"{format_bytes(free)} ({free} bytes) is free.",
            hint="free some space, or fetch to a bigger disk with --local-dir DIR "
            "(or set HF_HUB_CACHE to a directory there)",
            path=str(probe),
        )
    return Check(
        "fetch.disk",
        "pass",
        f"{format_bytes(plan.bytes_needed)} to download, {format_bytes(free)} free at {probe}",
        str(probe),
    )


def _write_ref(plan: FetchPlan) -> None:
    """Record branch/tag -> commit in the cache, as huggingface_hub does, so that
    `ORG/NAME@rev` resolves offline afterwards (we downloaded by commit to pin it)."""
    rev = plan.spec.rev
    if plan.local_dir is not None or rev == plan.commit:
        return
    ref = repo_storage(plan.spec.repo_id, plan.cache_dir) / "refs" / rev
    ref.parent.mkdir(parents=True, exist_ok=True)
    if not ref.is_file() or ref.read_text() != plan.commit:
        atomic_write_text(ref, plan.commit)


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
        from qwenprep.integrity import verify_checkpoint
    except ModuleNotFoundError as err:
        if err.name != "qwenprep.integrity":
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
    if isinstance(err, _hf_error("HfHubHTTPError")):
        return True
    return not isinstance(err, (ValueError, TypeError, PermissionError))


def _partial_verify(plan: FetchPlan, path: Path) -> Report:
    """--include/--exclude left serving files out: the checkpoint is partial, so each fetched
    file is checked against the Hub's hash for it instead of the whole-checkpoint verify."""
    from qwenprep.hashing import HashJob, algorithm_for_etag, hash_files

    known = [(f, algorithm_for_etag(f.etag)) for f in plan.files if f.etag]
    jobs = [HashJob(path / f.name, alg) for f, alg in known if alg is not None]
    expected = [f for f, alg in known if alg is not None]
    checks: list[Check] = []
    for f, r in zip(expected, hash_files(jobs), strict=True):
        if r.hexdigest != (f.etag or "").strip('"').lower():
            checks.append(Check("deep.hash", "fail", f"{f.name}: content does not match the "
                                "Hub's hash for it. Hint: run the same command again", f.name))
    if not checks:
        checks.append(Check("deep.hash", "pass", f"{len(jobs)} file(s) match the Hub's content "
                            "hash"))
    checks.append(Check("verify.partial", "skip", f"--include/--exclude left out "
                        f"{len(plan.left_out)} serving file(s) ({', '.join(plan.left_out[:4])}"
                        f"{', ...' if len(plan.left_out) > 4 else ''}): a partial checkpoint, "
                        "not verified as a whole. Run qwenprep verify PATH once it is complete"))
    report = Report("verify", checks)
    report.extra.update(path=str(path), deep=True)
    return report


def download(
    plan: FetchPlan, *, endpoint: str | None = None, verify: bool = True, attempts: int = 3,
    max_workers: int | None = None,
) -> FetchResult:
    """snapshot_download exactly the planned files at the pinned commit, then check them
    (max_workers: files at once; huggingface_hub's default is 8).

    A transient failure (dropped connection, timeout, 5xx) is retried up to `attempts` times
    in all: finished files are kept, an unfinished one starts again (huggingface_hub 2.x also
    retries within a file; 0.x does not)."""
    if plan.local_dir is not None:  # again: the directory may have changed since the plan
        refuse_overlay(plan.spec, plan.local_dir)
        refuse_links(plan.spec, plan.local_dir, [f.name for f in plan.files])
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
                raise _hub_failure(plan.spec, err, display_endpoint(endpoint)) from None
            retried.append(f"{type(err).__name__}: {_first_line(err)}")
            time.sleep(min(2 ** len(retried), 10))
    seconds = time.monotonic() - t0
    path = Path(out)
    _write_ref(plan)
    checks = _size_checks(plan, path)
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
) -> FetchResult:
    """Plan, check the disk, download, check and verify. Raises QwenprepError (exit 2/3).

    dry_run: only the plan (what would be fetched, its size, the disk check as a check);
    nothing is written. With HF_HUB_OFFLINE set and the revision cached (and no --local-dir),
    the cached snapshot is the answer, as `hf download` gives it."""
    if max_workers is not None and max_workers < 1:
        raise UsageError(f"--max-workers {max_workers}: must be 1 or more.")
    if offline_mode() and local_dir is None:
        cached = _offline_cached(spec_text, revision, include, exclude, cache_dir)
        if cached is not None:
            return cached
    plan = plan_fetch(spec_text, local_dir=local_dir, cache_dir=cache_dir, endpoint=endpoint,
                      revision=revision, include=include, exclude=exclude)
    if dry_run:
        try:
            disk = check_space(plan, reserve_bytes=reserve_bytes)
        except InputError as err:
            disk = Check("fetch.disk", "fail", err.message, err.path)
        path = plan.local_dir if plan.local_dir is not None else (
            repo_storage(plan.spec.repo_id, plan.cache_dir) / "snapshots" / plan.commit)
        return FetchResult(plan, path, 0.0, (disk,), mode="dry-run")
    disk = check_space(plan, reserve_bytes=reserve_bytes)
    result = download(plan, endpoint=endpoint, verify=verify, max_workers=max_workers)
    return FetchResult(
        result.plan, result.path, result.seconds, (disk, *result.checks), result.verify
    )


def _offline_cached(spec_text: str, revision: str | None, include: tuple[str, ...] | list[str],
                    exclude: tuple[str, ...] | list[str], cache_dir: Path | None
                    ) -> FetchResult | None:
    """HF_HUB_OFFLINE and the revision in the cache: that snapshot (None when not cached)."""
    from qwenprep.hub import find_cached

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
    check = Check("fetch.offline", "pass", f"HF_HUB_OFFLINE is set and {spec.repo_id}@"
                  f"{spec.rev} is cached (commit {commit[:12]}): nothing fetched", str(snap))
    return FetchResult(plan, snap, 0.0, (check,), mode="offline")
