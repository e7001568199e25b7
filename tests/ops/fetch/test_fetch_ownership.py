"""What fetch may write over, against the real huggingface_hub client and the real local hub of
tests/hubserver.py, in fresh processes of the console script:

- `fetch --local-dir DIR` into a plain directory holding files of the user's (edited, or copied
  from elsewhere) refuses with exit 3 before any file is downloaded, naming them and --force;
  with --force each is kept beside itself as NAME.qwenprep-replaced; files that are the Hub's
  bytes, or huggingface_hub's own earlier download, are replaced (or kept) without a word.
- A revision under refs/qwenprep/ (where qwenprep keeps its cache pins) is never fetched:
  exit 2 before the Hub is asked anything, the pin untouched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hubserver import TINY_REPO, Commit, HubServer, hub_env, serving_tiny_hub

QWENPREP = Path(sys.executable).parent / "qwenprep"
EDITED_CONFIG = b'{"my": "precious edit", "eos_token_id": 999}\n'
EDITED_TOKENIZER = b'{"my": "precious tokenizer edit"}\n'


@pytest.fixture
def hub() -> Iterator[tuple[HubServer, Commit, Commit]]:
    with serving_tiny_hub() as served:
        yield served


def qp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QWENPREP), *args], check=False, env=env, capture_output=True, text=True, timeout=120
    )


def resolves(server: HubServer) -> list[str]:
    return [s.path for s in server.requests if "/resolve/" in s.path]


def users_dir(tmp_path: Path, commit: Commit) -> Path:
    """A plain directory with the Hub's files of COMMIT, two of them edited by the user."""
    d = tmp_path / "ld1"
    d.mkdir()
    for name, data in commit.files.items():
        if "/" not in name:
            (d / name).write_bytes(data)
    (d / "config.json").write_bytes(EDITED_CONFIG)
    (d / "tokenizer_config.json").write_bytes(EDITED_TOKENIZER)
    return d


@pytest.mark.parametrize("as_json", [False, True])
def test_local_dir_with_edited_files_is_refused_before_downloading(
    hub: tuple[HubServer, Commit, Commit], tmp_path: Path, as_json: bool
) -> None:
    server, _, v1 = hub
    env = hub_env(server, tmp_path / "hf")
    d = users_dir(tmp_path, v1)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    r = qp(env, "fetch", f"{TINY_REPO}@v1", "--local-dir", str(d), *(["--json"] if as_json else []))
    assert r.returncode == 3, r.stdout + r.stderr
    message = (
        f"--local-dir {d} holds 2 file(s) whose bytes differ from {TINY_REPO}@v1's and that "
        "the download would replace: config.json, tokenizer_config.json."
    )
    if as_json:
        err = json.loads(r.stdout)["error"]
        assert err["message"] == message and err["exit_code"] == 3
        assert "--force" in err["hint"] and ".qwenprep-replaced" in err["hint"]
    else:
        assert f"error: {message}\nHint: move them out" in r.stderr, r.stderr
        assert "--force" in r.stderr
    assert resolves(server) == [], "a file was downloaded before the refusal"
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_dry_run_names_the_files_it_would_refuse_to_replace(
    hub: tuple[HubServer, Commit, Commit], tmp_path: Path
) -> None:
    server, _, v1 = hub
    env = hub_env(server, tmp_path / "hf")
    d = users_dir(tmp_path, v1)
    r = qp(env, "fetch", f"{TINY_REPO}@v1", "--local-dir", str(d), "--dry-run", "--json")
    assert r.returncode == 1, r.stderr
    checks = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["fetch.replace"]["status"] == "fail"
    assert "config.json, tokenizer_config.json" in checks["fetch.replace"]["message"]
    assert (d / "config.json").read_bytes() == EDITED_CONFIG


def test_force_keeps_each_differing_file_beside_it(
    hub: tuple[HubServer, Commit, Commit], tmp_path: Path
) -> None:
    server, _, v1 = hub
    env = hub_env(server, tmp_path / "hf")
    d = users_dir(tmp_path, v1)
    (d / "config.json.qwenprep-replaced").write_bytes(b"an older kept copy\n")
    r = qp(env, "fetch", f"{TINY_REPO}@v1", "--local-dir", str(d), "--force", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True
    kept = [c for c in out["checks"] if c["id"] == "fetch.kept"]
    assert len(kept) == 1 and kept[0]["status"] == "warn"
    assert "config.json -> config.json.qwenprep-replaced.1" in kept[0]["message"]
    assert "tokenizer_config.json -> tokenizer_config.json.qwenprep-replaced" in kept[0]["message"]
    assert (d / "config.json").read_bytes() == v1.files["config.json"]
    assert (d / "tokenizer_config.json").read_bytes() == v1.files["tokenizer_config.json"]
    assert (d / "config.json.qwenprep-replaced").read_bytes() == b"an older kept copy\n"
    assert (d / "config.json.qwenprep-replaced.1").read_bytes() == EDITED_CONFIG
    assert (d / "tokenizer_config.json.qwenprep-replaced").read_bytes() == EDITED_TOKENIZER
    # the files that were the Hub's bytes were not kept aside
    assert sorted(p.name for p in d.glob("*.qwenprep-replaced*")) == [
        "config.json.qwenprep-replaced",
        "config.json.qwenprep-replaced.1",
        "tokenizer_config.json.qwenprep-replaced",
    ]


def test_hub_bytes_and_the_clients_own_download_are_replaced_silently(
    hub: tuple[HubServer, Commit, Commit], tmp_path: Path
) -> None:
    """Precision: a copy of the Hub's own files, and huggingface_hub's earlier download of
    another revision, are not the user's: no refusal, no copies."""
    server, main, v1 = hub
    env = hub_env(server, tmp_path / "hf")
    d = tmp_path / "plain"
    d.mkdir()
    for name, data in v1.files.items():
        if "/" not in name:
            (d / name).write_bytes(data)
    r = qp(env, "fetch", f"{TINY_REPO}@v1", "--local-dir", str(d), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    r = qp(env, "fetch", TINY_REPO, "--local-dir", str(d), "--json")  # main: config differs
    assert r.returncode == 0, r.stdout + r.stderr
    assert (d / "config.json").read_bytes() == main.files["config.json"]
    assert not list(d.glob("*.qwenprep-replaced*"))


@pytest.mark.parametrize("rev", ["qwenprep", "qwenprep/0123456789abcdef"])
@pytest.mark.parametrize("how", ["spec", "option"])
def test_a_revision_under_qwenpreps_refs_is_refused_before_the_hub_is_asked(
    hub: tuple[HubServer, Commit, Commit], tmp_path: Path, rev: str, how: str
) -> None:
    server, main, v1 = hub
    commits, refs = server.repos[TINY_REPO]
    refs[rev] = v1.sha  # the Hub has a branch of that name
    env = hub_env(server, tmp_path / "hf")
    assert qp(env, "fetch", TINY_REPO).returncode == 0
    made = qp(env, "patch", TINY_REPO, "--context", "1m", "--out", str(tmp_path / "ov"))
    assert made.returncode == 0, made.stderr
    storage = Path(env["HF_HOME"]) / "hub" / "models--Qwen--Tiny-Qwen3-Coder" / "refs"
    pins = {p: p.read_text() for p in (storage / "qwenprep").iterdir()}
    assert list(pins.values()) == [main.sha]
    server.requests.clear()
    args = [f"{TINY_REPO}@{rev}"] if how == "spec" else [TINY_REPO, "--revision", rev]
    r = qp(env, "fetch", *args, "--json")
    assert r.returncode == 2, r.stdout + r.stderr
    err = json.loads(r.stdout)["error"]
    assert err["exit_code"] == 2
    assert f"revision {rev!r} is under refs/qwenprep/" in err["message"]
    assert "Traceback" not in r.stderr
    assert server.requests == [], "the Hub was asked before the refusal"
    assert {p: p.read_text() for p in (storage / "qwenprep").iterdir()} == pins
