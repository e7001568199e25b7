"""`qwenprep plan` on the 450 GiB-shaped checkpoint against baselines measured in the same run:
a bare `python -c pass` and `qwenprep --version` (start-up), and the header read alone.

    python benchmarks/bench_plan.py [--runs 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _timing import command_time, median_time  # noqa: E402

from qwenprep.planning.capacity import make_plan  # noqa: E402
from qwenprep.planning.shapes import shape_from_dir  # noqa: E402
from qwenprep.testing.synth import make_shaped_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "qwenprep")
    with tempfile.TemporaryDirectory(prefix="qwenprep-bench-") as tmp:
        big = make_shaped_checkpoint(Path(tmp) / "big", shards=50)
        argv = [
            exe,
            "plan",
            str(big),
            "--context",
            "1m",
            "--tp",
            "8",
            "--gpus",
            "8",
            "--gpu-memory",
            "141GiB",
            "--vllm-version",
            "0.32",
            "--json",
        ]
        rows = [
            ("python -c pass (baseline)", command_time([sys.executable, "-c", "pass"], args.runs)),
            ("qwenprep --version", command_time([exe, "--version"], args.runs)),
            (
                "read shape + headers (in process)",
                median_time(lambda: shape_from_dir(big), args.runs, warm=True),
            ),
            (
                "plan 1M, TP 8, 8x141 GiB (in process)",
                median_time(
                    lambda: make_plan(
                        str(big),
                        context="1m",
                        tp=8,
                        gpus=8,
                        gpu_memory="141GiB",
                        vllm_version="0.32",
                    ),
                    args.runs,
                    warm=True,
                ),
            ),
            ("qwenprep plan ... --json (command)", command_time(argv, args.runs)),
        ]
    base = rows[0][1]
    print(f"{'what':40} {'median':>10} {'vs python -c pass':>18}")
    for name, t in rows:
        print(f"{name:40} {t * 1e3:>7.1f} ms {t / base:>17.1f}x")


if __name__ == "__main__":
    main()
