"""Overlays over their whole life, next to the real `hf` CLI on a real Hugging Face cache layout:
the default place, the cache ref that keeps the source from `hf cache prune`, `qwenprep list`
(ok / stale / dangling), and the refusal of dangling overlays by validate, check and serve."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import QWENPREP_BIN, TINY
from qwenprep.util.hashing import git_blob_sha1_of
from qwenprep.util.schemas import validator

HF = Path(sys.executable).parent / "hf"
OLD, NEW = "1" * 40, "2" * 40
REPO = "acme/tiny-coder"


def _add_revision(hub: Path, commit: str, *, tweak: str = "") -> Path:
    """A snapshot as huggingface_hub lays it out: every file a link into blobs/ named by its
    etag (git blob sha1 for small files, sha256 for LFS-sized ones)."""
    repo = hub / f"models--{REPO.replace('/', '--')}"
    blobs, snap = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in sorted(TINY.iterdir()):
        data = f.read_bytes()
        if f.name == "generation_config.json" and tweak:
            data = data.replace(b"{", b'{"note": "' + tweak.encode() + b'", ', 1)
        etag = (
            hashlib.sha256(data).hexdigest()
            if f.suffix == ".safetensors"
            else git_blob_sha1_of(data)
        )
        (blobs / etag).write_bytes(data)
        os.symlink(f"../../blobs/{etag}", snap / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    return snap


def _set_main(hub: Path, commit: str) -> None:
    (hub / f"models--{REPO.replace('/', '--')}" / "refs" / "main").write_text(commit)


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    hf_home = tmp_path / "hf"
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    env.pop("QWENPREP_OVERLAYS", None)
    _add_revision(hf_home / "hub", OLD)
    _set_main(hf_home / "hub", OLD)
    return env


def _q(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QWENPREP_BIN), *args], capture_output=True, text=True, env=env, timeout=120
    )


def _hf(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(HF), *args], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _revisions(env: dict[str, str]) -> dict[str, list[str]]:
    """hf cache ls --revisions, as {revision: [refs]}."""
    r = _hf(env, "cache", "ls", "--revisions", "--format", "json")
    rows = json.loads(r.stdout)
    return {row["revision"]: sorted(row.get("refs") or []) for row in rows}


def _json(r: subprocess.CompletedProcess[str], schema: str) -> dict[str, Any]:
    obj = json.loads(r.stdout)
    errors = list(validator(schema).iter_errors(obj))
    assert not errors, errors
    assert isinstance(obj, dict)
    return obj


def test_patch_without_out_goes_to_the_default_place_and_pins_the_source(
    home: dict[str, str],
) -> None:
    r = _q(home, "patch", REPO, "--context", "1m", "--json")
    assert r.returncode == 0, r.stderr
    out = _json(r, "patch-result")
    expect = Path(home["HF_HOME"]) / "qwenprep" / "overlays" / f"acme--tiny-coder@{OLD[:12]}-1m"
    assert out["path"] == str(expect) and expect.is_dir()
    pin = out["pin"]
    assert pin is not None and pin.startswith("qwenprep/")
    assert _revisions(home)[OLD] == sorted(["main", pin])  # the hf CLI lists our ref
    # the same command again is a no-op on the same place
    r = _q(home, "patch", REPO, "--context", "1m")
    assert r.returncode == 0 and r.stdout.strip() == str(expect)
    assert "unchanged overlay" in r.stderr


def test_the_pin_keeps_the_source_from_hf_cache_prune_and_revert_releases_it(
    home: dict[str, str],
) -> None:
    hub = Path(home["HF_HOME"]) / "hub"
    r = _q(home, "patch", REPO, "--context", "1m")
    assert r.returncode == 0, r.stderr
    ov = Path(r.stdout.strip())
    _add_revision(hub, NEW, tweak="new")
    _set_main(hub, NEW)  # main moves on: OLD is referenced only by the overlay's pin now
    _hf(home, "cache", "prune", "-y")
    assert (hub / "models--acme--tiny-coder" / "snapshots" / OLD).is_dir()
    r = _q(home, "validate", str(ov))
    assert r.returncode == 0, r.stdout + r.stderr  # still valid, but stale
    assert "WARN" in r.stdout and f"{REPO}@main now points at {NEW[:12]}" in r.stdout
    listed = _json(_q(home, "list", "--json"), "list-result")
    assert [o["state"] for o in listed["overlays"]] == ["stale"]
    rebuild = listed["overlays"][0]["rebuild"]
    assert rebuild == f"qwenprep patch {REPO}@main --context 1048576 && qwenprep revert {ov}"
    r = _q(home, "revert", str(ov))
    assert r.returncode == 0, r.stderr
    assert OLD in _revisions(home) and _revisions(home)[OLD] == []  # released: detached
    _hf(home, "cache", "prune", "-y")
    assert not (hub / "models--acme--tiny-coder" / "snapshots" / OLD).exists()
    r = _q(home, "revert", str(ov))  # idempotent
    assert r.returncode == 0 and r.stdout.startswith(f"nothing at {ov}")


def test_hf_cache_rm_leaves_a_dangling_overlay_that_every_gate_refuses(
    home: dict[str, str], tmp_path: Path
) -> None:
    r = _q(home, "patch", REPO, "--context", "1m")
    assert r.returncode == 0, r.stderr
    ov = Path(r.stdout.strip())
    listed = _json(_q(home, "list", "--json"), "list-result")
    assert [o["state"] for o in listed["overlays"]] == ["ok"] and listed["ok"] is True
    _hf(home, "cache", "rm", f"model/{REPO}", "-y")
    r = _q(home, "list", "--json")
    assert r.returncode == 1
    entry = _json(r, "list-result")["overlays"][0]
    assert entry["state"] == "dangling"
    assert entry["reasons"][0].startswith("the source ") and "is gone" in entry["reasons"][0]
    # the overlay's own commit (fetched again first: its snapshot is gone), never main's
    rebuild = (
        f"qwenprep fetch {REPO}@{OLD} && "
        f"qwenprep patch {REPO}@{OLD} --context 1048576 --out {ov} --force"
    )
    assert entry["rebuild"] == rebuild
    r = _q(home, "list")
    assert r.returncode == 1 and r.stdout.startswith(f"dangling {ov}")
    for args in (["validate", str(ov)], ["serve", str(ov), "--dry-run"]):
        r = _q(home, *args)
        assert r.returncode == 3, (args, r.stdout, r.stderr)
        assert "the overlay is dangling" in r.stderr and rebuild in r.stderr
    r = _q(home, "check", str(ov), "--no-engine", "--gpus", "1", "--gpu-memory", "80GiB")
    assert r.returncode != 0
    assert "the overlay is dangling" in r.stdout + r.stderr


def test_a_dangling_overlay_gets_its_rebuild_everywhere(home: dict[str, str]) -> None:
    """plan and check say 'dangling: rebuild with ...' like validate and serve, and nothing
    that points the wrong way (plan: pass --kv-memory; check: restore the index)."""
    ov = Path(_q(home, "patch", REPO, "--context", "1m").stdout.strip())
    _hf(home, "cache", "rm", f"model/{REPO}", "-y")
    hint = (
        f"dangling: rebuild with qwenprep fetch {REPO}@{OLD} && "
        f"qwenprep patch {REPO}@{OLD} --context 1048576 --out {ov} --force"
    )
    runs = {
        "validate": ["validate", str(ov)],
        "plan": ["plan", str(ov), "--gpus", "1", "--gpu", "H200"],
        "check": ["check", str(ov), "--no-engine", "--gpus", "1", "--gpu", "H200"],
    }
    for name, args in runs.items():
        r = _q(home, *args)
        said = r.stdout + r.stderr
        assert r.returncode in (1, 3), (name, said)
        assert "the overlay is dangling" in said and hint in said, (name, said)
        assert "--kv-memory" not in said and "Restore the index" not in said, (name, said)
    r = _q(home, "check", str(ov), "--no-engine", "--gpus", "1", "--gpu", "H200", "--json")
    assert [(c["id"], c["status"]) for c in json.loads(r.stdout)["checks"]] == [
        ("overlay.live", "fail")
    ]


def test_list_of_explicit_paths_and_of_nothing(home: dict[str, str], tmp_path: Path) -> None:
    r = _q(home, "list", "--json")
    assert r.returncode == 0 and _json(r, "list-result")["overlays"] == []
    a = tmp_path / "mine" / "a"
    assert _q(home, "patch", str(TINY), "-c", "512k", "-o", str(a)).returncode == 0
    for target in (a, a.parent):
        listed = _json(_q(home, "list", str(target), "--json"), "list-result")
        (entry,) = listed["overlays"]
        assert entry["path"] == str(a) and entry["state"] == "ok"
        assert entry["source"] == str(TINY.resolve()) and entry["context"] == 524288
    # a source config changed in place makes it stale
    (a / ".qwenprep" / "manifest.json").write_text(
        (a / ".qwenprep" / "manifest.json")
        .read_text()
        .replace(
            json.loads((a / ".qwenprep" / "manifest.json").read_text())["source"]["config_sha256"],
            "0" * 64,
        )
    )
    listed = _json(_q(home, "list", str(a), "--json"), "list-result")
    assert listed["overlays"][0]["state"] == "stale"
    assert "changed since the patch" in listed["overlays"][0]["reasons"][0]
    r = _q(home, "list", str(tmp_path / "nowhere"))
    assert r.returncode == 3 and "no such directory" in r.stderr


def test_list_rebuild_of_a_moved_ref_names_the_new_commit_and_replaces_the_old(
    home: dict[str, str],
) -> None:
    """After main moves, list's rebuild command, run as printed, leaves one overlay: the new
    commit's, at its own default name (not the new commit in a folder named after the old)."""
    hub = Path(home["HF_HOME"]) / "hub"
    old = Path(_q(home, "patch", REPO, "--context", "1m").stdout.strip())
    _add_revision(hub, NEW, tweak="new")
    _set_main(hub, NEW)
    [row] = _json(_q(home, "list", "--json"), "list-result")["overlays"]
    assert row["state"] == "stale"
    for command in row["rebuild"].split(" && "):
        words = command.split()
        assert words[0] == "qwenprep", command
        r = _q(home, *words[1:])
        assert r.returncode == 0, r.stdout + r.stderr
    new = old.with_name(f"acme--tiny-coder@{NEW[:12]}-1m")
    listed = _json(_q(home, "list", "--json"), "list-result")["overlays"]
    assert [(o["path"], o["state"]) for o in listed] == [(str(new), "ok")]
    assert not old.exists()
    r = _q(home, "patch", REPO, "--context", "1m")  # the README's command: the same overlay
    assert r.returncode == 0 and r.stdout.strip() == str(new), r.stderr


def test_revert_org_name_removes_the_overlay_patch_org_name_made(home: dict[str, str]) -> None:
    """`revert ORG/NAME` is the undo of `patch ORG/NAME`: the source's config is the release's,
    so the default overlay goes (and its pin); with two contexts, both are named to pick one."""
    ov = Path(_q(home, "patch", REPO, "--context", "1m").stdout.strip())
    r = _q(home, "revert", REPO, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["action"], out["path"]) == ("removed-overlay", str(ov)), out
    assert not ov.exists() and _revisions(home)[OLD] == ["main"]
    r = _q(home, "revert", REPO, "--json")  # nothing left: the release's config, as before
    assert r.returncode == 0 and json.loads(r.stdout)["action"] == "already-original"
    a = Path(_q(home, "patch", REPO, "--context", "1m").stdout.strip())
    b = Path(_q(home, "patch", REPO, "--context", "512k").stdout.strip())
    r = _q(home, "revert", REPO)
    assert r.returncode == 3 and a.exists() and b.exists(), r.stderr
    assert f"2 overlays were made of it: {a}, {b}" in r.stderr or f"{b}, {a}" in r.stderr
