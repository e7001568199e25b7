"""Output for people (issue 12 item 8): `plan` as tables (rich), plain ASCII with no escape
codes when stdout is not a terminal, colour and box drawing on one, NO_COLOR honoured, --json
untouched; a status line on stderr while vLLM reads the config back, through a hook the core
calls (qwenprep.engines.probe.set_status_hook) and the CLI sets. Through the console script on
pipes and pseudo-terminals, and CliRunner; the engine tests run the real vLLM."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import QWENPREP_BIN, TINY, invoke

PLAN = (
    "plan",
    str(TINY),
    "--context",
    "1m",
    "--kv-memory",
    "2GiB",
    "--tp",
    "1",
    "--gpu",
    "H200",
    "--vllm-version",
    "0.32",
)
SGR = re.compile(r"\x1b\[([0-9;]*)m")


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS")
    }
    return {**env, "TERM": "xterm-256color", **extra}  # (a CI's TERM may be dumb)


def _on_tty(
    args: tuple[str, ...], env: dict[str, str], stream: str = "stdout", columns: int = 120
) -> tuple[int, str, str]:
    """The console script with STREAM on a pseudo-terminal (COLUMNS wide) and the other one on
    a pipe: (exit code, what the terminal got, what the pipe got)."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    kw: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    kw[stream] = slave
    proc = subprocess.Popen([str(QWENPREP_BIN), *args], env=env, stdin=subprocess.DEVNULL, **kw)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    other = proc.stderr if stream == "stdout" else proc.stdout
    assert other is not None
    piped = other.read().decode()
    return proc.wait(120), b"".join(chunks).decode(), piped


def _colours(text: str) -> list[str]:
    """The SGR parameters that set a colour (30-37, 39-47, 49, 90-97, 100-107, 38;/48;)."""
    found = []
    for params in SGR.findall(text):
        for p in params.split(";"):
            if p and (30 <= int(p) <= 49 or 90 <= int(p) <= 107):
                found.append(params)
    return found


# ------------------------------------------------------------------ plan as tables


def test_plan_on_a_pipe_is_plain_ascii_tables() -> None:
    r = subprocess.run(
        [str(QWENPREP_BIN), *PLAN], capture_output=True, text=True, timeout=120, env=_env()
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "\x1b" not in out and out.isascii(), out
    lines = out.splitlines()
    assert all(ln == ln.rstrip() for ln in lines)
    # the headline numbers: a (what, value) table, one row a line
    assert re.match(r"^what +value$", lines[0]), lines[0]
    for what, value in (
        ("parallel", "TP 1 x PP 1 x DP 1 (one GPU)"),
        ("KV cache memory per GPU", "2.00 GiB (given; exact)"),
        ("KV cache size", "4,194,304 tokens"),
        ("maximum concurrency", "4.00x at 1,048,576 tokens per request"),
        ("largest context that fits", "4,194,288 tokens"),
    ):
        assert re.search(rf"^{re.escape(what)} +{re.escape(value)}$", out, re.M), (what, out)
    # the context table: its header, then one row per context (1M: 4 requests at once)
    assert re.search(
        r"^ *context +fits +concurrency +prefill floor +prefill typical +"
        r"decode tok/s$",
        out,
        re.M,
    ), out
    row = re.search(
        r"^ *1M\* +yes +4\.00x +(\S+ m?s) +(\S+ m?s-\S+ m?s) +([\d,]+-[\d,]+)$", out, re.M
    )
    assert row, out
    assert re.search(r"^ *256K +yes +16\.00x ", out, re.M)
    # then the lines for people: recommendation, vLLM's own log line, the verdict last
    assert re.search(r"^recommendation: --context ", out, re.M)
    assert (
        "as vLLM logs it: KV cache size: 4,194,304 tokens, Maximum concurrency for "
        "1,048,576 tokens per request: 4.00x"
    ) in lines
    assert lines[-1] == "fits: yes"


def test_plan_that_does_not_fit_says_so_last_and_exits_1() -> None:
    r = invoke(
        "plan",
        str(TINY),
        "--context",
        "1m",
        "--kv-memory",
        "256MiB",
        "--tp",
        "1",
        "--vllm-version",
        "0.32",
    )
    assert r.exit_code == 1
    assert "\x1b" not in r.stdout
    assert r.stdout.splitlines()[-1] == "fits: NO"
    assert re.search(r"^ *1M\* +no +0\.50x ", r.stdout, re.M), r.stdout


def test_plan_on_a_terminal_has_colour_and_boxes_and_no_color_removes_colour() -> None:
    code, out, _ = _on_tty(PLAN, _env())
    assert code == 0
    assert _colours(out), "no colour on a terminal"
    assert "\x1b[32m" in out  # the table's "yes" in green
    assert "\u2500" in out  # box drawing: the header rules
    plain = SGR.sub("", out)
    assert re.search(r"1M\* +yes +4\.00x", plain), plain
    assert "fits: yes" in plain
    code, out, _ = _on_tty(PLAN, _env(NO_COLOR="1"))
    assert code == 0
    assert _colours(out) == [], "NO_COLOR=1 still coloured"
    assert "\u2500" in out and re.search(r"1M\* +yes +4\.00x", out)
    code, out, _ = _on_tty(PLAN, _env(TERM="dumb"))  # a terminal without escapes
    assert code == 0
    assert "\x1b" not in out, "TERM=dumb still got escape codes"
    assert re.search(r"1M\* +yes +4\.00x", out)


def test_plan_on_a_narrow_terminal_wraps_and_never_cuts_a_cell() -> None:
    code, out, _ = _on_tty(PLAN, _env(), columns=40)
    assert code == 0
    plain = SGR.sub("", out)
    assert "\u2026" not in plain, plain  # rich's ellipsis: a cell cut short
    assert "fits: yes" in plain
    # the context table's cells are folded too: each context's row keeps its numbers
    assert re.search(r"4,194,3\s*04", plain) or "4,194,304" in plain


def test_plan_json_is_the_same_on_a_terminal_and_a_pipe() -> None:
    code, tty_out, _ = _on_tty((*PLAN, "--json"), _env())
    piped = subprocess.run(
        [str(QWENPREP_BIN), *PLAN, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert code == piped.returncode == 0
    assert "\x1b" not in tty_out
    assert json.loads(tty_out) == json.loads(piped.stdout)
    assert piped.stdout.startswith("{") and "what" not in json.loads(piped.stdout)


def test_plan_summary_parts_are_data() -> None:
    """The core returns rows; only qwenprep/cli draws them (summary() joins them plainly)."""
    from qwenprep.planning.capacity import make_plan
    from qwenprep.planning.timing import CONTEXT_COLUMNS

    p = make_plan(str(TINY), context="1m", kv_memory="2GiB", tp=1, vllm_version="0.32", gpu="H200")
    rows, table, lines = p.summary_parts()
    assert ("KV cache size", "4,194,304 tokens") in rows
    assert len(CONTEXT_COLUMNS) == 6 and all(len(cells) == 6 for cells in table)
    assert ("1M*", "yes", "4.00x") == tuple(next(c for c in table if c[0] == "1M*")[:3])
    assert lines[-1] == "fits: yes"
    assert "parallel: TP 1 x PP 1 x DP 1 (one GPU)" in p.summary().splitlines()


# ------------------------------------------------------------------ the engine status line


@contextmanager
def _counting_hook() -> Iterator[list[tuple[str, ...]]]:
    """Install a hook through the public mechanism; record every enter and exit."""
    from qwenprep.engines import probe

    events: list[tuple[str, ...]] = []

    @contextmanager
    def hook(engine: str, python: str, question: str) -> Iterator[None]:
        events.append(("enter", engine, question))
        try:
            yield
        finally:
            events.append(("exit", engine, question))

    old = probe.set_status_hook(hook)
    try:
        yield events
    finally:
        probe.set_status_hook(old)


def test_status_hook_wraps_every_probe(tmp_path: Path) -> None:
    """Without vLLM: the probe's own script in a python that answers, wrapped by the hook."""
    import sys

    from qwenprep.engines import probe

    script = tmp_path / "p.py"
    script.write_text("print('QWENPREP_PROBE {\"ok\": true}')\n")
    ps = probe.ProbeScript(script, "Engine", "--x", "X", {})
    before = probe.status_hook()
    with _counting_hook() as events:
        assert probe.run(ps, sys.executable, ["readback"], timeout=60) == {"ok": True}
        with pytest.raises(probe.EngineError):
            probe.run(ps, sys.executable, ["gate"], timeout=0.000001)
    assert events == [
        ("enter", "Engine", "readback"),
        ("exit", "Engine", "readback"),
        ("enter", "Engine", "gate"),
        ("exit", "Engine", "gate"),
    ]
    assert probe.status_hook() is before  # set_status_hook returned the old one to put back


def test_status_text_names_engine_interpreter_and_question() -> None:
    from qwenprep.cli.tables import status_text

    assert status_text("SGLang", "/opt/sg/bin/python", "readback") == (
        "asking SGLang (/opt/sg/bin/python) to read the config back …"
    )
    long_py = "/very/long/path/to/some/virtual/environment/of/vllm/bin/python"
    assert status_text("SGLang", long_py, "gate") == (
        "asking SGLang (…/bin/python) to read the serve command back …"
    )


def _vllm() -> bool:
    from qwenprep.engines.vllm.core import discover

    info = discover(None)
    return info is not None and info.importable


needs_vllm = pytest.mark.skipif(
    os.environ.get("QWENPREP_NO_ENGINE") == "1" or not _vllm(),
    reason="vLLM is not importable in this interpreter",
)


@pytest.mark.engine
@pytest.mark.slow
@needs_vllm
def test_check_and_verify_engine_call_the_status_hook_around_the_probe() -> None:
    with _counting_hook() as events:
        r = invoke("verify", "--engine", str(TINY))
        assert r.exit_code == 0, r.output
        assert ("enter", "vLLM", "readback") in events
        events.clear()
        r = invoke("check", str(TINY), "--kv-memory", "2GiB", "--tp", "1")
        assert r.exit_code == 0, r.output
        assert ("enter", "vLLM", "gate") in events
    # every probe entered was left, in order, one at a time
    assert events[0::2] == [("enter", *e[1:]) for e in events[1::2]]
    assert events[1::2] == [("exit", *e[1:]) for e in events[0::2]]
    assert "\x1b" not in r.output and "asking vLLM" not in r.output


@pytest.mark.engine
@pytest.mark.slow
@needs_vllm
def test_status_line_on_a_terminal_only_and_never_on_stdout() -> None:
    args = ("verify", "--engine", str(TINY), "--json")
    code, err, out = _on_tty(args, _env(), stream="stderr")
    assert code == 0, err
    assert re.search(r"asking vLLM \d+\.\d+\S* \(\S+\) to read the config back", err), err
    assert "\x1b[2K" in err.rsplit("to read the config back", 1)[1]  # erased when done
    assert json.loads(out)["ok"] is True and "asking" not in out and "\x1b" not in out
    piped = subprocess.run(
        [str(QWENPREP_BIN), *args], capture_output=True, text=True, timeout=300, env=_env()
    )
    assert piped.returncode == 0
    assert "asking" not in piped.stderr and "\x1b" not in piped.stderr
    assert json.loads(piped.stdout)["ok"] is True


# ------------------------------------------------------------------ plan --chart FILE
@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_chart_never_clobbers_a_foreign_file_or_writes_through_a_link(
    tmp_path: Path, suffix: str
) -> None:
    """--chart FILE replaces only a chart qwenprep drew: a user's file is refused (exit 3)
    unless --force; a symlink (an overlay's link into its source checkpoint) is refused even
    with --force, and the file it points at keeps its bytes; the write is atomic."""
    pytest.importorskip("matplotlib")
    mine = tmp_path / f"notes{suffix}"
    mine.write_bytes(b"my own file\n")
    r = invoke(*PLAN, "--chart", str(mine), "--json")
    assert r.exit_code == 3, r.output
    err = json.loads(r.stdout)["error"]
    assert "refusing to overwrite" in err["message"] and "--force" in err["hint"]
    assert mine.read_bytes() == b"my own file\n"
    source = tmp_path / "source"
    source.mkdir()
    (source / f"weights{suffix}").write_bytes(b"source bytes\n")
    link = tmp_path / f"linked{suffix}"
    link.symlink_to(source / f"weights{suffix}")
    for extra in ((), ("--force",)):
        r = invoke(*PLAN, "--chart", str(link), *extra)
        assert r.exit_code == 3, r.output
        assert "is a symlink" in r.output and "never written through" in r.output
    assert (source / f"weights{suffix}").read_bytes() == b"source bytes\n"
    assert link.is_symlink()
    ours = tmp_path / f"plan{suffix}"
    for _ in range(2):  # a chart qwenprep drew is replaced without --force
        r = invoke(*PLAN, "--chart", str(ours))
        assert r.exit_code == 0, r.output
    r = invoke(*PLAN, "--chart", str(mine), "--force")
    assert r.exit_code == 0, r.output
    assert mine.read_bytes() != b"my own file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"notes{suffix}", f"linked{suffix}", f"plan{suffix}", "source"]
    )  # no temporary file left behind
    r = invoke(*PLAN, "--force")
    assert r.exit_code == 2 and "--force goes with --chart" in r.output
