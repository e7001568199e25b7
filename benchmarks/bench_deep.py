"""verify --deep against the hash-rate limit (issue 10, item 8): `qwenprep verify --deep`,
as a command, vs one `openssl dgst -sha256` per file, all started at once (the baseline),
over the same files, page cache warm, measured in the same run, taking turns.

    python benchmarks/bench_deep.py [--mib 384] [--runs 3] [--rounds 3]

The checkpoint: 8 shards of seeded random bytes (--mib in all) + config, index and the
other small files, with its hashes recorded first (verify --deep --record), so every timed
run hashes every byte and compares. Target: <= 1.10x the baseline.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _timing import bytecode_env, interleaved, print_table, ratio_rows  # noqa: E402

from qwenprep.testing.synth import make_shaped_checkpoint, tiny_fp8_config  # noqa: E402

# every file hashed at once, one openssl process each: the machine's parallel sha256 rate
OPENSSL = 'for f in "$@"; do openssl dgst -sha256 "$f" >/dev/null & done; wait'


def deep_checkpoint(dest: Path, mib: float) -> Path:
    """8 shards of random data totalling ~mib MiB (qwen3_moe FP8 shape, big experts)."""
    cfg = tiny_fp8_config(layers=8)
    cfg.update(
        hidden_size=2048,
        moe_intermediate_size=1024,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=128,
    )
    per_expert = 3 * 2048 * 1024  # gate/up/down, FP8
    cfg["num_experts"] = max(2, round(mib * 2**20 / (8 * per_expert)))
    return make_shaped_checkpoint(dest, config=cfg, shards=8, random_data=True, seed=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=float, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--no-pyc",
        action="store_true",
        help="keep the environment's PYTHONDONTWRITEBYTECODE (default: a bytecode "
        "cache, as an installed qwenprep has)",
    )
    args = ap.parse_args()
    if shutil.which("openssl") is None:
        raise SystemExit("openssl is needed as the baseline")
    exe = str(Path(sys.executable).parent / "qwenprep")
    with tempfile.TemporaryDirectory(prefix="qwenprep-bench-", dir="/tmp") as tmp:
        env = None if args.no_pyc else bytecode_env(str(Path(tmp) / "pycache"))
        ck = deep_checkpoint(Path(tmp) / "deep", args.mib)
        files = sorted(str(p) for p in ck.iterdir() if p.is_file())
        total = sum(Path(f).stat().st_size for f in files)
        interleaved(
            {"record": [exe, "verify", str(ck), "--deep", "--record", "--json"]},
            runs=0,
            rounds=0,
            ok=(0, 1),
            env=env,
        )
        what = f"{len(files)} files, {total / 2**20:.0f} MiB"
        argvs = {
            f"openssl dgst -sha256, one per file, in parallel ({what})": [
                "sh",
                "-c",
                OPENSSL,
                "sh",
                *files,
            ],
            "qwenprep verify DIR --deep --json": [exe, "verify", str(ck), "--deep", "--json"],
        }
        medians = interleaved(argvs, runs=args.runs, rounds=args.rounds, env=env)
    base = next(iter(argvs))
    print_table(
        ratio_rows(medians, base, {"qwenprep verify DIR --deep --json": 1.10}),
        ("command", "round medians (ms)", "median", "vs openssl"),
    )


if __name__ == "__main__":
    main()
