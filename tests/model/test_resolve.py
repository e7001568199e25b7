"""MODEL resolution: directories, and ORG/NAME[@rev] in the Hugging Face cache (never the network).

The cache is written by the real huggingface_hub client downloading from the local hub server
(tests/hubserver.py); the server is stopped before anything is resolved.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hubserver import TINY_REPO, V1_TRANSFORMERS, Commit, tiny_hub
from qwenprep.errors import InputError
from qwenprep.model.checkpoint import resolve_model
from qwenprep.model.hub import RepoSpec, hub_cache_dir, parse_repo_spec

QWENPREP = Path(sys.executable).parent / "qwenprep"


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Commit, Commit]]:
    """An HF cache holding TINY_REPO at main and at tag v1, filled by huggingface_hub itself."""
    from huggingface_hub import snapshot_download

    hf_home = tmp_path_factory.mktemp("hf")
    hub, main, v1 = tiny_hub()
    try:
        for rev in ("main", "v1"):
            snapshot_download(
                TINY_REPO, revision=rev, cache_dir=str(hf_home / "hub"), endpoint=hub.url
            )
    finally:
        hub.stop()  # nothing below may reach it
    yield hf_home, main, v1


@pytest.fixture
def env_cache(
    cached: tuple[Path, Commit, Commit], monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Commit, Commit]:
    hf_home = cached[0]
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cached


def snapshot(hf_home: Path, commit: Commit) -> Path:
    return hf_home / "hub" / "models--Qwen--Tiny-Qwen3-Coder" / "snapshots" / commit.sha


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8",
            RepoSpec("Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8"),
        ),
        ("Qwen/Tiny@v1", RepoSpec("Qwen/Tiny", "v1")),
        ("org_1/name.x@refs/pr/3", RepoSpec("org_1/name.x", "refs/pr/3")),
        ("a/b@0123abcd", RepoSpec("a/b", "0123abcd")),
        ("Qwen", None),
        ("a/b/c", None),
        ("./a/b", None),
        ("/abs/path", None),
        ("a//b", None),
        ("a--b/c", None),
        ("a/b..c", None),
        ("a/b@", None),
        ("-a/b", None),
        ("a/b-", None),
        ("a/" + "x" * 100, None),
    ],
)
def test_parse_repo_spec(text: str, expected: RepoSpec | None) -> None:
    assert parse_repo_spec(text) == expected


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert hub_cache_dir() == tmp_path / "hfhome" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hub_cache_dir() == tmp_path / "legacy"
    monkeypatch.setenv("HF_HUB_CACHE", "~/hubcache")
    assert hub_cache_dir() == tmp_path / "home" / "hubcache"


def test_repo_id_resolves_to_main_offline(env_cache: tuple[Path, Commit, Commit]) -> None:
    hf_home, main, _ = env_cache
    ckpt = resolve_model(TINY_REPO)
    assert ckpt.path == snapshot(hf_home, main).resolve()
    assert (ckpt.repo_id, ckpt.revision) == (TINY_REPO, main.sha)
    assert ckpt.read_config()["transformers_version"] != V1_TRANSFORMERS


@pytest.mark.parametrize("rev", ["v1", "full", "short"])
def test_revision_tag_and_commit(env_cache: tuple[Path, Commit, Commit], rev: str) -> None:
    hf_home, _, v1 = env_cache
    given = {"v1": "v1", "full": v1.sha, "short": v1.sha[:8]}[rev]
    ckpt = resolve_model(f"{TINY_REPO}@{given}")
    assert ckpt.path == snapshot(hf_home, v1).resolve()
    assert ckpt.revision == v1.sha
    assert ckpt.read_config()["transformers_version"] == V1_TRANSFORMERS
    assert not (ckpt.path / "generation_config.json").exists()


def test_unknown_revision_lists_what_is_cached(env_cache: tuple[Path, Commit, Commit]) -> None:
    hf_home, main, v1 = env_cache
    with pytest.raises(InputError) as e:
        resolve_model(f"{TINY_REPO}@v2")
    assert e.value.message == (
        f"{TINY_REPO}@v2: revision 'v2' is not in the Hugging Face cache ({hf_home / 'hub'}); "
        f"cached: main -> {main.sha[:12]}, v1 -> {v1.sha[:12]}."
    )
    assert e.value.hint is not None and e.value.hint.startswith(
        f"download it with: qwenprep fetch {TINY_REPO}@v2"
    )
    assert e.value.exit_code == 3


def test_uncached_repo_names_fetch_and_offline(env_cache: tuple[Path, Commit, Commit]) -> None:
    hf_home = env_cache[0]
    with pytest.raises(InputError) as e:
        resolve_model("Qwen/Qwen3-Coder-30B-A3B-Instruct")
    assert e.value.message == (
        f"Qwen/Qwen3-Coder-30B-A3B-Instruct is not in the Hugging Face cache ({hf_home / 'hub'})."
    )
    assert e.value.hint == (
        "download it with: qwenprep fetch Qwen/Qwen3-Coder-30B-A3B-Instruct (HF_HUB_OFFLINE is "
        "set: fetch needs the network; run it where the Hub is reachable); or pass the "
        "checkpoint's directory instead"
    )


def test_partial_snapshot_is_reported(
    cached: tuple[Path, Commit, Commit], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hf_home, main, _ = cached
    copy = tmp_path / "hf"
    shutil.copytree(hf_home, copy, symlinks=True)
    (snapshot(copy, main) / "config.json").unlink()
    monkeypatch.setenv("HF_HUB_CACHE", str(copy / "hub"))
    with pytest.raises(InputError) as e:
        resolve_model(TINY_REPO)
    assert e.value.message == (
        f"{TINY_REPO}: the cached snapshot {main.sha[:12]} in the Hugging Face cache "
        f"({copy / 'hub'}) has no config.json (an interrupted or partial download)."
    )


def test_existing_directory_wins(
    env_cache: tuple[Path, Commit, Commit], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = tmp_path / "Qwen" / "Tiny-Qwen3-Coder"
    local.mkdir(parents=True)
    (local / "config.json").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    ckpt = resolve_model(TINY_REPO)
    assert ckpt.path == local.resolve()
    assert (ckpt.repo_id, ckpt.revision) == (None, None)


def test_snapshot_path_carries_repo_and_commit(env_cache: tuple[Path, Commit, Commit]) -> None:
    hf_home, _, v1 = env_cache
    ckpt = resolve_model(str(snapshot(hf_home, v1)))
    assert (ckpt.repo_id, ckpt.revision) == (TINY_REPO, v1.sha)


def test_path_like_spec_keeps_directory_message(env_cache: tuple[Path, Commit, Commit]) -> None:
    with pytest.raises(InputError) as e:
        resolve_model("./models/Tiny")
    assert e.value.message == "models/Tiny: no such directory."


def test_console_script_offline(cached: tuple[Path, Commit, Commit], tmp_path: Path) -> None:
    """Through the installed script, in a fresh process (huggingface_hub reads its
    environment at import): HF_HUB_OFFLINE=1, the cached repo validates, an uncached one
    exits 3 naming `qwenprep fetch`."""
    hf_home = cached[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    ok = subprocess.run(
        [str(QWENPREP), "validate", f"{TINY_REPO}@v1"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(
        [str(QWENPREP), "validate", "Qwen/Not-Here"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 3
    assert "error: Qwen/Not-Here is not in the Hugging Face cache" in missing.stderr
    assert "Hint: download it with: qwenprep fetch Qwen/Not-Here" in missing.stderr
