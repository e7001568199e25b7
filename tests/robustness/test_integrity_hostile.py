"""qwenprep verify hardening: no readable weights, what sits behind links, FIFOs, Ctrl-C, and
configs saved by transformers 5. Real files throughout; commands that could hang on a bug run
in a subprocess with a timeout, so a regression fails instead of hanging the suite."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from conftest import QWENPREP_BIN, TINY
from qwenprep.testing.synth import make_shaped_checkpoint, tiny_fp8_config

INDEX = "model.safetensors.index.json"
S1 = "model-00001-of-00002.safetensors"
S2 = "model-00002-of-00002.safetensors"
RECORD = ".qwenprep/hashes.json"
FETCH_HINT = "re-download the damaged file(s): qwenprep fetch ORG/NAME"
# Long enough for a slow shared machine, short enough that a hang fails the test quickly.
HANG_TIMEOUT = 60

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")


def verify_json(cli: Callable[..., Result], path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    r = cli("verify", str(path), "--json", *extra)
    return r.exit_code, json.loads(r.stdout)


def with_status(obj: dict[str, Any], status: str) -> list[tuple[str, str]]:
    return [(c["id"], c["message"]) for c in obj["checks"] if c["status"] == status]


def run_verify(
    path: Path, *extra: str, timeout: float = HANG_TIMEOUT
) -> tuple[int, dict[str, Any], str]:
    """`qwenprep verify PATH --json ...` in a subprocess: (exit code, JSON, stderr)."""
    p = subprocess.run(
        [str(QWENPREP_BIN), "verify", str(path), "--json", *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return p.returncode, json.loads(p.stdout), p.stderr


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A 2-shard tiny FP8 qwen3_moe checkpoint with random data."""
    return make_shaped_checkpoint(
        tmp_path / "tiny", config=tiny_fp8_config(), shards=2, random_data=True
    )


@pytest.fixture
def single(tmp_path: Path) -> Path:
    """The embedded tiny checkpoint (one model.safetensors, no index), copied."""
    dest = tmp_path / "single"
    shutil.copytree(TINY, dest)
    return dest


def _flip(p: Path, offset: int) -> None:
    with open(p, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x20]))


# ------------------------------------------------------- 7. no readable weights


def test_dangling_model_safetensors_link_fails(
    single: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    gone = Path(os.path.realpath(tmp_path)) / "elsewhere" / "model.safetensors"
    (single / "model.safetensors").unlink()
    (single / "model.safetensors").symlink_to(gone)
    code, obj = verify_json(cli, single)
    assert code == 1
    assert with_status(obj, "fail") == [
        (
            "shards.present",
            f"model.safetensors: a link to {gone}, which does not exist (a "
            f"dangling link). Hint: restore what it points to, or {FETCH_HINT}",
        ),
        (
            "weights",
            "no readable weights: 0 tensors read from 0 of 1 safetensors file(s). "
            f"Hint: {FETCH_HINT}",
        ),
    ]
    r = cli("verify", str(single))
    assert r.exit_code == 1
    assert r.stdout.splitlines()[-1] == "FAILED: 0 shard(s), 0 tensors, 0 bytes"


def test_snapshot_link_to_missing_blob_fails(tmp_path: Path, cli: Callable[..., Result]) -> None:
    repo = tmp_path / "hub" / "models--Qwen--Tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / ("c" * 40)
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for p in sorted(TINY.iterdir()):
        data = p.read_bytes()
        if p.suffix == ".safetensors":
            etag = hashlib.sha256(data).hexdigest()  # the blob itself is never written
        else:
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            (blobs / etag).write_bytes(data)
        (snap / p.name).symlink_to(Path("..", "..", "blobs", etag))
    sha = hashlib.sha256((TINY / "model.safetensors").read_bytes()).hexdigest()
    code, obj = verify_json(cli, snap)
    assert code == 1
    assert with_status(obj, "fail") == [
        (
            "shards.present",
            f"model.safetensors: links to the blob {sha}, which is missing "
            f"from the cache: the download is incomplete. Hint: {FETCH_HINT}",
        ),
        (
            "weights",
            "no readable weights: 0 tensors read from 0 of 1 safetensors file(s). "
            f"Hint: {FETCH_HINT}",
        ),
    ]


def test_empty_safetensors_header_fails(single: Path, cli: Callable[..., Result]) -> None:
    body = b"{}      "  # a valid, empty safetensors file: 8-byte length, `{}` padded
    (single / "model.safetensors").write_bytes(struct.pack("<Q", len(body)) + body)
    code, obj = verify_json(cli, single)
    assert code == 1
    assert with_status(obj, "fail") == [
        (
            "shard.header",
            "model.safetensors: the header lists no tensors (an empty safetensors "
            f"file). Hint: {FETCH_HINT}",
        ),
        (
            "weights",
            "no readable weights: 0 tensors read from 1 of 1 safetensors file(s). "
            f"Hint: {FETCH_HINT}",
        ),
    ]
    assert not [c for c in obj["checks"] if c["status"] == "pass"]


def test_empty_shard_among_others_fails(tiny: Path, cli: Callable[..., Result]) -> None:
    """A shard emptied of its tensors: the index and the layer counts see it too."""
    body = b"{}      "
    (tiny / S2).write_bytes(struct.pack("<Q", len(body)) + body)
    code, obj = verify_json(cli, tiny)
    assert code == 1
    fails = with_status(obj, "fail")
    assert fails[0] == (
        "shard.header",
        f"{S2}: the header lists no tensors (an empty safetensors file). Hint: {FETCH_HINT}",
    )
    assert [i for i, _ in fails][1:] == ["index.tensors"]


def test_index_with_empty_weight_map_fails(single: Path, cli: Callable[..., Result]) -> None:
    (single / "model.safetensors").unlink()
    (single / INDEX).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": {}}))
    code, obj = verify_json(cli, single)
    assert code == 1
    assert with_status(obj, "fail") == [
        (
            "index",
            f"{INDEX}: weight_map is empty: the index names no shard, so there are no "
            f"weights to check. Hint: {FETCH_HINT}",
        ),
    ]


def test_layers_missing_still_fail(tiny: Path, cli: Callable[..., Result]) -> None:
    """Fewer tensors than config.json implies is a FAIL (a whole layer dropped everywhere)."""
    cfg = json.loads((tiny / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (tiny / "config.json").write_text(json.dumps(cfg))
    code, obj = verify_json(cli, tiny)
    assert code == 1
    assert (
        "tensors.layers",
        "config.json says num_hidden_layers 3; the shards have 2 layers: layer(s) 2 missing",
    ) in with_status(obj, "fail")


# ------------------------------------------------------- 8. --deep follows links


def test_deep_hashes_shards_behind_a_linked_directory(
    tiny: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    store = Path(os.path.realpath(tmp_path)) / "store"
    store.mkdir()
    for s in (S1, S2):
        (tiny / s).rename(store / s)
    (tiny / "weights").symlink_to(store, target_is_directory=True)
    idx = json.loads((tiny / INDEX).read_text())
    idx["weight_map"] = {k: f"weights/{v}" for k, v in idx["weight_map"].items()}
    (tiny / INDEX).write_text(json.dumps(idx))
    code, obj = verify_json(cli, tiny, "--deep", "--record")
    assert code == 0, with_status(obj, "fail")
    record = json.loads((tiny / RECORD).read_text())["files"]
    assert sorted(n for n in record if n.startswith("weights/")) == [
        f"weights/{S1}",
        f"weights/{S2}",
    ]
    warns = with_status(obj, "warn")
    assert (
        "deep.outside",
        f"weights/{S1}: resolves to {store / S1}, outside the checkpoint "
        "directory; it is hashed, but whoever can write there can change this "
        "checkpoint",
    ) in warns
    assert (
        "deep.outside",
        f"weights/: a linked directory resolving to {store}, outside the "
        f"checkpoint directory; only the files {INDEX} references through it are "
        "hashed",
    ) in warns
    assert [i for i, _ in warns].count("deep.outside") == 3

    _flip(store / S2, (store / S2).stat().st_size - 3)
    code, obj = verify_json(cli, tiny, "--deep")
    assert code == 1
    [(cid, msg)] = with_status(obj, "fail")
    assert cid == "deep.hash"
    assert msg.startswith(f"weights/{S2}: content does not match the hash record {RECORD} (sha256 ")


def test_deep_hashes_a_linked_shard(tiny: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    outside = Path(os.path.realpath(tmp_path)) / "outside"
    outside.mkdir()
    (tiny / S1).rename(outside / S1)
    (tiny / S1).symlink_to(outside / S1)
    code, obj = verify_json(cli, tiny, "--deep", "--record")
    assert code == 0, with_status(obj, "fail")
    assert (
        "deep.outside",
        f"{S1}: resolves to {outside / S1}, outside the checkpoint "
        "directory; it is hashed, but whoever can write there can change this "
        "checkpoint",
    ) in with_status(obj, "warn")
    _flip(outside / S1, (outside / S1).stat().st_size - 3)
    code, obj = verify_json(cli, tiny, "--deep")
    assert code == 1
    assert [i for i, _ in with_status(obj, "fail")] == ["deep.hash"]


def test_deep_overlay_links_into_its_source_are_not_outside(
    tiny: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    out = tmp_path / "ov"
    r = cli("patch", str(tiny), "-c", "1M", "-o", str(out))
    assert r.exit_code == 0, r.output
    code, obj = verify_json(cli, out, "--deep")
    assert code == 0, with_status(obj, "fail")
    assert not [c for c in obj["checks"] if c["id"] == "deep.outside"]


def test_deep_snapshot_links_into_its_blobs_are_not_outside(
    tiny: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    repo = tmp_path / "hub" / "models--Qwen--Tiny-FP8"
    blobs, snap = repo / "blobs", repo / "snapshots" / ("d" * 40)
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for p in sorted(tiny.iterdir()):
        data = p.read_bytes()
        etag = (
            hashlib.sha256(data).hexdigest()
            if p.suffix == ".safetensors"
            else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        )
        (blobs / etag).write_bytes(data)
        (snap / p.name).symlink_to(Path("..", "..", "blobs", etag))
    code, obj = verify_json(cli, snap, "--deep")
    assert code == 0, with_status(obj, "fail")
    assert with_status(obj, "warn") == []
    assert [m for i, m in with_status(obj, "pass") if i == "deep.hash"] == [
        "7 file(s) match their content hash (7 by its HF cache blob name)"
    ]


# ------------------------------------------------------- 9. FIFOs never hang verify


@needs_fifo
def test_fifos_in_the_checkpoint_do_not_hang_deep_verify(tiny: Path) -> None:
    os.mkfifo(tiny / "pipe")
    (tiny / "extra").mkdir()
    os.mkfifo(tiny / "extra" / "tokenizer.json")
    assert run_verify(tiny)[0] == 0  # the header level reads neither
    code, obj, _ = run_verify(tiny, "--deep", "--record")
    assert code == 1
    why = (
        "not a regular file (a FIFO), so there is nothing to hash; remove it, or put the "
        "real file in its place"
    )
    assert with_status(obj, "fail") == [
        ("deep.hash", f"extra/tokenizer.json: {why}"),
        ("deep.hash", f"pipe: {why}"),
    ]
    record = json.loads((tiny / RECORD).read_text())["files"]
    assert "pipe" not in record and "extra/tokenizer.json" not in record and S1 in record


@needs_fifo
def test_fifo_as_the_index_does_not_hang(tiny: Path) -> None:
    (tiny / INDEX).unlink()
    os.mkfifo(tiny / INDEX)
    for extra in ((), ("--deep",)):
        code, obj, _ = run_verify(tiny, *extra)
        assert code == 1
        assert with_status(obj, "fail")[0] == (
            "index",
            f"{INDEX}: not a regular file (a FIFO), so it cannot be read as the index. "
            "Restore the index from the original release.",
        )


@needs_fifo
def test_fifo_as_a_shard_does_not_hang(tiny: Path) -> None:
    (tiny / S2).unlink()
    os.mkfifo(tiny / S2)
    code, obj, _ = run_verify(tiny, "--deep")
    assert code == 1
    fails = with_status(obj, "fail")
    assert fails[0] == (
        "shards.present",
        f"{S2}: not a regular file (a FIFO), so not a safetensors shard. Hint: {FETCH_HINT}",
    )


@needs_fifo
def test_fifo_as_the_hash_record_does_not_hang(tiny: Path) -> None:
    (tiny / ".qwenprep").mkdir()
    os.mkfifo(tiny / RECORD)
    code, obj, _ = run_verify(tiny, "--deep")
    assert code == 1
    assert with_status(obj, "fail") == [
        (
            "deep.record",
            f"{RECORD}: not a regular file (a FIFO), so the hash record cannot be "
            "read; it was left alone and nothing was compared or recorded. Remove it, then run "
            "qwenprep verify --deep again to record afresh.",
        )
    ]
    assert (tiny / RECORD).is_fifo()


def test_unreadable_hash_record_is_not_silently_replaced(
    tiny: Path, cli: Callable[..., Result]
) -> None:
    (tiny / ".qwenprep").mkdir()
    (tiny / RECORD).write_text('{"files": ')
    code, obj = verify_json(cli, tiny, "--deep")
    assert code == 1
    [(cid, msg)] = with_status(obj, "fail")
    assert cid == "deep.record"
    assert msg.startswith(f"{RECORD}: not a readable hash record (")
    assert msg.endswith(
        "); it was left alone and nothing was compared or recorded. Remove it, "
        "then run qwenprep verify --deep again to record afresh."
    )
    assert (tiny / RECORD).read_text() == '{"files": '


@needs_fifo
def test_fifo_as_download_metadata_does_not_hang(tiny: Path) -> None:
    meta = tiny / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    os.mkfifo(meta / "config.json.metadata")
    code, obj, _ = run_verify(tiny, "--deep")
    assert code == 0, with_status(obj, "fail")


@needs_fifo
def test_fifo_as_config_does_not_hang(tiny: Path) -> None:
    """verify_checkpoint is also called by fetch, which does not go through resolve_dir."""
    (tiny / "config.json").unlink()
    os.mkfifo(tiny / "config.json")
    code = (
        "import sys; from pathlib import Path; from qwenprep.checks.integrity import "
        "verify_checkpoint; r = verify_checkpoint(Path(sys.argv[1])); "
        "print([(c.id, c.message) for c in r.checks if c.status == 'fail'])"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(tiny)],
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT,
    )
    assert p.returncode == 0, p.stderr
    assert (
        "('config', 'config.json: not a regular file (a FIFO), so it cannot be read. "
        "Restore config.json (qwenprep revert PATH restores one edited in place).')" in p.stdout
    )


# ------------------------------------------------------- 12. Ctrl-C stops --deep at once


def _big_sparse_shard(p: Path, name: str, size: int) -> None:
    """A valid one-tensor safetensors file whose data area is a hole (read back as zeros)."""
    header = json.dumps({name: {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}})
    body = header.encode() + b" " * (-len(header) % 8)
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", len(body)) + body)
        f.truncate(8 + len(body) + size)


def _read_offsets(pid: int, files: set[str]) -> int:
    """The largest file position the process has reached in any of FILES (Linux /proc)."""
    best = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") not in files:
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                pos = next(int(ln.split()[1]) for ln in f if ln.startswith("pos:"))
        except (OSError, StopIteration, ValueError):
            continue
        best = max(best, pos)
    return best


@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="needs Linux /proc")
def test_ctrl_c_stops_deep_verify_at_once(tmp_path: Path) -> None:
    d = tmp_path / "big"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    shards = [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    for i, s in enumerate(shards):
        _big_sparse_shard(d / s, f"w{i}", 2 * 2**30)  # 8 GiB of holes: seconds of sha256
    (d / INDEX).write_text(json.dumps({"weight_map": {f"w{i}": s for i, s in enumerate(shards)}}))
    wanted = {str((d / s).resolve()) for s in shards}
    proc = subprocess.Popen(
        [str(QWENPREP_BIN), "verify", "--deep", str(d)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + HANG_TIMEOUT
        while _read_offsets(proc.pid, wanted) < 64 * 2**20:  # past the headers: hashing
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "verify --deep never started hashing"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=HANG_TIMEOUT)  # a hang guard, not a speed test
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.splitlines()[-2:] == [
        "error: interrupted: verify stopped before it finished; no hash record was written.",
        "Hint: run the same command again to check the whole checkpoint.",
    ]
    assert not (d / RECORD).exists()
    assert not (d / ".qwenprep").exists()


# ------------------------------------------------------- configs saved by transformers 5


def test_transformers5_key_spellings_verify_ok(single: Path, cli: Callable[..., Result]) -> None:
    """transformers 5 saves num_local_experts, dtype and rope_parameters (rope_theta inside)."""
    cfg = json.loads((single / "config.json").read_text())
    cfg["num_local_experts"] = cfg.pop("num_experts")
    cfg["dtype"] = cfg.pop("torch_dtype")
    cfg.pop("rope_scaling")
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.pop("rope_theta")}
    (single / "config.json").write_text(json.dumps(cfg, indent=2))
    code, obj = verify_json(cli, single)
    assert code == 0, with_status(obj, "fail")
    got = {c["id"]: (c["status"], c["message"]) for c in obj["checks"]}
    assert got["tensors.experts"] == ("pass", "4 experts in each MoE layer")
    assert got["tensors.layers"] == ("pass", "layers 0..1 present, as config.json says")
    assert got["tensors.names"][0] == "pass"


# ------------------------------------------------------- verify --deep --record's own file


def test_record_never_writes_through_a_linked_state_dir_or_over_a_foreign_file(
    tiny: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    """--record writes .qwenprep/hashes.json only inside the checkpoint and only over a record
    qwenprep wrote: a symlinked .qwenprep (leading outside) and a user's own hashes.json are
    left as they are, and the check says why (a warning, nothing written)."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tiny / ".qwenprep").symlink_to(outside, target_is_directory=True)
    code, obj = verify_json(cli, tiny, "--deep", "--record")
    assert code == 0, with_status(obj, "fail")
    [msg] = [m for i, m in with_status(obj, "warn") if i == "deep.record"]
    assert "could not be written" in msg and "symlink" in msg
    assert list(outside.iterdir()) == []
    (tiny / ".qwenprep").unlink()
    (tiny / ".qwenprep").mkdir()
    foreign = b'{"model.safetensors": "my own notes"}\n'
    (tiny / RECORD).write_bytes(foreign)
    code, obj = verify_json(cli, tiny, "--deep", "--record")
    [msg] = [m for i, m in with_status(obj, "warn") if i == "deep.record"]
    assert "not written by qwenprep" in msg and "move it away" in msg
    assert (tiny / RECORD).read_bytes() == foreign
    (tiny / RECORD).unlink()
    code, obj = verify_json(cli, tiny, "--deep", "--record")
    assert json.loads((tiny / RECORD).read_text())["tool"] == "qwenprep"
    code, obj = verify_json(cli, tiny, "--deep", "--record")  # its own record: compared
    assert code == 0, with_status(obj, "fail")
