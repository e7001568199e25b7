"""Locating a checkpoint: a directory, or ORG/NAME[@rev] in the Hugging Face cache
(qwenprep.model.hub
builds on this)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from qwenprep.errors import InputError
from qwenprep.util.jsonio import load_json_file
from qwenprep.util.safetensors_io import short_text

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
NAME_MAX = 255  # bytes in one path component on Linux file systems (ext4, xfs, btrfs)
PATH_MAX = 4096  # bytes in a whole path the kernel accepts (linux/limits.h)


def check_path_length(spec: str | Path, what: str = "path") -> Path:
    """SPEC as a Path, or a clear InputError when the system cannot hold it: a component over
    NAME_MAX bytes or a path over PATH_MAX bytes (os.stat would raise ENAMETOOLONG, errno 36).
    Every path a user gives goes through here first (resolve_model, --out, --local-dir)."""
    p = Path(spec).expanduser()
    raw = os.fsencode(p)
    longest = max((len(os.fsencode(part)) for part in p.parts), default=0)
    if longest > NAME_MAX or len(raw) > PATH_MAX:
        shown = str(spec) if len(str(spec)) <= 80 else str(spec)[:60] + "..." + str(spec)[-12:]
        limit = (
            f"a name over {NAME_MAX} bytes ({longest})"
            if longest > NAME_MAX
            else f"{len(raw)} bytes, over {PATH_MAX}"
        )
        raise InputError(
            f"{what} too long: {shown} has {limit}; no file system here can hold it.",
            hint="check the path (a pasted value or an unquoted variable?) and pass a shorter one.",
            path=shown,
        )
    return p


@dataclass(frozen=True)
class Checkpoint:
    """A located checkpoint directory (possibly an HF cache snapshot or a qwenprep overlay)."""

    path: Path
    repo_id: str | None = None
    revision: str | None = None

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    def read_config(self) -> dict[str, Any]:
        cfg = load_json_file(self.config_path, what="config.json")
        if not isinstance(cfg, dict):
            raise InputError(f"{self.config_path}: top level is not a JSON object.")
        return cfg


def resolve_dir(spec: str | Path) -> Checkpoint:
    """A directory that holds config.json; clear messages otherwise."""
    p = check_path_length(spec)
    if not p.exists():
        raise InputError(
            f"{p}: no such directory.",
            hint="pass a checkpoint directory, or a repo id (ORG/NAME) already in the "
            "Hugging Face cache; download one with: qwenprep fetch ORG/NAME",
            path=str(p),
        )
    if not p.is_dir():
        raise InputError(f"{p}: not a directory; pass the checkpoint's directory.", path=str(p))
    if os.path.lexists(p / CONFIG) and not (p / CONFIG).is_file():
        raise InputError(
            f"{p / CONFIG}: not a regular file (a dangling link, FIFO, socket or directory); "
            "qwenprep reads config.json only from a regular file.",
            hint="put the checkpoint's real config.json there (qwenprep revert PATH restores "
            "an edited one).",
            path=str(p / CONFIG),
        )
    if not (p / CONFIG).is_file():
        raise InputError(
            f"{p}: no config.json here; this is not a Hugging Face checkpoint directory.",
            path=str(p / CONFIG),
        )
    return Checkpoint(p.resolve())


def resolve_model(spec: str | Path) -> Checkpoint:
    """Resolve MODEL as given on the command line. Every command goes through here.

    An existing directory wins. Otherwise `ORG/NAME[@revision]` is looked up in the local
    Hugging Face cache (HF_HUB_CACHE / HF_HOME, refs/<branch-or-tag>, full or short commit
    hashes; never the network): the Checkpoint then carries repo_id and the resolved commit.
    Anything else gets resolve_dir's message.
    """
    from qwenprep.model.hub import find_cached, parse_repo_spec, snapshot_repo

    text = str(spec)
    if not check_path_length(text).exists():
        repo = parse_repo_spec(text)
        if repo is not None:
            snapshot, commit = find_cached(repo)
            return replace(resolve_dir(snapshot), repo_id=repo.repo_id, revision=commit)
    ckpt = resolve_dir(spec)
    snap = snapshot_repo(ckpt.path)  # a snapshot directory of the HF cache given by path
    if snap is not None:
        return replace(ckpt, repo_id=snap[0], revision=snap[1])
    return ckpt


# ------------------------------------------------------------------ file names
def unsafe_name(name: object) -> str | None:
    """Why an index file name may not be opened, or None when it is a plain relative name."""
    if not isinstance(name, str) or not name:
        return "not a non-empty string"
    if "\0" in name or "\\" in name:
        return "contains a NUL or backslash"
    if (
        PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).is_absolute()
        or PureWindowsPath(name).drive
    ):
        return "is an absolute path"
    if any(part == ".." for part in PurePosixPath(name).parts):
        return "climbs out of the checkpoint (..)"
    return None


def unsafe_shard_names(values: Iterable[object]) -> dict[str, str]:
    """{shown name: reason} for every weight_map value that may not be opened. Values may be
    anything JSON holds; each distinct name is judged once (60k tensors name ~50 shards)."""
    values = list(values)
    distinct: Iterable[object] = values
    try:
        names = dict.fromkeys(values)  # first-seen order, at C speed
        if set(map(type, names)) == {str}:  # (1 and true would be one key)
            distinct = names
    except TypeError:  # a list or an object among them
        pass
    bad: dict[str, str] = {}
    seen: set[str] = set()
    for shard in distinct:
        if isinstance(shard, str):
            if shard in seen:
                continue
            seen.add(shard)
        why = unsafe_name(shard)
        if why:
            bad[shard if isinstance(shard, str) else short_text(json.dumps(shard), 60)] = why
    return bad
