"""Stand-ins for what this machine lacks, shared by tests in several folders: an executable
`nvidia-smi` that prints what a test gives it (no GPU here), and an inotify watch that counts
the opens and reads of one file (honest evidence that a process read it)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
import struct
import sys
from pathlib import Path

H200_CSV = "".join(f"NVIDIA H200, 143771, {143771 - 500 - i}\n" for i in range(8))


def fake_smi(dir_: Path, stdout: str, *, rc: int = 0, expect_args: bool = True) -> Path:
    """Write an executable `nvidia-smi` into dir_ that checks its arguments like the real one
    would be called and prints stdout."""
    dir_.mkdir(parents=True, exist_ok=True)
    exe = dir_ / "nvidia-smi"
    check = (
        "if sys.argv[1:] != ['--query-gpu=name,memory.total,memory.free', "
        "'--format=csv,noheader,nounits']:\n"
        "    print('bad args', sys.argv[1:], file=sys.stderr); sys.exit(9)\n"
        if expect_args
        else ""
    )
    exe.write_text(
        f"#!{sys.executable}\nimport sys\n{check}"
        f"sys.stdout.write({stdout!r})\n"
        + (
            "print('NVIDIA-SMI has failed because it could not communicate with the NVIDIA "
            "driver.', file=sys.stderr)\n"
            if rc
            else ""
        )
        + f"sys.exit({rc})\n"
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


# ------------------------------------------------------------------ inotify (Linux)
IN_ACCESS, IN_OPEN = 0x001, 0x020


class OpenWatch:
    """Counts open/read events on one file (inotify via libc): honest evidence that a
    process opened it, whatever the filesystem's atime policy."""

    def __init__(self, path: Path) -> None:
        self.libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if self.libc.inotify_add_watch(self.fd, os.fsencode(path), IN_OPEN | IN_ACCESS) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")

    def events(self) -> int:
        n = 0
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return n
            off = 0
            while off < len(buf):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", buf, off)
                off += 16 + length
                n += 1

    def close(self) -> None:
        os.close(self.fd)
