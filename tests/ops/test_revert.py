"""qwenprep revert: drop overlays; restore in-place edits byte for byte, proven by hash."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import Result

from conftest import tree_state
from qwenprep.util.hashing import git_blob_sha1_of

CliFn = Callable[..., Result]
COMMIT = "a" * 40


def _original_bytes(ref_config: dict[str, Any], style: str) -> bytes:
    if style == "sorted":
        return (json.dumps(ref_config, indent=2, sort_keys=True) + "\n").encode()
    if style == "no-newline":
        return json.dumps(ref_config, indent=2).encode()
    return (json.dumps(ref_config, indent=2) + "\n").encode()


def _manual_edit(data: bytes) -> bytes:
    """What the seed-era recipe did by hand: mpe 1M and a yarn block with the old 'type' key."""
    cfg = json.loads(data)
    cfg["max_position_embeddings"] = 1048576
    cfg["rope_scaling"] = {
        "type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 262144,
    }
    return json.dumps(cfg, indent=4).encode()


def _hf_cache(root: Path, original: bytes) -> tuple[Path, str]:
    repo = root / "hub" / "models--Qwen--Qwen3-Coder-480B-A35B-Instruct-FP8"
    blobs, snap = repo / "blobs", repo / "snapshots" / COMMIT
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    sha = git_blob_sha1_of(original)
    (blobs / sha).write_bytes(original)
    os.symlink(f"../../blobs/{sha}", snap / "config.json")
    shard = b"\0" * 4096
    import hashlib

    lfs = hashlib.sha256(shard).hexdigest()
    (blobs / lfs).write_bytes(shard)
    os.symlink(f"../../blobs/{lfs}", snap / "model-00001-of-00001.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snap, sha


@pytest.mark.parametrize("style", ["indent2", "sorted", "no-newline"])
def test_write_through_edit_in_hf_cache_is_restored(
    cli: CliFn, tmp_path: Path, ref_config: dict[str, Any], style: str
) -> None:
    original = _original_bytes(ref_config, style)
    snap, sha = _hf_cache(tmp_path, original)
    with open(snap / "config.json", "wb") as f:  # writes through the link into the blob
        f.write(_manual_edit(original))
    assert git_blob_sha1_of((snap / "config.json").read_bytes()) != sha  # the cache is now corrupt
    r = cli("revert", str(snap), "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["action"] == "restored-config" and out["proof"] == f"git blob sha1 {sha}"
    assert (snap / "config.json").is_symlink()
    assert (snap / "config.json").read_bytes() == original
    assert git_blob_sha1_of((snap.parents[1] / "blobs" / sha).read_bytes()) == sha
    r = cli("revert", str(snap), "--json")  # idempotent
    assert r.exit_code == 0 and json.loads(r.stdout)["action"] == "already-original"


def test_link_replaced_by_edited_file_is_relinked(
    cli: CliFn, tmp_path: Path, ref_config: dict[str, Any]
) -> None:
    original = _original_bytes(ref_config, "indent2")
    snap, sha = _hf_cache(tmp_path, original)
    cfg = snap / "config.json"
    edited = _manual_edit(original)
    cfg.unlink()  # what `sed -i` and many editors do: a new file replaces the link
    cfg.write_bytes(edited)
    r = cli("revert", str(snap))
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"replaced the edited file {cfg} with the link to blob {sha}")
    assert cfg.is_symlink() and os.readlink(cfg) == f"../../blobs/{sha}"
    assert cfg.read_bytes() == original


def test_unreproducible_edit_says_what_is_needed(
    cli: CliFn, tmp_path: Path, ref_config: dict[str, Any]
) -> None:
    original = _original_bytes(ref_config, "indent2")
    snap, sha = _hf_cache(tmp_path, original)
    cfg = json.loads(_manual_edit(original))
    cfg["vocab_size"] = 1  # an edit the un-patch cannot know about
    (snap / "config.json").write_bytes(json.dumps(cfg).encode())  # through the link
    blob_before = (snap.parents[1] / "blobs" / sha).read_bytes()
    r = cli("revert", str(snap))
    assert r.exit_code == 3
    assert f"the blob {sha} was edited and neither a backup nor an un-patch" in r.stderr
    assert f"hf download ORG/NAME config.json --revision {COMMIT} --force-download" in r.stderr
    assert (snap.parents[1] / "blobs" / sha).read_bytes() == blob_before  # nothing written


def test_backup_beside_the_edit_proven_by_cache_address(
    cli: CliFn, tmp_path: Path, ref_config: dict[str, Any]
) -> None:
    original = _original_bytes(ref_config, "indent2")
    snap, sha = _hf_cache(tmp_path, original)
    cfg = json.loads(_manual_edit(original))
    cfg["vocab_size"] = 1
    (snap / "config.json.bak").write_bytes(original)
    (snap / "config.json").write_bytes(json.dumps(cfg).encode())
    r = cli("revert", str(snap), "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["source"] == f"backup {snap / 'config.json.bak'}"
    assert (snap / "config.json").read_bytes() == original


def test_plain_dir_with_backup(cli: CliFn, qwen_src: Path) -> None:
    original = (qwen_src / "config.json").read_bytes()
    (qwen_src / "config.json.orig").write_bytes(original)
    (qwen_src / "config.json").write_bytes(_manual_edit(original))
    r = cli("revert", str(qwen_src), "--json")
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    assert out["action"] == "restored-config" and out["proof"] is None
    assert "unproven" in out["message"]
    assert (qwen_src / "config.json").read_bytes() == original


def test_plain_dir_without_backup_says_what_is_needed(cli: CliFn, qwen_src: Path) -> None:
    edited = _manual_edit((qwen_src / "config.json").read_bytes())
    (qwen_src / "config.json").write_bytes(edited)
    r = cli("revert", str(qwen_src))
    assert r.exit_code == 3
    assert (
        "edited in place (rope scaling set) and there is no content address or backup" in r.stderr
    )
    assert "config.json.bak" in r.stderr
    assert (qwen_src / "config.json").read_bytes() == edited


def test_local_dir_download_record_proves_restore(cli: CliFn, qwen_src: Path) -> None:
    original = (qwen_src / "config.json").read_bytes()
    meta = qwen_src / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    (meta / "config.json.metadata").write_text(
        f"{COMMIT}\n{git_blob_sha1_of(original)}\n1700000000.0\n"
    )
    (qwen_src / "config.json").write_bytes(_manual_edit(original))
    r = cli("revert", str(qwen_src), "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["proof"] == f"git blob sha1 {git_blob_sha1_of(original)}"
    assert (qwen_src / "config.json").read_bytes() == original


def test_unpatched_plain_dir_is_left_alone(cli: CliFn, qwen_src: Path) -> None:
    before = tree_state(qwen_src)
    r = cli("revert", str(qwen_src), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["action"] == "already-original"
    assert tree_state(qwen_src) == before


def test_overlay_is_removed_and_targets_kept(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    before = tree_state(qwen_src)
    out = tmp_path / "ov"
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(out)).exit_code == 0
    r = cli("revert", str(out))
    assert r.exit_code == 0
    assert r.stdout.strip() == f"removed overlay {out} (source {qwen_src.resolve()} untouched)"
    assert not out.exists()
    assert tree_state(qwen_src) == before
    assert [p.name for p in tmp_path.iterdir() if "qwenprep-tmp" in p.name] == []


def test_overlay_with_foreign_files_is_refused(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(out)).exit_code == 0
    (out / "my-notes.txt").write_text("mine")
    r = cli("revert", str(out))
    assert r.exit_code == 3
    assert "holds files qwenprep did not put there: my-notes.txt" in r.stderr
    assert (out / "my-notes.txt").read_text() == "mine"


def test_revert_missing_path_is_idempotent(cli: CliFn, tmp_path: Path) -> None:
    """Reverting what is already gone is done, not an error (a path, not a repo id)."""
    r = cli("revert", str(tmp_path / "none"), "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["action"] == "absent"
    assert (
        out["message"] == f"nothing at {tmp_path / 'none'}: no overlay to remove "
        "(already reverted?)"
    )
    r = cli("revert", str(tmp_path / "no-parent" / "none"))
    assert r.exit_code == 3 and "no such overlay or checkpoint directory" in r.stderr


def test_kill_9_during_revert_leaves_old_or_nothing(qwen_src: Path, tmp_path: Path) -> None:
    """kill -9 spread over a whole revert: the overlay is whole or gone, the source untouched,
    and the kills really landed while revert was running."""
    import signal
    import time

    from conftest import QWENPREP_BIN, KillDelays, many_files, timed_run
    from qwenprep.checks.overlay import overlay_checks
    from qwenprep.model.manifest import read_manifest

    many_files(qwen_src)
    before = tree_state(qwen_src)
    out = tmp_path / "ov"
    patch = [str(QWENPREP_BIN), "patch", str(qwen_src), "-c", "1m", "-o", str(out)]
    revert = [str(QWENPREP_BIN), "revert", str(out)]
    timed_run(patch)
    duration = timed_run(revert)
    kill_delays = KillDelays()
    killed = 0
    for delay in kill_delays(duration, (0.1, 0.3, 0.5, 0.7, 0.9)):
        if not out.exists():
            subprocess.run(patch, check=True, capture_output=True)
        p = subprocess.Popen(revert, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        landed = p.wait() == -signal.SIGKILL
        killed += landed
        kill_delays.landed(landed)
        if out.exists():
            assert read_manifest(out) is not None
            assert all(c.status == "pass" for c in overlay_checks(out))
    assert killed >= 2, f"only {killed} kill(s) landed while revert ran"
    assert tree_state(qwen_src) == before
    subprocess.run(patch, check=True, capture_output=True)  # leftovers never block a new run
    assert read_manifest(out) is not None


def test_concurrent_reverts(qwen_src: Path, tmp_path: Path) -> None:
    from conftest import QWENPREP_BIN

    out = tmp_path / "ov"
    subprocess.run(
        [str(QWENPREP_BIN), "patch", str(qwen_src), "-c", "1m", "-o", str(out)],
        check=True,
        capture_output=True,
    )
    procs = [
        subprocess.Popen(
            [str(QWENPREP_BIN), "revert", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [(p.wait(), p.stderr.read() if p.stderr else "") for p in procs]
    assert [rc for rc, _ in results] == [0, 0, 0], results
    said = sorted(p.stdout.read().split(":")[0] if p.stdout else "" for p in procs)
    assert said[-1].startswith("removed overlay"), said
    assert all(s.startswith("nothing at") for s in said[:-1]), said
    assert not out.exists()


def test_revert_through_a_symlink_removes_the_real_overlay(
    cli: CliFn, qwen_src: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ov"
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(out)).exit_code == 0
    os.symlink(out, tmp_path / "ov-link")
    r = cli("revert", str(tmp_path / "ov-link"), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["action"] == "removed-overlay"
    assert not out.exists()


def test_revert_a_cached_repo_id(
    cli: CliFn, tmp_path: Path, ref_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    original = _original_bytes(ref_config, "indent2")
    snap, sha = _hf_cache(tmp_path, original)
    with open(snap / "config.json", "wb") as f:
        f.write(_manual_edit(original))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    r = cli("revert", "Qwen/Qwen3-Coder-480B-A35B-Instruct-FP8", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["proof"] == f"git blob sha1 {sha}"
    assert (snap / "config.json").read_bytes() == original
    r = cli("revert", "Qwen/Not-Cached")
    assert r.exit_code == 3 and "qwenprep fetch" in r.stderr


def test_mpe_only_edit_is_restored_by_address(
    cli: CliFn, tmp_path: Path, ref_config: dict[str, Any]
) -> None:
    """The edit that runs unscaled (only max_position_embeddings raised) is seen as an edit
    and undone, the native length proven by the content address."""
    original = _original_bytes(ref_config, "indent2")
    snap, sha = _hf_cache(tmp_path, original)
    cfg = json.loads(original)
    cfg["max_position_embeddings"] = 1048576
    with open(snap / "config.json", "wb") as f:
        f.write((json.dumps(cfg, indent=2) + "\n").encode())
    r = cli("revert", str(snap), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["action"] == "restored-config"
    assert (snap / "config.json").read_bytes() == original


def test_revert_of_a_dangling_overlay_does_not_call_the_source_untouched(
    cli: CliFn, qwen_src: Path, tmp_path: Path
) -> None:
    import shutil

    src = tmp_path / "src"
    shutil.copytree(qwen_src, src)
    out = tmp_path / "ov"
    assert cli("patch", str(src), "-c", "1m", "-o", str(out)).exit_code == 0
    shutil.rmtree(src)  # the source vanished: the overlay is dangling
    r = cli("revert", str(out))
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == (
        f"removed overlay {out} (it was dangling: its source {src.resolve()} was already gone)"
    )
    assert "untouched" not in r.stdout and not out.exists()
