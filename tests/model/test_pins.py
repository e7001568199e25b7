"""One cache pin per overlay instance, next to the real `hf` CLI on a real Hugging Face cache
layout: a moved overlay and the one made in its place, or a `cp -a` copy and its original, never
share a pin, so reverting one never lets `hf cache prune` delete the other's source; `list` flags
an overlay whose pin is missing and names the command that re-pins it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from test_lifecycle import NEW, OLD, REPO, _add_revision, _hf, _json, _q, _revisions, _set_main
from test_lifecycle import home as home  # noqa: F401 - the fixture

SNAPSHOTS = Path("hub") / "models--acme--tiny-coder" / "snapshots"


def _patch(env: dict[str, str], *args: str) -> dict[str, object]:
    r = _q(env, "patch", REPO, "--context", "1m", "--json", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return _json(r, "patch-result")


def _only_pins_hold_old(env: dict[str, str]) -> Path:
    """main moves on to NEW: OLD is kept by qwenprep's pins alone. Returns OLD's snapshot."""
    hf = Path(env["HF_HOME"])
    _add_revision(hf / "hub", NEW, tweak="new")
    _set_main(hf / "hub", NEW)
    return hf / SNAPSHOTS / OLD


def _manifest(ov: Path) -> dict[str, object]:
    obj = json.loads((ov / ".qwenprep" / "manifest.json").read_text())
    assert isinstance(obj, dict)
    return obj


def test_a_moved_overlay_and_the_one_made_in_its_place_have_pins_of_their_own(
    home: dict[str, str], tmp_path: Path
) -> None:
    first = _patch(home)
    ov = Path(str(first["path"]))
    moved = tmp_path / "moved" / "ov-old"
    moved.parent.mkdir()
    shutil.move(ov, moved)
    second = _patch(home)  # a new overlay at the default place
    assert second["path"] == str(ov) and second["pin"] != first["pin"]
    assert _revisions(home)[OLD] == sorted(["main", str(first["pin"]), str(second["pin"])])
    assert _manifest(ov)["id"] != _manifest(moved)["id"]
    old_snapshot = _only_pins_hold_old(home)
    r = _q(home, "revert", str(moved))
    assert r.returncode == 0, r.stderr
    assert _revisions(home)[OLD] == [second["pin"]]  # the moved one's pin went, not the live one's
    _hf(home, "cache", "prune", "-y")
    assert old_snapshot.is_dir()
    listed = _json(_q(home, "list", "--json"), "list-result")
    assert [(o["path"], o["state"]) for o in listed["overlays"]] == [(str(ov), "stale")]


def test_a_copy_leaves_the_pin_to_its_original_and_can_get_its_own(
    home: dict[str, str], tmp_path: Path
) -> None:
    made = _patch(home)
    ov = Path(str(made["path"]))
    copy = tmp_path / "copy"
    shutil.copytree(ov, copy, symlinks=True)  # cp -a
    listed = _json(_q(home, "list", str(copy), "--json"), "list-result")
    (entry,) = listed["overlays"]
    assert entry["state"] == "ok"
    assert entry["reasons"] == [
        f"a copy of {ov}: it shares that overlay's pin {made['pin']}, which goes when {ov} is "
        f"reverted; give this one its own with: qwenprep patch {REPO}@{OLD} --context 1048576 "
        f"--out {copy}"
    ]
    old_snapshot = _only_pins_hold_old(home)
    r = _q(home, "revert", str(copy))
    assert r.returncode == 0, r.stderr
    assert f"its cache pin {made['pin']} is kept for {ov}" in r.stdout
    assert _revisions(home)[OLD] == [made["pin"]]
    _hf(home, "cache", "prune", "-y")
    assert old_snapshot.is_dir()
    # a second copy, given its own pin by the command list names: the original's revert
    # then leaves the copy pinned
    shutil.copytree(ov, copy, symlinks=True)
    r = _q(home, "patch", f"{REPO}@{OLD}", "--context", "1048576", "--out", str(copy), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    own = _json(r, "patch-result")
    assert own["pin"] != made["pin"] and own["status"] == "replaced"
    assert _manifest(copy)["path"] == str(copy)
    assert _revisions(home)[OLD] == sorted([str(made["pin"]), str(own["pin"])])
    r = _q(home, "revert", str(ov))
    assert r.returncode == 0, r.stderr
    assert _revisions(home)[OLD] == [own["pin"]]
    _hf(home, "cache", "prune", "-y")
    assert old_snapshot.is_dir()
    listed = _json(_q(home, "list", str(copy), "--json"), "list-result")
    assert [(o["state"], o["reasons"]) for o in listed["overlays"]] == [("ok", [])]


def test_a_copy_never_takes_the_pin_of_an_original_that_moved(
    home: dict[str, str], tmp_path: Path
) -> None:
    """Hostile pass: `cp -a OV COPY; mv OV MOVED; qwenprep revert COPY` removed the pin MOVED
    still needs (the copy could not find its original at the place it was made). A copy never
    releases the pin; the moved original (the same directory: its dir_id) does, on its revert."""
    made = _patch(home)
    ov = Path(str(made["path"]))
    copy, moved = tmp_path / "copy", tmp_path / "moved"
    shutil.copytree(ov, copy, symlinks=True)  # cp -a
    shutil.move(ov, moved)
    old_snapshot = _only_pins_hold_old(home)
    r = _q(home, "revert", str(copy))
    assert r.returncode == 0, r.stderr
    assert f"its cache pin {made['pin']} is left in place" in r.stdout
    assert _revisions(home)[OLD] == [made["pin"]]
    _hf(home, "cache", "prune", "-y")
    assert old_snapshot.is_dir()
    listed = _json(_q(home, "list", str(moved), "--json"), "list-result")
    assert [o["state"] for o in listed["overlays"]] == ["stale"]  # main moved on; pinned
    r = _q(home, "revert", str(moved))
    assert r.returncode == 0, r.stderr
    assert _revisions(home).get(OLD, []) == []  # the original's own revert releases its pin


def test_list_flags_a_missing_pin_and_names_the_command_that_re_pins(
    home: dict[str, str],
) -> None:
    made = _patch(home)
    ov = Path(str(made["path"]))
    ref = Path(home["HF_HOME"]) / "hub" / "models--acme--tiny-coder" / "refs" / str(made["pin"])
    ref.unlink()  # what a revert of a copy did before pins were per overlay
    repin = f"qwenprep patch {REPO}@{OLD} --context 1048576 --out {ov}"
    r = _q(home, "list", "--json")
    assert r.returncode == 1
    (entry,) = _json(r, "list-result")["overlays"]
    assert entry["state"] == "unpinned"
    assert entry["reasons"] == [
        f"pin missing: its pin {ref} is gone; a cache prune may delete its source; "
        f"re-pin with: {repin}"
    ]
    assert entry["rebuild"] == repin
    r = _q(home, "validate", str(ov))
    assert r.returncode == 0 and "the overlay is unpinned: pin missing" in r.stdout, r.stdout
    r = _q(home, *repin.split()[1:])
    assert r.returncode == 0, r.stderr
    listed = _json(_q(home, "list", "--json"), "list-result")
    assert [o["state"] for o in listed["overlays"]] == ["ok"]
    assert any(p.startswith("qwenprep/") for p in _revisions(home)[OLD])
