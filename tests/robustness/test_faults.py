"""Faults around the overlay: a full disk (a file-size limit stands in), permissions, links
that escape, a manifest that lies."""

from __future__ import annotations

import json
import os
import resource
import subprocess
from pathlib import Path
from typing import Any, Callable

from click.testing import Result

from conftest import QWENPREP_BIN, tree_state
from qwenprep.checks.overlay import overlay_checks
from qwenprep.model.manifest import read_manifest

CliFn = Callable[..., Result]


def _limit_file_size(nbytes: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return apply


def test_full_disk_fails_cleanly_and_keeps_the_old_overlay(qwen_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    subprocess.run(
        [str(QWENPREP_BIN), "patch", str(qwen_src), "-c", "512k", "-o", str(out)],
        check=True,
        capture_output=True,
    )
    before_src = tree_state(qwen_src)
    before_out = tree_state(out)
    # the patched 480B config is ~9 KB: a 4 KB file-size limit makes its write fail (EFBIG)
    r = subprocess.run(
        [str(QWENPREP_BIN), "patch", str(qwen_src), "-c", "1m", "-o", str(out), "--force"],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(4096),
    )
    assert r.returncode == 3, r.stderr
    assert "out of space (File too large)" in r.stderr and "Traceback" not in r.stderr
    assert tree_state(out) == before_out  # the old overlay, untouched
    assert tree_state(qwen_src) == before_src
    assert [p.name for p in tmp_path.iterdir() if "qwenprep-tmp" in p.name] == []


def test_full_disk_on_first_patch_leaves_nothing(qwen_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    r = subprocess.run(
        [str(QWENPREP_BIN), "patch", str(qwen_src), "-c", "1m", "-o", str(out)],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(4096),
    )
    assert r.returncode == 3 and "out of space" in r.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if "qwenprep-tmp" in p.name] == []


def test_immutable_overlay_revert_names_the_path(
    cli: CliFn, qwen_src: Path, tmp_path: Path
) -> None:
    box = tmp_path / "box"
    box.mkdir()
    out = box / "ov"
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(out)).exit_code == 0
    if subprocess.run(["chattr", "+i", str(box)], capture_output=True).returncode != 0:
        import pytest

        pytest.skip("chattr +i is not available here")
    try:
        r = cli("revert", str(out))
    finally:
        subprocess.run(["chattr", "-i", str(box)], check=True)
    assert r.exit_code == 3
    assert f"{box}" in r.stderr and "Operation not permitted" in r.stderr
    assert read_manifest(out) is not None


def test_manifest_naming_an_escaping_path_is_flagged(
    cli: CliFn, qwen_src: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ov"
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(out)).exit_code == 0
    mp = out / ".qwenprep" / "manifest.json"
    m: dict[str, Any] = json.loads(mp.read_text())
    m["files"].append({"name": "../../etc/passwd", "size": 1})
    mp.write_text(json.dumps(m))
    checks = {c.id: c for c in overlay_checks(out)}
    assert checks["overlay.manifest"].status == "fail"
    assert "files/5/name" in checks["overlay.manifest"].message


def test_revert_never_follows_links_out(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    """A linked directory inside the overlay is unlinked, its target kept."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    os.symlink(outside, qwen_src / "linked-dir")
    out = tmp_path / "ov"
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(out)).exit_code == 0
    assert (out / "linked-dir").is_symlink()
    assert cli("revert", str(out)).exit_code == 0
    assert (outside / "keep.txt").read_text() == "keep"
    assert (qwen_src / "linked-dir").is_symlink()


def test_broken_link_in_source_is_named(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "gone", qwen_src / "model-00003-of-00003.safetensors")
    r = cli("patch", str(qwen_src), "-c", "1m", "-o", str(tmp_path / "ov"))
    assert r.exit_code == 3
    assert "model-00003-of-00003.safetensors: broken link in the source checkpoint" in r.stderr
    assert not (tmp_path / "ov").exists()
