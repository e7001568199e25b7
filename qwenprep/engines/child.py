"""A serving engine running as a child in its own process group: signals go to the whole
group (the engine's workers and helpers live there), stop() escalates SIGINT -> SIGTERM ->
SIGKILL and leaves nothing behind, exit codes read as a shell reports them. The vLLM and the
SGLang handles both build on this.

Also the engine's log: the child writes into a log file (LogTee), which a thread copies to
our stderr as it grows, so that when the engine ends before it is ready the lines that say
why can be picked out of the file (cause_lines) instead of scrolling past.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from qwenprep.errors import EXIT_CANNOT_PROCEED, QwenprepError


def exit_code(rc: int) -> int:
    """A child's return code as a shell reports it: killed by signal N -> 128 + N."""
    return 128 - rc if rc < 0 else rc


class EngineStartFailed(QwenprepError):
    """The engine ended before it was ready. Exit 3 (cannot proceed), never the engine's own
    code: before `ready`, serve's exit codes are qwenprep's (0/1/2/3/130); the engine's code
    is `engine_exit_code` (in --json: error.engine_exit_code), its log `log_path`."""

    exit_code = EXIT_CANNOT_PROCEED

    def __init__(
        self,
        message: str,
        *,
        engine_exit_code: int,
        log_path: str | None,
        cause: list[str],
        causes: list[str],
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint, path=log_path)
        self.engine_exit_code = engine_exit_code
        self.log_path = log_path
        self.cause = cause  # the log lines that say why
        self.causes = causes  # ids of the recognised causes ("port_in_use", ...)

    def details(self) -> dict[str, object]:
        return {
            "engine_exit_code": self.engine_exit_code,
            "log": self.log_path,
            "cause": list(self.cause),
            "causes": list(self.causes),
        }


def spawn(
    argv: Sequence[str],
    env: dict[str, str],
    stdout: IO[Any] | int | None,
    stderr: IO[Any] | int | None,
    cleanup: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ARGV with ENV as a child in its own process group (signals reach it only through
    us), stdin closed. EngineError if it cannot start (CLEANUP run first)."""
    try:
        return subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    except OSError as e:
        from qwenprep.engines.probe import EngineError

        if cleanup is not None:
            cleanup()
        raise EngineError(f"cannot start {argv[0]}: {e}") from None


class ChildGroup:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.signalled: int | None = None  # the last signal passed on by send_signal

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send_signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.signalled = sig
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def poll_models(
        self,
        timeout: float,
        *,
        models: Callable[[], dict[str, Any]],
        ended: Callable[[int], Exception],
        who: str,
        url: str,
    ) -> dict[str, Any]:
        """Poll MODELS (/v1/models at URL) every half second until it answers, its answer
        returned. ENDED(rc): what to raise when the child ends first; EngineError (WHO did not
        answer; the child stopped) after TIMEOUT seconds."""
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise ended(rc)
            try:
                return models()
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                from qwenprep.engines.probe import EngineError

                self.stop()
                raise EngineError(
                    f"{who} did not answer {url}/v1/models within {timeout:g} s; stopped it.",
                    hint="raise --ready-timeout for big checkpoints.",
                )
            time.sleep(0.5)

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


# ------------------------------------------------------------------ the engine's log
class LogTee:
    """The child's stdout and stderr go to PATH, appended to (a log a deployer keeps grows:
    an existing file keeps its lines, and a separator line marks where this run begins, at
    byte `offset`); ECHO (a file descriptor, e.g. our stderr) gets a copy of this run's part
    as the file grows, from a thread. The child writes to the file itself, so its log survives
    us. A symlink, or anything but a regular file, is refused (exit 3): never written
    through."""

    def __init__(self, path: Path, echo: int | None) -> None:
        import stat
        import time

        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK
        flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        if self.path.is_symlink():
            raise _log_refused(self.path, "is a symlink")
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            raise QwenprepError(
                f"cannot write the engine log {self.path}: {e.strerror or e}.",
                hint="name a writable file with --log-file.",
                path=str(self.path),
            ) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise _log_refused(self.path, "is not a regular file")
        self.file = os.fdopen(fd, "ab")
        if st.st_size:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            lead = b"" if _ends_with_newline(self.path) else b"\n"
            self.file.write(
                lead + f"===== qwenprep serve: new engine run, {stamp} =====\n".encode()
            )
            self.file.flush()
        self.offset = os.fstat(fd).st_size  # where this run's lines begin
        self.echo = echo
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.echo is not None:
            self._thread = threading.Thread(target=self._follow, daemon=True)
            self._thread.start()

    def _follow(self) -> None:
        assert self.echo is not None
        with open(self.path, "rb") as src:
            src.seek(self.offset)
            while True:
                chunk = src.read(65536)
                if chunk:
                    try:
                        os.write(self.echo, chunk)
                    except OSError:
                        return
                    continue
                if self._done.is_set():
                    return
                self._done.wait(0.2)

    def close(self) -> None:
        """Copy what is left and stop the thread (the file stays)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(10)
        self.file.close()


def _log_refused(path: Path, why: str) -> QwenprepError:
    from qwenprep.errors import ConflictError

    return ConflictError(
        f"--log-file {path}: it {why}; refusing to write the engine log through it.",
        hint="name a regular file (or a new name) with --log-file.",
        path=str(path),
    )


def _ends_with_newline(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except OSError:
        return False


# A log line as Python and vLLM print it: "(EngineCore pid=12) ERROR 11-26 02:17:10
# [core.py:1510] message"; the prefix is optional (a bare traceback line has none).
_PREFIX = re.compile(
    r"^(?:\([\w.-]+ pid=\d+\)\s+)?(?:(?P<level>DEBUG|INFO|WARNING|ERROR|"
    r"CRITICAL)\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+\[[^\]]*\]\s?)?"
)
# the last line of a traceback: "ValueError: ...", "OSError: [Errno 98] ...",
# "torch.OutOfMemoryError: ...", "AssertionError: ..."
_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit)(?::\s|$)")


def cause_lines(text: str, limit: int = 8) -> list[str]:
    """The lines of an engine log that say why it stopped: exceptions (a traceback's last
    line) and ERROR/CRITICAL log lines that are not traceback frames; prefixes stripped, each
    message once, the last LIMIT in order."""
    seen: dict[str, None] = {}
    for raw in text.splitlines():
        m = _PREFIX.match(raw)
        level = m.group("level") if m else None
        msg = raw[m.end() :] if m else raw
        msg = msg.rstrip()
        stripped = msg.strip()
        if not stripped:
            continue
        frame = (
            msg[:1].isspace()
            or stripped.startswith(("Traceback", 'File "', "^", "~"))
            or set(stripped) <= set("^~ ")
        )
        if _EXCEPTION.match(stripped) or (level in ("ERROR", "CRITICAL") and not frame):
            seen.pop(stripped, None)
            seen[stripped] = None
    lines = list(seen)
    return lines[-limit:]


def read_tail(path: Path, limit: int = 512 * 1024, since: int = 0) -> str:
    """The last LIMIT bytes of a log file from byte SINCE on (this run's part of a log that
    grows: LogTee.offset) as text ('' when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(since, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def get_json(url: str, timeout: float) -> dict[str, Any]:
    """GET URL (a server this process started), its JSON answer: the engines' /v1/models and
    SGLang's /server_info."""
    import urllib.request  # lazily: check/verify/plan never need it (~14 ms to import)

    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (local URL)
        data: dict[str, Any] = json.loads(resp.read().decode("utf-8"))
        return data
