"""Patch cost grows with the number of files, not with their bytes.

Times `create_overlay` (in process, median of several runs) and the `qwenprep patch` command
(whole process) on: a ~1 MB checkpoint (the embedded FP8 twin: 2 shards), the same shape
with 50 shards (~1 MB), and the 450 GiB-shaped Qwen3-Coder-480B FP8 checkpoint (50 sparse
shards). The baseline is the 1 MB checkpoint, measured in the same run.

    python benchmarks/bench_patch.py [--runs 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qwenprep.model.checkpoint import resolve_dir  # noqa: E402
from qwenprep.model.contexts import parse_context  # noqa: E402
from qwenprep.ops.overlay import create_overlay  # noqa: E402
from qwenprep.testing.synth import make_shaped_checkpoint, tiny_fp8_config  # noqa: E402


def apparent(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def time_inproc(src: Path, out: Path, runs: int) -> float:
    ck = resolve_dir(src)
    times = []
    for i in range(runs):
        ctx = parse_context("1m" if i % 2 == 0 else "512k")  # a real rewrite every time
        t = time.perf_counter()
        create_overlay(ck, out, ctx, force=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_cli(src: Path, out: Path, runs: int) -> float:
    exe = Path(sys.executable).parent / "qwenprep"
    times = []
    for i in range(runs):
        t = time.perf_counter()
        subprocess.run(
            [
                str(exe),
                "patch",
                str(src),
                "-c",
                "1m" if i % 2 else "512k",
                "-o",
                str(out),
                "--force",
                "--json",
            ],
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="qwenprep-bench-") as tmp:
        t = Path(tmp)
        small = t / "small"
        shutil.copytree(REPO / "examples" / "tiny-qwen3-coder-fp8", small)
        small50 = make_shaped_checkpoint(t / "small50", config=tiny_fp8_config(), shards=50)
        big = make_shaped_checkpoint(t / "big", shards=50)
        cases = [
            ("1 MB, 2 shards (baseline)", small),
            ("1 MB, 50 shards", small50),
            ("450 GiB-shaped, 50 shards", big),
        ]
        base_in = base_cli = None
        for name, src in cases:
            files = sum(1 for f in src.rglob("*") if f.is_file())
            tin = time_inproc(src, t / "ov", args.runs)
            tcli = time_cli(src, t / "ov", args.runs)
            base_in = base_in or tin
            base_cli = base_cli or tcli
            rows.append(
                {
                    "case": name,
                    "files": files,
                    "apparent_gib": apparent(src) / 2**30,
                    "patch_ms": tin * 1e3,
                    "ratio": tin / base_in,
                    "cli_ms": tcli * 1e3,
                    "cli_ratio": tcli / base_cli,
                }
            )
    print(
        f"{'checkpoint':28} {'files':>5} {'apparent':>12} {'patch (in-proc)':>16} "
        f"{'ratio':>6} {'qwenprep patch':>15} {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r['case']:28} {r['files']:>5} {r['apparent_gib']:>8.2f} GiB "
            f"{r['patch_ms']:>13.1f} ms {r['ratio']:>5.2f}x {r['cli_ms']:>12.1f} ms "
            f"{r['cli_ratio']:>5.2f}x"
        )
    big_row = rows[-1]
    verdict = big_row["cli_ms"] < 1000 and big_row["cli_ratio"] <= 2.0  # type: ignore[operator]
    print(
        f"target: 450 GiB-shaped patch < 1 s and within 2x of the 1 MB one: "
        f"{'MET' if verdict else 'NOT MET'}"
    )
    return rows


if __name__ == "__main__":
    main()
