"""Planning a fetch: which files of ORG/NAME[@REV] serving needs (`model_info(...,
files_metadata=True)`: names, sizes, hashes), the commit they are pinned to, what is already
there, the free disk; and huggingface_hub's failures as messages that say what to do.
No byte is downloaded here (qwenprep.ops.fetch.download downloads)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwenprep.errors import InputError, UsageError
from qwenprep.model.checkpoint import check_path_length
from qwenprep.model.hub import (
    OWN_REFS,
    RepoSpec,
    http_status_cause,
    hub_cache_dir,
    hub_endpoint,
    offline_hint,
    offline_mode,
    own_ref,
    parse_repo_spec,
    repo_storage,
    unreachable_cause,
)
from qwenprep.ops.fetch.local import refuse_links, refuse_overlay
from qwenprep.util.redact import display_endpoint, redact, scrub_hub_logs
from qwenprep.util.report import SCHEMA_VERSION, Check, Report
from qwenprep.util.sizes import format_bytes

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


def selected(
    name: str, include: tuple[str, ...] | list[str] = (), exclude: tuple[str, ...] | list[str] = ()
) -> bool:
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


def hf_error(name: str) -> type[BaseException]:
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


def first_line(err: BaseException) -> str:
    return redact(str(err).splitlines()[0] if str(err) else type(err).__name__)


def hub_failure(spec: RepoSpec, err: BaseException, endpoint: str) -> InputError:
    """One table from huggingface_hub's exceptions to messages that say what to do next."""
    from http import HTTPStatus

    detail = first_line(err)
    retry = f"run the same command again: qwenprep fetch {spec}"
    if isinstance(err, hf_error("GatedRepoError")):
        return InputError(
            f"{spec.repo_id} is gated on {endpoint}: accept its terms on the model page first.",
            hint="then log in (hf auth login, or set HF_TOKEN) and " + retry,
        )
    if isinstance(err, hf_error("RepositoryNotFoundError")):
        return InputError(
            f"{spec.repo_id}: no such model repository on {endpoint} (or it is private).",
            hint="check the repo id; for a private repo log in (hf auth login, or set HF_TOKEN)",
        )
    if isinstance(err, hf_error("RevisionNotFoundError")):
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
            f"{HTTPStatus(status).phrase}): {first_line(carrier).rstrip('.')}.",
            hint="check the token huggingface_hub sends (HF_TOKEN, or hf auth login) and that "
            f"it may read {spec.repo_id}; a gated repo also needs its terms accepted on the "
            "model page",
        )
    cause = unreachable_cause(err)
    if cause is not None:
        return InputError(
            f"{spec}: the Hub could not be reached at {endpoint} "
            f"({type(cause).__name__}: {first_line(cause)}).",
            hint=offline_hint(),
        )
    if isinstance(err, (hf_error("RemoteEntryNotFoundError"), hf_error("EntryNotFoundError"))):
        return InputError(
            f"{spec}: a file listed by the Hub could not be downloaded (404): "
            f"{_failed_file(err) or detail}",
            hint="the revision may have changed under you; " + retry,
        )
    return InputError(
        f"{spec}: download from {endpoint} failed: {type(err).__name__}: {detail}",
        hint=retry + " (finished files are kept; unfinished ones restart)",
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
            raise UsageError(
                f"--revision {revision!r} is not a branch, tag or commit hash.",
                hint=f"for example: qwenprep fetch {spec.repo_id} --revision main",
            )
        if spec.revision is not None and spec.revision != revision:
            raise UsageError(
                f"{spec_text} names revision {spec.revision!r} but --revision says {revision!r}.",
                hint=f"give one of them: qwenprep fetch {spec.repo_id} --revision {revision}",
            )
        spec = RepoSpec(spec.repo_id, revision)
    if own_ref(spec.rev):
        raise UsageError(
            f"{spec}: revision {spec.rev!r} is under refs/{OWN_REFS}/, where qwenprep keeps its "
            "cache pins; qwenprep does not fetch it (recording it would overwrite a pin).",
            hint=f"fetch by branch, tag or commit hash, e.g. qwenprep fetch {spec.repo_id}@main; "
            "a Hub branch of that name can be fetched by its commit hash",
        )
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
    local = (
        check_path_length(local_dir, "--local-dir").absolute() if local_dir is not None else None
    )
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
        raise hub_failure(spec, err, shown) from None
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
