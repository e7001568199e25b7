"""`qwenprep --help` start-up against a bare `python -c pass`, measured in the same run.

The CLI must not import vLLM, torch or transformers to print its help or to patch.

    python benchmarks/bench_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def wall(cmd: list[str], runs: int) -> float:
    subprocess.run(cmd, capture_output=True, check=True)  # warm the page cache
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "qwenprep")
    base = wall([sys.executable, "-c", "pass"], args.runs)
    rows = [("python -c pass (baseline)", base),
            ("python -c 'import click'", wall([sys.executable, "-c", "import click"], args.runs)),
            ("qwenprep --help", wall([exe, "--help"], args.runs)),
            ("qwenprep patch --help", wall([exe, "patch", "--help"], args.runs))]
    print(f"{'command':30} {'median':>10} {'ratio':>7}")
    for name, t in rows:
        print(f"{name:30} {t * 1e3:>7.1f} ms {t / base:>6.2f}x")


if __name__ == "__main__":
    main()
