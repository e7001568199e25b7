"""A serving engine running as a child in its own process group: signals go to the whole
group (the engine's workers and helpers live there), stop() escalates SIGINT -> SIGTERM ->
SIGKILL and leaves nothing behind, exit codes read as a shell reports them. The vLLM and the
SGLang handles both build on this."""

from __future__ import annotations

import os
import signal
import subprocess


def exit_code(rc: int) -> int:
    """A child's return code as a shell reports it: killed by signal N -> 128 + N."""
    return 128 - rc if rc < 0 else rc


class ChildGroup:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send_signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int:
        return exit_code(self.proc.wait(timeout))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT (the engine shuts down cleanly), then SIGTERM, then SIGKILL to the group."""
        steps = ((signal.SIGINT, timeout), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0))
        for sig, wait_s in steps:
            if self.proc.poll() is not None:
                break
            self.send_signal(sig)
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
        # the engine core and helpers live in the same group; make sure none is left
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.wait()
