"""Timing helpers shared by the benchmarks: medians of repeated runs, whole commands included."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from typing import Callable


def median_time(fn: Callable[[], object], runs: int, *, warm: bool = False) -> float:
    """Median wall time of FN over RUNS calls (one untimed call first when WARM)."""
    if warm:
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def command_time(argv: list[str], runs: int, *, warm: bool = True) -> float:
    """Median wall time of running ARGV to completion (output discarded; must exit 0)."""
    return median_time(
        lambda: subprocess.run(argv, capture_output=True, check=True), runs, warm=warm
    )


def bytecode_env(cache: str) -> dict[str, str]:
    """The environment with Python's bytecode cache on (in CACHE): as after `pip install`,
    where every module is compiled once. With PYTHONDONTWRITEBYTECODE=1 (some sandboxes and
    CI images set it) every command would compile each qwenprep module it imports anew."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    return env


def interleaved(
    argvs: dict[str, list[str]],
    *,
    runs: int,
    rounds: int,
    ok: tuple[int, ...] = (0,),
    env: dict[str, str] | None = None,
) -> dict[str, list[float]]:
    """Per round, the median wall time of each named command over RUNS runs, the commands
    taking turns run by run (a burst of load on a shared machine hits them all alike).
    Returns {name: [median of round 1, round 2, ...]}. One untimed run of each first."""

    def once(argv: list[str]) -> float:
        t = time.perf_counter()
        r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        dt = time.perf_counter() - t
        if r.returncode not in ok:
            raise SystemExit(f"{argv[0]} exited {r.returncode}: {r.stderr.decode()[-2000:]}")
        return dt

    for argv in argvs.values():
        once(argv)
    out: dict[str, list[float]] = {name: [] for name in argvs}
    for _ in range(rounds):
        times: dict[str, list[float]] = {name: [] for name in argvs}
        for _ in range(runs):
            for name, argv in argvs.items():
                times[name].append(once(argv))
        for name in argvs:
            out[name].append(statistics.median(times[name]))
    return out


def ratio_rows(
    medians: dict[str, list[float]], base: str, targets: dict[str, float] | None = None
) -> list[tuple[str, ...]]:
    """Table rows: each command's per-round medians, their median, and the median of the
    per-round ratios against BASE (with the target where one is given)."""
    rows = []
    for name, ts in medians.items():
        ratios = [t / b for t, b in zip(ts, medians[base], strict=True)]
        target = (targets or {}).get(name)
        rows.append(
            (
                name,
                " ".join(f"{t * 1e3:.0f}" for t in ts),
                f"{statistics.median(ts) * 1e3:.0f} ms",
                "1.00x (baseline)"
                if name == base
                else f"{statistics.median(ratios):.2f}x"
                + (f" (target <= {target:.2f}x)" if target else ""),
            )
        )
    return rows


def print_table(rows: list[tuple[str, ...]], head: tuple[str, ...]) -> None:
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    for r in (head, tuple("-" * w for w in widths), *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
