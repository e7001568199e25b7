"""What vllm_probe.py and sglang_probe.py share: the answer line, distribution versions, error
lines, plain JSON values, the comparison of an argv with qwenprep's own part of it, and the
command dispatch. Run inside the engine's interpreter (imported by the probes from beside
them), so it needs nothing from qwenprep and imports no engine.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

MARKER = "QWENPREP_PROBE "


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write("\n" + MARKER + json.dumps(obj) + "\n")
    sys.stdout.flush()


def dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def short_error(e: BaseException, one_line: bool = False) -> str:
    """``Type: message``; ONE_LINE folds the message's white space (newlines too)."""
    text = str(e).strip() or type(e).__name__
    if one_line:
        text = " ".join(text.split())
    return f"{type(e).__name__}: {text}"


def exit_line(stderr: str, code: Any) -> str:
    """What an argparse-style parser said before it exited with CODE: its ``: error:`` line,
    else its last line, else the exit code."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    said = [ln for ln in lines if ": error: " in ln] or lines or [f"exit {code}"]
    return said[-1]


def plain(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    return str(v)


def gate_items(
    items_json: str,
    parse: Callable[[list[str]], tuple[Any, str | None]],
    own_dests: tuple[str, ...],
    shown_dests: tuple[str, ...],
    results: list[dict[str, Any]],
) -> Iterator[tuple[dict[str, Any], Any, Any, dict[str, Any]]]:
    """For each item {"argv": [...], "base": N} of ITEMS_JSON, the argv parsed by the engine's
    own PARSE ((namespace, None), or (None, its error line)). A refusal goes to RESULTS as a
    "parse" stage failure; otherwise (item, parsed, base, out): BASE is argv[:N], qwenprep's own
    part, parsed (once per prefix; None when refused), OUT says the settings of SHOWN_DESTS and
    which of OWN_DESTS the rest of the argv changed ([base, parsed]; none when BASE is None)."""
    bases: dict[tuple[str, ...], Any] = {}
    for item in json.loads(items_json):
        argv = [str(a) for a in item["argv"]]
        parsed, error = parse(argv)
        if parsed is None:
            results.append({"ok": False, "stage": "parse", "error": error})
            continue
        key = tuple(argv[: int(item["base"])])
        if key not in bases:
            bases[key] = parse(list(key))[0]
        base = bases[key]
        changed = (
            {}
            if base is None
            else {
                d: [plain(getattr(base, d, None)), plain(getattr(parsed, d, None))]
                for d in own_dests
                if getattr(base, d, None) != getattr(parsed, d, None)
            }
        )
        shown = {d: plain(getattr(parsed, d, None)) for d in shown_dests}
        yield item, parsed, base, {"args": shown, "changed": changed}


def main(
    argv: list[str],
    commands: Mapping[str, tuple[int | None, Callable[..., dict[str, Any]]]],
    usage: str | None,
) -> int:
    """Run the command ARGV[0] of COMMANDS (name: (how many arguments it takes, None for any
    number, ignored; the function)) and print its answer; USAGE on stderr and exit 2 for
    anything else."""
    cmd = argv[0] if argv else ""
    if cmd in commands:
        count, fn = commands[cmd]
        if count is None:
            emit(fn())
            return 0
        if len(argv) == count + 1:
            emit(fn(*argv[1:]))
            return 0
    sys.stderr.write(usage or "")
    return 2
