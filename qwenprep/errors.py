"""The one exception family of qwenprep. Imports nothing else from the package.

Exit codes (stable, pipelines gate on them):
  0 ok; 1 checks ran and found problems; 2 bad invocation; 3 cannot proceed
  (missing input, conflict, I/O); 130 interrupted (Ctrl-C / SIGINT), as shells report it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECKS_FAILED = 1
EXIT_USAGE = 2
EXIT_CANNOT_PROCEED = 3
EXIT_INTERRUPTED = 130


class QwenprepError(Exception):
    """An error with a message for people: what, where, and what to do next."""

    exit_code: int = EXIT_CANNOT_PROCEED

    def __init__(self, message: str, *, hint: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.path = path

    def __str__(self) -> str:
        text = self.message
        if self.hint:
            text += f"\nHint: {self.hint}"
        return text


class UsageError(QwenprepError):
    """The invocation itself is wrong (unknown context, conflicting options)."""

    exit_code = EXIT_USAGE


class InputError(QwenprepError):
    """An input is missing, unreadable or malformed."""


class ConflictError(QwenprepError):
    """The requested output would clobber something qwenprep does not own."""


class ChecksFailed(QwenprepError):
    """Checks ran and found problems."""

    exit_code = EXIT_CHECKS_FAILED


class Interrupted(QwenprepError):
    """The user stopped the command (SIGINT); nothing half-done was left behind."""

    exit_code = EXIT_INTERRUPTED
