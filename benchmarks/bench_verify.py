"""Benchmark `qwenprep verify`, each number against a baseline measured in the same run.

    python benchmarks/bench_verify.py [--gib 4] [--rounds 3] [--keep]

1. verify --deep over a checkpoint of --gib GiB of random data (8 shards + small files),
   page cache warm, vs `sha256sum` over exactly the same files. Both run as commands
   (qwenprep's interpreter start-up and its header checks are inside its time).
   Target: ratio <= 0.6 (files are hashed in parallel, one per core).
2. Header-level verify of the 480B-shaped synthetic checkpoint (50 shards, 60,329 tensors,
   ~450 GiB apparent, sparse) vs `python -c pass` (interpreter start-up) and vs parsing
   model.safetensors.index.json alone (in process).
3. Bytes header-level verify read from disk (Linux /proc/self/io rchar: every read(2) of
   this process) vs the checkpoint's apparent size.
Medians of --rounds runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _timing import median_time  # noqa: E402

from qwenprep.checks.integrity import verify_checkpoint  # noqa: E402
from qwenprep.testing.synth import make_shaped_checkpoint, tiny_fp8_config  # noqa: E402

QWENPREP = Path(sys.executable).parent / "qwenprep"


def sh(argv: list[str], ok: tuple[int, ...] = (0,)) -> None:
    r = subprocess.run(argv, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode not in ok:
        raise SystemExit(f"{argv[0]} failed ({r.returncode}): {r.stderr.decode()[-2000:]}")


def rchar() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def deep_checkpoint(dest: Path, gib: float) -> Path:
    """8 shards of random data totalling ~gib GiB (qwen3_moe FP8 shape, big experts)."""
    cfg = tiny_fp8_config(layers=8)
    cfg.update(
        hidden_size=2048,
        moe_intermediate_size=1024,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=128,
    )
    per_expert = 3 * 2048 * 1024  # gate/up/down, FP8
    cfg["num_experts"] = max(2, round(gib * 2**30 / (8 * per_expert)))
    return make_shaped_checkpoint(dest, config=cfg, shards=8, random_data=True, seed=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gib", type=float, default=4.0, help="data for the deep benchmark (GiB)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if shutil.which("sha256sum") is None:
        raise SystemExit("sha256sum (coreutils) is needed as the baseline")

    tmp = Path(tempfile.mkdtemp(prefix="qwenprep-bench-", dir="/tmp"))
    rows: list[tuple[str, str, str, str]] = []
    try:
        t0 = time.perf_counter()
        ck = deep_checkpoint(tmp / "deep", args.gib)
        files = sorted(str(p) for p in ck.iterdir() if p.is_file())
        total = sum(os.path.getsize(f) for f in files)
        print(
            f"# deep data: {len(files)} files, {total / 2**30:.2f} GiB random, written in "
            f"{time.perf_counter() - t0:.1f} s; {os.cpu_count()} CPUs",
            file=sys.stderr,
        )
        sh(["cat", *files])  # warm the page cache for both contenders
        # first deep run records hashes (--record: .qwenprep/hashes.json); later runs compare.
        # Both hash every byte; time them all and report the comparing runs.
        first = median_time(
            lambda: sh([str(QWENPREP), "verify", str(ck), "--deep", "--record", "--json"]), 1
        )
        t_sum = median_time(lambda: sh(["sha256sum", *files]), args.rounds)
        t_deep = median_time(
            lambda: sh([str(QWENPREP), "verify", str(ck), "--deep", "--json"]), args.rounds
        )
        rows.append(
            (
                f"verify --deep, {total / 2**30:.2f} GiB, {len(files)} files",
                f"{t_deep:.2f} s",
                f"sha256sum same files {t_sum:.2f} s",
                f"{t_deep / t_sum:.2f}x (target <= 0.60)",
            )
        )
        rows.append(
            ("  (first run, records hashes)", f"{first:.2f} s", "", f"{first / t_sum:.2f}x")
        )
        t_one = median_time(lambda: verify_checkpoint(ck, deep=True, workers=1), 1)
        t_par = median_time(lambda: verify_checkpoint(ck, deep=True), 1)
        rows.append(
            ("  in process, 1 hashing thread", f"{t_one:.2f} s", "", f"{t_one / t_sum:.2f}x")
        )
        rows.append(
            (
                f"  in process, {os.cpu_count()} hashing threads",
                f"{t_par:.2f} s",
                f"1 thread {t_one:.2f} s",
                f"{t_par / t_one:.2f}x",
            )
        )
        shutil.rmtree(tmp / "deep")

        big = make_shaped_checkpoint(tmp / "shaped")
        apparent = sum(p.stat().st_size for p in big.glob("*.safetensors"))
        rep = verify_checkpoint(big)
        assert rep.ok, [c for c in rep.checks if c.status == "fail"]
        t_hdr = median_time(lambda: verify_checkpoint(big), args.rounds)
        t_idx = median_time(
            lambda: json.loads((big / "model.safetensors.index.json").read_text()), args.rounds
        )
        t_cli = median_time(lambda: sh([str(QWENPREP), "verify", str(big), "--json"]), args.rounds)
        t_py = median_time(lambda: sh([sys.executable, "-c", "pass"]), args.rounds)
        t_ver = median_time(lambda: sh([str(QWENPREP), "--version"]), args.rounds)
        rows.append(
            (
                f"verify (headers), 50 shards, {rep.extra['tensors']:,} tensors, "
                f"{apparent / 2**30:.0f} GiB",
                f"{t_hdr:.2f} s",
                f"parse index json {t_idx * 1000:.0f} ms",
                f"{t_hdr / t_idx:.0f}x",
            )
        )
        rows.append(
            (
                "  same, as a command",
                f"{t_cli:.2f} s",
                f"python -c pass {t_py:.2f} s",
                f"{t_cli / t_py:.1f}x",
            )
        )
        rows.append(("", "", f"qwenprep --version {t_ver:.2f} s", f"{t_cli / t_ver:.1f}x"))
        before = rchar()
        verify_checkpoint(big)
        after = rchar()
        if before is not None and after is not None:
            read = after - before
            rows.append(
                (
                    "bytes read by header verify",
                    f"{read / 2**20:.1f} MiB",
                    f"apparent size {apparent / 2**30:.0f} GiB",
                    f"{read / apparent:.1e} of it (headers "
                    f"{rep.extra['header_bytes'] / 2**20:.1f} MiB)",
                )
            )
    finally:
        if args.keep:
            print(f"# kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    head = ("what", "qwenprep", "baseline (same run)", "ratio")
    widths = [max(w, len(h)) for w, h in zip(widths, head, strict=True)]
    for r in (head, tuple("-" * w for w in widths), *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


if __name__ == "__main__":
    main()
