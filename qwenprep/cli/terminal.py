"""What the terminal can show, for every command's output: colour (NO_COLOR, TERM=dumb) and
lines redrawn in place. Imports nothing of qwenprep, so _common and tables both use it."""

from __future__ import annotations

import os
from typing import Any


def colour_wanted() -> bool:
    """Colour unless NO_COLOR is set (https://no-color.org: any non-empty value) or the
    terminal says it has none (TERM=dumb)."""
    return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def animated(stream: Any) -> bool:
    """Whether STREAM takes a line redrawn in place (a spinner, a progress bar): a terminal
    that is not TERM=dumb (Emacs' shell, some CI logs), where cursor movement would print
    as garbage."""
    return bool(stream.isatty()) and os.environ.get("TERM") != "dumb"
