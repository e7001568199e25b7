"""Tables and the engine status line for people, drawn with rich from the plain data the core
returns (the core never prints). Colour and box drawing only on a terminal, colour only when
NO_COLOR is unset (https://no-color.org); anywhere else plain ASCII with no escape codes."""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import IO, Any

from qwenprep.cli.terminal import animated, colour_wanted

PLAIN_WIDTH = 10_000  # not a terminal: no wrapping, each row stays one greppable line


def _utf8(stream: IO[str]) -> bool:
    return (getattr(stream, "encoding", None) or "").lower().replace("-", "") == "utf8"


def _console(stream: IO[str], buffer: IO[str]) -> Any:
    """A rich Console writing to BUFFER, drawn for STREAM: styled when STREAM is a terminal."""
    from rich.console import Console

    tty = stream.isatty()
    colour = tty and colour_wanted()
    return Console(
        file=buffer,
        force_terminal=tty,
        no_color=not colour,
        color_system="standard" if colour else None,
        markup=False,
        emoji=False,
        highlight=False,
        width=shutil.get_terminal_size().columns if tty else PLAIN_WIDTH,
        legacy_windows=False,
    )


def render_plan(
    rows: Sequence[tuple[str, str]],
    table: Sequence[Sequence[str]],
    columns: Sequence[str],
    lines: Sequence[str],
    title: str,
    stream: IO[str] | None = None,
) -> str:
    """The plan for people: ROWS as a (what, value) table, TABLE (COLUMNS, under TITLE) as a
    second one, then LINES; drawn for STREAM (default stdout)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    stream = stream or sys.stdout
    tty = stream.isatty()
    buf = io.StringIO()
    console = _console(stream, buf)
    frame = (box.SIMPLE_HEAD if _utf8(stream) else box.ASCII2) if tty else None

    head = Table(box=frame, show_header=True, header_style="bold", pad_edge=False)
    # narrow terminals wrap cells, never cut them: a number cut short reads as another number
    head.add_column("what", style="cyan", overflow="fold")
    head.add_column("value", overflow="fold")
    for what, value in rows:
        head.add_row(what, value)
    console.print(head)
    if table:
        console.print(Text(title))
        ctx = Table(box=frame, show_header=True, header_style="bold", pad_edge=False)
        for name in columns:
            ctx.add_column(name, justify="right", overflow="fold")
        for cells in table:
            ctx.add_row(
                *[
                    Text(c, style=("green" if c == "yes" else "red" if c == "no" else ""))
                    for c in cells
                ]
            )
        console.print(ctx)
    for line in lines:
        style = ""
        if line.startswith("fits: "):
            style = "bold green" if line == "fits: yes" else "bold red"
        elif line.startswith(("advice: ", "recommendation: ")):
            style = "yellow" if line.startswith("advice") else "bold"
        console.print(Text(line, style=style))
    return "\n".join(ln.rstrip() for ln in buf.getvalue().splitlines())


# ------------------------------------------------------------------ the engine status line

# one status line for every probe running (a probe may run in a thread beside another): it
# shows the newest question and goes when the last answer is in
_lock = threading.Lock()
_asking: list[str] = []
_shown: Any = None  # the rich Status on stderr while any probe runs

QUESTIONS = {
    "discover": "which version it has",
    "readback": "to read the config back",
    "gate": "to read the serve command back",
}


def _short(python: str) -> str:
    parts = python.split("/")
    return python if len(python) <= 40 or len(parts) < 3 else "…/" + "/".join(parts[-2:])


def _version(engine: str, python: str, question: str) -> str:
    """' 0.32.0' when that interpreter's vLLM is known (discovery is cached), else ''."""
    if engine != "vLLM" or question == "discover":
        return ""
    from qwenprep.engines.vllm.core import discover_cached
    from qwenprep.errors import QwenprepError

    try:
        info = discover_cached(python)
    except QwenprepError:
        return ""
    return f" {info.version}" if info is not None else ""


def status_text(engine: str, python: str, question: str) -> str:
    what = QUESTIONS.get(question, f"({question})")
    return f"asking {engine}{_version(engine, python, question)} ({_short(python)}) {what} …"


@contextlib.contextmanager
def probe_status(engine: str, python: str, question: str) -> Iterator[None]:
    """qwenprep.engines.probe's status hook: a spinner on stderr while the engine answers, gone
    when it has; nothing when stderr is not a terminal (stdout, --json's, is never touched)."""
    global _shown
    stream = sys.stderr
    if not animated(stream):
        yield
        return
    text = status_text(engine, python, question)  # may ask for the version (its own status)
    if not _utf8(stream):
        text = text.replace("…", "...")
    with _lock:
        _asking.append(text)
        if _shown is None:
            from rich.console import Console

            console = Console(
                file=stream,
                force_terminal=True,
                no_color=not colour_wanted(),
                color_system="standard" if colour_wanted() else None,
                markup=False,
                emoji=False,
                highlight=False,
            )
            _shown = console.status(text, spinner="dots" if _utf8(stream) else "line")
            _shown.start()
        else:
            _shown.update(text)
    try:
        yield
    finally:
        with _lock:
            _asking.remove(text)
            if _asking:
                _shown.update(_asking[-1])
            else:
                _shown.stop()
                _shown = None


def install_probe_status() -> None:
    """Show probe_status around every engine probe, unless a hook is already installed (a
    caller's own, or this one)."""
    from qwenprep.engines import probe

    if probe.status_hook() is None:
        probe.set_status_hook(probe_status)
