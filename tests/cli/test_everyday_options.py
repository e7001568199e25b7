"""Everyday use (items 6-9, 13): numbers that never guess, check --gpu, fetch speaking `hf
download`'s language, long work that shows progress, reports with a summary line, and help
that shows examples. Through the console script (subprocess) or CliRunner, with exact exit
codes and text; fetch runs the real huggingface_hub client against tests/hubserver.py."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import QWENPREP_BIN, TINY, invoke
from hubserver import TINY_REPO, Commit, HubServer, hub_env, serving_tiny_hub

SIZE_HINT = (
    "Hint: write the unit: GiB/MiB (binary, as nvidia-smi and vLLM's logs count), GB/MB "
    "(decimal), or B for a byte count, e.g. "
)


def qp(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QWENPREP_BIN), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def on_tty(
    *args: str, env: dict[str, str] | None = None, stream: str = "stdout"
) -> tuple[int, str]:
    """Run the console script with `stream` (stdout or stderr) on a pseudo-terminal."""
    master, slave = pty.openpty()
    kw: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    kw[stream] = slave
    proc = subprocess.Popen([str(QWENPREP_BIN), *args], env=env, **kw)
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
    return proc.wait(60), b"".join(chunks).decode()


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    dest = tmp_path / "tiny"
    shutil.copytree(TINY, dest)
    return dest


# ------------------------------------------------------------------ 6. numbers


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--gpu-memory", "141", "--gpu-memory '141' has no unit: did you mean 141GiB or 141GB?"),
        (
            "--gpu-memory",
            "8g",
            "--gpu-memory '8g' is ambiguous ('g' is binary in some tools, "
            "decimal in others): did you mean 8GiB or 8GB?",
        ),
        (
            "--kv-memory",
            "61m",
            "--kv-memory '61m' is ambiguous ('m' is binary in some tools, "
            "decimal in others): did you mean 61MiB or 61MB?",
        ),
    ],
)
@pytest.mark.parametrize("command", ["plan", "check"])
def test_sizes_never_guess(command: str, option: str, value: str, message: str) -> None:
    extra = ["--no-engine"] if command == "check" else []
    gpus = ["--gpus", "1"] if option == "--gpu-memory" else []
    r = qp(command, str(TINY), *extra, *gpus, option, value)
    assert r.returncode == 2, r.stderr
    num = message.rsplit(" or ", 1)[0].rsplit(" ", 1)[1]
    assert r.stderr == f"error: {message}\n{SIZE_HINT}{option} {num}.\n"
    assert r.stdout == ""
    j = qp(command, str(TINY), *extra, *gpus, option, value, "--json")
    assert j.returncode == 2
    assert json.loads(j.stdout)["error"] == {
        "message": message,
        "hint": SIZE_HINT[6:] + f"{option} {num}.",
        "exit_code": 2,
    }


def test_sizes_with_units_still_read() -> None:
    for size, n in (("80GiB", 80 * 1024**3), ("141GB", 141 * 1000**3), ("1024B", 1024)):
        r = invoke("plan", str(TINY), "--gpus", "1", "--tp", "1", "--gpu-memory", size, "--json")
        assert r.exit_code in (0, 1), r.output
        assert f'"gpu_memory_bytes": {n},' in r.stdout


def test_check_takes_gpu_name() -> None:
    by_name = invoke(
        "check", str(TINY), "--no-engine", "--gpus", "1", "--tp", "1", "--gpu", "h200", "--json"
    )
    by_size = invoke(
        "check",
        str(TINY),
        "--no-engine",
        "--gpus",
        "1",
        "--tp",
        "1",
        "--gpu-memory",
        "143771MiB",
        "--json",
    )
    assert by_name.exit_code == by_size.exit_code == 0, by_name.output
    a, b = json.loads(by_name.stdout), json.loads(by_size.stdout)
    assert a["gpus"] == b["gpus"]
    assert a["checks"] == b["checks"]
    assert (
        "note: GPU memory 140.40 GiB per GPU from the catalog (H200, as its driver reports it; "
        "pass --gpu-memory for another figure)"
    ) in by_name.stderr
    # --gpu-memory wins over the catalog
    own = invoke(
        "check",
        str(TINY),
        "--no-engine",
        "--gpus",
        "1",
        "--tp",
        "1",
        "--gpu",
        "h200",
        "--gpu-memory",
        "80GiB",
        "--json",
    )
    assert json.loads(own.stdout)["gpus"] != a["gpus"]
    bad = invoke("check", str(TINY), "--no-engine", "--gpu", "h900", "--json")
    assert bad.exit_code == 2
    err = json.loads(bad.stdout)["error"]
    assert err["message"] == (
        "--gpu 'h900' is not in the GPU catalog; its peaks are unknown and are not guessed."
    )
    assert err["hint"].startswith("one of: H100 SXM, H100 PCIe, H200, ")


def test_help_says_vllm_reads_lowercase_suffixes_as_decimal() -> None:
    top = invoke("--help").output
    assert "vllm serve --max-model-len 1m is 1,000,000" in top
    assert "1m = 1,048,576 tokens" in top
    for cmd in ("plan", "check", "serve"):
        text = " ".join(invoke(cmd, "--help").output.split())
        assert "1,000,000" in text, cmd


# ------------------------------------------------------------------ 8. reports


def _broken(tiny: Path) -> Path:
    cfg = json.loads((tiny / "config.json").read_text())
    cfg["max_position_embeddings"] = 1048576  # above native without rope scaling: a FAIL
    (tiny / "config.json").write_text(json.dumps(cfg, indent=2))
    return tiny


def test_summary_line_and_failures_first(tiny: Path) -> None:
    ok = qp("validate", str(tiny))
    assert ok.returncode == 0
    lines = ok.stdout.splitlines()
    n = len([x for x in lines if x.startswith("[")])
    assert lines[-2:] == [f"{n} passed, 0 failed, 0 skipped", "valid"]
    bad = qp("validate", str(_broken(tiny)))
    assert bad.returncode == 1
    rows = [x for x in bad.stdout.splitlines() if x.startswith("[")]
    fails = [x for x in rows if x.startswith("[FAIL]")]
    assert fails and rows[: len(fails)] == fails  # failures first
    assert bad.stdout.splitlines()[-2] == (
        f"{len(rows) - len(fails)} passed, {len(fails)} failed, 0 skipped"
    )
    only = qp("validate", str(tiny), "--failed-only")
    assert only.returncode == 1
    assert [x for x in only.stdout.splitlines() if x.startswith("[")] == fails
    j = json.loads(qp("validate", str(tiny), "--json").stdout)
    assert j["summary"] == {
        "passed": len(rows) - len(fails),
        "failed": len(fails),
        "warned": 0,
        "skipped": 0,
    }


def test_strict_makes_skipped_checks_fail() -> None:
    plain = invoke(
        "check", str(TINY), "--no-engine", "--gpus", "1", "--tp", "1", "--gpu-memory", "80GiB"
    )
    assert plain.exit_code == 0
    assert plain.stdout.splitlines()[-2].endswith(" skipped")
    skipped = int(plain.stdout.splitlines()[-2].split(", ")[2].split()[0])
    assert skipped > 0
    strict = invoke(
        "check",
        str(TINY),
        "--no-engine",
        "--gpus",
        "1",
        "--tp",
        "1",
        "--gpu-memory",
        "80GiB",
        "--strict",
    )
    assert strict.exit_code == 1
    assert strict.stdout.splitlines()[0].startswith("[skip]")
    assert strict.stdout.splitlines()[-2].endswith(
        f"{skipped} skipped (--strict: skipped checks fail)"
    )
    j = invoke(
        "check",
        str(TINY),
        "--no-engine",
        "--gpus",
        "1",
        "--tp",
        "1",
        "--gpu-memory",
        "80GiB",
        "--strict",
        "--json",
    )
    obj = json.loads(j.stdout)
    assert j.exit_code == 1 and obj["ok"] is False and obj["strict"] is True
    assert obj["summary"]["skipped"] == skipped and obj["summary"]["failed"] == 0
    v = invoke("verify", str(TINY), "--strict")  # bf16: the FP8 structure check is skipped
    assert v.exit_code == 1
    assert v.stdout.splitlines()[0].startswith("[skip] fp8 ")
    assert invoke("verify", str(TINY)).exit_code == 0


def _terminal_env(**extra: str) -> dict[str, str]:
    """The environment less NO_COLOR, with a TERM that draws (a CI's may be dumb)."""
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    return {**env, "TERM": "xterm-256color", **extra}


def test_colour_on_a_terminal_only_and_never_with_no_color() -> None:
    env = _terminal_env()
    code, out = on_tty("validate", str(TINY), env=env)
    assert code == 0
    assert "\x1b[32m[ok  ]\x1b[0m" in out
    code, out = on_tty("validate", str(TINY), env=dict(env, NO_COLOR="1"))
    assert code == 0 and "\x1b[" not in out and "[ok  ]" in out
    piped = qp("validate", str(TINY), env=env)
    assert "\x1b[" not in piped.stdout


# ------------------------------------------------------------------ 9. long work


def test_deep_verify_without_anything_to_compare_writes_nothing(tiny: Path) -> None:
    r = qp("verify", str(tiny), "--deep", "--json")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert not (tiny / ".qwenprep").exists()
    [rec] = [c for c in obj["checks"] if c["id"] == "deep.record"]
    assert rec["status"] == "warn"
    assert rec["message"].startswith(
        "5 file(s) have nothing to compare against (no HF cache blob name, no download "
        "metadata, no hash record); pass --record to keep these hashes for next time. "
        "Computed: config.json sha256 "
    )
    assert sorted(obj["unverified"]) == sorted(p.name for p in tiny.iterdir())
    # --record keeps them; the next run compares
    r = qp("verify", str(tiny), "--deep", "--record", "--json")
    assert r.returncode == 0 and (tiny / ".qwenprep" / "hashes.json").is_file()
    assert "unverified" not in json.loads(r.stdout)
    r = qp("verify", str(tiny), "--deep", "--json")
    assert [c["message"] for c in json.loads(r.stdout)["checks"] if c["id"] == "deep.hash"] == [
        "5 file(s) match their content hash (5 by the hash record .qwenprep/hashes.json)"
    ]
    bad = qp("verify", str(tiny), "--record")
    assert bad.returncode == 2
    assert bad.stderr == "error: --record keeps the hashes --deep computes: add --deep.\n"


def test_deep_verify_progress_lines_when_not_a_tty(tiny: Path) -> None:
    r = qp("verify", str(tiny), "--deep")
    assert r.returncode == 0
    lines = [x for x in r.stderr.splitlines() if x.startswith("hashing: ")]
    assert lines[0] == "hashing: 0% (0 B of 2.00 MiB), - /s, ETA -"
    assert lines[-1].startswith("hashing: 100% (2.00 MiB of 2.00 MiB), ")
    assert " MiB/s, done in " in lines[-1]
    assert "\r" not in r.stderr


def test_deep_verify_progress_on_a_tty_shows_throughput_and_eta(tiny: Path) -> None:
    code, err = on_tty("verify", str(tiny), "--deep", stream="stderr", env=_terminal_env())
    assert code == 0
    assert "\rhashing [" in err and "ETA" in err
    assert "100% 2.00 MiB of 2.00 MiB, " in err and "/s, done in " in err


def test_a_dumb_terminal_gets_no_colour_and_no_redrawn_lines(tiny: Path) -> None:
    dumb = _terminal_env(TERM="dumb")  # Emacs' shell, some CI logs: escapes print as garbage
    code, out = on_tty("validate", str(TINY), env=dumb)
    assert code == 0 and "[ok  ]" in out and "\x1b[" not in out
    code, err = on_tty("verify", str(tiny), "--deep", stream="stderr", env=dumb)
    assert code == 0 and "\rhashing" not in err and "\x1b[" not in err  # (the pty: \r\n)
    assert "hashing: 100% (2.00 MiB of 2.00 MiB), " in err


# ------------------------------------------------------------------ 7. fetch


@pytest.fixture
def hub() -> Iterator[tuple[HubServer, Commit, Commit]]:
    with serving_tiny_hub() as served:
        yield served


@pytest.fixture
def env(hub: tuple[HubServer, Commit, Commit], tmp_path: Path) -> dict[str, str]:
    return hub_env(hub[0], tmp_path / "hf")


def _storage(env: dict[str, str]) -> Path:
    return Path(env["HF_HOME"]) / "hub" / "models--Qwen--Tiny-Qwen3-Coder"


def test_fetch_dry_run_writes_nothing(
    hub: tuple[HubServer, Commit, Commit], env: dict[str, str]
) -> None:
    server, main, _ = hub
    r = qp("fetch", TINY_REPO, "--dry-run", "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["dry_run"] is True and out["ok"] is True and out["revision"] == main.sha
    assert out["bytes"] == out["bytes_to_download"] == sum(f["size"] for f in out["files"])
    assert len(out["files"]) == 7
    assert not [s for s in server.requests if "/resolve/" in s.path]
    assert not _storage(env).exists()
    t = qp("fetch", TINY_REPO, "--dry-run", env=env)
    assert t.returncode == 0
    assert t.stdout.splitlines()[0].split() == [str(len(main.files["config.json"])), "config.json"]
    assert f"dry run: {TINY_REPO}@{main.sha[:12]}: would fetch 7 files, 1.16 MiB (" in t.stderr
    assert t.stderr.splitlines()[0].endswith("); nothing written")


def test_fetch_revision_include_exclude_max_workers(
    hub: tuple[HubServer, Commit, Commit], env: dict[str, str]
) -> None:
    server, main, v1 = hub
    r = qp(
        "fetch",
        TINY_REPO,
        "--revision",
        "v1",
        "--include",
        "*.json",
        "--exclude",
        "tokenizer*",
        "--max-workers",
        "1",
        "--json",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["revision"], out["requested_revision"]) == (v1.sha, "v1")
    assert [f["name"] for f in out["files"]] == ["config.json", "model.safetensors.index.json"]
    assert out["left_out"] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    snap = Path(out["path"])
    assert sorted(p.name for p in snap.iterdir()) == ["config.json", "model.safetensors.index.json"]
    assert [(c["id"], c["status"]) for c in out["verify"]["checks"]] == [
        ("deep.hash", "pass"),
        ("verify.partial", "skip"),
    ]
    assert not [s for s in server.requests if s.path.endswith(".safetensors")]
    clash = qp("fetch", f"{TINY_REPO}@v1", "--revision", "main", env=env)
    assert clash.returncode == 2
    assert clash.stderr.startswith(
        f"error: {TINY_REPO}@v1 names revision 'v1' but --revision says 'main'.\n"
    )
    none = qp("fetch", TINY_REPO, "--include", "*.bin", env=env)
    assert none.returncode == 2
    assert none.stderr.startswith(
        f"error: --include/--exclude leave no file of {TINY_REPO} to fetch"
    )
    zero = qp("fetch", TINY_REPO, "--max-workers", "0", env=env)
    assert zero.returncode == 2 and "--max-workers" in zero.stderr


def test_fetch_offline_cached_prints_the_path(
    hub: tuple[HubServer, Commit, Commit], env: dict[str, str]
) -> None:
    server, main, _ = hub
    r = qp("fetch", TINY_REPO, env=env)
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    server.stop()
    offline = dict(env, HF_HUB_OFFLINE="1")
    again = qp("fetch", TINY_REPO, env=offline)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"{path}\n"
    assert (
        f"HF_HUB_OFFLINE is set and {TINY_REPO}@main is cached (commit {main.sha[:12]}): "
        "nothing fetched"
    ) in again.stderr
    j = json.loads(qp("fetch", TINY_REPO, "--json", env=offline).stdout)
    assert j["offline"] is True and j["ok"] is True and j["path"] == path
    missing = qp("fetch", f"{TINY_REPO}@v1", env=offline)
    assert missing.returncode == 3
    assert f"error: cannot fetch {TINY_REPO}@v1: HF_HUB_OFFLINE is set" in missing.stderr


# ------------------------------------------------------------------ 13. discoverability


def test_every_command_help_has_examples() -> None:
    from qwenprep.cli import cli

    for name in cli.commands:
        text = invoke(name, "--help").output
        assert "\n  Examples:\n    qwenprep " in text, name
        examples = text.split("\n  Examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
        assert examples and all(x.startswith(f"    qwenprep {name}") for x in examples), name


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F "),
        ("zsh", "compdef _qwenprep_completion qwenprep"),
        ("fish", "complete --no-files --command qwenprep"),
    ],
)
def test_shell_completion_script(shell: str, marker: str) -> None:
    r = qp(env=dict(os.environ, _QWENPREP_COMPLETE=f"{shell}_source"))
    assert r.returncode == 0, r.stderr
    assert marker in r.stdout
    assert "_QWENPREP_COMPLETE" in r.stdout


def test_completion_completes_commands() -> None:
    env = dict(
        os.environ, _QWENPREP_COMPLETE="bash_complete", COMP_WORDS="qwenprep ve", COMP_CWORD="1"
    )
    r = qp(env=env)
    assert r.returncode == 0
    assert "plain,verify" in r.stdout.splitlines()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


# ------------------------------------------------------------------ printed values paste back

# qwenprep plan's own options that take a value: what a person copies out of a printed line.
_PLAN_FLAGS = {"--context", "--kv-cache-dtype", "--gpus", "--tp", "--pp", "--kv-memory", "--gpu"}


def _pasted(line: str) -> list[tuple[str, str]]:
    """The (option, value) pairs of qwenprep plan's own options in a printed line, as a person
    would copy them (a value ends at a space, ';', ':' or a bracket)."""
    import re

    found = re.findall(r"(--[a-z][a-z-]*)[ =]([^\s;:()]+)", line)
    return [(f, v) for f, v in found if f in _PLAN_FLAGS]


@pytest.fixture(scope="module")
def big480(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qwenprep.testing.synth import make_shaped_checkpoint

    return make_shaped_checkpoint(tmp_path_factory.mktemp("e480") / "Qwen3-Coder-480B-FP8")


@pytest.mark.parametrize(
    "setup",
    [
        ("--gpus", "8", "--gpu", "H100 SXM"),  # recommended --context 179,904 (179,904)
        ("--gpus", "4", "--gpu", "H200"),
        ("--context", "1m", "--gpus", "8", "--gpu", "H100 SXM"),  # does not fit: advice
        ("--context", "1m", "--gpus", "8", "--gpu-memory", "140GiB"),  # no GPU named: notes
    ],
)
def test_every_printed_value_pastes_back_into_plan(big480: Path, setup: tuple[str, ...]) -> None:
    """Each recommendation, advice and note line that names a qwenprep option gives a value
    that option accepts: pasted back over the same command, plan runs (exit 0 or 1, never 2)."""
    base = [str(big480), "--vllm-version", "0.32", "--json"]
    r = invoke("plan", *base, *setup)
    assert r.exit_code in (0, 1), r.output
    out = json.loads(r.stdout)
    lines = [out["recommendation"], *out["advice"], *out["time_notes"]]
    pasted = 0
    for line in lines:
        flags = _pasted(line)
        if not flags:
            continue
        args = dict(zip(setup[::2], setup[1::2], strict=True))
        args.update(flags)
        if "--gpu" in args:
            args.pop("--gpu-memory", None)
        again = invoke("plan", *base, *[x for kv in args.items() for x in kv])
        assert again.exit_code in (0, 1), (line, again.output)
        pasted += 1
    assert pasted, lines


# ------------------------------------------------------------------ alike across commands


def test_check_gpu_without_gpus_answers_like_plan() -> None:
    plan = invoke("plan", str(TINY), "--gpu", "H200", "--json")
    check = invoke("check", str(TINY), "--no-engine", "--gpu", "H200", "--json")
    assert plan.exit_code == check.exit_code == 2
    p, c = json.loads(plan.stdout)["error"], json.loads(check.stdout)["error"]
    assert p["message"].startswith("--gpu NAME needs --gpus N")
    assert c["message"] == "--gpu NAME needs --gpus N: how many of them."
    assert c["hint"] == "qwenprep check MODEL --gpu H200 --gpus 8"
    assert "note:" not in check.stderr  # no catalog memory note before the refusal


def test_sglang_plan_takes_the_gpu_memory_from_gpu() -> None:
    by_name = invoke(
        "plan", str(TINY), "--tp", "1", "--gpus", "1", "--gpu", "H200",
        "--serving-engine", "sglang", "--json",
    )  # fmt: skip
    by_size = invoke(
        "plan", str(TINY), "--tp", "1", "--gpus", "1", "--gpu-memory", "143771MiB",
        "--serving-engine", "sglang", "--json",
    )  # fmt: skip
    assert by_name.exit_code == by_size.exit_code == 0, by_name.output
    a, b = json.loads(by_name.stdout), json.loads(by_size.stdout)
    assert a["max_total_num_tokens"] == b["max_total_num_tokens"] > 0


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ((), "ready to serve (no GPU checked: pass --gpu/--gpus)"),
        (
            ("--gpus", "1", "--gpu", "H200"),
            "ready to serve (GPUs as --gpus/--gpu describe them; none were looked at here)",
        ),
    ],
)
def test_ready_says_what_it_did_not_check(
    extra: tuple[str, ...], said: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    r = invoke("check", str(TINY), "--no-engine", "--tp", "1", "--kv-memory", "1GiB", *extra)
    if extra:
        r = invoke("check", str(TINY), "--no-engine", "--tp", "1", *extra)
    assert r.exit_code == 0, r.output
    assert r.stdout.rstrip().splitlines()[-1] == said, r.stdout


@pytest.mark.parametrize(
    "setup",
    [
        ("--context", "1m", "--gpus", "8", "--gpu", "H100 SXM"),  # promised 2.15x with PP 2
        ("--context", "1m", "--tp", "4", "--gpus", "4", "--gpu", "H200"),
    ],
)
def test_advice_that_promises_a_figure_gives_the_flags_that_produce_it(
    big480: Path, setup: tuple[str, ...]
) -> None:
    """'more GPUs: ... 2.15x at 1,048,576': pasting that line's flags over the same command
    gives that very concurrency (plan --gpus 16 alone picks TP 16, another layout)."""
    import re

    base = [str(big480), "--vllm-version", "0.32", "--json"]
    r = invoke("plan", *base, *setup)
    assert r.exit_code == 1, r.output
    [line] = [a for a in json.loads(r.stdout)["advice"] if a.startswith("more GPUs")]
    promised = re.search(r"(\d+\.\d\d)x at", line)
    assert promised, line
    args = dict(zip(setup[::2], setup[1::2], strict=True))
    args.update(_pasted(line))
    again = invoke("plan", *base, *[x for kv in args.items() for x in kv])
    assert again.exit_code in (0, 1), again.output
    assert f"{json.loads(again.stdout)['max_concurrency']:.2f}" == promised[1], line


def test_plan_puts_the_answer_first(big480: Path) -> None:
    """The first row under the header is the answer (fits, concurrency, prefill time, the
    recommended context), not 45 lines down; the detail follows."""
    r = invoke(
        "plan", str(big480), "--gpus", "8", "--gpu", "H200", "--vllm-version", "0.32"
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    first = r.stdout.splitlines()[1]
    assert first.startswith("answer "), r.stdout
    assert " fits: " in first and "x concurrency at 262,144 tokens" in first, first
    assert "prefill typical " in first and "recommended --context " in first, first
    r = invoke("plan", str(big480), "--context", "1m", "--gpus", "8", "--gpu", "H100 SXM")
    assert r.exit_code == 1
    assert r.stdout.splitlines()[1].split()[:4] == ["answer", "does", "NOT", "fit:"]


@pytest.mark.parametrize(
    ("extra", "layout"),
    [
        ((), (8, 1, 2, True)),  # the profile's TP 8 + EP, DP over the rest (plan took TP 16)
        (("--pp", "2"), (8, 2, 1, True)),
        (("--tp", "16"), (16, 1, 1, True)),  # not the profile's: both say so
    ],
)
def test_plan_and_check_choose_one_layout_for_the_same_flags(
    big480: Path, extra: tuple[str, ...], layout: tuple[int, int, int, bool]
) -> None:
    """One rule (qwenprep.engines.parallel.choose_layout) for plan and check: the same layout
    and the same concurrency for the same flags, and where the flags differ from the model
    profile's layout, both say so. Before: plan --gpus 16 took TP 16 (1.07x) and check TP 8 x
    DP 2 (1.04x)."""
    import re

    flags = ("--context", "1m", "--gpus", "16", "--gpu", "H100 SXM", "--vllm-version", "0.32")
    p = invoke("plan", str(big480), *flags, *extra, "--json")
    c = invoke("check", str(big480), *flags, *extra, "--no-engine", "--json")
    plan, check = json.loads(p.stdout), json.loads(c.stdout)
    pl = plan["parallel"]
    assert (pl["tp"], pl["pp"], pl["dp"], pl["ep"]) == layout, pl
    assert {k: pl[k] for k in ("tp", "pp", "dp", "ep", "source")} == check["parallel"]
    [kv] = [x["message"] for x in check["checks"] if x["id"] == "kv.fits"]
    figure = re.search(r", (\d+\.\d\d)x$", kv)
    assert figure and figure[1] == f"{plan['max_concurrency']:.2f}", (kv, plan["max_concurrency"])
    said = [a for a in plan["advice"] if a.startswith("the model profile qwen3-coder-480b")]
    warned = [x["message"] for x in check["checks"] if x["id"] == "parallel.profile"]
    assert said == warned and bool(said) == (extra[:1] == ("--tp",)), (said, warned)
    if extra[:1] == ("--tp",):
        assert said == [
            "the model profile qwen3-coder-480b launches TP 8 with expert parallel; this layout "
            "is TP 16 with expert parallel (the flags given)"
        ]
