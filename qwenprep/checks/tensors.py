"""The tensor checks of verify: FP8 block structure against quantization_config, and tensor
names, layer and expert counts and shapes against config.json (the family's layout).

They read the header entries the scan loaded once (integrity_scan.Scan) and work on whole
columns where all is well (sorted names, bisect, set and list comparisons at C speed); the
per-tensor loops that name what is wrong run only when something is.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from itertools import compress, repeat
from operator import add, attrgetter, itemgetter, not_
from pathlib import Path
from typing import Any, NamedTuple

from qwenprep.checks.loader_names import (
    EXPERTS,
    experts_as_stored,
    optional_checks,
    renamed,
    split_optional,
    stacked_prefixes,
    under_prefix,
)
from qwenprep.checks.scan import Scan, gc_paused, overlay_manifest, scan_headers, some_of
from qwenprep.errors import InputError
from qwenprep.model.checkpoint import CONFIG, Checkpoint
from qwenprep.model.layouts import is_moe_layer, module_in
from qwenprep.model.view import ModelView
from qwenprep.util.hashing import not_regular
from qwenprep.util.report import Check
from qwenprep.util.safetensors_io import FLOAT_DTYPES, Entry

# Above these, tensor names are not compared one by one (the 480B: 62 layers x 160 experts).
MAX_LAYERS = 10_000
MAX_EXPERT_SLOTS = 100_000
_SHAPE = attrgetter("shape")
_DTYPE = attrgetter("dtype")
_LESS_WEIGHT = itemgetter(slice(None, -len("weight")))  # "m.weight" -> "m."
_SPEC_NAME, _SPEC_SHAPE = itemgetter(0), itemgetter(2)  # of a layouts.TensorSpec


def _tokens(
    names: list[str], prefix: str, lo: int = 0, hi: int | None = None
) -> list[tuple[str, int, int, int]]:
    """(token, int(token), start, end) for each distinct token N of the names in sorted
    NAMES[lo:hi] that match `PREFIX(\\d+)\\.` (re's \\d: any Unicode decimal digit, which
    int() reads alike; "01" and "1" are two tokens of one number), with the range of the
    names under it. One bisect per distinct token, not a regex per name."""
    hi = len(names) if hi is None else hi
    i = bisect_left(names, prefix, lo, hi)
    end = bisect_left(names, prefix[:-1] + chr(ord(prefix[-1]) + 1), i, hi)
    out: list[tuple[str, int, int, int]] = []
    n = len(prefix)
    while i < end:
        name = names[i]
        dot = name.find(".", n)
        if dot < 0:
            i += 1
            continue
        token = name[n:dot]
        nxt = bisect_left(names, name[:dot] + "/", i + 1, end)
        if token.isdecimal():  # not empty either
            out.append((token, int(token), i, nxt))
        i = nxt
    return out


def _under(names: list[str], modules: frozenset[str]) -> set[str]:
    """The names in sorted NAMES whose module (the name less its last part) is one of MODULES
    or inside one (layouts.module_in): bisect finds the names starting with `module.` for each
    of the few modules, module_in confirms each of those."""
    out: set[str] = set()
    for m in modules:
        lo = bisect_left(names, m)  # m itself (a name without a dot is its own module)
        hi = bisect_left(names, m + "/", lo)  # ... and every name starting with "m."
        out.update(
            n
            for n in names[lo:hi]
            if (n == m or n.startswith(m + ".")) and module_in(n.rsplit(".", 1)[0], modules)
        )
    return out


def fp8_checks(scan: Scan, config: dict[str, Any], names: list[str]) -> None:
    """NAMES: scan.tensors' names, sorted."""
    tensors, shard_of = scan.tensors, scan.shard_of
    qc = config.get("quantization_config")
    order = _Ordered(list(tensors), list(tensors.values()))  # the headers' order
    is8 = list(map(str.startswith, map(_DTYPE, order.entries), repeat("F8_")))
    fp8 = sorted(compress(order.names, is8))
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    if method != "fp8":
        if fp8 and method is None:
            n = fp8[0]
            scan.add(
                "fp8.config",
                "fail",
                f"{len(fp8):,} FP8 tensors (e.g. {n} in "
                f"{shard_of[n]}) but config.json has no fp8 quantization_config",
                CONFIG,
            )
        elif method is not None:
            scan.add("fp8", "skip", f"quant_method {method!r}: FP8 block structure not checked")
        else:
            scan.add(
                "fp8", "skip", "not an FP8 checkpoint (no quantization_config, no FP8 tensors)"
            )
        return
    assert isinstance(qc, dict)
    if not tensors:
        return
    if not fp8:
        scan.add(
            "fp8.config", "fail", "config.json says quant_method fp8 but no tensor is FP8", CONFIG
        )
        return
    block = qc.get("weight_block_size")
    not_convert = frozenset(m for m in qc.get("modules_to_not_convert") or [] if isinstance(m, str))
    at = list(compress(range(len(is8)), is8))  # where the FP8 tensors are in that order
    bad_scale = [] if _scales_ok(tensors, order, at, block) else _bad_scales(scan, fp8, block)
    if bad_scale:
        scan.add(
            "fp8.scales",
            "fail",
            f"{len(bad_scale)} FP8 weight(s) without a matching "
            f"scale: {some_of([m for m, _ in bad_scale])}",
            bad_scale[0][1],
        )
    else:
        scan.add(
            "fp8.scales",
            "pass",
            f"{len(fp8):,} FP8 weights each have a floating-point "
            f"weight_scale_inv of block shape {block}",
        )
    skipped = _under(names, not_convert)
    quantised_skips = [(f"{shard_of[n]}: {n}", shard_of[n]) for n in fp8 if n in skipped]
    if quantised_skips:
        scan.add(
            "fp8.not_convert",
            "fail",
            f"{len(quantised_skips)} tensor(s) of "
            f"modules_to_not_convert are FP8: {some_of([m for m, _ in quantised_skips])}",
            quantised_skips[0][1],
        )
    else:
        scan.add(
            "fp8.not_convert",
            "pass",
            f"{len(skipped):,} tensors of modules_to_not_convert are not FP8",
        )
    unquantised = sorted(
        n
        for n in compress(tensors, map(not_, is8))
        if n.endswith("_proj.weight") and n not in skipped
    )
    if unquantised:
        scan.add(
            "fp8.coverage",
            "warn",
            f"{len(unquantised)} projection weight(s) are not FP8 "
            f"and not in modules_to_not_convert: {some_of(unquantised)}",
        )


def _block(block: object) -> tuple[int, int] | None:
    if isinstance(block, list) and len(block) == 2:
        return int(block[0]), int(block[1])
    return None


class _Ordered(NamedTuple):
    """The scan's tensors as two lists in the headers' order (name i <-> entry i)."""

    names: list[str]
    entries: list[Entry]


def _scales_ok(tensors: dict[str, Entry], order: _Ordered, at: list[int], block: object) -> bool:
    """True when every FP8 tensor (positions AT in ORDER) is a .weight with a floating-point
    weight_scale_inv of the block shape; False sends the caller to _bad_scales for the details.
    Whole columns: writers put each scale right after its weight, so the scales are read by
    position when the names there are the expected ones (else by name, one lookup each), and
    the block arithmetic runs once per distinct pair of weight and scale shapes."""
    names, entries = order
    weights = list(map(names.__getitem__, at))
    if not all(map(str.endswith, weights, repeat(".weight"))):
        return False
    want = list(map(add, map(_LESS_WEIGHT, weights), repeat("weight_scale_inv")))
    after = list(map(add, at, repeat(1)))
    if after and after[-1] < len(names) and list(map(names.__getitem__, after)) == want:
        scales: list[Any] = list(map(entries.__getitem__, after))
    else:
        scales = list(map(tensors.get, want))
        if None in scales:
            return False
    if not set(map(_DTYPE, scales)) <= FLOAT_DTYPES:
        return False
    bn_bk = _block(block)
    if bn_bk is None:
        return True
    bn, bk = bn_bk
    pairs = set(zip(map(_SHAPE, map(entries.__getitem__, at)), map(_SHAPE, scales), strict=True))
    return all(
        len(w) == 2 and s == (-(-w[0] // bn), -(-w[1] // bk))
        for w, s in pairs  # the 480B: 4 distinct pairs for 30,008 weights
    )


def _bad_scales(scan: Scan, fp8: list[str], block: object) -> list[tuple[str, str]]:
    tensors, shard_of = scan.tensors, scan.shard_of
    bad: list[tuple[str, str]] = []  # (message, shard file)
    for name in fp8:
        shard = shard_of[name]
        module = name.rsplit(".", 1)[0]
        if not name.endswith(".weight"):
            bad.append((f"{shard}: {name} is FP8 but not a .weight", shard))
            continue
        sname = module + ".weight_scale_inv"
        s = tensors.get(sname)
        if s is None:
            bad.append((f"{shard}: FP8 weight {name} has no weight_scale_inv", shard))
            continue
        where = shard_of[sname]
        if s["dtype"] not in FLOAT_DTYPES:
            bad.append((f"{where}: {sname} is {s['dtype']}, not floating point", where))
        shape = tensors[name]["shape"]
        bn_bk = _block(block)
        if bn_bk is not None and len(shape) == 2:
            want = [-(-shape[0] // bn_bk[0]), -(-shape[1] // bn_bk[1])]
            if list(s.shape or ()) != want:
                bad.append(
                    (
                        f"{where}: {sname} has shape {list(s.shape or ())}, expected {want} for "
                        f"{list(shape)} in {block} blocks",
                        where,
                    )
                )
    return bad


class _Loaded(NamedTuple):
    """The scan's tensors as the engine's loader names them (integrity_loader.renamed): the
    entries, the shard of each name, the names sorted, and the family (None: unknown)."""

    tensors: dict[str, Entry]
    shard_of: dict[str, str]
    names: list[str]
    family: Any


def _as_loaded(scan: Scan, view: ModelView, names: list[str]) -> _Loaded:
    from qwenprep.model.families import lookup

    family = lookup(view.model_type) or lookup(view.text_model_type)
    renames = family.loader_renames(view) if family and family.loader_renames else ()
    got = renamed(scan.tensors, names, renames)
    if not got.origin:
        return _Loaded(scan.tensors, scan.shard_of, names, family)
    shard_of = {**scan.shard_of, **{n: scan.shard_of[o] for n, o in got.origin.items()}}
    srcs = ", ".join(sorted({src for src, _ in renames}))
    if got.clashes:
        scan.add(
            "tensors.loader",
            "fail",
            f"{len(got.clashes)} pair(s) of tensors load as one weight once vLLM's loader "
            f"renames {srcs}: {some_of(got.clashes)}",
        )
    else:
        scan.add(
            "tensors.loader",
            "pass",
            f"{len(got.origin):,} tensor names under {srcs} read as vLLM's loader reads them "
            f"({'; '.join(f'{a} -> {b}' for a, b in renames)}); names below are the loader's",
        )
    return _Loaded(got.tensors, shard_of, sorted(got.tensors), family)


def name_checks(scan: Scan, config: dict[str, Any], names: list[str]) -> None:
    """NAMES: scan.tensors' names, sorted."""
    if not scan.tensors:
        return
    if not scan.shards_ok:
        scan.add(
            "tensors.names",
            "skip",
            "tensor names not compared: shards above are missing or damaged",
        )
        return
    view = ModelView(config)
    loaded = _as_loaded(scan, view, names)
    tensors, names = loaded.tensors, loaded.names
    text = _spelled_as_v4(view.text)  # a vision-language config's counts are in text_config
    # the language model's layers: model.layers.N, or model.language_model.layers.N when the
    # checkpoint also holds a vision tower (Qwen3.5/3.6)
    prefix = "model.language_model.layers." if view.nested else "model.layers."
    try:
        layers = int(text["num_hidden_layers"])
    except (KeyError, TypeError, ValueError):
        scan.add("tensors.layers", "skip", "config.json has no num_hidden_layers")
        return
    layer_tokens = _tokens(names, prefix)
    found = {i for _, i, _, _ in layer_tokens}
    experts = int(text.get("num_experts") or 0)
    if layers > MAX_LAYERS or layers * max(experts, 1) > MAX_EXPERT_SLOTS:
        # listed one by one, such counts would take minutes and gigabytes to compare
        scan.add(
            "tensors.layers",
            "fail",
            f"config.json says num_hidden_layers {layers} and "
            f"num_experts {experts}; the shards hold {len(found)} layers and "
            f"{len(tensors):,} tensors",
            CONFIG,
        )
        return
    missing = sorted(set(range(layers)) - found)
    extra = sorted(found - set(range(layers)))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"layer(s) {_ranges(missing)} missing")
        if extra:
            parts.append(f"layer(s) {_ranges(extra)} beyond the config")
        scan.add(
            "tensors.layers",
            "fail",
            f"config.json says num_hidden_layers {layers}; the "
            f"shards have {len(found)} layers: {', '.join(parts)}",
            CONFIG,
        )
    else:
        scan.add("tensors.layers", "pass", f"layers 0..{layers - 1} present, as config.json says")
    try:
        moe_layers = {i for i in range(layers) if is_moe_layer(text, i)}
    except ValueError as e:
        scan.add(
            "tensors.experts",
            "skip",
            f"experts not compared: config.json {e}. Hint: qwenprep validate {scan.root}",
            CONFIG,
        )
        return
    _expert_counts(scan, names, prefix, layer_tokens, (layers, experts, moe_layers))
    _family_checks(scan, config, loaded)


def _expert_counts(
    scan: Scan,
    names: list[str],
    prefix: str,
    layer_tokens: list[tuple[str, int, int, int]],
    counts: tuple[int, int, set[int]],
) -> None:
    """tensors.experts: each MoE layer holds the config's experts, stored one by one
    (PREFIX N.mlp.experts.E.*) or stacked (one [experts, ...] tensor per projection: the
    family layout compares their shapes under tensors.shapes), and no other layer holds any."""
    layers, experts, moe_layers = counts
    stacked = stacked_prefixes(names)
    per_layer: dict[int, set[int]] = {}
    stacked_layers = set()
    for token, i, lo, hi in layer_tokens:
        if f"{prefix}{token}{EXPERTS}" in stacked:
            stacked_layers.add(i)
        got = _tokens(names, f"{prefix}{token}{EXPERTS}", lo, hi)
        if got:
            per_layer.setdefault(i, set()).update(e for _, e, _, _ in got)
    if not (experts or per_layer or stacked_layers):
        return
    want = set(range(experts))
    wrong = []
    for i in sorted(set(range(layers)) | set(per_layer) | stacked_layers):
        held = per_layer.get(i, set())
        if i in stacked_layers and held:
            wrong.append(f"layer {i}: experts both stacked and one by one")
        elif i in stacked_layers:
            if i not in moe_layers:
                wrong.append(f"layer {i}: stacked experts")
        elif held != (want if i in moe_layers else set()):
            wrong.append(
                f"layer {i}: {len(held)} experts" + (f" (max index {max(held)})" if held else "")
            )
    if wrong:
        scan.add(
            "tensors.experts",
            "fail",
            f"config.json says num_experts {experts}: {some_of(wrong)}",
            CONFIG,
        )
    elif stacked_layers:
        scan.add(
            "tensors.experts",
            "pass",
            f"{experts} experts in each of {len(moe_layers)} MoE layers, stacked (one tensor "
            f"per projection) in {len(stacked_layers)} of them; their shapes are compared "
            "under tensors.shapes",
        )
    else:
        scan.add("tensors.experts", "pass", f"{experts} experts in each MoE layer")


def _family_checks(scan: Scan, config: dict[str, Any], loaded: _Loaded) -> None:
    """tensors.names / .unknown / .shapes: the checkpoint's tensors (as the engine's loader
    names them) against the family layout, with the experts in the form they are stored; what
    is wrong under the prefixes the loader skips is a warning apart (tensors.mtp)."""
    tensors, shard_of, family = loaded.tensors, loaded.shard_of, loaded.family
    tensors_of: Callable[[ModelView], list[Any]] | None = (
        family.tensors if family is not None else None
    )
    if tensors_of is None:
        return
    try:
        specs = tensors_of(ModelView(config))
    except (KeyError, TypeError, ValueError) as e:
        scan.add("tensors.names", "skip", f"cannot derive tensor names from config.json ({e!r})")
        return
    if family.experts_either_form:
        stored = stacked_prefixes(loaded.names)
        if stored != stacked_prefixes(map(_SPEC_NAME, specs)):
            specs = experts_as_stored(specs, stored)
    needed, optional = split_optional(specs, family.optional_prefixes)
    if optional:
        skipped = {
            n: tensors[n] for p in family.optional_prefixes for n in under_prefix(loaded.names, p)
        }
        if optional_checks(scan, optional, skipped, family.optional_prefixes):
            specs = needed  # the rest is judged without them
            tensors = {n: e for n, e in tensors.items() if n not in skipped}
    _compare(scan, specs, tensors, shard_of)


def _compare(
    scan: Scan, specs: list[Any], tensors: dict[str, Entry], shard_of: dict[str, str]
) -> None:
    spec_names = list(map(_SPEC_NAME, specs))
    got = list(map(tensors.get, spec_names))
    if (
        None not in got
        and len(got) == len(tensors)  # (the layouts' names are distinct: a test holds it)
        and list(map(_SHAPE, got)) == list(map(_SPEC_SHAPE, specs))
    ):  # every tensor the config implies, no other, each of its shape: the one comparison
        scan.add(
            "tensors.names", "pass", f"all {len(got):,} tensors config.json implies are present"
        )
        return
    expected = dict(zip(spec_names, map(_SPEC_SHAPE, specs), strict=True))
    absent = sorted(expected.keys() - tensors.keys())
    unknown = sorted(tensors.keys() - expected.keys())
    shapes = [
        f"{n} ({shard_of[n]}): {list(tensors[n].shape or ())}, config implies {list(expected[n])}"
        for n in sorted(expected.keys() & tensors.keys())
        if not n.endswith("weight_scale_inv") and tensors[n].shape != expected[n]
    ]
    if absent:
        scan.add(
            "tensors.names",
            "fail",
            f"{len(absent):,} tensor(s) config.json implies are in no shard: {some_of(absent)}",
            CONFIG,
        )
    else:
        scan.add(
            "tensors.names",
            "pass",
            f"all {len(expected):,} tensors config.json implies are present",
        )
    if unknown:
        scan.add(
            "tensors.unknown",
            "warn",
            f"{len(unknown)} tensor(s) config.json does not imply: {some_of(unknown)}",
        )
    if shapes:
        scan.add(
            "tensors.shapes",
            "fail",
            f"{len(shapes)} tensor shape(s) disagree with config.json: {some_of(shapes)}",
            CONFIG,
        )


def _ranges(xs: list[int]) -> str:
    out, i = [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}..{xs[j]}")
        i = j + 1
    return ", ".join(out[:8]) + (" ..." if len(out) > 8 else "")


# ---------------------------------------------------------------- the header level, composed


def _read_config(root: Path, scan: Scan) -> dict[str, Any] | None:
    why = not_regular(root / CONFIG)
    if why:  # a FIFO would block the read below for ever
        scan.add(
            "config",
            "fail",
            f"{CONFIG}: {why}, so it cannot be read. Restore config.json "
            "(qwenprep revert PATH restores one edited in place).",
            CONFIG,
        )
        return None
    try:
        return Checkpoint(root).read_config()
    except InputError as e:
        scan.add("config", "fail", e.message, CONFIG)
        return None


def _config_usable(scan: Scan, config: dict[str, Any]) -> bool:
    """Whether config.json's numbers can be held against the tensors: a config that fails its
    schema (qwenprep.checks.validate) gives one skip check instead of guesses from broken values."""
    if not scan.tensors:
        return True  # nothing to compare; the checks below say nothing either
    from qwenprep.checks.validate import schema_problems

    problems = schema_problems(config)
    if not problems:
        return True
    scan.add(
        "tensors.names",
        "skip",
        "tensor names, counts and FP8 structure not compared with "
        f"config.json: it fails its schema ({some_of(problems, 2)}). Hint: qwenprep validate "
        f"{scan.root} lists every problem",
        CONFIG,
    )
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


def header_scan(root: Path) -> Scan:
    """Every header-level check, each file read once: config.json, the index, each shard's
    header; the overlay's checks when ROOT is an overlay. The scan keeps what it read
    (scan.config, scan.tensors) for the caller's other checks."""
    root = Path(root)
    with gc_paused():  # 60k tensors' worth of dicts, lists and strings, none in a cycle
        scan = scan_headers(root)
        config = _read_config(root, scan)
        scan.config = config
        if config is not None and _config_usable(scan, config):
            config = _spelled_as_v4(config)
            names = sorted(scan.tensors)
            fp8_checks(scan, config, names)
            name_checks(scan, config, names)
    from qwenprep.model.manifest import manifest_path

    if overlay_manifest(root) is not None or manifest_path(root).exists():
        from qwenprep.checks.overlay import overlay_checks  # reports a damaged manifest as a FAIL

        scan.checks.extend(overlay_checks(root))
    return scan


def header_checks(path: Path) -> list[Check]:
    """Header-level checks only: reads config.json, the index and each shard's header."""
    return header_scan(Path(path)).checks
