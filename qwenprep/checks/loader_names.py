"""verify reads a checkpoint's tensor names as vLLM's weight loader does, so that it accepts
what the engine loads and refuses the rest. The family declares the loader's rules
(qwenprep.model.families.base.Family): the name prefixes the loader renames (``loader_renames``:
vLLM 0.32's text-only Qwen3.5 loader strips ``model.language_model.``), those it skips
(``optional_prefixes``: the MTP head, ``mtp.``, loaded only by the MTP draft model), and
whether routed experts may be stored stacked or one by one (``experts_either_form``: vLLM's
FusedMoE loader reads both; transformers 5 writes them one by one on save).

Pure over names and shapes: the checkpoint's tensors in, the layout's specs rewritten or the
tensors renamed out; integrity_tensors makes the checks of them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import compress, repeat
from operator import not_
from typing import Any, NamedTuple

from qwenprep.checks.scan import Scan, some_of
from qwenprep.model.layouts import TensorSpec
from qwenprep.util.safetensors_io import Entry

EXPERTS = ".mlp.experts."  # the routed experts of a layer (and of the MTP layer)
_STACKED = ("gate_up_proj", "down_proj")  # one [experts, ...] tensor each, per layer
_ONE_BY_ONE = ("gate_proj.weight", "up_proj.weight", "down_proj.weight")


def _under(names: Sequence[str], prefix: str) -> range:
    """The indices of the sorted NAMES that start with PREFIX."""
    lo = bisect_left(names, prefix)
    return range(lo, bisect_left(names, prefix[:-1] + chr(ord(prefix[-1]) + 1), lo))


def under_prefix(names: Sequence[str], prefix: str) -> list[str]:
    """The sorted NAMES that start with PREFIX."""
    return [names[i] for i in _under(names, prefix)]


class Renamed(NamedTuple):
    tensors: dict[str, Any]  # the checkpoint's entries under the names the layout uses
    origin: dict[str, str]  # layout name -> the checkpoint's name, for the renamed ones
    clashes: list[str]  # "A and B" where two checkpoint names load as one


def renamed(
    tensors: dict[str, Any], names: Sequence[str], renames: Iterable[tuple[str, str]]
) -> Renamed:
    """TENSORS (NAMES: their names, sorted) with each name under a (source, target) prefix
    of RENAMES renamed as the loader's WeightsMapper does (``orig_to_new_prefix``)."""
    moved: dict[str, str] = {}
    for src, dst in renames:
        for i in _under(names, src):
            moved[dst + names[i][len(src) :]] = names[i]
    if not moved:
        return Renamed(tensors, {}, [])
    gone = set(moved.values())
    out = {n: e for n, e in tensors.items() if n not in gone}
    clashes = sorted(f"{moved[n]} and {n}" for n in moved if n in out)
    out.update((n, tensors[old]) for n, old in moved.items())
    return Renamed(out, moved, clashes)


def split_optional(
    specs: list[TensorSpec], prefixes: tuple[str, ...]
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """SPECS as (those the loader needs, those under PREFIXES it skips)."""
    if not prefixes:
        return specs, []
    skip = list(map(str.startswith, (s.name for s in specs), repeat(prefixes)))
    if not any(skip):
        return specs, []
    return list(compress(specs, map(not_, skip))), list(compress(specs, skip))


def stacked_prefixes(names: Iterable[str]) -> set[str]:
    """The experts prefixes (``...mlp.experts.``) under which NAMES hold stacked tensors
    (the names filtered at C speed first: the 480B's layout has 180k of them, none stacked)."""
    names = list(names)
    tails = tuple(EXPERTS + t for t in _STACKED)
    hits = compress(names, map(str.endswith, names, repeat(tails)))
    return {n[: n.rindex(".") + 1] for n in hits}


def experts_as_stored(specs: list[TensorSpec], stored_stacked: set[str]) -> list[TensorSpec]:
    """SPECS with each layer's routed experts in the form the checkpoint stores them: stacked
    (``P gate_up_proj`` [E, 2I, H], ``P down_proj`` [E, H, I]) for the experts prefixes P in
    STORED_STACKED, one by one (``P N.gate_proj.weight`` [I, H], ``up_proj`` likewise,
    ``down_proj`` [H, I]) elsewhere. A missing expert or a wrong shape then shows as the
    comparison's absent name or shape mismatch. FP8 experts stay one by one (their block
    scales have no stacked form qwenprep knows)."""
    out: list[TensorSpec] = []
    fold: dict[str, list[Any]] = {}  # P -> [experts, gate shape, down shape, dtype]
    for s in specs:
        at = s.name.find(EXPERTS)
        if at < 0:
            out.append(s)
            continue
        p = s.name[: at + len(EXPERTS)]
        rest = s.name[len(p) :]
        if rest in _STACKED:
            out.extend([s] if p in stored_stacked else _unfold(p, rest, s))
            continue
        proj = rest.partition(".")[2]
        if p not in stored_stacked or proj not in _ONE_BY_ONE or s.dtype == "F8_E4M3":
            out.append(s)
            continue
        f = fold.setdefault(p, [0, None, None, s.dtype])
        if proj == "gate_proj.weight":
            f[0] += 1
            f[1] = s.shape
        elif proj == "down_proj.weight":
            f[2] = s.shape
    for p, (n, gate, down, dtype) in fold.items():
        if gate is not None and down is not None:
            out.append(TensorSpec(p + "gate_up_proj", dtype, (n, 2 * gate[0], *gate[1:])))
            out.append(TensorSpec(p + "down_proj", dtype, (n, *down)))
    return out


def _unfold(p: str, tail: str, s: TensorSpec) -> list[TensorSpec]:
    """A stacked spec as its experts' one-by-one specs."""
    n, rows, *rest = s.shape
    if tail == "down_proj":
        return [TensorSpec(f"{p}{e}.down_proj.weight", s.dtype, (rows, *rest)) for e in range(n)]
    half = (rows // 2, *rest)
    return [
        TensorSpec(f"{p}{e}.{proj}.weight", s.dtype, half)
        for e in range(n)
        for proj in ("gate_proj", "up_proj")
    ]


def optional_checks(
    scan: Scan, specs: list[Any], held: dict[str, Entry], prefixes: tuple[str, ...]
) -> bool:
    """tensors.mtp, a warning, when the tensors under PREFIXES (the MTP head, which vLLM's
    loader for the model skips: the family's optional_prefixes) are absent or mis-shaped:
    that only stops MTP speculative decoding. True when it warned (the caller then judges
    the rest without them); False when all of SPECS are in HELD with their shapes."""
    expected = {s.name: s.shape for s in specs}
    absent = sorted(expected.keys() - held.keys())
    shapes = sorted(
        n for n in expected.keys() & held.keys() if tuple(held[n].shape or ()) != expected[n]
    )
    if not (absent or shapes):
        return False
    shown = " / ".join(f"{p}*" for p in prefixes)
    why = (
        f"vLLM serves the model without them (its loader skips {shown}; only the MTP draft "
        "model loads them), but MTP speculative decoding (--speculative-config "
        '\'{"method": "mtp", ...}\') needs them'
    )
    if not held:
        msg = f"no {shown} tensors ({len(expected):,} config.json implies): {why}"
    else:
        parts = [f"{len(absent)} absent ({some_of(absent)})"] if absent else []
        parts += [f"{len(shapes)} of another shape ({some_of(shapes)})"] if shapes else []
        msg = f"{shown} tensors: {'; '.join(parts)}: {why}"
    scan.add("tensors.mtp", "warn", msg)
    return True
