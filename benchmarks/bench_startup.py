"""`qwenprep --help` start-up against a bare `python -c pass`, measured in the same run.

The CLI must not import vLLM, torch or transformers to print its help or to patch.

    python benchmarks/bench_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import command_time  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "qwenprep")
    base = command_time([sys.executable, "-c", "pass"], args.runs)
    rows = [
        ("python -c pass (baseline)", base),
        (
            "python -c 'import click'",
            command_time([sys.executable, "-c", "import click"], args.runs),
        ),
        ("qwenprep --help", command_time([exe, "--help"], args.runs)),
        ("qwenprep patch --help", command_time([exe, "patch", "--help"], args.runs)),
    ]
    print(f"{'command':30} {'median':>10} {'ratio':>7}")
    for name, t in rows:
        print(f"{name:30} {t * 1e3:>7.1f} ms {t / base:>6.2f}x")


if __name__ == "__main__":
    main()
