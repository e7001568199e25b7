"""Read once (issue 10, item 7): `qwenprep verify` and `qwenprep check --no-engine`, as
commands, on the 480B-shaped checkpoint (qwenprep.testing.synth: 50 shards, 60,329 tensors, ~450
GiB apparent, sparse) against a bare Python script that opens every shard and parses its
safetensors header (the baseline), all measured in the same run, taking turns.

    python benchmarks/bench_read_once.py [--runs 5] [--rounds 3]

Targets: verify <= 2.0x the baseline, check --no-engine <= 2.5x. Also shown: `python -c
pass` and `qwenprep --version` (interpreter and CLI start-up, inside every command's time), and
the same ratios less start-up on both sides (each command less `qwenprep --version`, the bare
script less `python -c pass`): the reading and checking alone.
Each round: the median of --runs runs of each command; printed: the per-round medians, their
median, and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _timing import bytecode_env, interleaved, print_table, ratio_rows  # noqa: E402

from qwenprep.testing.synth import make_shaped_checkpoint  # noqa: E402

# The baseline: what any reader of the checkpoint must do (open, read 8 bytes + the header,
# parse the JSON), nothing else.
BARE = """
import json, os, struct, sys
root = sys.argv[1]
n = 0
for name in sorted(os.listdir(root)):
    if name.endswith(".safetensors"):
        with open(os.path.join(root, name), "rb") as f:
            (k,) = struct.unpack("<Q", f.read(8))
            n += len(json.loads(f.read(k)))
print(n)
"""


# One pass of verify's or check's parts in a fresh process (as the command runs them), each
# timed by wrapping it; printed as JSON {label: seconds}.
PARTS = """
import json, struct, sys, time
from pathlib import Path
big, what = Path(sys.argv[1]), sys.argv[2]
spent = {}
def timed(mod, name, label):
    fn = getattr(mod, name)
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t
    setattr(mod, name, wrapper)
t = time.perf_counter()
for p in sorted(big.glob("*.safetensors")):
    with open(p, "rb") as f:
        (k,) = struct.unpack("<Q", f.read(8))
        json.loads(f.read(k))
spent["bare parse of the 50 headers (baseline)"] = time.perf_counter() - t
t = time.perf_counter()
import qwenprep.checks.scan as scan_mod, qwenprep.checks.tensors as tensors_mod
import qwenprep.checks.preflight as pf
spent["imports (integrity, preflight and theirs)"] = time.perf_counter() - t
timed(scan_mod, "_read_index", "  read + parse the index")
timed(scan_mod, "_read_shard", "  read + parse + judge the 50 headers")
timed(tensors_mod, "scan_headers", " structure (scan_headers)")
timed(tensors_mod, "fp8_checks", " FP8 checks")
timed(tensors_mod, "_family_checks", "  vs the family's layout (incl. family.tensors)")
timed(tensors_mod, "name_checks", " names, layers, experts, shapes")
timed(tensors_mod, "header_scan", "header_scan (all of verify's checks)")
if what == "verify":
    tensors_mod.header_scan(big)
    from qwenprep.model.families import lookup
    from qwenprep.model.view import ModelView
    config = json.loads((big / "config.json").read_text())
    t = time.perf_counter()
    lookup(config["model_type"]).tensors(ModelView(config))
    spent["   of which family.tensors (layouts.py)"] = time.perf_counter() - t
else:
    timed(pf, "_shape", "model shape + weight tally from the scan")
    timed(pf, "run_checks", "run_checks (all of check)")
    pf.run_checks(big, pf.check_options(engine=False))
print(json.dumps(spent))
"""


def breakdown(big: str, runs: int, env: dict[str, str] | None) -> None:
    """Where verify's and check's time goes: their parts timed in a fresh process each (as
    the commands run them), against the bare parse in that process; medians of RUNS."""
    for what in ("verify", "check"):
        spent: dict[str, list[float]] = {}
        for _ in range(runs):
            r = subprocess.run(
                [sys.executable, "-c", PARTS, big, what],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            for label, t in json.loads(r.stdout.splitlines()[-1]).items():
                spent.setdefault(label, []).append(t)
        base = statistics.median(spent["bare parse of the 50 headers (baseline)"])
        rows = [
            (label, f"{statistics.median(ts) * 1e3:.0f} ms", f"{statistics.median(ts) / base:.2f}x")
            for label, ts in spent.items()
        ]
        print_table(rows, (f"{what}, in process (medians of {runs})", "time", "vs bare parse"))
        print()


def _tree(rev: str, dest: Path) -> Path:
    """The package as it was at REV (qwenprep/, its shipped schemas and examples, and
    pyproject.toml, which marks a source checkout), unpacked into DEST."""
    dest.mkdir(parents=True)
    archive = subprocess.run(
        [
            "git",
            "-C",
            str(REPO),
            "archive",
            rev,
            "qwenprep",
            "schemas",
            "examples",
            "pyproject.toml",
        ],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def against(
    revs: list[str], big: str, tmp: Path, runs: int, rounds: int, env: dict[str, str] | None
) -> None:
    """verify and check at each of REVS and in the working tree, as `python -P -m qwenprep`
    with PYTHONPATH on that tree, taking turns with the bare script in the same rounds. Each
    command's --json must be the working tree's (the same verdicts), else it says so."""
    trees = {rev: _tree(rev, tmp / f"rev-{i}") for i, rev in enumerate(revs)}
    trees["working tree"] = REPO
    argvs: dict[str, list[str]] = {
        "bare script: open 50 shards, parse headers": [sys.executable, "-c", BARE, big]
    }
    for what, extra in (("verify", []), ("check", ["--no-engine"])):
        for label, root in trees.items():
            argvs[f"{what} @ {label}"] = [
                "env",
                f"PYTHONPATH={root}",
                sys.executable,
                "-P",  # not the current directory first: the tree on PYTHONPATH is the one run
                "-m",
                "qwenprep",
                what,
                big,
                *extra,
                "--json",
            ]
    outputs = {
        name: subprocess.run(argv, capture_output=True, text=True, env=env).stdout
        for name, argv in list(argvs.items())[1:]
    }
    for name, got in outputs.items():
        if got != outputs[f"{name.split(' @ ')[0]} @ working tree"]:
            print(f"note: {name} prints another --json than the working tree's")
    medians = interleaved(argvs, runs=runs, rounds=rounds, env=env, ok=(0, 1))
    rows = ratio_rows(medians, next(iter(argvs)))
    print_table(rows, ("command", "round medians (ms)", "median", "vs bare script"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the parts in process, against the bare parse",
    )
    ap.add_argument(
        "--no-pyc",
        action="store_true",
        help="keep the environment's PYTHONDONTWRITEBYTECODE (default: a bytecode "
        "cache, as an installed qwenprep has)",
    )
    ap.add_argument(
        "--against",
        metavar="REV",
        action="append",
        default=[],
        help="also run verify and check as they were at this git revision (repeatable), "
        "beside the working tree's, in the same rounds: before/after in one run",
    )
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "qwenprep")
    with tempfile.TemporaryDirectory(prefix="qwenprep-bench-") as tmp:
        env = None if args.no_pyc else bytecode_env(str(Path(tmp) / "pycache"))
        big = str(make_shaped_checkpoint(Path(tmp) / "big", shards=50))
        if args.against:
            against(args.against, big, Path(tmp), args.runs, args.rounds, env)
            return
        argvs = {
            "bare script: open 50 shards, parse headers": [sys.executable, "-c", BARE, big],
            "qwenprep verify DIR --json": [exe, "verify", big, "--json"],
            "qwenprep check DIR --no-engine --json": [exe, "check", big, "--no-engine", "--json"],
            "python -c pass": [sys.executable, "-c", "pass"],
            "qwenprep --version": [exe, "--version"],
        }
        medians = interleaved(argvs, runs=args.runs, rounds=args.rounds, env=env, ok=(0, 1))
        if args.breakdown:
            breakdown(big, args.runs, env)
            print()
    base = next(iter(argvs))
    rows = ratio_rows(
        medians,
        base,
        {"qwenprep verify DIR --json": 2.0, "qwenprep check DIR --no-engine --json": 2.5},
    )
    print_table(rows, ("command", "round medians (ms)", "median", "vs bare script"))
    # The same, less start-up on both sides: what each command does beyond `qwenprep
    # --version` (interpreter, click, the CLI) against what the bare script does beyond
    # `python -c pass` (interpreter): the reading and checking alone.
    print()
    work = {
        name: [t - s for t, s in zip(ts, medians[start], strict=True)]
        for name, ts, start in (
            (base, medians[base], "python -c pass"),
            *(
                (name, medians[name], "qwenprep --version")
                for name in ("qwenprep verify DIR --json", "qwenprep check DIR --no-engine --json")
            ),
        )
    }
    print_table(
        ratio_rows(work, base),
        ("beyond start-up", "round medians (ms)", "median", "vs bare script's"),
    )


if __name__ == "__main__":
    main()
