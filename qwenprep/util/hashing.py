"""Content hashes of checkpoint files, computed in parallel, and the hash record qwenprep keeps.

Algorithms are the ones the Hugging Face hub names blobs by: "sha256" (LFS files, the shards)
and "git-sha1" (small files in git: sha1 of b"blob <len>\\0" + bytes).

Parallelism is across files: one sha256 is sequential, but hashlib releases the GIL while it
hashes a large buffer, so a thread pool hashes as many files at once as there are cores.
Each worker reads with readinto into one reused 1 MiB buffer (no per-chunk allocation): small
enough to stay in the CPU's cache between the copy and the hash, which beat 16 MiB by 10% and
made hashlib faster than one `openssl dgst` per file, all at once (benchmarks/bench_deep.py).
Only regular files are opened (a FIFO or a device would block or never end). Ctrl-C stops
every worker at its next buffer and drops the queued files: the interrupt then propagates.

The hash record (`<dir>/.qwenprep/hashes.json`) is where a plain directory's hashes live once
qwenprep has fetched or first deep-verified it:
    {"schema_version": 1, "tool": "qwenprep", "algorithm": "sha256",
     "files": {"<relative posix name>": {"size": 123, "sha256": "<hex>"}}}
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qwenprep.util.jsonio import atomic_write_text

Algorithm = Literal["sha256", "git-sha1"]
ProgressFn = Callable[[int, int], None]  # (bytes hashed so far, bytes in all)

CHUNK = 1024 * 1024
RECORD_DIR = ".qwenprep"
RECORD_NAME = "hashes.json"


@dataclass(frozen=True)
class HashJob:
    path: Path  # opened (links followed)
    algorithm: Algorithm


@dataclass(frozen=True)
class HashResult:
    path: Path
    algorithm: Algorithm
    size: int
    hexdigest: str | None  # None when the file could not be read
    error: str | None = None
    not_regular: bool = False  # a FIFO, device, socket or directory: refused, never read


class NotRegularFile(OSError):
    """PATH is there but is not a regular file (strerror says what it is)."""


class RecordError(OSError):
    """A hash record exists but cannot be used (strerror says why)."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def not_regular(path: Path) -> str | None:
    """ "not a regular file (a FIFO)" and the like when PATH (links followed) exists and is not
    a regular file; None for a regular file or when there is nothing there (stat only)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else f"not a regular file ({_kind(mode)})"


def open_regular(path: Path) -> io.FileIO:
    """Open PATH (links followed) for unbuffered binary reading, only when it is a regular
    file. O_NONBLOCK makes opening a FIFO return at once instead of waiting for a writer; the
    fstat then refuses it. Raises NotRegularFile (an OSError) or the open's own OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, f"not a regular file ({_kind(mode)})", str(path))
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def read_regular_text(path: Path) -> str:
    """A regular file's UTF-8 text; OSError (NotRegularFile for a FIFO, ...) or
    UnicodeDecodeError otherwise."""
    with open_regular(path) as f:
        return f.read().decode("utf-8")


def env_key(env: dict[str, str], prefixes: tuple[str, ...]) -> bytes:
    """The part of ENV an engine probe's answer depends on (the variables named with one of
    PREFIXES), as bytes for a cache key: the vLLM and SGLang gates' caches both take it."""
    return json.dumps(sorted((k, v) for k, v in env.items() if k.startswith(prefixes))).encode()


def git_blob_sha1_of(data: bytes) -> str:
    import hashlib  # here, not at the top: OpenSSL's start-up is paid only by who hashes

    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def algorithm_for_etag(etag: str) -> Algorithm | None:
    """Hub etags: 64 hex digits are a sha256 (LFS), 40 a git blob sha1."""
    e = etag.strip().strip('"').lower()
    if len(e) == 64 and all(c in "0123456789abcdef" for c in e):
        return "sha256"
    if len(e) == 40 and all(c in "0123456789abcdef" for c in e):
        return "git-sha1"
    return None


_local = threading.local()


def _buffer() -> memoryview:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = memoryview(bytearray(CHUNK))
        _local.buf = buf
    return buf


def hash_file(
    job: HashJob, on_bytes: Callable[[int], None] | None = None, stop: threading.Event | None = None
) -> HashResult:
    """Hash one file in CHUNK reads. Never raises for I/O problems: they go in .error. A set
    `stop` ends it at the next chunk with error "interrupted"."""
    import hashlib

    try:
        with open_regular(job.path) as f:
            size = os.fstat(f.fileno()).st_size
            if hasattr(os, "posix_fadvise"):
                try:
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                except OSError:
                    pass
            h = hashlib.sha256() if job.algorithm == "sha256" else hashlib.sha1(b"blob %d\0" % size)
            buf = _buffer()
            seen = 0
            while True:
                if stop is not None and stop.is_set():
                    return HashResult(job.path, job.algorithm, size, None, "interrupted")
                n = f.readinto(buf)
                if not n:
                    break
                h.update(buf[:n])
                seen += n
                if on_bytes is not None:
                    on_bytes(n)
            if seen != size:
                return HashResult(
                    job.path,
                    job.algorithm,
                    size,
                    None,
                    f"size changed while reading ({seen} of {size} bytes)",
                )
            return HashResult(job.path, job.algorithm, size, h.hexdigest())
    except NotRegularFile as e:
        return HashResult(job.path, job.algorithm, -1, None, e.strerror, not_regular=True)
    except OSError as e:
        return HashResult(job.path, job.algorithm, -1, None, e.strerror or str(e))


def hash_files(
    jobs: list[HashJob], *, workers: int | None = None, progress: ProgressFn | None = None
) -> list[HashResult]:
    """Hash all jobs, biggest first, `workers` at a time (default: CPU count). Results keep
    the order of `jobs`. progress(done, total) is called from worker threads, serialised.

    KeyboardInterrupt (or any exception) in the waiting thread stops the running workers at
    their next chunk, cancels the queued files and is re-raised once the workers are done."""
    sizes = []
    for j in jobs:
        try:
            sizes.append(os.stat(j.path).st_size)
        except OSError:
            sizes.append(0)
    total = sum(sizes)
    lock = threading.Lock()
    done = [0]

    def on_bytes(n: int) -> None:
        with lock:
            done[0] += n
            if progress is not None:
                progress(done[0], total)

    if progress is not None:
        progress(0, total)
    order = sorted(range(len(jobs)), key=lambda i: -sizes[i])
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    results: list[HashResult | None] = [None] * len(jobs)
    if n_workers == 1:
        for i in order:
            results[i] = hash_file(jobs[i], on_bytes)
        return [r for r in results if r is not None]
    from concurrent.futures import ThreadPoolExecutor  # (and logging): only when hashing

    stop = threading.Event()
    ex = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="qwenprep-hash")
    try:
        futs = {i: ex.submit(hash_file, jobs[i], on_bytes, stop) for i in order}
        for i, fut in futs.items():
            results[i] = fut.result()
    except BaseException:
        stop.set()
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
    return [r for r in results if r is not None]


def _eta(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class ProgressMeter:
    """The text of hashing progress, with throughput and ETA (the caller prints it).

    On a terminal (tty=True) update() returns a line to redraw in place (starting with a
    carriage return) at most every `redraw_s`; elsewhere (a log, a CI job) a full line each
    time another 10% is done or `every_s` seconds have passed, so a long run is never silent.
    The last update (done == total) always returns a line."""

    def __init__(
        self,
        *,
        tty: bool,
        every_s: float = 10.0,
        redraw_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tty, self.every_s, self.redraw_s, self.clock = tty, every_s, redraw_s, clock
        self.start = clock()
        self.last_t: float | None = None
        self.last_decile = -1
        self.finished = False

    def text(self, done: int, total: int, now: float) -> str:
        from qwenprep.util.sizes import format_bytes

        pct = 100 * done // max(total, 1)
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        if done >= total:
            tail = f"done in {_eta(elapsed)}"
        elif done > 0 and elapsed >= 0.05:
            tail = f"ETA {_eta((total - done) / rate)}"
        else:
            tail = "ETA -"
        speed = f"{format_bytes(rate)}/s" if done > 0 else "- /s"
        amount = f"{format_bytes(done)} of {format_bytes(total)}"
        if self.tty:
            return f"\rhashing [{'#' * (pct // 4):<25}] {pct:3d}% {amount}, {speed}, {tail}  "
        return f"hashing: {pct}% ({amount}), {speed}, {tail}"

    def update(self, done: int, total: int) -> str | None:
        if self.finished:
            return None
        now = self.clock()
        last = done >= total
        decile = 10 * done // max(total, 1)
        if last:
            self.finished = True
        elif self.tty:
            if self.last_t is not None and now - self.last_t < self.redraw_s:
                return None
        elif (
            decile <= self.last_decile
            and self.last_t is not None
            and now - self.last_t < self.every_s
        ):
            return None
        self.last_t, self.last_decile = now, decile
        return self.text(done, total, now)


def record_path(root: Path) -> Path:
    return root / RECORD_DIR / RECORD_NAME


def read_record(root: Path) -> dict[str, dict[str, Any]]:
    """The files section of root's hash record; {} when there is none. RecordError when one is
    there but cannot be read (a FIFO, no permission, not JSON): never silently replaced."""
    p = record_path(root)
    try:
        obj = json.loads(read_regular_text(p))
    except FileNotFoundError:
        return {}
    except NotRegularFile as e:
        raise RecordError(errno.EINVAL, e.strerror or "not a regular file", str(p)) from None
    except OSError as e:
        if e.errno == errno.ENOTDIR:  # .qwenprep is a file: no record under it
            return {}
        raise RecordError(e.errno or errno.EIO, e.strerror or str(e), str(p)) from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise RecordError(errno.EINVAL, f"not JSON: {e}", str(p)) from None
    files = obj.get("files") if isinstance(obj, dict) else None
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(v, dict)}


def _writable_record(root: Path) -> Path:
    """Where write_record may write: never through a symlinked .qwenprep (it may lead outside
    the checkpoint), never over a hashes.json qwenprep did not write (no "tool": "qwenprep"):
    RecordError says why and what to do."""
    p = record_path(root)
    if p.parent.is_symlink():
        raise RecordError(
            errno.ELOOP,
            f"{RECORD_DIR} is a symlink (to {os.readlink(p.parent)}), which may lead outside "
            "the checkpoint; not writing through it (make it a plain directory to record)",
            str(p.parent),
        )
    if p.is_symlink() or p.exists():
        try:
            obj = json.loads(read_regular_text(p))
        except (OSError, ValueError, RecursionError):
            obj = None
        if p.is_symlink() or not isinstance(obj, dict) or obj.get("tool") != "qwenprep":
            raise RecordError(
                errno.EEXIST,
                f"{RECORD_DIR}/{RECORD_NAME} exists and was not written by qwenprep; refusing "
                "to replace it (move it away to record hashes there)",
                str(p),
            )
    return p


def write_record(root: Path, entries: dict[str, dict[str, Any]]) -> Path:
    """Merge entries ({name: {"size", "sha256"}}) into root's hash record, atomically
    (_writable_record: only a record qwenprep wrote is replaced, never through a link)."""
    p = _writable_record(root)
    files = read_record(root)
    files.update(entries)
    p.parent.mkdir(exist_ok=True)
    obj = {
        "schema_version": 1,
        "tool": "qwenprep",
        "algorithm": "sha256",
        "files": dict(sorted(files.items())),
    }
    atomic_write_text(p, json.dumps(obj, indent=2) + "\n")
    return p
