"""Repo ids (ORG/NAME[@revision]) and the local Hugging Face cache.

Works with huggingface_hub 0.34 .. 2.x: it uses only `try_to_load_from_cache` and
`file_download.repo_folder_name`, which keep their signatures across that range. The cache
location and offline mode are read from the environment at call time (huggingface_hub reads
them once, at import), with the library's own precedence:
HF_HUB_CACHE > HUGGINGFACE_HUB_CACHE > HF_HOME/hub > XDG_CACHE_HOME/huggingface/hub.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from qwenprep.errors import InputError

_NAME = r"[A-Za-z0-9](?:[\w.\-]*[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^{_NAME}/{_NAME}$")
_HEX = re.compile(r"^[0-9a-f]{7,40}$")
_TRUE = {"1", "on", "yes", "true"}
# refs/qwenprep/ in a repo's cache folder holds qwenprep's pins (qwenprep.model.lifecycle): a
# revision named into it is qwenprep's, never a Hub branch or tag to fetch and record there.
OWN_REFS = "qwenprep"


def own_ref(rev: str) -> bool:
    """True for a revision under qwenprep's own ref namespace (qwenprep, qwenprep/...)."""
    low = rev.lower()  # refs/Qwenprep is refs/qwenprep on a case-insensitive disk
    return low == OWN_REFS or low.startswith(OWN_REFS + "/")


@dataclass(frozen=True)
class RepoSpec:
    """ORG/NAME with an optional revision (branch, tag, full or short commit hash)."""

    repo_id: str
    revision: str | None = None

    @property
    def rev(self) -> str:
        return self.revision or "main"

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_repo_spec(spec: str) -> RepoSpec | None:
    """`ORG/NAME` or `ORG/NAME@REV` -> RepoSpec; None when `spec` does not have that shape."""
    repo_id, sep, revision = spec.partition("@")
    if not _REPO_ID.match(repo_id) or len(repo_id) > 96:
        return None
    if "--" in repo_id or ".." in repo_id:
        return None
    if sep and (not revision or revision.startswith("/") or ".." in revision):
        return None
    return RepoSpec(repo_id, revision or None)


def snapshot_repo(path: Path) -> tuple[str, str] | None:
    """(repo_id, commit) when PATH is an HF cache snapshot: .../models--ORG--NAME/snapshots/REV.
    The one rule every module uses to tell a snapshot from a plain directory."""
    repo_dir = path.parent.parent.name
    if path.parent.name != "snapshots" or not repo_dir.startswith("models--"):
        return None
    parts = repo_dir[len("models--") :].split("--")
    if len(parts) != 2 or not all(parts):
        return None
    return "/".join(parts), path.name


def snapshot_blobs(path: Path) -> Path | None:
    """The blobs/ folder beside a snapshot (None when PATH is not a snapshot or has none)."""
    if snapshot_repo(path) is None:
        return None
    blobs = path.parent.parent / "blobs"
    return blobs if blobs.is_dir() else None


# The small files of a snapshot hashed against their blob names by plain verify and patch: the
# JSON files (config.json, the tokenizer and generation configs, the index), a few KB each.
_SMALL_MAX = 64 * 1024 * 1024


def edited_in_cache(snapshot: Path) -> list[str]:
    """The JSON files of an HF cache snapshot edited in place: a link into blobs/ whose bytes no
    longer hash to the blob's name (the name is the file's git blob sha1, or its sha256 for an
    LFS file, as huggingface_hub stores it), or a plain file where the link was. Empty for a
    path that is not a snapshot. Hashes a few KB: what `verify --deep` does for every file."""
    import hashlib

    from qwenprep.util.hashing import (
        algorithm_for_etag,
        git_blob_sha1_of,
        not_regular,
        open_regular,
    )

    blobs = snapshot_blobs(snapshot)
    if blobs is None:
        return []
    edited = []
    for p in sorted(snapshot.glob("*.json")):
        if not p.is_symlink():
            if p.is_file():
                edited.append(p.name)  # the link was replaced by a file
            continue
        target = Path(os.path.realpath(p))
        alg = algorithm_for_etag(target.name) if target.parent == blobs.resolve() else None
        try:
            if alg is None or not_regular(target) or target.stat().st_size > _SMALL_MAX:
                continue
            with open_regular(target) as f:
                data = f.read()
        except OSError:  # gone or unreadable: verify's other checks say so
            continue
        got = git_blob_sha1_of(data) if alg == "git-sha1" else hashlib.sha256(data).hexdigest()
        if got != target.name:
            edited.append(p.name)
    return edited


def edited_in_cache_message(snapshot: Path, names: list[str]) -> tuple[str, str]:
    """(message, hint) for edited_in_cache's answer: what was edited, and the command that
    restores it."""
    repo = snapshot_repo(snapshot)
    spec = f"{repo[0]}@{repo[1]}" if repo else str(snapshot)
    others = [n for n in names if n != "config.json"]
    fixes = [f"`qwenprep revert {spec}` restores it"] if "config.json" in names else []
    if others and repo:
        fixes.append(
            f"`hf download {repo[0]} {' '.join(others)} --revision {repo[1]} --force-download` "
            "restores " + ("the rest" if fixes else "them")
        )
    return (
        f"{', '.join(names)} in {snapshot}: edited in place in the Hugging Face cache (the "
        "bytes no longer match the blob name huggingface_hub gave them)",
        "edited in place: " + "; ".join(fixes or ["re-download it"]),
    )


def local_dir_etag(root: Path, name: str) -> str | None:
    """The etag huggingface_hub recorded for NAME in a --local-dir download (line 2 of
    .cache/huggingface/download/NAME.metadata): sha256 for LFS files, git blob sha1 otherwise."""
    meta = root / ".cache" / "huggingface" / "download" / f"{name}.metadata"
    try:
        lines = meta.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    etag = lines[1].strip().strip('"').lower() if len(lines) >= 2 else ""
    return etag if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", etag) else None


def _env_path(name: str) -> str | None:
    value = os.environ.get(name)
    return os.path.expandvars(os.path.expanduser(value)) if value else None


def hub_cache_dir() -> Path:
    """The cache directory huggingface_hub would use in a fresh process with this environment."""
    cache = _env_path("HF_HUB_CACHE") or _env_path("HUGGINGFACE_HUB_CACHE")
    if cache:
        return Path(cache)
    home = _env_path("HF_HOME")
    if not home:
        xdg = _env_path("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        home = os.path.join(xdg, "huggingface")
    return Path(home) / "hub"


def offline_mode() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set to a true value."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if (os.environ.get(name) or "").strip().lower() in _TRUE:
            return True
    return False


def hub_endpoint() -> str | None:
    """HF_ENDPOINT as set now (None: huggingface_hub's default, https://huggingface.co)."""
    value = (os.environ.get("HF_ENDPOINT") or "").strip().rstrip("/")
    return value or None


# Exception class names (anywhere in an error's cause chain) that mean the endpoint itself could
# not be reached - DNS, refused, connect timeout, proxy - as httpx, requests and urllib3 spell
# them. A connection dropped mid-transfer (reset, broken pipe) is not one: that is transient.
_UNREACHABLE = {
    "ConnectError",
    "ConnectTimeout",
    "NewConnectionError",
    "NameResolutionError",
    "ProxyError",
    "gaierror",
    "ConnectionRefusedError",
}


def _chain(err: BaseException) -> list[BaseException]:
    """ERR and what it was raised from or wraps (huggingface_hub raises "file not found
    locally" from the HTTP or connection error that is the real story)."""
    todo: list[object] = [err]
    out: list[BaseException] = []
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or any(e is o for o in out):
            continue
        out.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args[:1]]
    return out


def unreachable_cause(err: BaseException) -> BaseException | None:
    """The exception in ERR's chain that says the Hub endpoint could not be reached at all
    (name resolution, connection refused, connect timeout), or None."""
    for e in _chain(err):
        if _UNREACHABLE & {c.__name__ for c in type(e).__mro__}:
            return e
    return None


def http_status_cause(err: BaseException) -> tuple[int, BaseException] | None:
    """(HTTP status, the exception that carries it) from ERR's chain, or None."""
    for e in _chain(err):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int):
            return status, e
    return None


def offline_hint() -> str:
    """What to do when the Hub cannot be reached: the endpoint to check, or the cache."""
    from qwenprep.util.redact import display_endpoint

    endpoint = hub_endpoint()
    now = f"now {display_endpoint(endpoint)}" if endpoint else "unset: https://huggingface.co"
    return (
        f"check the network and HF_ENDPOINT ({now}); a repo already in the Hugging Face cache "
        "needs no network: set HF_HUB_OFFLINE=1 and use it by its id"
    )


def repo_storage(repo_id: str, cache_dir: Path) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    folder: str = repo_folder_name(repo_id=repo_id, repo_type="model")
    return cache_dir / folder


def _cached_revisions(storage: Path) -> tuple[dict[str, str], list[str]]:
    """(refs name -> commit, snapshot commits) of one repo folder in the cache."""
    refs: dict[str, str] = {}
    refs_dir = storage / "refs"
    if refs_dir.is_dir():
        for p in sorted(refs_dir.rglob("*")):
            if p.is_file() and not p.name.endswith(".tmp"):
                refs[p.relative_to(refs_dir).as_posix()] = p.read_text().strip()
    snaps = storage / "snapshots"
    commits = sorted(p.name for p in snaps.iterdir() if p.is_dir()) if snaps.is_dir() else []
    return refs, commits


def _fetch_hint(spec: RepoSpec) -> str:
    hint = f"download it with: qwenprep fetch {spec}"
    if offline_mode():
        hint += (
            " (HF_HUB_OFFLINE is set: fetch needs the network; run it where the Hub is reachable)"
        )
    return hint + "; or pass the checkpoint's directory instead"


def find_cached(spec: RepoSpec, cache_dir: Path | None = None) -> tuple[Path, str]:
    """(snapshot directory, commit) for a repo id in the HF cache; InputError naming
    `qwenprep fetch` when it is not there. Never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    cache = cache_dir if cache_dir is not None else hub_cache_dir()
    storage = repo_storage(spec.repo_id, cache)
    refs, commits = _cached_revisions(storage)
    rev = spec.rev
    if rev not in refs and _HEX.match(rev) and len(rev) < 40:
        prefixed = [c for c in commits if c.startswith(rev)]
        if len(prefixed) == 1:
            rev = prefixed[0]
        elif len(prefixed) > 1:
            raise InputError(
                f"{spec}: the short commit {rev} matches {len(prefixed)} cached snapshots "
                f"({', '.join(c[:12] for c in prefixed)}).",
                hint="give more characters of the commit hash",
            )
    found = try_to_load_from_cache(spec.repo_id, "config.json", cache_dir=str(cache), revision=rev)
    if isinstance(found, str):
        snapshot = Path(found).parent
        return snapshot, snapshot.name
    where = f"the Hugging Face cache ({cache})"
    if found is not None:  # cached "does not exist" marker
        raise InputError(
            f"{spec}: the Hub said this revision has no config.json (recorded in {where}); "
            "it is not a model checkpoint.",
            hint="check the repo id and revision",
            path=str(storage),
        )
    if not storage.is_dir():
        raise InputError(f"{spec} is not in {where}.", hint=_fetch_hint(spec), path=str(cache))
    commit = refs.get(rev, rev if rev in commits else None)
    if commit is not None and commit in commits:
        raise InputError(
            f"{spec}: the cached snapshot {commit[:12]} in {where} has no config.json "
            "(an interrupted or partial download).",
            hint=_fetch_hint(spec),
            path=str(storage / "snapshots" / commit),
        )
    have = [f"{name} -> {c[:12]}" for name, c in refs.items()] or [c[:12] for c in commits]
    raise InputError(
        f"{spec}: revision {spec.rev!r} is not in {where}; cached: "
        f"{', '.join(have) if have else 'nothing usable'}.",
        hint=_fetch_hint(spec),
        path=str(storage),
    )
