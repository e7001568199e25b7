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
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterable

from qwenprep.checkpoint import CONFIG, INDEX, Checkpoint
from qwenprep.errors import InputError
from qwenprep.hashing import (
    RECORD_DIR,
    Algorithm,
    HashJob,
    NotRegularFile,
    ProgressFn,
    RecordError,
    algorithm_for_etag,
    hash_files,
    not_regular,
    read_record,
    read_regular_text,
    record_path,
    write_record,
)
from qwenprep.hub import local_dir_etag, snapshot_blobs, snapshot_repo
from qwenprep.jsonio import loads_located
from qwenprep.layouts import _is_moe_layer, module_in
from qwenprep.model import ModelView
from qwenprep.report import Check, Report
from qwenprep.safetensors_io import (
    DTYPE_BYTES,
    FLOAT_DTYPES,
    SafetensorsHeader,
    TensorInfo,
    read_header,
)
from qwenprep.sizes import format_bytes

SHARD_RE = re.compile(r"^(?P<stem>.+)-(?P<k>\d{5})-of-(?P<n>\d{5})\.safetensors$")
LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")
EXPERT_RE = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.")
SKIP_DIRS = {RECORD_DIR, ".cache", ".git"}
FETCH_HINT = "re-download the damaged file(s): qwenprep fetch ORG/NAME"
MAX_LISTED = 5
# Above these, tensor names are not compared one by one (the 480B: 62 layers x 160 experts).
MAX_LAYERS = 10_000
MAX_EXPERT_SLOTS = 100_000


def _some(items: list[str], n: int = MAX_LISTED) -> str:
    return "; ".join(items[:n]) + (f"; ... ({len(items) - n} more)" if len(items) > n else "")


def unsafe_name(name: object) -> str | None:
    """Why an index file name may not be opened, or None when it is a plain relative name."""
    if not isinstance(name, str) or not name:
        return "not a non-empty string"
    if "\0" in name or "\\" in name:
        return "contains a NUL or backslash"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or \
            PureWindowsPath(name).drive:
        return "is an absolute path"
    if any(part == ".." for part in PurePosixPath(name).parts):
        return "climbs out of the checkpoint (..)"
    return None


def unsafe_shard_names(values: Iterable[object]) -> dict[str, str]:
    """{shown name: reason} for every weight_map value that may not be opened. Values may be
    anything JSON holds; each distinct name is judged once (60k tensors name ~50 shards)."""
    bad: dict[str, str] = {}
    seen: set[str] = set()
    for shard in values:
        if isinstance(shard, str):
            if shard in seen:
                continue
            seen.add(shard)
        why = unsafe_name(shard)
        if why:
            bad[shard if isinstance(shard, str) else _short(json.dumps(shard), 60)] = why
    return bad


@dataclass
class _Scan:
    """What the header level found, for the checks and the counters."""

    root: Path
    checks: list[Check] = field(default_factory=list)
    # tensor name -> (info, shard file)
    tensors: dict[str, tuple[TensorInfo, str]] = field(default_factory=dict)
    shards_ok: bool = True  # every expected shard present and parsed
    shard_names: list[str] = field(default_factory=list)  # what the index (or the dir) names
    shard_files: int = 0
    file_bytes: int = 0
    data_bytes: int = 0
    header_bytes: int = 0
    index_total: int | None = None

    def add(self, id: str, status: str, message: str, path: str | None = None) -> None:
        self.checks.append(Check(id, status, message, path))  # type: ignore[arg-type]


def _rel(root: Path, p: Path) -> str:
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


def _short(x: object, limit: int = 80) -> str:
    """str(x) cut to a readable length (hostile headers hold 4000-digit numbers)."""
    text = str(x)
    return text if len(text) <= limit else text[:limit - 20] + f"... ({len(text)} chars)"


def _is_file(p: Path) -> bool:
    """Path.is_file that says False for names the OS refuses (too long, not encodable)."""
    try:
        return p.is_file()
    except (OSError, ValueError):
        return False


def _header_problems(h: SafetensorsHeader) -> list[str]:
    probs: list[str] = []
    spans: list[tuple[int, int, str]] = []
    for t in h.tensors.values():
        width = DTYPE_BYTES.get(t.dtype)
        if width is None:
            probs.append(f"tensor {t.name}: unknown dtype {t.dtype!r}")
            continue
        # exact integer bits: shapes may be hostile (10**200 x 10**200) and widths fractional
        # (F4 is 4 bits, F6 6); a Fraction per tensor cost 0.3 s on the 480B's 60k tensors
        bits = math.prod(t.shape) * round(width * 8)
        want: int | Fraction = bits // 8 if bits % 8 == 0 else Fraction(bits, 8)
        if t.start < 0 or t.end < t.start:
            probs.append(f"tensor {t.name}: data_offsets [{t.start}, {t.end}] are not a span")
            continue
        if want != t.nbytes:
            probs.append(f"tensor {t.name}: {t.dtype} x {_short(list(t.shape))} = "
                         f"{_short(want)} bytes but data_offsets span {t.nbytes}")
        spans.append((t.start, t.end, t.name))
    spans.sort()
    cursor, prev = 0, None
    for start, end, name in spans:
        if start < cursor:
            probs.append(f"tensors {prev} and {name} overlap (bytes {start}..{min(cursor, end)})")
        elif start > cursor:
            probs.append(f"{start - cursor} unindexed bytes before tensor {name} (a hole)")
        if end >= cursor:
            cursor, prev = end, name
    data_area = h.file_size - h.data_start
    if cursor > data_area:
        probs.append(f"truncated: the header indexes {cursor} data bytes, the file holds "
                     f"{data_area} (file is {h.file_size} bytes, should be "
                     f"{h.data_start + cursor})")
    elif cursor < data_area:
        probs.append(f"{data_area - cursor} trailing bytes after the last tensor (file is "
                     f"{h.file_size} bytes, should be {h.data_start + cursor})")
    return probs


def _read_index(scan: _Scan) -> dict[str, str] | None:
    """The index's weight_map (tensor -> shard name), or None after a failed check."""
    p = scan.root / INDEX
    try:
        obj = loads_located(read_regular_text(p), INDEX)
    except NotRegularFile as e:
        scan.add("index", "fail", f"{INDEX}: {e.strerror}, so it cannot be read as the index. "
                 "Restore the index from the original release.", INDEX)
        return None
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        scan.add("index", "fail", f"{INDEX}: cannot read ({why}). Restore the index from the "
                 "original release.", INDEX)
        return None
    except InputError as e:
        scan.add("index", "fail", e.message, INDEX)
        return None
    wm = obj.get("weight_map") if isinstance(obj, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(k, str) for k in wm):
        scan.add("index", "fail", f"{INDEX}: no weight_map object mapping tensor names to shard "
                 "files.", INDEX)
        return None
    if not wm:
        scan.add("index", "fail", f"{INDEX}: weight_map is empty: the index names no shard, so "
                 f"there are no weights to check. Hint: {FETCH_HINT}", INDEX)
        return None
    bad = unsafe_shard_names(wm.values())
    if bad:
        scan.add("index.paths", "fail",
                 f"{INDEX}: weight_map names file(s) outside the checkpoint, not opened: "
                 + _some([f"{s!r} {w}" for s, w in sorted(bad.items())])
                 + ". Restore the index from the original release.", INDEX)
        scan.shards_ok = False
    else:
        scan.add("index.paths", "pass", f"{INDEX}: all {len(set(wm.values()))} shard names stay "
                 "inside the checkpoint")
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    total = meta.get("total_size") if isinstance(meta, dict) else None
    scan.index_total = total if isinstance(total, int) and not isinstance(total, bool) else None
    return {k: v for k, v in wm.items() if isinstance(v, str) and v not in bad}


def _is_download(root: Path) -> bool:
    """An HF cache snapshot, or a directory huggingface_hub or qwenprep fetched into."""
    return snapshot_repo(root) is not None or (root / ".cache" / "huggingface").is_dir() \
        or (root / ".qwenprep" / "fetch.json").is_file()


def _scan_headers(root: Path) -> _Scan:
    scan = _Scan(root)
    files = _walk_files(root)
    st_files = [f for f in files if f.endswith(".safetensors")]
    weight_map: dict[str, str] | None = None
    unreadable: dict[str, str] = {}  # shard -> why it cannot be opened as a file
    if os.path.lexists(root / INDEX):
        weight_map = _read_index(scan)
        if weight_map is None:
            scan.shards_ok = False
            return scan
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not _lexists(root / s)]
        unreadable = _unreadable(root, [s for s in shards if s not in set(missing)])
        extra = [f for f in st_files if f not in set(shards)]
        if missing:
            scan.add("shards.present", "fail",
                     f"{len(missing)} shard(s) named in {INDEX} are missing: {_some(missing)}. "
                     f"Hint: {FETCH_HINT}", missing[0])
            scan.shards_ok = False
        elif not unreadable:
            scan.add("shards.present", "pass", f"all {len(shards)} shards named in {INDEX} exist")
        counts = {m.group("n") for s in shards if (m := SHARD_RE.match(s))}
        if counts and (len(counts) > 1 or int(next(iter(counts))) != len(shards)):
            scan.add("shards.count", "fail",
                     f"shard names say {' / '.join(sorted(counts))} shards but {INDEX} "
                     f"references {len(shards)}: a shard is missing from the index", INDEX)
            scan.shards_ok = False
        if extra:
            scan.add("shards.extra", "fail",
                     f"{len(extra)} safetensors file(s) not referenced by {INDEX}: "
                     f"{_some(extra)}. Remove them or restore the index.", extra[0])
    elif st_files:
        shards = st_files
        unreadable = _unreadable(root, shards)
        if len(st_files) > 1:
            scan.add("index", "fail", f"{len(st_files)} safetensors files but no {INDEX} to say "
                     f"which tensor is where: {_some(st_files)}", INDEX)
            scan.shards_ok = False
    else:
        other = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".gguf"))]
        if other:
            scan.add("weights", "warn", f"weights are not safetensors ({_some(other)}); header "
                     "checks cover safetensors only")
        elif _is_download(root):
            scan.add("weights", "fail", "no weight files in this downloaded checkpoint: the "
                     f"download is incomplete. Hint: {FETCH_HINT}")
        else:
            scan.add("weights", "warn", "no weight files here: a config-only directory "
                     "(header checks need the shards)")
        scan.shards_ok = False
        return scan
    scan.shard_names = list(shards)
    if unreadable:
        _unreadable_check(scan, unreadable)

    bad_headers = 0
    located: dict[str, list[str]] = {}
    for s in shards:
        p = root / s
        if s in unreadable or not _is_file(p):
            continue
        try:
            h = read_header(p)
        except InputError as e:
            hint = f" Hint: {e.hint}" if e.hint else ""
            scan.add("shard.header", "fail", f"{s}: {_strip_path(e.message, p)}{hint}", s)
            scan.shards_ok = False
            bad_headers += 1
            continue
        scan.shard_files += 1
        scan.file_bytes += h.file_size
        scan.header_bytes += h.data_start
        if not h.tensors:
            scan.add("shard.header", "fail", f"{s}: the header lists no tensors (an empty "
                     f"safetensors file). Hint: {FETCH_HINT}", s)
            scan.shards_ok = False
            bad_headers += 1
            continue
        probs = _header_problems(h)
        if probs:
            scan.add("shard.header", "fail", f"{s}: {_some(probs, 3)}. Hint: {FETCH_HINT}", s)
            scan.shards_ok = False
            bad_headers += 1
        for name, t in h.tensors.items():
            located.setdefault(name, []).append(s)
            scan.tensors.setdefault(name, (t, s))
            scan.data_bytes += t.nbytes
    if not bad_headers and scan.shard_files:
        scan.add("shard.headers", "pass", f"{scan.shard_files} safetensors header(s) sane: "
                 f"{len(scan.tensors):,} tensors, {format_bytes(scan.data_bytes)} of data, "
                 "exact sizes")
    if not scan.tensors:
        # the header checks above may each have passed on nothing: say so as the failure it is
        scan.add("weights", "fail", f"no readable weights: 0 tensors read from "
                 f"{scan.shard_files} of {len(shards)} safetensors file(s). Hint: {FETCH_HINT}")
        scan.shards_ok = False

    dupes = [f"{n} in {', '.join(v)}" for n, v in sorted(located.items()) if len(v) > 1]
    if dupes:
        scan.add("tensors.unique", "fail", f"{len(dupes)} tensor(s) stored twice: {_some(dupes)}")
    if weight_map is not None:
        wrong = []
        for name, shard in sorted(weight_map.items()):
            where = located.get(name)
            if where is None:
                if _is_file(root / shard):
                    wrong.append(f"{name} -> {shard}, which does not have it")
            elif shard not in where:
                wrong.append(f"{name} -> {shard}, but it is in {where[0]}")
        unindexed = sorted(set(located) - set(weight_map))
        if wrong:
            scan.add("index.tensors", "fail", f"{INDEX}: {len(wrong)} tensor(s) not where the "
                     f"index says: {_some(wrong)}", INDEX)
        if unindexed:
            scan.add("index.tensors", "fail", f"{len(unindexed)} tensor(s) in shards but not in "
                     f"{INDEX}: {_some([f'{n} ({located[n][0]})' for n in unindexed])}", INDEX)
        if not wrong and not unindexed and scan.shards_ok:
            scan.add("index.tensors", "pass", f"{INDEX} and the shards agree on all "
                     f"{len(weight_map):,} tensors")
    if scan.index_total is not None and scan.shards_ok and scan.index_total != scan.data_bytes:
        scan.add("index.total_size", "warn", f"{INDEX}: metadata.total_size is "
                 f"{scan.index_total:,} but the shards hold {scan.data_bytes:,} bytes of "
                 "tensors", INDEX)
    return scan


def _lexists(p: Path) -> bool:
    try:
        return os.path.lexists(p)
    except (OSError, ValueError):
        return False


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
                out[s] = (f"links to the blob {target.name}, which is missing from the cache: "
                          "the download is incomplete")
            else:
                out[s] = f"a link to {target}, which does not exist (a dangling link)"
            continue
        except (OSError, ValueError) as e:  # ELOOP, ENAMETOOLONG, EACCES on a directory, ...
            out[s] = f"cannot be opened ({getattr(e, 'strerror', None) or e})"
            continue
        if not stat.S_ISREG(mode):
            out[s] = f"{not_regular(p) or 'not a regular file'}, so not a safetensors shard"
    return out


def _unreadable_check(scan: _Scan, unreadable: dict[str, str]) -> None:
    dangling = any("(a dangling link)" in why for why in unreadable.values())
    hint = ("restore what it points to, or " if dangling else "") + FETCH_HINT
    items = [f"{s}: {why}" for s, why in sorted(unreadable.items())]
    first = min(unreadable)
    if len(items) == 1:
        scan.add("shards.present", "fail", f"{items[0]}. Hint: {hint}", first)
    else:
        scan.add("shards.present", "fail", f"{len(items)} shard(s) cannot be read: "
                 f"{_some(items)}. Hint: {hint}", first)
    scan.shards_ok = False


def _strip_path(message: str, p: Path) -> str:
    """read_header's messages start with the absolute path; we name the file relatively."""
    s = str(p)
    return message[len(s) + 2:] if message.startswith(s + ": ") else message


def _fp8_checks(scan: _Scan, config: dict[str, Any]) -> None:
    qc = config.get("quantization_config")
    fp8 = {n: v for n, v in scan.tensors.items() if v[0].dtype.startswith("F8_")}
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    if method != "fp8":
        if fp8 and method is None:
            n, (_, shard) = next(iter(sorted(fp8.items())))
            scan.add("fp8.config", "fail", f"{len(fp8):,} FP8 tensors (e.g. {n} in {shard}) but "
                     "config.json has no fp8 quantization_config", CONFIG)
        elif method is not None:
            scan.add("fp8", "skip", f"quant_method {method!r}: FP8 block structure not checked")
        else:
            scan.add("fp8", "skip", "not an FP8 checkpoint (no quantization_config, no FP8 "
                     "tensors)")
        return
    assert isinstance(qc, dict)
    if not scan.tensors:
        return
    if not fp8:
        scan.add("fp8.config", "fail", "config.json says quant_method fp8 but no tensor is FP8",
                 CONFIG)
        return
    block = qc.get("weight_block_size")
    not_convert = frozenset(m for m in qc.get("modules_to_not_convert") or [] if isinstance(m, str))
    bad_scale: list[tuple[str, str]] = []  # (message, shard file)
    for name, (t, shard) in sorted(fp8.items()):
        module = name.rsplit(".", 1)[0]
        if not name.endswith(".weight"):
            bad_scale.append((f"{shard}: {name} is FP8 but not a .weight", shard))
            continue
        sname = module + ".weight_scale_inv"
        sv = scan.tensors.get(sname)
        if sv is None:
            bad_scale.append((f"{shard}: FP8 weight {name} has no weight_scale_inv", shard))
            continue
        s = sv[0]
        if s.dtype not in FLOAT_DTYPES:
            bad_scale.append((f"{sv[1]}: {sname} is {s.dtype}, not floating point", sv[1]))
        if isinstance(block, list) and len(block) == 2 and len(t.shape) == 2:
            want = (-(-t.shape[0] // int(block[0])), -(-t.shape[1] // int(block[1])))
            if s.shape != want:
                bad_scale.append((f"{sv[1]}: {sname} has shape {list(s.shape)}, expected "
                                  f"{list(want)} for {list(t.shape)} in {block} blocks", sv[1]))
    if bad_scale:
        scan.add("fp8.scales", "fail", f"{len(bad_scale)} FP8 weight(s) without a matching "
                 f"scale: {_some([m for m, _ in bad_scale])}", bad_scale[0][1])
    else:
        scan.add("fp8.scales", "pass", f"{len(fp8):,} FP8 weights each have a floating-point "
                 f"weight_scale_inv of block shape {block}")
    skipped = {n for n in scan.tensors if module_in(n.rsplit(".", 1)[0], not_convert)}
    quantised_skips = [(f"{v[1]}: {n}", v[1]) for n, v in sorted(fp8.items()) if n in skipped]
    if quantised_skips:
        scan.add("fp8.not_convert", "fail", f"{len(quantised_skips)} tensor(s) of "
                 f"modules_to_not_convert are FP8: {_some([m for m, _ in quantised_skips])}",
                 quantised_skips[0][1])
    else:
        scan.add("fp8.not_convert", "pass",
                 f"{len(skipped):,} tensors of modules_to_not_convert are not FP8")
    unquantised = [n for n, (t, _) in sorted(scan.tensors.items())
                   if n.endswith("_proj.weight") and not t.dtype.startswith("F8_")
                   and n not in skipped]
    if unquantised:
        scan.add("fp8.coverage", "warn", f"{len(unquantised)} projection weight(s) are not FP8 "
                 f"and not in modules_to_not_convert: {_some(unquantised)}")


def _name_checks(scan: _Scan, config: dict[str, Any]) -> None:
    if not scan.tensors:
        return
    if not scan.shards_ok:
        scan.add("tensors.names", "skip", "tensor names not compared: shards above are missing "
                 "or damaged")
        return
    try:
        layers = int(config["num_hidden_layers"])
    except (KeyError, TypeError, ValueError):
        scan.add("tensors.layers", "skip", "config.json has no num_hidden_layers")
        return
    found = {int(m.group(1)) for n in scan.tensors if (m := LAYER_RE.match(n))}
    experts = int(config.get("num_experts") or 0)
    if layers > MAX_LAYERS or layers * max(experts, 1) > MAX_EXPERT_SLOTS:
        # listed one by one, such counts would take minutes and gigabytes to compare
        scan.add("tensors.layers", "fail", f"config.json says num_hidden_layers {layers} and "
                 f"num_experts {experts}; the shards hold {len(found)} layers and "
                 f"{len(scan.tensors):,} tensors", CONFIG)
        return
    missing = sorted(set(range(layers)) - found)
    extra = sorted(found - set(range(layers)))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"layer(s) {_ranges(missing)} missing")
        if extra:
            parts.append(f"layer(s) {_ranges(extra)} beyond the config")
        scan.add("tensors.layers", "fail", f"config.json says num_hidden_layers {layers}; the "
                 f"shards have {len(found)} layers: {', '.join(parts)}", CONFIG)
    else:
        scan.add("tensors.layers", "pass", f"layers 0..{layers - 1} present, as config.json says")
    try:
        moe_layers = {i for i in range(layers) if _is_moe_layer(config, i)}
    except ValueError as e:
        scan.add("tensors.experts", "skip", f"experts not compared: config.json {e}. Hint: "
                 f"qwenprep validate {scan.root}", CONFIG)
        return
    per_layer: dict[int, set[int]] = {}
    for n in scan.tensors:
        if m := EXPERT_RE.match(n):
            per_layer.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if experts or per_layer:
        want = set(range(experts))
        wrong = [f"layer {i}: {len(per_layer.get(i, set()))} experts"
                 + (f" (max index {max(per_layer[i])})" if per_layer.get(i) else "")
                 for i in sorted(set(range(layers)) | set(per_layer))
                 if per_layer.get(i, set()) != (want if i in moe_layers else set())]
        if wrong:
            scan.add("tensors.experts", "fail", f"config.json says num_experts {experts}: "
                     f"{_some(wrong)}", CONFIG)
        else:
            scan.add("tensors.experts", "pass", f"{experts} experts in each MoE layer")
    from qwenprep.families import lookup

    family = lookup(config.get("model_type"))
    if family is not None and family.tensors is not None:
        try:
            expected = {s.name: s for s in family.tensors(ModelView(config))}
        except (KeyError, TypeError, ValueError) as e:
            scan.add("tensors.names", "skip", f"cannot derive tensor names from config.json "
                     f"({e!r})")
            return
        absent = sorted(set(expected) - set(scan.tensors))
        unknown = sorted(set(scan.tensors) - set(expected))
        shapes = [f"{n} ({scan.tensors[n][1]}): {list(scan.tensors[n][0].shape)}, config implies "
                  f"{list(expected[n].shape)}" for n in sorted(set(expected) & set(scan.tensors))
                  if not n.endswith("weight_scale_inv")
                  and scan.tensors[n][0].shape != expected[n].shape]
        if absent:
            scan.add("tensors.names", "fail", f"{len(absent):,} tensor(s) config.json implies "
                     f"are in no shard: {_some(absent)}", CONFIG)
        else:
            scan.add("tensors.names", "pass", f"all {len(expected):,} tensors config.json implies "
                     "are present")
        if unknown:
            scan.add("tensors.unknown", "warn", f"{len(unknown)} tensor(s) config.json does not "
                     f"imply: {_some(unknown)}")
        if shapes:
            scan.add("tensors.shapes", "fail", f"{len(shapes)} tensor shape(s) disagree with "
                     f"config.json: {_some(shapes)}", CONFIG)


def _ranges(xs: list[int]) -> str:
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}..{xs[j]}")
        i = j + 1
    return ", ".join(out[:8]) + (" ..." if len(out) > 8 else "")


def _read_config(root: Path, scan: _Scan) -> dict[str, Any] | None:
    why = not_regular(root / CONFIG)
    if why:  # a FIFO would block the read below for ever
        scan.add("config", "fail", f"{CONFIG}: {why}, so it cannot be read. Restore config.json "
                 "(qwenprep revert PATH restores one edited in place).", CONFIG)
        return None
    try:
        return Checkpoint(root).read_config()
    except InputError as e:
        scan.add("config", "fail", e.message, CONFIG)
        return None


def _overlay_manifest(root: Path) -> dict[str, Any] | None:
    try:
        from qwenprep.overlay import read_manifest
    except ImportError:  # pragma: no cover - overlay ships with the package
        return None
    try:
        return read_manifest(root)
    except InputError:
        return None


def _config_usable(scan: _Scan, config: dict[str, Any]) -> bool:
    """Whether config.json's numbers can be held against the tensors: a config that fails its
    schema (qwenprep.validation) gives one skip check instead of guesses from broken values."""
    if not scan.tensors:
        return True  # nothing to compare; the checks below say nothing either
    from qwenprep.validation import schema_problems

    problems = schema_problems(config)
    if not problems:
        return True
    scan.add("tensors.names", "skip", "tensor names, counts and FP8 structure not compared with "
             f"config.json: it fails its schema ({_some(problems, 2)}). Hint: qwenprep validate "
             f"{scan.root} lists every problem", CONFIG)
    return False


def _spelled_as_v4(config: dict[str, Any]) -> dict[str, Any]:
    """config with the transformers 4 names the checks read, where only transformers 5's
    spelling is there: num_local_experts -> num_experts, dtype -> torch_dtype (a copy; a
    key given both ways keeps its v4 value)."""
    out = dict(config)
    for v4, v5 in (("num_experts", "num_local_experts"), ("torch_dtype", "dtype")):
        if out.get(v4) is None and out.get(v5) is not None:
            out[v4] = out[v5]
    return out


def _header_scan(root: Path) -> _Scan:
    scan = _scan_headers(root)
    config = _read_config(root, scan)
    if config is not None and _config_usable(scan, config):
        config = _spelled_as_v4(config)
        _fp8_checks(scan, config)
        _name_checks(scan, config)
    from qwenprep.overlay import manifest_path

    if _overlay_manifest(root) is not None or manifest_path(root).exists():
        from qwenprep.overlay import overlay_checks  # reports a damaged manifest as a FAIL

        scan.checks.extend(overlay_checks(root))
    return scan


def header_checks(path: Path) -> list[Check]:
    """Header-level checks only: reads config.json, the index and each shard's header."""
    return _header_scan(Path(path)).checks


# ---------------------------------------------------------------- deep


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


def _source_root(manifest: dict[str, Any] | None) -> Path | None:
    src = (manifest.get("source") or {}).get("path") if manifest is not None else None
    return Path(src) if isinstance(src, str) and src else None


def _trusted_roots(root: Path, manifest: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(real path, what it is) of the places a checkpoint's files may really live: the
    directory itself, its HF repo folder (models--ORG--NAME: the snapshot links into blobs/),
    and an overlay's recorded source (and that source's repo folder)."""
    out: list[tuple[str, str]] = []
    for base, what in ((root, "the checkpoint directory"),
                       (_source_root(manifest), "the overlay's source")):
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


def _deep_names(root: Path, scan: _Scan, roots: list[tuple[str, str]],
                notes: list[Check]) -> list[str]:
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
                notes.append(Check("deep.outside", "warn", f"{name}/: a linked directory "
                                   f"resolving to {real}, outside {_where(roots)}; only the "
                                   f"files {INDEX} references through it are hashed", name))
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        names.update((rel_dir / fn).as_posix() for fn in filenames)
    return sorted(names)


def _expectations(root: Path, names: list[str], manifest: dict[str, Any] | None,
                  records: list[tuple[Path, dict[str, dict[str, Any]]]],
                  notes: list[Check]) -> list[_Expect]:
    snapshot = snapshot_blobs(root) is not None
    out: list[_Expect] = []
    for name in names:
        p = root / name
        if manifest is not None and name == CONFIG:
            notes.append(Check("deep.config", "skip", "config.json is the overlay's patched one "
                               "and has no content hash; the source config's sha256 is checked "
                               "by overlay.source", name))
            continue
        etag = _hf_blob_etag(p)
        if etag:
            out.append(_Expect(name, algorithm_for_etag(etag), etag, "its HF cache blob name"))
            continue
        if snapshot:
            notes.append(Check("deep.hash", "fail", f"{name}: not a link into the cache's blobs "
                               "(replaced or edited in place?), so its content cannot be "
                               "checked. Hint: qwenprep revert PATH restores config.json; "
                               f"otherwise {FETCH_HINT}", name))
            continue
        found = None
        for r, rec in records:
            etag = _download_etag(r, name)
            if etag:
                found = _Expect(name, algorithm_for_etag(etag), etag,
                                "the hub's download metadata")
                break
            entry = rec.get(name)
            if entry and isinstance(entry.get("sha256"), str):
                found = _Expect(name, "sha256", entry["sha256"].lower(),
                                f"the hash record {_rel(root, record_path(r))}")
                break
        out.append(found or _Expect(name, None, None, "none"))
    return out


def _read_records(root: Path, manifest: dict[str, Any] | None
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
            what = _rel(root, record_path(r))
            why = e.strerror or "unreadable"
            head = (f"{what}: {why}, so the hash record cannot be read" if
                    why.startswith("not a regular file") else
                    f"{what}: not a readable hash record ({why})")
            return Check("deep.record", "fail", f"{head}; it was left alone and nothing was "
                         "compared or recorded. Remove it, then run qwenprep verify --deep "
                         "again to record afresh.", what)
    return out


def _deep_checks(root: Path, scan: _Scan, *, progress: ProgressFn | None,
                 workers: int | None, record: bool = False,
                 unverified: dict[str, dict[str, Any]] | None = None
                 ) -> tuple[list[Check], int]:
    manifest = _overlay_manifest(root)
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
            checks.append(Check("deep.outside", "warn", f"{e.name}: resolves to {real}, outside "
                                f"{_where(roots)}; it is hashed, but whoever can write there "
                                "can change this checkpoint", e.name))
    jobs = [HashJob(root / e.name, e.algorithm or "sha256") for e in expects]
    results = hash_files(jobs, workers=workers, progress=progress)
    matched: dict[str, int] = {}
    to_record: dict[str, dict[str, Any]] = {}
    hashed = 0
    for e, r in zip(expects, results, strict=True):
        if r.not_regular:
            checks.append(Check("deep.hash", "fail", f"{e.name}: {r.error}, so there is nothing "
                                "to hash; remove it, or put the real file in its place", e.name))
            continue
        if r.hexdigest is None:
            checks.append(Check("deep.hash", "fail", f"{e.name}: cannot read ({r.error}). "
                                f"Hint: {FETCH_HINT}", e.name))
            continue
        hashed += r.size
        if e.digest is None:
            to_record[e.name] = {"size": r.size, "sha256": r.hexdigest}
        elif r.hexdigest == e.digest:
            matched[e.source] = matched.get(e.source, 0) + 1
        else:
            checks.append(Check("deep.hash", "fail", f"{e.name}: content does not match "
                                f"{e.source} ({e.algorithm} {r.hexdigest[:16]}... expected "
                                f"{e.digest[:16]}...). Hint: {FETCH_HINT}", e.name))
    if matched:
        by = ", ".join(f"{n} by {s}" for s, n in sorted(matched.items()))
        checks.insert(0, Check("deep.hash", "pass", f"{sum(matched.values())} file(s) match "
                               f"their content hash ({by})"))
    if unverified is not None and not record:
        unverified.update(to_record)
    if to_record and not record:
        shown = "; ".join(f"{n} sha256 {v['sha256']}" for n, v in sorted(to_record.items()))
        checks.append(Check("deep.record", "warn", f"{len(to_record)} file(s) have nothing to "
                            "compare against (no HF cache blob name, no download metadata, no "
                            "hash record); pass --record to keep these hashes for next time. "
                            f"Computed: {shown}"))
    elif to_record:
        try:
            rp = write_record(root, to_record)
            checks.append(Check("deep.record", "warn", f"recorded the sha256 of "
                                f"{len(to_record)} file(s) in {_rel(root, rp)}; nothing to "
                                "compare yet (the next verify --deep compares against it)",
                                _rel(root, rp)))
        except OSError as e:
            checks.append(Check("deep.record", "warn", f"{len(to_record)} file(s) have no known "
                                f"content hash and the record could not be written ({e})"))
    return checks, hashed


def verify_checkpoint(path: Path, *, deep: bool = False, engine: bool = False,
                      vllm_python: str | None = None, progress: ProgressFn | None = None,
                      workers: int | None = None, record: bool = False) -> Report:
    """Header-level checks; with deep, every file against its content hash; with engine,
    vLLM's own read-back of the config (in a subprocess of vllm_python). A file with nothing to
    compare against is reported with its hash (extra["unverified"]) and written to the hash
    record only with record=True."""
    root = Path(path)
    scan = _header_scan(root)
    report = Report("verify", list(scan.checks))
    hashed = 0
    if deep:
        unverified: dict[str, dict[str, Any]] = {}
        deep_checks, hashed = _deep_checks(root, scan, progress=progress, workers=workers,
                                           record=record, unverified=unverified)
        report.extend(deep_checks)
    if engine:
        from qwenprep.engine import readback_checks

        report.extend(readback_checks(root, python=vllm_python))
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
