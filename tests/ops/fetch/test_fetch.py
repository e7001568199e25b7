"""`qwenprep fetch` against a real HTTP server (tests/hubserver.py) through the real
huggingface_hub client (HF_ENDPOINT), in fresh processes of the installed console script:
complete, interrupted (retried by the client; killed and run again), corrupted, missing file,
not enough disk, offline, revisions, token hygiene."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hubserver import (
    TINY_REPO,
    V1_TRANSFORMERS,
    Commit,
    HubServer,
    hub_env,
    serving_tiny_hub,
)

QWENPREP = Path(sys.executable).parent / "qwenprep"
TOKEN = "hf_secretTOKENabc123456789"
SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"
SERVING = {
    "config.json",
    "generation_config.json",
    SHARD1,
    SHARD2,
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture
def hub() -> Iterator[tuple[HubServer, Commit, Commit]]:
    with serving_tiny_hub() as served:
        yield served


@pytest.fixture
def env(hub: tuple[HubServer, Commit, Commit], tmp_path: Path) -> dict[str, str]:
    return hub_env(hub[0], tmp_path / "hf", HF_TOKEN=TOKEN)


def qp(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QWENPREP), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def snapshot(env: dict[str, str], commit: Commit) -> Path:
    return (
        Path(env["HF_HOME"]) / "hub" / "models--Qwen--Tiny-Qwen3-Coder" / "snapshots" / commit.sha
    )


def same_bytes(path: Path, commit: Commit, names: set[str]) -> None:
    got = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    assert got == names
    for name in names:
        assert (path / name).read_bytes() == commit.files[name], name


def no_token_anywhere(*texts: str, roots: tuple[Path, ...] = ()) -> None:
    for t in texts:
        assert TOKEN not in t
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink() and p.stat().st_size < 1_000_000:
                assert TOKEN.encode() not in p.read_bytes(), p


def test_complete_fetch_json(hub: tuple[HubServer, Commit, Commit], env: dict[str, str]) -> None:
    server, main, _ = hub
    r = qp(env, "fetch", TINY_REPO, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    path = snapshot(env, main)
    assert out["schema_version"] == 1 and out["ok"] is True
    assert out["path"] == str(path)
    assert (out["repo_id"], out["revision"], out["requested_revision"]) == (
        TINY_REPO,
        main.sha,
        "main",
    )
    assert out["files"] == [{"name": n, "size": len(main.files[n])} for n in sorted(SERVING)]
    assert out["bytes"] == sum(len(main.files[n]) for n in SERVING)
    assert [c["id"] for c in out["checks"]] == ["fetch.disk", "fetch.files"]
    assert out["verify"]["ok"] is True and out["verify"]["deep"] is True
    assert any(
        c["id"] == "deep.hash"
        and c["status"] == "pass"
        and c["message"].startswith("7 file(s) match")
        for c in out["verify"]["checks"]
    )
    # only the serving files, byte for byte; README/LICENSE/original/ stayed on the Hub
    same_bytes(path, main, SERVING)
    refs = path.parents[1] / "refs" / "main"
    assert refs.read_text() == main.sha
    # pinned: every file request went to the resolved commit, never to "main"
    resolves = [s.path for s in server.requests if "/resolve/" in s.path]
    assert resolves and all(f"/resolve/{main.sha}/" in p for p in resolves)
    assert not any(p.endswith(("README.md", "LICENSE", "notes.txt")) for p in resolves)
    # the token went to the server as a header, and nowhere else
    assert server.auth_headers and set(server.auth_headers) == {f"Bearer {TOKEN}"}
    no_token_anywhere(r.stdout, r.stderr, roots=(Path(env["HF_HOME"]),))
    # a second fetch downloads nothing and says so
    again = qp(env, "fetch", TINY_REPO, "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["checks"][0]["message"].startswith("0 B to download")


def test_text_output_is_the_path(
    hub: tuple[HubServer, Commit, Commit], env: dict[str, str]
) -> None:
    _, main, _ = hub
    r = qp(env, "fetch", TINY_REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{snapshot(env, main)}\n"
    assert f"{TINY_REPO}@{main.sha[:12]}: 7 files, 1.16 MiB in " in r.stderr
    assert "[ok  ] fetch.files" in r.stderr and "[ok  ] deep.hash" in r.stderr
    no_token_anywhere(r.stdout, r.stderr)


def test_local_dir_and_record(
    hub: tuple[HubServer, Commit, Commit], env: dict[str, str], tmp_path: Path
) -> None:
    _, main, _ = hub
    dest = tmp_path / "models" / "tiny"
    r = qp(env, "fetch", TINY_REPO, "--local-dir", str(dest), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["path"] == str(dest) and out["ok"] is True
    same_bytes(dest, main, SERVING)
    record = json.loads((dest / ".qwenprep" / "fetch.json").read_text())
    assert set(record) == {
        "schema_version",
        "tool",
        "tool_version",
        "repo_id",
        "requested_revision",
        "revision",
        "files",
        "bytes",
        "started",
        "seconds",
    }
    assert (record["repo_id"], record["revision"]) == (TINY_REPO, main.sha)
    assert record["files"] == out["files"]
    assert any(c["id"] == "deep.hash" and c["status"] == "pass" for c in out["verify"]["checks"])
    no_token_anywhere(r.stdout, r.stderr, roots=(dest, Path(env["HF_HOME"])))


def test_revision_tag_then_offline_resolution(
    hub: tuple[HubServer, Commit, Commit], env: dict[str, str]
) -> None:
    server, main, v1 = hub
    r = qp(env, "fetch", f"{TINY_REPO}@v1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["revision"], out["requested_revision"]) == (v1.sha, "v1")
    path = snapshot(env, v1)
    same_bytes(path, v1, SERVING - {"generation_config.json"})
    assert not snapshot(env, main).exists()
    assert json.loads((path / "config.json").read_text())["transformers_version"] == V1_TRANSFORMERS
    server.stop()
    offline = dict(env, HF_HUB_OFFLINE="1")
    ok = qp(offline, "validate", f"{TINY_REPO}@v1")
    assert ok.returncode == 0, ok.stderr
    assert str(path / "config.json") in ok.stdout
    main_missing = qp(offline, "validate", TINY_REPO)
    assert main_missing.returncode == 3
    assert (
        f"error: {TINY_REPO}: revision 'main' is not in the Hugging Face cache "
        f"({Path(env['HF_HOME']) / 'hub'}); cached: v1 -> {v1.sha[:12]}." in main_missing.stderr
    )
    assert (
        f"Hint: download it with: qwenprep fetch {TINY_REPO} (HF_HUB_OFFLINE is set"
        in main_missing.stderr
    )


def test_fetch_by_commit_writes_no_ref(
    hub: tuple[HubServer, Commit, Commit], env: dict[str, str]
) -> None:
    _, _, v1 = hub
    r = qp(env, "fetch", f"{TINY_REPO}@{v1.sha}", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["revision"] == v1.sha
    assert not (snapshot(env, v1).parents[1] / "refs").exists()


def test_unknown_revision_and_repo(env: dict[str, str]) -> None:
    r = qp(env, "fetch", f"{TINY_REPO}@v9", "--json")
    assert r.returncode == 3
    err = json.loads(r.stdout)
    assert err["ok"] is False and err["error"]["exit_code"] == 3
    host = env["HF_ENDPOINT"]
    assert err["error"]["message"] == f"{TINY_REPO}: revision 'v9' does not exist on {host}."
    r = qp(env, "fetch", "Qwen/Nope")
    assert r.returncode == 3 and r.stdout == ""
    assert f"error: Qwen/Nope: no such model repository on {host} (or it is private)." in r.stderr
    assert "HF_TOKEN" in r.stderr and TOKEN not in r.stderr


def test_not_a_checkpoint(env: dict[str, str]) -> None:
    r = qp(env, "fetch", "Qwen/Docs-Only")
    assert r.returncode == 3
    assert (
        "has no config.json: not a safetensors model checkpoint (1 files in the repo)." in r.stderr
    )


def test_bad_repo_id_is_usage_error(env: dict[str, str]) -> None:
    r = qp(env, "fetch", "not a repo")
    assert r.returncode == 2
    assert r.stderr.startswith("error: 'not a repo' is not a repo id: expected ORG/NAME")


def test_offline_refuses_without_contacting(
    hub: tuple[HubServer, Commit, Commit], env: dict[str, str]
) -> None:
    server = hub[0]
    r = qp(dict(env, HF_HUB_OFFLINE="1"), "fetch", TINY_REPO)
    assert r.returncode == 3
    assert f"error: cannot fetch {TINY_REPO}: HF_HUB_OFFLINE is set" in r.stderr
    assert server.requests == []


def test_not_enough_disk_stops_before_downloading(
    hub: tuple[HubServer, Commit, Commit], env: dict[str, str]
) -> None:
    server = hub[0]
    server.faults.size_override[SHARD1] = 2**60  # the Hub lists a 1 EiB shard
    r = qp(env, "fetch", TINY_REPO, "--json")
    assert r.returncode == 3
    msg = json.loads(r.stdout)["error"]["message"]
    assert msg.startswith(f"not enough free disk for {TINY_REPO} at ")
    assert "the download needs 1048576.00 TiB" in msg
    assert not [s for s in server.requests if "/resolve/" in s.path]
    assert not (
        Path(env["HF_HOME"]) / "hub" / "models--Qwen--Tiny-Qwen3-Coder" / "snapshots"
    ).exists()


def test_dropped_connection_is_resumed_by_range(
    hub: tuple[HubServer, Commit, Commit], env: dict[str, str]
) -> None:
    server, main, _ = hub
    server.faults.drop_after[SHARD1] = 100_000
    server.faults.drop_times[SHARD1] = 1
    r = qp(env, "fetch", TINY_REPO, "--json")
    assert r.returncode == 0, r.stderr
    # retried within the same run: by huggingface_hub 2.x itself (from byte 0 here: it resumes
    # by Range only past its 10 MB read chunk), or by qwenprep where the client gives up (0.x)
    gets = server.downloads(SHARD1)
    assert len(gets) == 2 and gets[0].range is None
    out = json.loads(r.stdout)
    assert out["ok"] is True
    retries = [c for c in out["checks"] if c["id"] == "fetch.retries"]
    assert retries == [] or retries[0]["message"].startswith("1 transient failure(s) retried: ")
    same_bytes(snapshot(env, main), main, SERVING)
    assert json.loads(r.stdout)["verify"]["ok"] is True


def test_killed_midway_then_run_again(
    hub: tuple[HubServer, Commit, Commit], env: dict[str, str]
) -> None:
    server, main, _ = hub
    server.faults.stall_after[SHARD2] = 50_000
    proc = subprocess.Popen(
        [str(QWENPREP), "fetch", TINY_REPO, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert server.stalled.wait(60), "the download never reached the stalled shard"
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    snap = snapshot(env, main)
    assert not (snap / SHARD2).exists()
    del server.faults.stall_after[SHARD2]
    server.release_stalls()
    r = qp(env, "fetch", TINY_REPO, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["verify"]["ok"] is True
    same_bytes(snap, main, SERVING)
    # the killed shard was asked for again from byte 0 (huggingface_hub restarts it)
    assert [g.range for g in server.downloads(SHARD2)] == [None, None]


def test_missing_file_then_complete(
    hub: tuple[HubServer, Commit, Commit], env: dict[str, str]
) -> None:
    server, main, _ = hub
    server.faults.missing.add(SHARD2)
    r = qp(env, "fetch", TINY_REPO)
    assert r.returncode == 3 and r.stdout == ""
    assert r.stderr.endswith(
        f"error: {TINY_REPO}: a file listed by the Hub could not be downloaded (404): {SHARD2}\n"
        "Hint: the revision may have changed under you; run the same command again: "
        f"qwenprep fetch {TINY_REPO}\n"
    )
    server.faults.missing.clear()
    r = qp(env, "fetch", TINY_REPO, "--json")
    assert r.returncode == 0, r.stderr
    same_bytes(snapshot(env, main), main, SERVING)
    assert len(server.downloads(SHARD1)) == 1  # kept from the first run


@pytest.mark.parametrize("where", ["cache", "local-dir"])
def test_corrupted_file_is_caught_and_refetched(
    hub: tuple[HubServer, Commit, Commit], env: dict[str, str], tmp_path: Path, where: str
) -> None:
    server, main, _ = hub
    server.faults.corrupt.add(SHARD1)
    extra = ["--local-dir", str(tmp_path / "dest")] if where == "local-dir" else []
    r = qp(env, "fetch", TINY_REPO, *extra, "--json")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is False
    sha = hashlib.sha256(main.files[SHARD1]).hexdigest()
    bad = [c for c in out["verify"]["checks"] if c["status"] == "fail"]
    assert [(c["id"], c.get("path")) for c in bad] == [("deep.hash", SHARD1)]
    assert f"expected {sha[:16]}..." in bad[0]["message"]
    corrupt = out["checks"][-1]
    assert corrupt["id"] == "fetch.corrupt" and corrupt["status"] == "fail"
    assert corrupt["message"].startswith(
        f"removed 1 downloaded file(s) whose content does not match the Hub's hash ({SHARD1})."
    )
    path = Path(out["path"])
    assert not (path / SHARD1).exists()
    server.faults.corrupt.clear()
    r = qp(env, "fetch", TINY_REPO, *extra, "--json")
    assert r.returncode == 0, r.stderr
    same_bytes(path, main, SERVING)
    assert len(server.downloads(SHARD1)) == 2 and len(server.downloads(SHARD2)) == 1


def test_in_process_cli(
    hub: tuple[HubServer, Commit, Commit], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same command through CliRunner: qwenprep reads HF_ENDPOINT / HF_HOME at call time,
    so the environment set here is honoured even though huggingface_hub is already imported."""
    from click.testing import CliRunner

    from qwenprep.cli import cli

    _, main, _ = hub
    for k, v in env.items():
        if k.startswith("HF_"):
            monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    res = CliRunner().invoke(cli, ["fetch", f"{TINY_REPO}@main", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out: dict[str, Any] = json.loads(res.stdout)
    assert out["path"] == str(snapshot(env, main)) and out["ok"] is True
