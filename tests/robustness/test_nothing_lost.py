"""Nothing lost, nothing trusted unproven: revert's backups, forged manifests, user edits inside
overlays, inconsistent or non-finite RoPE numbers, and inputs that used to traceback.

Every test here failed on the code before the fix (run against that commit's checkout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import Result

from conftest import QWENPREP_BIN, TINY, tree_state

CliFn = Callable[..., Result]


def _edit_1m(cfg_path: Path) -> bytes:
    """The old manual recipe, in place: mpe 1M and a YaRN block."""
    cfg = json.loads(cfg_path.read_text())
    cfg["max_position_embeddings"] = 1048576
    cfg["rope_scaling"] = {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 262144,
    }
    data = (json.dumps(cfg, indent=2) + "\n").encode()
    cfg_path.write_bytes(data)
    return data


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QWENPREP_BIN), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def _no_traceback(r: subprocess.CompletedProcess[str] | Result) -> None:
    out = (r.stdout or "") + (r.stderr or "")
    assert "Traceback" not in out, out


def _one_json(text: str) -> dict[str, Any]:
    obj = json.loads(text)  # exactly one object: json.loads refuses trailing data
    assert isinstance(obj, dict)
    return obj


# ----------------------------------------------------------------- 2. revert's backups


@pytest.mark.parametrize(
    "name,content,why",
    [
        ("config.json~", os.urandom(2048), "it is not a JSON config object"),
        ("config.json.bak", b"", "it is empty"),
        ("config.json.orig", None, "it is a config of another model (differs in hidden_size"),
        ("config.json.backup", b"[1, 2]", "it is not a JSON config object"),
    ],
)
def test_revert_refuses_a_backup_that_is_not_the_original(
    cli: CliFn, qwen_src: Path, name: str, content: bytes | None, why: str
) -> None:
    original = json.loads((qwen_src / "config.json").read_text())
    edited = _edit_1m(qwen_src / "config.json")
    if content is None:  # another model's (native) config
        content = json.dumps(dict(original, hidden_size=4096), indent=2).encode()
    (qwen_src / name).write_bytes(content)
    r = cli("revert", str(qwen_src))
    assert r.exit_code == 3, r.output
    assert f"no backup beside it is its original: {name}: {why}" in r.stderr
    assert "Nothing was changed." in r.stderr
    assert (qwen_src / "config.json").read_bytes() == edited
    assert not (qwen_src / "config.json.qwenprep-replaced").exists()


def test_revert_uses_the_true_backup_and_keeps_what_it_replaced(cli: CliFn, qwen_src: Path) -> None:
    original = (qwen_src / "config.json").read_bytes()
    (qwen_src / "config.json~").write_bytes(os.urandom(100))  # tried first, refused, skipped
    (qwen_src / "config.json.original").write_bytes(original)
    edited = _edit_1m(qwen_src / "config.json")
    r = cli("revert", str(qwen_src), "--json")
    assert r.exit_code == 0, r.output
    out = _one_json(r.stdout)
    assert out["action"] == "restored-config"
    assert out["source"] == str(qwen_src / "config.json.original")
    assert (qwen_src / "config.json").read_bytes() == original
    kept = qwen_src / "config.json.qwenprep-replaced"
    assert kept.read_bytes() == edited  # the undo can be undone
    assert f"kept as {kept}" in out["message"]


def test_revert_refuses_a_backup_whose_length_is_not_the_scaled_native(
    cli: CliFn, qwen_src: Path
) -> None:
    original = json.loads((qwen_src / "config.json").read_text())
    edited = _edit_1m(qwen_src / "config.json")
    (qwen_src / "config.json.bak").write_text(
        json.dumps(dict(original, max_position_embeddings=32768), indent=2)
    )
    r = cli("revert", str(qwen_src))
    assert r.exit_code == 3
    assert "is not the native 262144 the edit scaled from" in r.stderr
    assert (qwen_src / "config.json").read_bytes() == edited


def test_revert_in_cache_keeps_the_edited_bytes(
    cli: CliFn, tmp_path: Path, ref_config: dict[str, Any]
) -> None:
    from qwenprep.util.hashing import git_blob_sha1_of

    original = (json.dumps(ref_config, indent=2) + "\n").encode()
    snap = tmp_path / "hub" / "models--Qwen--X" / "snapshots" / ("c" * 40)
    blobs = tmp_path / "hub" / "models--Qwen--X" / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    sha = git_blob_sha1_of(original)
    (blobs / sha).write_bytes(original)
    os.symlink(f"../../blobs/{sha}", snap / "config.json")
    edited = _edit_1m(snap / "config.json")  # writes through the link into the blob
    r = cli("revert", str(snap))
    assert r.exit_code == 0, r.output
    assert (blobs / sha).read_bytes() == original
    assert (snap / "config.json.qwenprep-replaced").read_bytes() == edited


# ----------------------------------------------------------------- 3. forged manifests


def _forge(d: Path, manifest: Any) -> None:
    (d / ".qwenprep").mkdir(exist_ok=True)
    text = manifest if isinstance(manifest, str) else json.dumps(manifest)
    (d / ".qwenprep" / "manifest.json").write_text(text)


@pytest.mark.parametrize(
    "manifest",
    [
        {"tool": "qwenprep"},
        {"tool": "qwenprep", "schema_version": 1, "files": "all"},
        '{"tool": "qwenprep", "native_context": NaN}',
        {"note": "no tool field"},
    ],
)
def test_a_forged_manifest_is_never_acted_on(tmp_path: Path, manifest: Any) -> None:
    victim = tmp_path / "victim"
    shutil.copytree(TINY, victim)
    (victim / "precious.txt").write_text("mine")
    _forge(victim, manifest)
    before = tree_state(victim)
    r = _run("revert", str(victim))
    assert r.returncode == 3, r.stderr
    _no_traceback(r)
    assert "will not delete, replace or serve" in r.stderr
    assert "manifest.json" in r.stderr
    assert tree_state(victim) == before
    for args in (
        ["patch", str(TINY), "-c", "1m", "-o", str(victim), "--force"],
        ["patch", str(victim), "-c", "1m", "-o", str(tmp_path / "ov2")],
        ["serve", str(victim), "--dry-run"],
        ["validate", str(victim)],
    ):
        r = _run(*args)
        assert r.returncode == 3, (args, r.stdout, r.stderr)
        _no_traceback(r)
        assert "manifest" in r.stderr
    for args in (
        ["check", str(victim), "--no-engine", "--gpus", "1", "--gpu-memory", "80GiB"],
        ["verify", str(victim)],
    ):
        r = _run(*args, "--json")
        _no_traceback(r)
        assert r.returncode in (1, 3), (args, r.stdout, r.stderr)
        assert "manifest" in r.stdout
        _one_json(r.stdout)
    assert tree_state(victim) == before
    assert not (tmp_path / "ov2").exists()


# ----------------------------------------------------------------- 4. user edits in overlays


def _overlay(cli: CliFn, src: Path, out: Path) -> None:
    r = cli("patch", str(src), "-c", "1m", "-o", str(out))
    assert r.exit_code == 0, r.output


def test_revert_keeps_a_user_edited_overlay_config_unless_forced(
    cli: CliFn, qwen_src: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ov"
    _overlay(cli, qwen_src, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["my_setting"] = 1
    (out / "config.json").write_text(json.dumps(cfg))
    r = cli("revert", str(out))
    assert r.exit_code == 3
    assert (
        f"{out} was changed after qwenprep made it: config.json (changed after qwenprep "
        "wrote it); removing it would delete that." in r.stderr
    )
    assert "--force" in r.stderr
    assert json.loads((out / "config.json").read_text())["my_setting"] == 1
    r = cli("patch", str(qwen_src), "-c", "512k", "-o", str(out), "--force")
    assert r.exit_code == 3
    assert "replacing it would delete that" in r.stderr
    assert json.loads((out / "config.json").read_text())["my_setting"] == 1
    r = cli("revert", str(out), "--force")
    assert r.exit_code == 0, r.output
    assert not out.exists()


def test_user_files_under_qwenprep_dir_are_not_deleted_silently(
    cli: CliFn, qwen_src: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ov"
    _overlay(cli, qwen_src, out)
    (out / ".qwenprep" / "notes.md").write_text("why we chose 1M")
    for args in (
        ("revert", str(out)),
        ("patch", str(qwen_src), "-c", "1m", "-o", str(out), "--force"),
    ):
        r = cli(*args)
        assert r.exit_code == 3, r.output
        assert (
            ".qwenprep/notes.md (a file under .qwenprep/ that qwenprep did not write)" in r.stderr
        )
        assert (out / ".qwenprep" / "notes.md").read_text() == "why we chose 1M"
    # our own hash record there is not the user's
    (out / ".qwenprep" / "notes.md").unlink()
    (out / ".qwenprep" / "hashes.json").write_text("{}")
    assert cli("revert", str(out)).exit_code == 0
    assert not out.exists()


# ----------------------------------------------------------------- 5. inconsistent rope blocks


@pytest.mark.parametrize(
    "rope,mpe,field",
    [
        (
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 262144.0},
            1048576,
            "$.rope_scaling.original_max_position_embeddings: is 262144.0 (float); "
            "expected integer",
        ),
        (
            {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 262144},
            262144,
            "max_position_embeddings is 262144 but rope_scaling.factor 4 x "
            "rope_scaling.original_max_position_embeddings 262144 = 1048576",
        ),
        (
            {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 262144},
            1048576,
            "max_position_embeddings is 1048576 but rope_scaling.factor 2",
        ),
        ({"rope_type": "linear", "factor": 4.0}, 1048576, "the rope scaling is 'linear'"),
    ],
)
def test_patch_refuses_an_inconsistent_rope_source(
    cli: CliFn, qwen_src: Path, tmp_path: Path, rope: dict[str, Any], mpe: int, field: str
) -> None:
    cfg = json.loads((qwen_src / "config.json").read_text())
    cfg.update(max_position_embeddings=mpe, rope_scaling=rope)
    (qwen_src / "config.json").write_text(json.dumps(cfg, indent=2))
    for ctx in ("1m", "native"):
        r = cli("patch", str(qwen_src), "-c", ctx, "-o", str(tmp_path / "ov"))
        assert r.exit_code == 3, r.output
        assert field in r.stderr
        assert not (tmp_path / "ov").exists()


def test_no_overlay_above_native_without_yarn(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    """The property behind 5: whatever the source, an overlay above its native context has
    YaRN with factor x original == max_position_embeddings."""
    for ctx in ("native", "256k", "512k", "1m"):
        out = tmp_path / f"ov-{ctx}"
        assert cli("patch", str(qwen_src), "-c", ctx, "-o", str(out)).exit_code == 0
        cfg = json.loads((out / "config.json").read_text())
        rs = cfg.get("rope_scaling")
        if cfg["max_position_embeddings"] > 262144:
            assert rs["rope_type"] == "yarn"
            assert (
                rs["factor"] * rs["original_max_position_embeddings"]
                == cfg["max_position_embeddings"]
            )
        else:
            assert rs is None


# ----------------------------------------------------------------- 6. non-finite numbers


@pytest.mark.parametrize(
    "field,literal",
    [
        ("rope_theta", "NaN"),
        ("rope_theta", "Infinity"),
        ("max_position_embeddings", "-Infinity"),
        ("hidden_size", "1e400"),
        ("factor", "NaN"),
    ],
)
def test_non_finite_numbers_are_refused_at_parse_time(
    tmp_path: Path, field: str, literal: str
) -> None:
    src = tmp_path / "src"
    shutil.copytree(TINY, src)
    cfg = json.loads((src / "config.json").read_text())
    if field == "factor":
        cfg.update(
            max_position_embeddings=1048576,
            rope_scaling={
                "rope_type": "yarn",
                "factor": 12345.5,
                "original_max_position_embeddings": 262144,
            },
        )
        text = json.dumps(cfg, indent=2).replace("12345.5", literal)
    else:
        cfg[field] = 12345.5
        text = json.dumps(cfg, indent=2).replace("12345.5", literal)
    (src / "config.json").write_text(text)
    for args in (
        ["validate", str(src)],
        ["patch", str(src), "-c", "1m", "-o", str(tmp_path / "ov")],
        ["serve", str(src), "--dry-run"],
    ):
        r = _run(*args)
        assert r.returncode == 3, (args, r.stderr)
        _no_traceback(r)
        assert "malformed JSON" in r.stderr and "config.json:" in r.stderr
    r = _run("check", str(src), "--no-engine", "--gpus", "1", "--gpu-memory", "80GiB", "--json")
    assert r.returncode in (1, 3)
    _no_traceback(r)
    assert "malformed JSON" in r.stdout
    assert not (tmp_path / "ov").exists()


# ----------------------------------------------------------------- 11. no traceback, ever


@pytest.mark.parametrize(
    "where,text",
    [
        ("config.json", '{"model_type": "qwen3", "hidden_size": ' + "9" * 5000 + "}"),
        ("config.json", "[" * 100000 + "]" * 100000),
        ("config.json", '{"\\ud800": 1, "model_type": "qwen3"}'),
        ("config.json", '{"model_type": "qwen3", "hidden_size": ' + "1" + "0" * 320 + "}"),
        ("model.safetensors.index.json", '{"weight_map": ' + "[" * 50000 + "]" * 50000 + "}"),
        ("model.safetensors.index.json", '{"metadata": {"total_size": ' + "9" * 5000 + "}}"),
        (
            ".qwenprep/manifest.json",
            '{"tool": "qwenprep", "x": ' + "[" * 50000 + "]" * 50000 + "}",
        ),
    ],
)
def test_hostile_json_never_tracebacks(tmp_path: Path, where: str, text: str) -> None:
    src = tmp_path / "src"
    shutil.copytree(TINY, src)
    (src / where).parent.mkdir(exist_ok=True)
    (src / where).write_text(text)
    for args in (
        ["validate", str(src)],
        ["verify", str(src)],
        ["patch", str(src), "-c", "1m", "-o", str(tmp_path / "ov")],
        ["plan", str(src), "--gpus", "1", "--gpu-memory", "80GiB"],
        ["check", str(src), "--no-engine", "--gpus", "1", "--gpu-memory", "80GiB"],
        ["serve", str(src), "--dry-run"],
        ["revert", str(src)],
    ):
        r = _run(*args, "--json")
        _no_traceback(r)
        assert r.returncode in (0, 1, 2, 3), (args, r.returncode, r.stderr)
        _one_json(r.stdout)


@pytest.mark.parametrize(
    "args",
    [
        ["patch", "{src}", "-c", "9" * 300, "-o", "{tmp}/ov"],
        ["plan", "{src}", "-c", "9" * 300, "--gpus", "1", "--gpu-memory", "80GiB"],
        ["plan", "{src}", "--gpus", "1", "--gpu-memory", "9" * 300 + "GiB"],
        ["plan", "{src}", "--gpus", "1", "--kv-memory", "9" * 300],
        ["check", "{src}", "--no-engine", "--gpus", "1", "--kv-memory", "9" * 300],
        ["serve", "{src}", "--dry-run", "--max-model-len", "9" * 300],
        ["patch", "{src}", "-c", "\u0661\u0662\u0663", "-o", "{tmp}/ov"],
        ["plan", "{src}", "--gpus", "1", "--gpu-memory", "\u0668\u0660GiB"],
    ],
)
def test_hostile_numbers_on_the_command_line(tmp_path: Path, args: list[str]) -> None:
    argv = [a.format(src=TINY, tmp=tmp_path) for a in args]
    r = _run(*argv, "--json")
    _no_traceback(r)
    assert r.returncode == 2, (argv, r.returncode, r.stderr)
    err = _one_json(r.stdout)["error"]
    assert err["exit_code"] == 2
    assert err["message"].startswith(
        ("unknown context", "unreadable size", "context ", "size ", "--gpu-memory ", "--kv-memory ")
    )
    assert len(err["message"]) < 200  # a 300-digit number is not echoed whole
    assert not (tmp_path / "ov").exists()


def test_revert_on_a_read_only_filesystem_says_so(tmp_path: Path, qwen_src: Path) -> None:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs root in a namespace that allows it)")
    try:
        src = mnt / "src"
        shutil.copytree(qwen_src, src)
        r = _run("patch", str(src), "-c", "1m", "-o", str(mnt / "ov"))
        assert r.returncode == 0, r.stderr
        original = (src / "config.json").read_bytes()
        (src / "config.json.bak").write_bytes(original)
        _edit_1m(src / "config.json")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        for target in (mnt / "ov", src):
            r = _run("revert", str(target), "--json")
            _no_traceback(r)
            assert r.returncode == 3, r.stderr
            assert "the filesystem is mounted read-only" in r.stderr, r.stderr
            assert "Permission denied" not in r.stderr
            _one_json(r.stdout)
        r = _run("patch", str(qwen_src), "-c", "1m", "-o", str(mnt / "ov2"))
        assert r.returncode == 3 and "the filesystem is mounted read-only" in r.stderr
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


# ----------------------------------------------------------------- 13. one rule each


def test_a_float_length_is_refused_by_validate_as_by_patch(
    cli: CliFn, qwen_src: Path, tmp_path: Path
) -> None:
    text = (
        (qwen_src / "config.json")
        .read_text()
        .replace('"max_position_embeddings": 262144', '"max_position_embeddings": 262144.0')
    )
    assert "262144.0" in text
    (qwen_src / "config.json").write_text(text)
    r = cli("validate", str(qwen_src))
    assert r.exit_code == 1
    assert "$.max_position_embeddings: is 262144.0 (float); expected integer" in r.stdout
    r = cli("patch", str(qwen_src), "-c", "1m", "-o", str(tmp_path / "ov"))
    assert r.exit_code == 3
    assert "max_position_embeddings" in r.stderr


def test_linear_rope_at_1m_is_not_called_no_scaling(cli: CliFn, qwen_src: Path) -> None:
    cfg = json.loads((qwen_src / "config.json").read_text())
    cfg.update(max_position_embeddings=1048576, rope_scaling={"rope_type": "linear", "factor": 4.0})
    (qwen_src / "config.json").write_text(json.dumps(cfg, indent=2))
    r = cli("validate", str(qwen_src))
    assert r.exit_code == 1
    assert (
        "but the rope scaling is 'linear', not the YaRN Qwen3 is trained to extend with" in r.stdout
    )
    assert "no rope scaling" not in r.stdout


# ---------------------------------------------------------- 9. FIFOs, in qwenprep's own files


@pytest.mark.parametrize("where", ["source-config", "manifest", "overlay-config"])
def test_fifos_never_hang_overlay_reads(
    cli: CliFn, qwen_src: Path, tmp_path: Path, where: str
) -> None:
    out = tmp_path / "ov"
    _overlay(cli, qwen_src, out)
    target = {
        "source-config": qwen_src / "config.json",
        "manifest": out / ".qwenprep" / "manifest.json",
        "overlay-config": out / "config.json",
    }[where]
    target.unlink()
    os.mkfifo(target)
    for args in (
        ["verify", str(out)],
        ["validate", str(out)],
        ["list", str(out)],
        ["revert", str(out)],
    ):
        try:
            r = subprocess.run(
                [str(QWENPREP_BIN), *args, "--json"], capture_output=True, text=True, timeout=300
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"qwenprep {' '.join(args)} hung on a FIFO as {where}")
        _no_traceback(r)
        _one_json(r.stdout)
        if where == "source-config" and args[0] == "revert":
            assert r.returncode == 0  # removing the links loses nothing
            continue
        assert r.returncode in (1, 3), (args, r.stdout, r.stderr)
    assert target.exists()
    assert out.exists() == (where != "source-config")  # never deleted on a FIFO's word


# ------------------------------------------------------------------ serve --log-file FILE
def test_engine_log_appends_and_never_follows_a_link(tmp_path: Path) -> None:
    """serve --log-file FILE (LogTee, without starting vLLM): an existing log keeps its
    lines (this run is appended after a separator; only its part is echoed and read for the
    causes of an early exit); a symlink is refused (exit 3) and what it points at is kept."""
    from qwenprep.engines.child import LogTee, read_tail
    from qwenprep.errors import EXIT_CANNOT_PROCEED, QwenprepError

    log = tmp_path / "vllm.log"
    log.write_bytes(b"ValueError: yesterday's failure")  # no final newline
    r, w = os.pipe()
    tee = LogTee(log, w)
    tee.start()
    tee.file.write(b"INFO today\n")
    tee.file.flush()
    tee.close()
    os.close(w)
    echoed = os.read(r, 65536)
    os.close(r)
    text = log.read_text()
    assert text.startswith("ValueError: yesterday's failure\n===== qwenprep serve: new engine")
    assert text.endswith("=====\nINFO today\n")
    assert echoed == b"INFO today\n"
    assert read_tail(log, since=tee.offset) == "INFO today\n"
    target = tmp_path / "config.json"
    target.write_bytes(b"{}")
    link = tmp_path / "linked.log"
    link.symlink_to(target)
    with pytest.raises(QwenprepError) as e:
        LogTee(link, None)
    assert e.value.exit_code == EXIT_CANNOT_PROCEED and "symlink" in str(e.value)
    assert target.read_bytes() == b"{}"
    fresh = tmp_path / "new.log"
    tee = LogTee(fresh, None)
    tee.close()
    assert fresh.read_bytes() == b"" and tee.offset == 0
