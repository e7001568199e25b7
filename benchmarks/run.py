"""Run every benchmark in this folder; each prints its own table of ratios against a baseline
measured in the same run.

    python benchmarks/run.py            # all of them
    python benchmarks/run.py patch      # only bench_patch.py (names are substrings)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    wanted = sys.argv[1:]
    scripts = sorted(
        p for p in HERE.glob("bench_*.py") if not wanted or any(w in p.stem for w in wanted)
    )
    failed = 0
    for script in scripts:
        print(f"\n## {script.stem}  (python benchmarks/{script.name})", flush=True)
        t = time.perf_counter()
        rc = subprocess.run([sys.executable, str(script)]).returncode
        print(f"({time.perf_counter() - t:.1f} s, exit {rc})", flush=True)
        failed += rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
