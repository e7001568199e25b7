"""Reading a checkpoint once for integrity: the index, every safetensors header, and the
structure checks on them (index vs shards, sane headers, exact sizes).

Each shard's header is read and parsed once (safetensors_io.load_header): a plainly well
formed header is decoded by msgspec straight into typed entries and judged by whole-column
checks; any other is parsed by json, typed and checked entry by entry to say what is wrong.
The index likewise (safetensors_io.fast_index, else jsonio.loads_located). The scan keeps
the entries (tensor name -> Entry: dtype, shape, data_offsets) for the tensor checks
(integrity_tensors) and for anyone else who needs the weights (check's capacity plan).
"""

from __future__ import annotations

import gc
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter, sub
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenprep.errors import InputError
from qwenprep.model.checkpoint import INDEX, unsafe_shard_names
from qwenprep.model.hub import snapshot_repo
from qwenprep.util.hashing import RECORD_DIR, NotRegularFile, not_regular, open_regular
from qwenprep.util.jsonio import MAX_JSON_BYTES, loads_located, refuse_oversized
from qwenprep.util.report import Check

if TYPE_CHECKING:
    from qwenprep.model.manifest import Manifest
from qwenprep.util.safetensors_io import (
    Entry,
    SafetensorsHeader,
    entry_of,
    fast_index,
    header_problems,
    load_header,
    typed_tensors,
)
from qwenprep.util.sizes import format_bytes

_SHAPE, _OFFSETS = attrgetter("shape"), attrgetter("data_offsets")
SHARD_RE = re.compile(r"^(?P<stem>.+)-(?P<k>\d{5})-of-(?P<n>\d{5})\.safetensors$")
SKIP_DIRS = {RECORD_DIR, ".cache", ".git"}
FETCH_HINT = "re-download the damaged file(s): qwenprep fetch ORG/NAME"
MAX_LISTED = 5


def some_of(items: list[str], n: int = MAX_LISTED) -> str:
    return "; ".join(items[:n]) + (f"; ... ({len(items) - n} more)" if len(items) > n else "")


@dataclass
class Scan:
    """What the header level found, for the checks and the counters."""

    root: Path
    checks: list[Check] = field(default_factory=list)
    # tensor name -> its header entry (safetensors_io.Entry: dtype, shape as a tuple,
    # data_offsets), typed (every entry of a header that typed_tensors accepted); the first
    # shard's when twice
    tensors: dict[str, Entry] = field(default_factory=dict)
    shard_of: dict[str, str] = field(default_factory=dict)  # tensor name -> shard file
    shards_ok: bool = True  # every expected shard present and parsed
    shard_names: list[str] = field(default_factory=list)  # what the index (or the dir) names
    index_shards: list[str] | None = None  # the index's distinct shard names, sorted, when safe
    index_agrees: bool = True  # so far, every shard read holds what the index says it holds
    shard_files: int = 0
    file_bytes: int = 0
    data_bytes: int = 0
    header_bytes: int = 0
    index_total: int | None = None
    weight_map: dict[str, str] | None = None  # the index's, when it was readable
    config: dict[str, Any] | None = None  # config.json, once read (integrity_tensors)

    def add(self, id: str, status: str, message: str, path: str | None = None) -> None:
        self.checks.append(Check(id, status, message, path))  # type: ignore[arg-type]

    def tensor_columns(self) -> tuple[list[str], list[tuple[int, ...]], list[int]]:
        """The names, shapes and byte sizes of every tensor read, as three lists (what
        capacity's tally_columns takes), at C speed."""
        entries = list(self.tensors.values())
        flat = list(chain.from_iterable(map(_OFFSETS, entries)))  # start0, end0, start1, ...
        return (
            list(self.tensors),
            list(map(_SHAPE, entries)),
            list(map(sub, flat[1::2], flat[0::2])),
        )


def rel_path(root: Path, p: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _walk_files(root: Path) -> list[str]:
    """Relative posix names of every file (or link to one) under root, skipping our state dirs."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        dirnames.sort()
        for fn in sorted(filenames):
            out.append((rel_dir / fn).as_posix())
    return out


def _is_file(p: Path) -> bool:
    """Path.is_file that says False for names the OS refuses (too long, not encodable)."""
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


def _lexists(p: Path) -> bool:
    try:
        return os.path.lexists(p)
    except (OSError, ValueError):
        return False


def _read_index(scan: Scan) -> dict[str, str] | None:
    """The index's weight_map (tensor -> shard name), or None after a failed check."""
    p = scan.root / INDEX
    try:
        with open_regular(p) as f:
            refuse_oversized(INDEX, os.fstat(f.fileno()).st_size)
            raw = f.read(MAX_JSON_BYTES + 1)
        refuse_oversized(INDEX, len(raw))
        obj = fast_index(raw)
        if obj is None:
            obj = loads_located(raw.decode("utf-8"), INDEX)
    except NotRegularFile as e:
        scan.add(
            "index",
            "fail",
            f"{INDEX}: {e.strerror}, so it cannot be read as the index. "
            "Restore the index from the original release.",
            INDEX,
        )
        return None
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        scan.add(
            "index",
            "fail",
            f"{INDEX}: cannot read ({why}). Restore the index from the original release.",
            INDEX,
        )
        return None
    except InputError as e:
        scan.add("index", "fail", e.message, INDEX)
        return None
    wm = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(wm, dict):
        scan.add(
            "index",
            "fail",
            f"{INDEX}: no weight_map object mapping tensor names to shard files.",
            INDEX,
        )
        return None
    if not wm:
        scan.add(
            "index",
            "fail",
            f"{INDEX}: weight_map is empty: the index names no shard, so "
            f"there are no weights to check. Hint: {FETCH_HINT}",
            INDEX,
        )
        return None
    try:  # each distinct shard name once, first-seen order (60k tensors name ~50 shards)
        distinct: list[object] = list(dict.fromkeys(wm.values()))
    except TypeError:  # a list or an object among them
        distinct = list(wm.values())
    bad = unsafe_shard_names(distinct)
    if bad:
        scan.add(
            "index.paths",
            "fail",
            f"{INDEX}: weight_map names file(s) outside the checkpoint, not opened: "
            + some_of([f"{s!r} {w}" for s, w in sorted(bad.items())])
            + ". Restore the index from the original release.",
            INDEX,
        )
        scan.shards_ok = False
    else:
        scan.index_shards = sorted(distinct)  # type: ignore[arg-type]  # all strings (safe)
        scan.add(
            "index.paths",
            "pass",
            f"{INDEX}: all {len(distinct)} shard names stay inside the checkpoint",
        )
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    total = meta.get("total_size") if isinstance(meta, dict) else None
    scan.index_total = total if isinstance(total, int) and not isinstance(total, bool) else None
    if not bad:  # every value is a string then (a non-string is an unsafe name)
        return wm
    return {k: v for k, v in wm.items() if isinstance(v, str) and v not in bad}


def is_download(root: Path) -> bool:
    """An HF cache snapshot, or a directory huggingface_hub or qwenprep fetched into."""
    return (
        snapshot_repo(root) is not None
        or (root / ".cache" / "huggingface").is_dir()
        or (root / ".qwenprep" / "fetch.json").is_file()
    )


def _unreadable(root: Path, shards: list[str]) -> dict[str, str]:
    """{shard: why} for each shard name that is there but cannot be read as a regular file: a
    dangling link (into an HF cache: a missing blob), a FIFO or device, a link loop. Stats only:
    nothing is opened, so nothing can block."""
    snapshot = snapshot_repo(root) is not None
    out: dict[str, str] = {}
    for s in shards:
        p = root / s
        try:
            mode = os.stat(p).st_mode
        except FileNotFoundError:
            target = Path(os.path.realpath(p))
            if snapshot and target.parent.name == "blobs":
                out[s] = (
                    f"links to the blob {target.name}, which is missing from the cache: "
                    "the download is incomplete"
                )
            else:
                out[s] = f"a link to {target}, which does not exist (a dangling link)"
            continue
        except (OSError, ValueError) as e:  # ELOOP, ENAMETOOLONG, EACCES on a directory, ...
            out[s] = f"cannot be opened ({getattr(e, 'strerror', None) or e})"
            continue
        if not stat.S_ISREG(mode):
            out[s] = f"{not_regular(p) or 'not a regular file'}, so not a safetensors shard"
    return out


def _unreadable_check(scan: Scan, unreadable: dict[str, str]) -> None:
    dangling = any("(a dangling link)" in why for why in unreadable.values())
    hint = ("restore what it points to, or " if dangling else "") + FETCH_HINT
    items = [f"{s}: {why}" for s, why in sorted(unreadable.items())]
    first = min(unreadable)
    if len(items) == 1:
        scan.add("shards.present", "fail", f"{items[0]}. Hint: {hint}", first)
    else:
        scan.add(
            "shards.present",
            "fail",
            f"{len(items)} shard(s) cannot be read: {some_of(items)}. Hint: {hint}",
            first,
        )
    scan.shards_ok = False


def _strip_path(message: str, p: Path) -> str:
    """read_header's messages start with the absolute path; we name the file relatively."""
    s = str(p)
    return message[len(s) + 2 :] if message.startswith(s + ": ") else message


# Set by the console script (a short-lived process) only: see gc_paused.
FREEZE_AFTER_SCAN = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a while. Parsing the 480B's 60k header entries
    makes hundreds of thousands of dicts and lists, none in a cycle: the collector would walk
    every live object again and again for nothing (it doubled the tensor checks' time)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            if FREEZE_AFTER_SCAN:
                # what was made meanwhile would make the next collection a full one (40 ms
                # after the 480B's headers): in the console script it is live data until the
                # process ends, so the collector leaves it alone (freeze; reference counting
                # still frees it). Never in a library caller's process: freeze also pins
                # every object of the host program, cyclic garbage included, for good.
                gc.freeze()
            gc.enable()


def _shard_list(scan: Scan, files: list[str]) -> tuple[list[str], dict[str, str]] | None:
    """The shards to read and {shard: why} of those that cannot be; None when there are none
    to read (the check saying why is added)."""
    root = scan.root
    st_files = [f for f in files if f.endswith(".safetensors")]
    if os.path.lexists(root / INDEX):
        weight_map = _read_index(scan)
        scan.weight_map = weight_map
        if weight_map is None:
            scan.shards_ok = False
            return None
        shards = (
            scan.index_shards if scan.index_shards is not None else sorted(set(weight_map.values()))
        )
        shard_set = set(shards)
        missing = [s for s in shards if not _lexists(root / s)]
        unreadable = _unreadable(root, [s for s in shards if s not in set(missing)])
        extra = [f for f in st_files if f not in shard_set]
        if missing:
            scan.add(
                "shards.present",
                "fail",
                f"{len(missing)} shard(s) named in {INDEX} are missing: {some_of(missing)}. "
                f"Hint: {FETCH_HINT}",
                missing[0],
            )
            scan.shards_ok = False
        elif not unreadable:
            scan.add("shards.present", "pass", f"all {len(shards)} shards named in {INDEX} exist")
        counts = {m.group("n") for s in shards if (m := SHARD_RE.match(s))}
        if counts and (len(counts) > 1 or int(next(iter(counts))) != len(shards)):
            scan.add(
                "shards.count",
                "fail",
                f"shard names say {' / '.join(sorted(counts))} shards but {INDEX} "
                f"references {len(shards)}: a shard is missing from the index",
                INDEX,
            )
            scan.shards_ok = False
        if extra:
            scan.add(
                "shards.extra",
                "fail",
                f"{len(extra)} safetensors file(s) not referenced by {INDEX}: "
                f"{some_of(extra)}. Remove them or restore the index.",
                extra[0],
            )
        return shards, unreadable
    if st_files:
        unreadable = _unreadable(root, st_files)
        if len(st_files) > 1:
            scan.add(
                "index",
                "fail",
                f"{len(st_files)} safetensors files but no {INDEX} to say "
                f"which tensor is where: {some_of(st_files)}",
                INDEX,
            )
            scan.shards_ok = False
        return st_files, unreadable
    other = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".gguf"))]
    if other:
        scan.add(
            "weights",
            "warn",
            f"weights are not safetensors ({some_of(other)}); header checks cover safetensors only",
        )
    elif is_download(root):
        scan.add(
            "weights",
            "fail",
            "no weight files in this downloaded checkpoint: the "
            f"download is incomplete. Hint: {FETCH_HINT}",
        )
    else:
        scan.add(
            "weights",
            "warn",
            "no weight files here: a config-only directory (header checks need the shards)",
        )
    scan.shards_ok = False
    return None


def _read_shard(scan: Scan, s: str, dupes: dict[str, list[str]]) -> bool:
    """Read one shard's header into the scan; False when it is damaged (a check says how)."""
    p = scan.root / s
    try:
        h = load_header(p)
        entries: dict[str, Entry] = h.entries
        probs: list[str] = []
        if not h.sane and entries:
            typed = typed_tensors(p, entries)
            probs = header_problems(
                SafetensorsHeader(p, h.header_len, h.file_size, typed, h.metadata)
            )
            entries = {name: entry_of(t) for name, t in typed.items()}
    except InputError as e:
        hint = f" Hint: {e.hint}" if e.hint else ""
        scan.add("shard.header", "fail", f"{s}: {_strip_path(e.message, p)}{hint}", s)
        return False
    scan.shard_files += 1
    scan.file_bytes += h.file_size
    scan.header_bytes += h.data_start
    if not entries:
        scan.add(
            "shard.header",
            "fail",
            f"{s}: the header lists no tensors (an empty safetensors file). Hint: {FETCH_HINT}",
            s,
        )
        return False
    if probs:
        scan.add("shard.header", "fail", f"{s}: {some_of(probs, 3)}. Hint: {FETCH_HINT}", s)
    tensors = scan.tensors
    wm = scan.weight_map
    if scan.index_agrees and (wm is None or set(map(wm.get, entries)) != {s}):
        scan.index_agrees = False  # _index_agrees then compares tensor by tensor
    if not tensors.keys().isdisjoint(entries):  # stored twice: the first shard's entry stays
        for name in entries:
            if name in tensors:
                dupes.setdefault(name, [scan.shard_of[name]]).append(s)
            else:
                tensors[name] = entries[name]
                scan.shard_of[name] = s
    else:
        tensors.update(entries)
        scan.shard_of.update(dict.fromkeys(entries, s))
    scan.data_bytes += (
        sum(e - b for b, e in (v.data_offsets or (0, 0) for v in entries.values()))
        if probs or not h.sane
        else h.file_size - h.data_start
    )
    return not probs


def scan_headers(root: Path) -> Scan:
    """The structure checks: every shard's header read once, against the index."""
    scan = Scan(root)
    listed = _shard_list(scan, _walk_files(root))
    if listed is None:
        return scan
    shards, unreadable = listed
    scan.shard_names = list(shards)
    if unreadable:
        _unreadable_check(scan, unreadable)

    bad_headers = 0
    dupes: dict[str, list[str]] = {}
    with gc_paused():
        for s in shards:
            if s in unreadable or not _is_file(root / s):
                continue
            if not _read_shard(scan, s, dupes):
                scan.shards_ok = False
                bad_headers += 1
    if not bad_headers and scan.shard_files:
        scan.add(
            "shard.headers",
            "pass",
            f"{scan.shard_files} safetensors header(s) sane: "
            f"{len(scan.tensors):,} tensors, {format_bytes(scan.data_bytes)} of data, "
            "exact sizes",
        )
    if not scan.tensors:
        # the header checks above may each have passed on nothing: say so as the failure it is
        scan.add(
            "weights",
            "fail",
            f"no readable weights: 0 tensors read from "
            f"{scan.shard_files} of {len(shards)} safetensors file(s). Hint: {FETCH_HINT}",
        )
        scan.shards_ok = False
    if dupes:
        shown = [f"{n} in {', '.join(v)}" for n, v in sorted(dupes.items())]
        scan.add("tensors.unique", "fail", f"{len(shown)} tensor(s) stored twice: {some_of(shown)}")
    if scan.weight_map is not None:
        _index_agrees(scan, scan.weight_map, dupes)
    if scan.index_total is not None and scan.shards_ok and scan.index_total != scan.data_bytes:
        scan.add(
            "index.total_size",
            "warn",
            f"{INDEX}: metadata.total_size is "
            f"{scan.index_total:,} but the shards hold {scan.data_bytes:,} bytes of "
            "tensors",
            INDEX,
        )
    return scan


def _index_agrees(scan: Scan, weight_map: dict[str, str], dupes: dict[str, list[str]]) -> None:
    wrong: list[str] = []
    unindexed: list[str] = []
    # all is well when no tensor is stored twice, each shard holds only names the index puts
    # in it, and the counts match (then shard_of and the index are the same mapping)
    if dupes or not scan.index_agrees or len(scan.shard_of) != len(weight_map):
        shard_of = scan.shard_of
        for name, shard in sorted(weight_map.items()):
            where = dupes.get(name) or ([shard_of[name]] if name in shard_of else None)
            if where is None:
                if _is_file(scan.root / shard):
                    wrong.append(f"{name} -> {shard}, which does not have it")
            elif shard not in where:
                wrong.append(f"{name} -> {shard}, but it is in {where[0]}")
        unindexed = sorted(set(shard_of) - set(weight_map))
    if wrong:
        scan.add(
            "index.tensors",
            "fail",
            f"{INDEX}: {len(wrong)} tensor(s) not where the index says: {some_of(wrong)}",
            INDEX,
        )
    if unindexed:
        scan.add(
            "index.tensors",
            "fail",
            f"{len(unindexed)} tensor(s) in shards but not in "
            f"{INDEX}: {some_of([f'{n} ({scan.shard_of[n]})' for n in unindexed])}",
            INDEX,
        )
    if not wrong and not unindexed and scan.shards_ok:
        scan.add(
            "index.tensors",
            "pass",
            f"{INDEX} and the shards agree on all {len(weight_map):,} tensors",
        )


def overlay_manifest(root: Path) -> Manifest | None:
    """The overlay manifest of ROOT; None when there is none or it is damaged (overlay_checks
    reports a damaged one). Imports the overlay module only when there is a manifest."""
    from qwenprep.model.manifest import manifest_path

    if not _lexists(manifest_path(root)):
        return None
    from qwenprep.model.manifest import read_manifest

    try:
        return read_manifest(root)
    except InputError:
        return None
