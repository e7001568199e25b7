"""Shared fixtures. Fixtures are copied into tmp_path before anything mutates them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner, Result
from hypothesis import settings

# No test depends on wall-clock speed: hypothesis never times an example (its default 200 ms
# deadline, or any other, fails good work on a loaded machine). A test's own settings() add to
# this profile; none of them sets a deadline (tests/test_habits.py holds that).
settings.register_profile("qwenprep", deadline=None)
settings.load_profile("qwenprep")

# huggingface_hub reads HF_HUB_OFFLINE (and its other settings) once, when first imported.
# Import it now, from the environment the suite started in, so a test that monkeypatches
# HF_HUB_OFFLINE=1 cannot leave later in-process tests of this run "offline".
import huggingface_hub.constants  # noqa: E402,F401  (isort: skip)

# `qwenprep patch` without --out writes under $HF_HOME/qwenprep/overlays: never the real one
# from a test (subprocesses inherit this too).
import tempfile  # noqa: E402  (isort: skip)

os.environ["QWENPREP_OVERLAYS"] = tempfile.mkdtemp(prefix="qwenprep-test-overlays-")
# `qwenprep serve` keeps its past-native request's time in $HF_HOME/qwenprep/measurements.jsonl
# (qwenprep.planning.measured): a test's serve keeps it in a file of the run's own, never the
# user's.
os.environ["QWENPREP_MEASUREMENTS"] = str(
    Path(tempfile.mkdtemp(prefix="qwenprep-test-measurements-")) / "measurements.jsonl"
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
TINY = EXAMPLES / "tiny-qwen3-coder"
TINY_FP8 = EXAMPLES / "tiny-qwen3-coder-fp8"
SHARED_REFERENCE = (
    REPO.parent / "shared" / "reference" / "qwen3-coder-480b-a35b-instruct-fp8.config.json"
)
QWENPREP_BIN = Path(sys.executable).parent / "qwenprep"


def tree_state(root: Path) -> dict[str, Any]:
    """Everything that must not change in a source checkpoint: names, link targets, sizes,
    mtimes, modes and the sha256 of every small file (big sparse shards: size + mtime)."""
    state: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        st = os.lstat(p)
        entry: dict[str, Any] = {"mode": st.st_mode, "mtime": st.st_mtime_ns, "size": st.st_size}
        if p.is_symlink():
            entry["link"] = os.readlink(p)
        elif p.is_file() and st.st_size < 64 * 1024 * 1024:
            entry["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
        state[rel] = entry
    return state


def many_files(src: Path, n: int = 10000) -> None:
    """Enough files that building or removing an overlay takes about a second."""
    extra = src / "extra"
    for i in range(n):
        (extra / f"f{i:05d}.txt").write_bytes(b"x")


def timed_run(argv: list[str]) -> float:
    t = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    return time.monotonic() - t


class KillDelays:
    """When to kill -9 a run that took DURATION once: at each fraction of it, and, for each
    kill that did not land (the run was already over: this machine is shared, and one timed
    run says little about the next), once more at half that delay, until two kills have
    landed or 12 tries are spent. The caller reports each try with landed()."""

    def __init__(self) -> None:
        self.hits = 0
        self._missed: list[bool] = []

    def landed(self, hit: bool) -> None:
        self.hits += hit
        self._missed.append(not hit)

    def __call__(self, duration: float, fractions: tuple[float, ...]) -> Iterator[float]:
        queue = [duration * f for f in fractions]
        tries = 0
        while queue and tries < 12:
            delay = queue.pop(0)
            tries += 1
            yield delay
            if self._missed and self._missed[-1] and self.hits < 2:
                queue.append(delay / 2)


def run_capped(args: list[str], mib: int = 1024) -> subprocess.CompletedProcess[str]:
    """The console script with its address space capped at MIB MiB (RLIMIT_AS): a command
    that would build something huge fails there (MemoryError) instead of taking the machine's
    memory. A hang guard, not a speed test: a generous timeout."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mib * 2**20, mib * 2**20))

    return subprocess.run(
        [str(QWENPREP_BIN), *args],
        capture_output=True,
        text=True,
        preexec_fn=cap,
        timeout=600,
        check=False,
    )


def invoke(*args: str, input: str | None = None) -> Result:
    from qwenprep.cli import cli

    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def cli() -> Callable[..., Result]:
    return invoke


@pytest.fixture
def ref_config() -> dict[str, Any]:
    """The 480B FP8 release's config (the shared reference copy when present)."""
    if SHARED_REFERENCE.is_file():
        return json.loads(SHARED_REFERENCE.read_text())
    from qwenprep.testing.synth import qwen3_coder_480b_fp8_config

    return qwen3_coder_480b_fp8_config()


@pytest.fixture
def tiny_src(tmp_path: Path) -> Path:
    dest = tmp_path / "tiny"
    shutil.copytree(TINY, dest)
    return dest


@pytest.fixture
def qwen_src(tmp_path: Path, ref_config: dict[str, Any]) -> Path:
    """A config-only checkpoint dir with the real 480B config (as the release writes it) and a
    few small files, including a subdirectory."""
    d = tmp_path / "Qwen3-Coder-480B-A35B-Instruct-FP8"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(ref_config, indent=2) + "\n")
    (d / "generation_config.json").write_text('{"do_sample": true}\n')
    (d / "tokenizer.json").write_text('{"version": "1.0"}\n')
    (d / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 1000)
    (d / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 2000)
    (d / "extra").mkdir()
    (d / "extra" / "notes.txt").write_text("hello\n")
    return d
