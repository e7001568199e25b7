"""Timing helpers shared by the benchmarks: medians of repeated runs, whole commands included."""

from __future__ import annotations

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
    return median_time(lambda: subprocess.run(argv, capture_output=True, check=True), runs,
                       warm=warm)
