"""qwenprep patch: the overlay, its manifest, and every refusal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import Result

from conftest import QWENPREP_BIN, KillDelays, many_files, timed_run, tree_state
from qwenprep.checks.overlay import overlay_checks
from qwenprep.model.manifest import read_manifest
from qwenprep.util.jsonio import dump_config
from qwenprep.util.schemas import validator

CliFn = Callable[..., Result]


def test_patch_1m_creates_overlay(
    cli: CliFn, qwen_src: Path, tmp_path: Path, ref_config: dict[str, Any]
) -> None:
    before = tree_state(qwen_src)
    out = tmp_path / "ov"
    r = cli("patch", str(qwen_src), "--context", "1m", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(out)
    assert "created overlay" in r.stderr and "YaRN factor 4 over 262144" in r.stderr
    assert '+  "max_position_embeddings": 1048576,' in r.stderr  # the diff is shown
    assert tree_state(qwen_src) == before  # source untouched

    cfg = json.loads((out / "config.json").read_text())
    assert list(cfg) == list(ref_config)
    assert cfg["max_position_embeddings"] == 1048576
    assert cfg["rope_scaling"] == {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 262144,
    }
    assert {
        k: v for k, v in cfg.items() if k not in ("max_position_embeddings", "rope_scaling")
    } == {
        k: v for k, v in ref_config.items() if k not in ("max_position_embeddings", "rope_scaling")
    }
    assert not (out / "config.json").is_symlink()
    for rel in [
        "generation_config.json",
        "tokenizer.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "extra/notes.txt",
    ]:
        assert (out / rel).is_symlink(), rel
        assert (out / rel).resolve() == (qwen_src / rel).resolve()

    m = read_manifest(out)
    assert m is not None
    assert not list(validator("manifest").iter_errors(m.raw))
    assert m.source.path == str(qwen_src.resolve())
    assert m.native_context == 262144 and m.target_context == 1048576
    assert m.factor == 4.0 and m.rope_style == "rope_scaling"
    assert {f.name for f in m.files} == {
        "generation_config.json",
        "tokenizer.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "extra/notes.txt",
    }
    assert all(c.status == "pass" for c in overlay_checks(out))
    assert [p.name for p in tmp_path.iterdir() if "qwenprep-tmp" in p.name] == []


def test_patch_json_output(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    r = cli("patch", str(qwen_src), "--context", "512k", "--out", str(tmp_path / "o"), "--json")
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["schema_version"] == 1 and out["status"] == "created"
    assert (out["native_context"], out["target_context"], out["factor"]) == (262144, 524288, 2.0)
    assert out["files_linked"] == 5


def test_native_gives_original_back(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "n"
    assert cli("patch", str(qwen_src), "--context", "native", "--out", str(out)).exit_code == 0
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (qwen_src / "config.json").read_text()
    )
    assert (out / "config.json").read_bytes() == (qwen_src / "config.json").read_bytes()


def test_patching_an_overlay_starts_from_its_source(
    cli: CliFn, qwen_src: Path, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(a)).exit_code == 0
    r = cli("patch", str(a), "-c", "1m", "-o", str(b), "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["factor"] == 4.0
    m = read_manifest(b)
    assert m is not None and m.source.path == str(qwen_src.resolve())
    assert (b / "tokenizer.json").resolve() == (qwen_src / "tokenizer.json").resolve()


def test_patching_an_in_place_edited_config_starts_from_native(
    cli: CliFn, qwen_src: Path, tmp_path: Path
) -> None:
    cfg = json.loads((qwen_src / "config.json").read_text())
    cfg["max_position_embeddings"] = 1048576
    cfg["rope_scaling"] = {
        "type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 262144,
    }
    (qwen_src / "config.json").write_text(json.dumps(cfg, indent=2))
    r = cli("patch", str(qwen_src), "-c", "1m", "-o", str(tmp_path / "o"), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["factor"] == 4.0


def test_rerun_is_unchanged_and_force_replaces(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(out)).exit_code == 0
    r = cli("patch", str(qwen_src), "-c", "1m", "-o", str(out), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "unchanged"
    r = cli("patch", str(qwen_src), "-c", "512k", "-o", str(out))
    assert r.exit_code == 3
    assert r.stderr.startswith(f"error: --out {out} is already a qwenprep overlay")
    assert "pass --force to replace it" in r.stderr
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 1048576
    r = cli("patch", str(qwen_src), "-c", "512k", "-o", str(out), "--force", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "replaced"
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 524288
    assert [p.name for p in tmp_path.iterdir() if "qwenprep-tmp" in p.name] == []


def test_transformers5_config_keeps_theta_inside(
    cli: CliFn, qwen_src: Path, tmp_path: Path
) -> None:
    cfg = json.loads((qwen_src / "config.json").read_text())
    theta = cfg.pop("rope_theta")
    cfg.pop("rope_scaling")
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    (qwen_src / "config.json").write_text(json.dumps(cfg, indent=2))
    out = tmp_path / "o"
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(out)).exit_code == 0
    new = json.loads((out / "config.json").read_text())
    assert new["rope_parameters"] == {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 262144,
        "rope_theta": 10000000,
    }
    assert "rope_scaling" not in new
    assert cli("validate", str(out)).exit_code == 0


def test_factor_limits(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    r = cli("patch", str(qwen_src), "-c", "2m", "-o", str(tmp_path / "o"))
    assert r.exit_code == 2
    assert "context 2m means YaRN factor 8 over the native 262144" in r.stderr
    assert not (tmp_path / "o").exists()
    r = cli("patch", str(qwen_src), "-c", "2m", "-o", str(tmp_path / "o"), "--force", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["factor"] == 8.0
    r = cli("patch", str(qwen_src), "-c", "100000", "-o", str(tmp_path / "p"), "--force")
    assert r.exit_code == 2 and "below the native 262144" in r.stderr


# ---- bad input: each a clear message, a non-zero exit, the source untouched ----


def _bad_config(src: Path, text: str) -> dict[str, Any]:
    (src / "config.json").write_text(text)
    return tree_state(src)


def test_malformed_json_names_line_and_column(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    before = _bad_config(qwen_src, '{\n  "model_type": "qwen3_moe",\n  "hidden_size": ,\n}\n')
    r = cli("patch", str(qwen_src), "-c", "1m", "-o", str(tmp_path / "o"))
    assert r.exit_code == 3
    assert f"error: {qwen_src / 'config.json'}:3:18: malformed JSON: Expecting value." in r.stderr
    assert tree_state(qwen_src) == before and not (tmp_path / "o").exists()


def test_non_qwen_model_type(
    cli: CliFn, qwen_src: Path, tmp_path: Path, ref_config: dict[str, Any]
) -> None:
    before = _bad_config(qwen_src, json.dumps(dict(ref_config, model_type="llama")))
    r = cli("patch", str(qwen_src), "-c", "1m", "-o", str(tmp_path / "o"))
    assert r.exit_code == 3
    assert "$.model_type: model_type is 'llama'; qwenprep knows these families" in r.stderr
    assert tree_state(qwen_src) == before and not (tmp_path / "o").exists()


def test_string_max_position_embeddings(
    cli: CliFn, qwen_src: Path, tmp_path: Path, ref_config: dict[str, Any]
) -> None:
    before = _bad_config(qwen_src, json.dumps(dict(ref_config, max_position_embeddings="262144")))
    r = cli("patch", str(qwen_src), "-c", "1m", "-o", str(tmp_path / "o"), "--json")
    assert r.exit_code == 3
    err = json.loads(r.stdout)["error"]
    assert "$.max_position_embeddings: is '262144' (str); expected integer" in err["message"]
    assert tree_state(qwen_src) == before


def test_missing_config(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    (qwen_src / "config.json").unlink()
    r = cli("patch", str(qwen_src), "-c", "1m", "-o", str(tmp_path / "o"))
    assert r.exit_code == 3
    assert f"{qwen_src}: no config.json here" in r.stderr


def test_missing_source(cli: CliFn, tmp_path: Path) -> None:
    r = cli("patch", str(tmp_path / "nope"), "-c", "1m", "-o", str(tmp_path / "o"))
    assert r.exit_code == 3
    assert f"error: {tmp_path / 'nope'}: no such directory." in r.stderr
    assert "qwenprep fetch ORG/NAME" in r.stderr


def test_unknown_context(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    r = cli("patch", str(qwen_src), "-c", "lots", "-o", str(tmp_path / "o"))
    assert r.exit_code == 2
    assert "error: unknown context 'lots'." in r.stderr and "native, 256k, 512k, 1m" in r.stderr


def test_missing_required_option_is_usage_error(cli: CliFn, qwen_src: Path) -> None:
    r = cli("patch", str(qwen_src), "-o", str(qwen_src.parent / "ov"))
    assert r.exit_code == 2 and "Missing option '--context'" in r.stderr


def test_foreign_out_is_never_clobbered(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for extra in ([], ["--force"]):
        r = cli("patch", str(qwen_src), "-c", "1m", "-o", str(out), *extra)
        assert r.exit_code == 3
        assert f"--out {out} is a non-empty directory that qwenprep did not make" in r.stderr
    assert [p.name for p in out.iterdir()] == ["precious.txt"]


def test_out_that_is_a_file(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    r = cli("patch", str(qwen_src), "-c", "1m", "-o", str(f), "--force")
    assert r.exit_code == 3 and "exists and is not a directory" in r.stderr
    assert f.read_text() == "x"


def test_empty_out_dir_is_used(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    """An empty --out is filled, and keeps the mode the user gave it (a private 0700 stays
    private; also across a --force rebuild)."""
    out = tmp_path / "empty"
    out.mkdir()
    out.chmod(0o700)
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(out)).exit_code == 0
    assert read_manifest(out) is not None
    assert out.stat().st_mode & 0o777 == 0o700
    assert cli("patch", str(qwen_src), "-c", "256k", "-o", str(out), "--force").exit_code == 0
    assert out.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("where", ["inside", "same"])
def test_out_inside_source(cli: CliFn, qwen_src: Path, where: str) -> None:
    before = tree_state(qwen_src)
    out = qwen_src / "overlay" if where == "inside" else qwen_src
    r = cli("patch", str(qwen_src), "-c", "1m", "-o", str(out))
    assert r.exit_code == 2
    assert f"--out {out} is inside the source checkpoint" in r.stderr
    assert tree_state(qwen_src) == before


def test_read_only_target(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    parent = tmp_path / "ro"
    parent.mkdir()
    if subprocess.run(["chattr", "+i", str(parent)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (root ignores chmod)")
    try:
        r = cli("patch", str(qwen_src), "-c", "1m", "-o", str(parent / "ov"))
        assert r.exit_code == 3
        assert f"{parent}: cannot write here" in r.stderr
        assert "writable filesystem" in r.stderr
    finally:
        subprocess.run(["chattr", "-i", str(parent)], check=True)
    assert list(parent.iterdir()) == []


def test_console_script_and_module(qwen_src: Path, tmp_path: Path) -> None:
    r = subprocess.run(
        [
            str(QWENPREP_BIN),
            "patch",
            str(qwen_src),
            "-c",
            "1m",
            "-o",
            str(tmp_path / "a"),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["target_context"] == 1048576
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "qwenprep",
            "patch",
            str(qwen_src),
            "-c",
            "lots",
            "-o",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "unknown context 'lots'" in r.stderr


def test_concurrent_runs_are_serialised(qwen_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    procs = [
        subprocess.Popen(
            [
                str(QWENPREP_BIN),
                "patch",
                str(qwen_src),
                "-c",
                ctx,
                "-o",
                str(out),
                "--force",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for ctx in ("1m", "512k", "1m", "512k")
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], results
    m = read_manifest(out)
    assert m is not None
    assert all(c.status == "pass" for c in overlay_checks(out))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["max_position_embeddings"] == m.target_context
    assert [p.name for p in tmp_path.iterdir() if "qwenprep-tmp" in p.name] == []


def test_kill_9_leaves_old_or_new(qwen_src: Path, tmp_path: Path) -> None:
    """kill -9 spread over a whole --force replacement: OUT is always the old overlay or the
    new one, complete, and the kills really landed while patch was running."""
    many_files(qwen_src)
    out = tmp_path / "ov"
    old = [str(QWENPREP_BIN), "patch", str(qwen_src), "-c", "512k", "-o", str(out), "--force"]
    new = [str(QWENPREP_BIN), "patch", str(qwen_src), "-c", "1m", "-o", str(out), "--force"]
    timed_run(old)
    duration = timed_run(new)
    timed_run(old)
    kill_delays = KillDelays()
    seen, killed = set(), 0
    for delay in kill_delays(duration, (0.15, 0.35, 0.55, 0.75, 0.95)):
        p = subprocess.Popen(new, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        landed = p.wait() == -signal.SIGKILL
        killed += landed
        kill_delays.landed(landed)
        m = read_manifest(out)
        assert m is not None, "the overlay vanished"
        seen.add(m.target_context)
        assert all(c.status == "pass" for c in overlay_checks(out)), overlay_checks(out)
        assert (
            json.loads((out / "config.json").read_text())["max_position_embeddings"]
            == m.target_context
        )
        subprocess.run(old, capture_output=True, check=True)  # back to the old state
    assert killed >= 2, f"only {killed} kill(s) landed while patch ran"
    assert seen <= {524288, 1048576}
    assert [p.name for p in tmp_path.iterdir() if "qwenprep-tmp" in p.name] == []


def test_real_480b_shaped_checkpoint(cli: CliFn, tmp_path: Path) -> None:
    from qwenprep.testing.synth import make_shaped_checkpoint

    src = make_shaped_checkpoint(tmp_path / "Qwen3-Coder-480B-A35B-Instruct-FP8", shards=50)
    apparent = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    assert apparent > 400 * 2**30
    before = tree_state(src)
    out = tmp_path / "ov"
    r = cli("patch", str(src), "--context", "1m", "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    assert tree_state(src) == before
    used = subprocess.run(["du", "-sk", str(out)], capture_output=True, text=True, check=True)
    assert int(used.stdout.split()[0]) < 4 * 1024  # a few MB at most (KiB)
    assert len(list(out.glob("*.safetensors"))) == 50
    assert cli("validate", str(out)).exit_code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["max_position_embeddings"] == 1048576
    assert cfg["rope_scaling"]["factor"] == 4.0
    assert (out / "config.json").read_text() == dump_config(cfg)
    shutil.rmtree(out)


# ---- found in review: each once did the wrong thing ----


def test_force_never_deletes_files_it_did_not_put_there(
    cli: CliFn, qwen_src: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ov"
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(out)).exit_code == 0
    (out / "NOTES.txt").write_text("mine")
    r = cli("patch", str(qwen_src), "-c", "512k", "-o", str(out), "--force")
    assert r.exit_code == 3
    assert (
        "holds files qwenprep did not put there: NOTES.txt; --force will not delete them"
        in r.stderr
    )
    assert (out / "NOTES.txt").read_text() == "mine"
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 1048576


def test_out_containing_the_source_is_refused(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(out)).exit_code == 0
    inner = out / "inner"
    shutil.copytree(qwen_src, inner)
    r = cli("patch", str(inner), "-c", "1m", "-o", str(out), "--force")
    assert r.exit_code == 2
    assert f"--out {out} contains the source checkpoint {inner}" in r.stderr
    assert (inner / "config.json").is_file()


def test_unscaled_long_context_source_is_refused(
    cli: CliFn, qwen_src: Path, tmp_path: Path
) -> None:
    """max_position_embeddings 1M without rope scaling (the hf-overrides trap written to disk):
    its native length cannot be known, so it is not patched."""
    cfg = json.loads((qwen_src / "config.json").read_text())
    cfg["max_position_embeddings"] = 1048576
    (qwen_src / "config.json").write_text(json.dumps(cfg, indent=2))
    before = tree_state(qwen_src)
    r = cli("patch", str(qwen_src), "-c", "1m", "-o", str(tmp_path / "o"))
    assert r.exit_code == 3
    assert "not a config qwenprep can patch" in r.stderr
    assert (
        "config.json:13: max_position_embeddings is 1048576 but no rope scaling is set" in r.stderr
    )
    assert f"restore it first (qwenprep revert {qwen_src.resolve()})" in r.stderr
    assert tree_state(qwen_src) == before and not (tmp_path / "o").exists()


def test_non_utf8_config_is_a_clear_error(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    raw = b"\xff\xfe" + (qwen_src / "config.json").read_bytes()
    (qwen_src / "config.json").write_bytes(raw)
    r = cli("patch", str(qwen_src), "-c", "1m", "-o", str(tmp_path / "o"))
    assert r.exit_code == 3
    assert "config.json: not UTF-8 text (invalid start byte at byte 0)" in r.stderr


def test_factor_is_shown_exactly(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    r = cli("patch", str(qwen_src), "-c", "1048577", "-o", str(tmp_path / "o"))
    assert r.exit_code == 2
    assert "means YaRN factor 4.0000038 over the native 262144" in r.stderr


def test_symlinked_out_is_refused_with_its_target(
    cli: CliFn, qwen_src: Path, tmp_path: Path
) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    r = cli("patch", str(qwen_src), "-c", "1m", "-o", str(tmp_path / "link"))
    assert r.exit_code == 3
    assert f"is a symbolic link (to {real})" in r.stderr


def test_overlay_whose_source_moved(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(out)).exit_code == 0
    qwen_src.rename(tmp_path / "moved")
    r = cli("patch", str(out), "-c", "512k", "-o", str(tmp_path / "ov2"))
    assert r.exit_code == 3
    assert f"{out} is an overlay of {qwen_src.resolve()}, which is gone" in r.stderr


def test_no_lock_files_are_left_behind(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(out)).exit_code == 0
    assert cli("revert", str(out)).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [qwen_src.name]
