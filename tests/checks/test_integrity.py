"""qwenprep verify: header level (reads no tensor data) and --deep (content hashes)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from conftest import QWENPREP_BIN, TINY_FP8
from qwenprep.checks.integrity import verify_checkpoint
from qwenprep.checks.tensors import header_checks
from qwenprep.model.checkpoint import unsafe_name
from qwenprep.testing.synth import make_shaped_checkpoint, tiny_fp8_config

INDEX = "model.safetensors.index.json"
S1 = "model-00001-of-00002.safetensors"
S2 = "model-00002-of-00002.safetensors"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A 2-shard tiny FP8 qwen3_moe checkpoint with random data (a fresh copy per test)."""
    return make_shaped_checkpoint(
        tmp_path / "tiny", config=tiny_fp8_config(), shards=2, random_data=True
    )


def fails(result: Result) -> list[dict[str, Any]]:
    return [c for c in json.loads(result.output)["checks"] if c["status"] == "fail"]


def verify_json(cli: Callable[..., Result], path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    r = cli("verify", str(path), "--json", *extra)
    return r.exit_code, json.loads(r.stdout)


def only_fail(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["id"], c["message"]) for c in obj["checks"] if c["status"] == "fail"]


def rewrite_shard(
    path: Path, mutate: Callable[[dict[str, Any]], None], *, relayout: bool = True
) -> None:
    """Rewrite a shard's header through mutate(header_dict); with relayout the data offsets are
    recomputed contiguously from dtype x shape (the file size follows); data bytes are zeros."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    mutate(header)
    if relayout:
        width = {"F8_E4M3": 1, "BF16": 2, "F32": 4}
        off = 0
        for k, v in header.items():
            if k == "__metadata__":
                continue
            size = width[v["dtype"]]
            for d in v["shape"]:
                size *= d
            v["data_offsets"] = [off, off + size]
            off += size
    else:
        off = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(body)) + body)
        f.truncate(8 + len(body) + off)


def edit_index(root: Path, mutate: Callable[[dict[str, Any]], None]) -> None:
    p = root / INDEX
    idx = json.loads(p.read_text())
    mutate(idx)
    p.write_text(json.dumps(idx, indent=2))


# ------------------------------------------------------------------ passing shapes


def test_tiny_passes_header_level(tiny: Path, cli: Callable[..., Result]) -> None:
    code, obj = verify_json(cli, tiny)
    assert code == 0, only_fail(obj)
    assert obj["ok"] is True and obj["kind"] == "verify" and obj["deep"] is False
    assert obj["files"] == 2 and obj["tensors"] == 77
    ids = {c["id"]: c["status"] for c in obj["checks"]}
    for k in (
        "index.paths",
        "shards.present",
        "shard.headers",
        "index.tensors",
        "fp8.scales",
        "fp8.not_convert",
        "tensors.layers",
        "tensors.experts",
        "tensors.names",
    ):
        assert ids[k] == "pass", k
    assert not (tiny / ".qwenprep").exists()  # header level writes nothing


@pytest.mark.skipif(not TINY_FP8.is_dir(), reason="embedded example not built yet")
def test_embedded_tiny_fp8_example_passes(tmp_path: Path, cli: Callable[..., Result]) -> None:
    dest = tmp_path / "ex"
    shutil.copytree(TINY_FP8, dest)
    code, obj = verify_json(cli, dest)
    assert code == 0, only_fail(obj)


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_480b_shaped_header_verify_reads_only_headers(tmp_path: Path) -> None:
    ck = make_shaped_checkpoint(tmp_path / "big")  # 50 shards, ~450 GiB apparent, sparse
    verify_checkpoint(tmp_path / "big")  # warm imports and caches
    before = _rchar()
    report = verify_checkpoint(ck)
    read = _rchar() - before
    assert report.ok, [c for c in report.checks if c.status == "fail"]
    assert report.extra["files"] == 50 and report.extra["tensors"] == 60329
    assert report.extra["bytes"] > 440 * 2**30
    # Everything read from disk by this process during verify (read(2) bytes, /proc rchar):
    # the headers, the index, config.json, plus at most one 8 KiB buffer per shard.
    small = sum((ck / n).stat().st_size for n in (INDEX, "config.json"))
    assert read <= report.extra["header_bytes"] + small + 50 * 8192 + 64 * 1024, read
    assert read < 0.001 * report.extra["bytes"]


# ------------------------------------------------------------------ each corruption: exit 1


def test_truncated_shard(tiny: Path, cli: Callable[..., Result]) -> None:
    p = tiny / S2
    size = p.stat().st_size
    os.truncate(p, size - 100)
    code, obj = verify_json(cli, tiny)
    assert code == 1
    [(cid, msg)] = only_fail(obj)[:1]
    assert cid == "shard.header"
    assert msg.startswith(f"{S2}: truncated: the header indexes")
    assert f"file is {size - 100} bytes, should be {size}" in msg


def test_shard_truncated_into_its_header(tiny: Path, cli: Callable[..., Result]) -> None:
    os.truncate(tiny / S1, 100)
    code, obj = verify_json(cli, tiny)
    assert code == 1
    cid, msg = only_fail(obj)[0]
    assert cid == "shard.header"
    assert msg.startswith(f"{S1}: header length ")
    assert "is impossible for a 100-byte file (truncated or not safetensors). Hint: " in msg


def test_trailing_bytes_after_last_tensor(tiny: Path, cli: Callable[..., Result]) -> None:
    with open(tiny / S1, "ab") as f:
        f.write(b"\0" * 8)
    code, obj = verify_json(cli, tiny)
    assert code == 1
    assert only_fail(obj)[0][1].startswith(f"{S1}: 8 trailing bytes after the last tensor")


def test_missing_shard(tiny: Path, cli: Callable[..., Result]) -> None:
    (tiny / S2).unlink()
    code, obj = verify_json(cli, tiny)
    assert code == 1
    f = only_fail(obj)
    assert f[0] == (
        "shards.present",
        f"1 shard(s) named in {INDEX} are missing: {S2}. "
        "Hint: re-download the damaged file(s): qwenprep fetch ORG/NAME",
    )
    names = {c["id"]: c["status"] for c in obj["checks"]}
    assert names["tensors.names"] == "skip"  # consequences are not reported twice


def test_shard_missing_from_the_index_too(tiny: Path, cli: Callable[..., Result]) -> None:
    (tiny / S2).unlink()
    edit_index(
        tiny,
        lambda idx: idx.update(weight_map={k: v for k, v in idx["weight_map"].items() if v != S2}),
    )
    code, obj = verify_json(cli, tiny)
    assert code == 1
    f = dict(only_fail(obj))
    assert f["shards.count"] == (
        f"shard names say 00002 shards but {INDEX} references 1: a shard is missing from the index"
    )


def test_extra_shard(tiny: Path, cli: Callable[..., Result]) -> None:
    shutil.copy(tiny / S1, tiny / "model-00003-of-00002.safetensors")
    code, obj = verify_json(cli, tiny)
    assert code == 1
    assert only_fail(obj) == [
        (
            "shards.extra",
            f"1 safetensors file(s) not referenced by "
            f"{INDEX}: model-00003-of-00002.safetensors. Remove them or "
            "restore the index.",
        )
    ]


def test_index_names_a_tensor_no_shard_has(tiny: Path, cli: Callable[..., Result]) -> None:
    edit_index(tiny, lambda idx: idx["weight_map"].update({"model.layers.9.ghost.weight": S1}))
    code, obj = verify_json(cli, tiny)
    assert code == 1
    assert only_fail(obj) == [
        (
            "index.tensors",
            f"{INDEX}: 1 tensor(s) not where the index "
            f"says: model.layers.9.ghost.weight -> {S1}, which does not "
            "have it",
        )
    ]


def test_index_points_a_tensor_at_the_wrong_shard(tiny: Path, cli: Callable[..., Result]) -> None:
    name = "model.embed_tokens.weight"
    edit_index(tiny, lambda idx: idx["weight_map"].update({name: S2}))
    code, obj = verify_json(cli, tiny)
    assert code == 1
    assert only_fail(obj) == [
        (
            "index.tensors",
            f"{INDEX}: 1 tensor(s) not where the index says: {name} -> {S2}, but it is in {S1}",
        )
    ]


def test_tensor_in_a_shard_but_not_in_the_index(tiny: Path, cli: Callable[..., Result]) -> None:
    name = "model.norm.weight"
    edit_index(tiny, lambda idx: idx["weight_map"].pop(name))
    code, obj = verify_json(cli, tiny)
    assert code == 1
    assert only_fail(obj) == [
        ("index.tensors", f"1 tensor(s) in shards but not in {INDEX}: {name} ({S2})")
    ]


def test_header_length_is_garbage(tiny: Path, cli: Callable[..., Result]) -> None:
    with open(tiny / S1, "r+b") as f:
        f.write(b"\xff" * 8)
    code, obj = verify_json(cli, tiny)
    assert code == 1
    cid, msg = only_fail(obj)[0]
    assert cid == "shard.header"
    assert msg.startswith(f"{S1}: header length 18446744073709551615 is impossible for a ")


def test_header_is_not_json(tiny: Path, cli: Callable[..., Result]) -> None:
    with open(tiny / S1, "r+b") as f:
        f.seek(8)
        f.write(b"<html>")
    code, obj = verify_json(cli, tiny)
    assert code == 1
    cid, msg = only_fail(obj)[0]
    assert cid == "shard.header" and msg.startswith(f"{S1}: header is not valid JSON")


def test_overlapping_spans(tiny: Path, cli: Callable[..., Result]) -> None:
    def overlap(h: dict[str, Any]) -> None:
        a, b = "model.layers.1.self_attn.k_norm.weight", "model.layers.1.self_attn.q_norm.weight"
        h[b]["data_offsets"] = [h[a]["data_offsets"][0], h[a]["data_offsets"][0] + 64]

    p = tiny / S2
    # find the shard that holds both norms of layer 1
    if "model.layers.1.self_attn.k_norm.weight" not in json.loads(
        p.read_bytes()[8 : 8 + struct.unpack("<Q", p.read_bytes()[:8])[0]]
    ):
        p = tiny / S1
    size = p.stat().st_size
    rewrite_shard(p, overlap, relayout=False)
    os.truncate(p, max(size, p.stat().st_size))
    code, obj = verify_json(cli, tiny)
    assert code == 1
    cid, msg = only_fail(obj)[0]
    assert cid == "shard.header" and msg.startswith(f"{p.name}: ")
    assert (
        "tensors model.layers.1.self_attn.k_norm.weight and "
        "model.layers.1.self_attn.q_norm.weight overlap"
    ) in msg


def test_dtype_times_shape_must_equal_span(tiny: Path, cli: Callable[..., Result]) -> None:
    def lie(h: dict[str, Any]) -> None:
        h["model.embed_tokens.weight"]["shape"] = [512, 64]

    rewrite_shard(tiny / S1, lie, relayout=False)
    code, obj = verify_json(cli, tiny)
    assert code == 1
    assert only_fail(obj)[0][1].startswith(
        f"{S1}: tensor model.embed_tokens.weight: BF16 x [512, 64] = 65536 bytes but "
        "data_offsets span 131072"
    )


@pytest.mark.parametrize(
    "bad", ["../outside.safetensors", "/etc/outside.safetensors", "sub/../../outside.safetensors"]
)
def test_weight_map_path_traversal_is_reported_never_opened(tiny: Path, bad: str) -> None:
    # A FIFO where the traversal points: opening it for reading would block forever.
    outside = tiny.parent / "outside.safetensors"
    os.mkfifo(outside)
    name = "model.layers.0.self_attn.q_proj.weight"
    edit_index(
        tiny,
        lambda idx: idx["weight_map"].update(
            {name: bad if not bad.startswith("/") else str(outside)}
        ),
    )
    r = subprocess.run(
        [str(QWENPREP_BIN), "verify", str(tiny), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1, r.stderr
    obj = json.loads(r.stdout)
    shown = bad if not bad.startswith("/") else str(outside)
    why = "is an absolute path" if bad.startswith("/") else "climbs out of the checkpoint (..)"
    assert only_fail(obj)[0] == (
        "index.paths",
        f"{INDEX}: weight_map names file(s) outside the "
        f"checkpoint, not opened: {shown!r} {why}. Restore the index "
        "from the original release.",
    )


def test_unsafe_name_rules() -> None:
    assert unsafe_name(S1) is None and unsafe_name("sub/x.safetensors") is None
    assert unsafe_name("..\\x") == "contains a NUL or backslash"
    assert unsafe_name("C:x.safetensors") == "is an absolute path"
    assert unsafe_name("") == "not a non-empty string"
    assert unsafe_name(3) == "not a non-empty string"


def test_fp8_weight_without_its_scale(tiny: Path, cli: Callable[..., Result]) -> None:
    w = "model.layers.1.mlp.experts.2.up_proj.weight"
    holder = json.loads((tiny / INDEX).read_text())["weight_map"][w]
    rewrite_shard(tiny / holder, lambda h: h.pop(w + "_scale_inv"))
    edit_index(tiny, lambda idx: idx["weight_map"].pop(w + "_scale_inv"))
    code, obj = verify_json(cli, tiny)
    assert code == 1
    f = dict(only_fail(obj))
    assert f["fp8.scales"] == (
        f"1 FP8 weight(s) without a matching scale: {holder}: FP8 weight "
        f"{w} has no weight_scale_inv"
    )
    assert [c["path"] for c in obj["checks"] if c["id"] == "fp8.scales"] == [holder]


def test_fp8_scale_with_the_wrong_shape(tiny: Path, cli: Callable[..., Result]) -> None:
    s = "model.layers.0.self_attn.o_proj.weight_scale_inv"
    holder = json.loads((tiny / INDEX).read_text())["weight_map"][s]
    rewrite_shard(tiny / holder, lambda h: h[s].update(shape=[2, 1]))
    code, obj = verify_json(cli, tiny)
    assert code == 1
    assert dict(only_fail(obj))["fp8.scales"] == (
        f"1 FP8 weight(s) without a matching scale: {holder}: {s} has shape [2, 1], expected "
        "[1, 1] for [128, 128] in [128, 128] blocks"
    )


def test_module_not_to_convert_stored_as_fp8(tiny: Path, cli: Callable[..., Result]) -> None:
    g = "model.layers.0.mlp.gate.weight"
    holder = json.loads((tiny / INDEX).read_text())["weight_map"][g]
    rewrite_shard(tiny / holder, lambda h: h[g].update(dtype="F8_E4M3"))
    code, obj = verify_json(cli, tiny)
    assert code == 1
    f = dict(only_fail(obj))
    assert f["fp8.not_convert"] == f"1 tensor(s) of modules_to_not_convert are FP8: {holder}: {g}"


def test_fp8_tensors_without_quantization_config(tiny: Path, cli: Callable[..., Result]) -> None:
    cfg = json.loads((tiny / "config.json").read_text())
    del cfg["quantization_config"]
    (tiny / "config.json").write_text(json.dumps(cfg))
    code, obj = verify_json(cli, tiny)
    assert code == 1
    assert dict(only_fail(obj))["fp8.config"].startswith(
        "32 FP8 tensors (e.g. model.layers.0.mlp.experts.0.down_proj.weight in "
    )


def test_layer_and_expert_counts_against_config(tiny: Path, cli: Callable[..., Result]) -> None:
    cfg = json.loads((tiny / "config.json").read_text())
    cfg.update(num_hidden_layers=3, num_experts=5)
    (tiny / "config.json").write_text(json.dumps(cfg))
    code, obj = verify_json(cli, tiny)
    assert code == 1
    f = dict(only_fail(obj))
    assert f["tensors.layers"] == (
        "config.json says num_hidden_layers 3; the shards have 2 layers: layer(s) 2 missing"
    )
    assert f["tensors.experts"] == (
        "config.json says num_experts 5: layer 0: 4 experts (max "
        "index 3); layer 1: 4 experts (max index 3); layer 2: 0 "
        "experts"
    )


def test_config_only_dir_warns(tmp_path: Path, cli: Callable[..., Result]) -> None:
    d = tmp_path / "cfg"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(tiny_fp8_config()))
    code, obj = verify_json(cli, d)
    assert code == 0
    assert [(c["id"], c["status"]) for c in obj["checks"]] == [("weights", "warn")]
    assert obj["checks"][0]["message"].startswith("no weight files here: a config-only")


def test_not_a_checkpoint_exits_3(tmp_path: Path, cli: Callable[..., Result]) -> None:
    r = cli("verify", str(tmp_path / "nope"))
    assert r.exit_code == 3
    assert f"{tmp_path / 'nope'}: no such directory." in r.output


def test_header_checks_is_the_header_level_only(tiny: Path) -> None:
    checks = header_checks(tiny)
    assert not any(c.id.startswith("deep") for c in checks)
    assert all(c.status == "pass" for c in checks)


# ------------------------------------------------------------------ --deep


def test_deep_plain_dir_records_then_compares(tiny: Path, cli: Callable[..., Result]) -> None:
    code, obj = verify_json(cli, tiny, "--deep", "--record")
    assert code == 0 and obj["deep"] is True
    rec = [c for c in obj["checks"] if c["id"] == "deep.record"]
    assert rec[0]["status"] == "warn"
    assert rec[0]["message"] == (
        "recorded the sha256 of 7 file(s) in .qwenprep/hashes.json; "
        "nothing to compare yet (the next verify --deep compares "
        "against it)"
    )
    record = json.loads((tiny / ".qwenprep" / "hashes.json").read_text())["files"]
    assert record[S1]["sha256"] == hashlib.sha256((tiny / S1).read_bytes()).hexdigest()

    code, obj = verify_json(cli, tiny, "--deep")
    assert code == 0
    assert [c["message"] for c in obj["checks"] if c["id"] == "deep.hash"] == [
        "7 file(s) match their content hash (7 by the hash record .qwenprep/hashes.json)"
    ]

    with open(tiny / S2, "r+b") as f:
        f.seek(-10, 2)
        b = f.read(1)
        f.seek(-10, 2)
        f.write(bytes([b[0] ^ 0x01]))
    code, obj = verify_json(cli, tiny, "--deep")
    assert code == 1
    [(cid, msg)] = only_fail(obj)
    assert cid == "deep.hash"
    assert msg.startswith(
        f"{S2}: content does not match the hash record .qwenprep/hashes.json (sha256 "
    )
    # the header level alone does not see it
    assert verify_json(cli, tiny)[0] == 0


def _hf_cache(tmp_path: Path, src: Path, repo: str = "Qwen/Tiny-FP8") -> tuple[Path, Path]:
    """Build HF_HUB_CACHE/models--ORG--NAME/{blobs,snapshots/COMMIT,refs/main} from src the way
    huggingface_hub lays it out: LFS files (safetensors) under their sha256, small files under
    their git blob sha1, snapshot entries as relative links."""
    cache = tmp_path / "hub"
    storage = cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    blobs, snap = storage / "blobs", storage / "snapshots" / commit
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    for p in sorted(src.iterdir()):
        data = p.read_bytes()
        if p.suffix == ".safetensors":
            etag = hashlib.sha256(data).hexdigest()
        else:
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (blobs / etag).write_bytes(data)
        (snap / p.name).symlink_to(Path("..", "..", "blobs", etag))
    return cache, snap


def _flip(p: Path, offset: int) -> None:
    with open(p, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x20]))


def test_deep_hf_cache_passes_offline_and_writes_nothing(
    tmp_path: Path, tiny: Path, cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, snap = _hf_cache(tmp_path, tiny)
    before = sorted(p.name for p in snap.iterdir())
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, obj = verify_json(cli, Path("Qwen/Tiny-FP8"), "--deep")  # repo id via the cache
    assert code == 0, only_fail(obj)
    assert obj["path"] == str(snap)
    assert [c["message"] for c in obj["checks"] if c["id"] == "deep.hash"] == [
        "7 file(s) match their content hash (7 by its HF cache blob name)"
    ]
    assert sorted(p.name for p in snap.iterdir()) == before  # no record written into the cache


def test_deep_hf_cache_flipped_byte_in_lfs_blob(
    tmp_path: Path, tiny: Path, cli: Callable[..., Result]
) -> None:
    _, snap = _hf_cache(tmp_path, tiny)
    _flip((snap / S1).resolve(), (snap / S1).stat().st_size - 5)
    assert verify_json(cli, snap)[0] == 0  # header level cannot see a data byte
    code, obj = verify_json(cli, snap, "--deep")
    assert code == 1
    [(cid, msg)] = only_fail(obj)
    assert cid == "deep.hash"
    assert msg.startswith(f"{S1}: content does not match its HF cache blob name (sha256 ")
    assert [c["path"] for c in obj["checks"] if c["status"] == "fail"] == [S1]


def test_deep_hf_cache_flipped_byte_in_small_git_file(
    tmp_path: Path, tiny: Path, cli: Callable[..., Result]
) -> None:
    _, snap = _hf_cache(tmp_path, tiny)
    blob = (snap / "config.json").resolve()
    text = blob.read_text()
    assert '"silu"' in text
    blob.write_text(text.replace('"silu"', '"silv"'))  # still valid JSON, one byte changed
    code, obj = verify_json(cli, snap, "--deep")
    assert code == 1
    [(_, msg)] = only_fail(obj)
    assert msg.startswith("config.json: content does not match its HF cache blob name (git-sha1 ")


def test_deep_hf_cache_config_replaced_by_a_file(
    tmp_path: Path, tiny: Path, cli: Callable[..., Result]
) -> None:
    _, snap = _hf_cache(tmp_path, tiny)
    data = (snap / "config.json").read_bytes()
    (snap / "config.json").unlink()
    (snap / "config.json").write_bytes(data)
    code, obj = verify_json(cli, snap, "--deep")
    assert code == 1
    assert only_fail(obj)[0][1].startswith(
        "config.json: not a link into the cache's blobs (replaced or edited in place?)"
    )
    assert not (snap / ".qwenprep").exists()


def test_deep_local_dir_download_metadata(tiny: Path, cli: Callable[..., Result]) -> None:
    meta = tiny / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    for p in (tiny / S1, tiny / "tokenizer.json"):
        data = p.read_bytes()
        etag = (
            hashlib.sha256(data).hexdigest()
            if p.suffix == ".safetensors"
            else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        )
        (meta / f"{p.name}.metadata").write_text(f"{'a' * 40}\n{etag}\n1712656091.123\n")
    _flip(tiny / "tokenizer.json", 3)
    code, obj = verify_json(cli, tiny, "--deep")
    assert code == 1
    assert only_fail(obj)[0][1].startswith(
        "tokenizer.json: content does not match the hub's download metadata (git-sha1 "
    )
    assert "1 file(s) match their content hash (1 by the hub's download metadata)" in [
        c["message"] for c in obj["checks"]
    ]


def test_deep_overlay_skips_the_patched_config(
    tiny: Path, tmp_path: Path, cli: Callable[..., Result]
) -> None:
    out = tmp_path / "ov"
    r = cli("patch", str(tiny), "--context", "1m", "--out", str(out))
    assert r.exit_code == 0, r.output
    code, obj = verify_json(cli, out, "--deep")
    assert code == 0, only_fail(obj)
    skip = [c for c in obj["checks"] if c["id"] == "deep.config"]
    assert skip[0]["status"] == "skip" and skip[0]["message"].startswith(
        "config.json is the overlay's patched one and has no content hash"
    )
    assert {"overlay.links", "overlay.source"} <= {c["id"] for c in obj["checks"]}


def test_deep_progress_callback_reaches_the_total(tiny: Path) -> None:
    seen: list[tuple[int, int]] = []
    report = verify_checkpoint(tiny, deep=True, progress=lambda d, t: seen.append((d, t)))
    assert report.ok
    total = sum(p.stat().st_size for p in tiny.iterdir() if p.is_file())
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert report.extra["hashed_bytes"] == total


# ------------------------------------------------------------------ console script, --engine


def test_console_script_text_output(tiny: Path) -> None:
    (tiny / S2).unlink()
    r = subprocess.run(
        [str(QWENPREP_BIN), "verify", str(tiny)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1
    assert "[FAIL] shards.present" in r.stdout and S2 in r.stdout
    assert "Traceback" not in r.stderr + r.stdout
    in_s1 = sum(1 for v in json.loads((tiny / INDEX).read_text())["weight_map"].values() if v == S1)
    assert r.stdout.rstrip().endswith(
        f"FAILED: 1 shard(s), {in_s1} tensors, {(tiny / S1).stat().st_size:,} bytes"
    )


NO_ENGINE_MODULE = importlib.util.find_spec("qwenprep.engines.vllm.engine") is None
# the interpreter with vLLM: ./dev installs it into the test venv itself (this one)
VLLM_PY = Path(os.environ.get("QWENPREP_VLLM_PYTHON") or sys.executable)
HAVE_VLLM = importlib.util.find_spec("vllm") is not None or "QWENPREP_VLLM_PYTHON" in os.environ


@pytest.mark.skipif(
    NO_ENGINE_MODULE, reason="qwenprep.engines.vllm.engine not in this checkout yet"
)
def test_engine_flag_without_vllm_is_one_skip(tiny: Path, cli: Callable[..., Result]) -> None:
    import sys

    code, obj = verify_json(
        cli,
        tiny,
        "--engine",
        "--vllm-python",
        "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable,
    )
    engine = [c for c in obj["checks"] if c["id"].startswith("engine")]
    if engine and engine[0]["id"] == "engine.found":
        pytest.skip("that interpreter has vLLM")
    assert code == 0
    assert [(c["id"], c["status"]) for c in engine] == [("engine.readback", "skip")]


@pytest.mark.skipif(
    NO_ENGINE_MODULE, reason="qwenprep.engines.vllm.engine not in this checkout yet"
)
def test_engine_flag_with_a_missing_interpreter_exits_3(
    tiny: Path, cli: Callable[..., Result]
) -> None:
    r = cli("verify", str(tiny), "--engine", "--vllm-python", "/nonexistent/python")
    assert r.exit_code == 3
    assert "/nonexistent/python: no such interpreter." in r.output


@pytest.mark.engine
@pytest.mark.skipif(NO_ENGINE_MODULE or not HAVE_VLLM, reason="needs vLLM (CPU build)")
def test_engine_flag_reads_back_through_real_vllm(tiny: Path, cli: Callable[..., Result]) -> None:
    code, obj = verify_json(cli, tiny, "--engine", "--vllm-python", str(VLLM_PY))
    assert code == 0, only_fail(obj)
    got = {c["id"]: c for c in obj["checks"]}
    assert got["engine.found"]["status"] == "pass"
    assert got["engine.quantization"]["message"] == "quantization: vLLM uses fp8"
    header_ids = [c.id for c in header_checks(tiny)]
    assert [c["id"] for c in obj["checks"]][: len(header_ids)] == header_ids


def test_downloaded_checkpoint_without_weights_fails(tmp_path: Path) -> None:
    """An HF cache snapshot (or a fetched dir) with no shards is an incomplete download."""
    import shutil as _sh

    from qwenprep.checks.integrity import verify_checkpoint as _verify

    snap = tmp_path / "hub" / "models--Qwen--Partial" / "snapshots" / ("c" * 40)
    snap.mkdir(parents=True)
    _sh.copy(
        Path(__file__).resolve().parents[2] / "examples" / "tiny-qwen3-coder" / "config.json",
        snap / "config.json",
    )
    report = _verify(snap)
    fails = [c for c in report.checks if c.status == "fail"]
    assert [c.id for c in fails] == ["weights"]
    assert "download is incomplete" in fails[0].message
    plain = tmp_path / "plain"
    _sh.copytree(snap, plain)
    assert [c.status for c in _verify(plain).checks if c.id == "weights"] == ["warn"]


# ------------------------------------------------------------------ edited in place in the cache

EDITED = "0123456789abcdef0123456789abcdef01234567"


def _edit_through_link(snap: Path) -> None:
    """The old manual recipe: edit config.json through the snapshot link, into its blob."""
    cfg = json.loads((snap / "config.json").read_text())
    cfg["max_position_embeddings"] = 1048576
    cfg["rope_scaling"] = {
        "type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 262144,
    }
    with open(snap / "config.json", "w") as f:
        f.write(json.dumps(cfg, indent=4))


@pytest.mark.parametrize("how", ["through the link", "link replaced by a file"])
def test_plain_verify_sees_a_config_edited_in_place(
    tmp_path: Path, tiny: Path, cli: Callable[..., Result], how: str
) -> None:
    """Header-level verify hashes the cache's small JSON files against their blob names (a few
    KB; --deep is not needed) and names the command that restores them."""
    _, snap = _hf_cache(tmp_path, tiny)
    assert verify_json(cli, snap)[0] == 0
    if how == "link replaced by a file":
        data = (snap / "config.json").read_bytes()
        (snap / "config.json").unlink()
        (snap / "config.json").write_bytes(data.replace(b'"silu"', b'"silv"'))
    else:
        _edit_through_link(snap)
    code, obj = verify_json(cli, snap)
    assert code == 1
    [(cid, msg)] = only_fail(obj)
    assert cid == "cache.edits"
    assert msg == (
        f"config.json in {snap}: edited in place in the Hugging Face cache (the bytes no longer "
        "match the blob name huggingface_hub gave them). Hint: edited in place: `qwenprep "
        f"revert Qwen/Tiny-FP8@{EDITED}` restores it"
    )


def test_deep_hint_names_the_repo(tmp_path: Path, tiny: Path, cli: Callable[..., Result]) -> None:
    _, snap = _hf_cache(tmp_path, tiny)
    _edit_through_link(snap)
    _flip((snap / S1).resolve(), (snap / S1).stat().st_size - 5)
    code, obj = verify_json(cli, snap, "--deep")
    assert code == 1
    hints = {
        c["path"]: c["message"].split("Hint: ")[1] for c in obj["checks"] if c["status"] == "fail"
    }
    assert hints == {
        "config.json": f"edited in place: `qwenprep revert Qwen/Tiny-FP8@{EDITED}` restores it",
        S1: f"re-download the damaged file(s): qwenprep fetch Qwen/Tiny-FP8@{EDITED}",
    }


def test_patch_refuses_a_source_edited_in_place(
    tmp_path: Path, tiny: Path, cli: Callable[..., Result]
) -> None:
    _, snap = _hf_cache(tmp_path, tiny)
    _edit_through_link(snap)
    out = tmp_path / "ov"
    r = cli("patch", str(snap), "--context", "1m", "--out", str(out), "--force", "--json")
    assert r.exit_code == 0, r.output  # --force goes ahead, and says what it built on
    assert json.loads(r.stdout)["warnings"][0].startswith(
        f"config.json in {snap}: edited in place in the Hugging Face cache"
    )
    r = cli("patch", str(snap), "--context", "1m", "--out", str(tmp_path / "ov2"))
    assert r.exit_code == 3
    assert (
        f"Hint: edited in place: `qwenprep revert Qwen/Tiny-FP8@{EDITED}` restores it, then "
        "patch again (or pass --force)"
    ) in r.stderr
    assert not (tmp_path / "ov2").exists()


def test_revert_then_patch_links_no_kept_copy(
    tmp_path: Path, tiny: Path, cli: Callable[..., Result]
) -> None:
    """revert keeps the edited bytes beside the file (config.json.qwenprep-replaced): the next
    patch links the release's files only, never that copy."""
    _, snap = _hf_cache(tmp_path, tiny)
    data = (snap / "config.json").read_bytes()
    cfg = json.loads(data)
    cfg["max_position_embeddings"] = 1048576
    (snap / "config.json").unlink()
    (snap / "config.json").write_text(json.dumps(cfg, indent=2))
    assert cli("revert", str(snap)).exit_code == 0
    assert (snap / "config.json.qwenprep-replaced").is_file()
    out = tmp_path / "ov"
    r = cli("patch", str(snap), "--context", "1m", "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    assert not any("qwenprep-replaced" in p.name for p in out.iterdir())
    assert verify_json(cli, snap)[0] == 0
