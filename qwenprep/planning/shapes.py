"""The model shape of a checkpoint (qwenprep.engines.vllm.kv.ModelShape): from config.json and the
safetensors headers of a directory, or of a Hub repo that is not downloaded (range requests),
and MODEL as the command line names it (load_shape). Parameter and byte tallies by role are
qwenprep.planning.timecost.tally_tensors.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from qwenprep.engines.vllm.kv import ModelShape
from qwenprep.errors import InputError

if TYPE_CHECKING:
    from qwenprep.planning.timecost import ParamCounts


def _is_expert(tensor_name: str) -> bool:
    return ".mlp.experts." in tensor_name


def weight_bytes_from_dir(path: Path) -> tuple[int, int]:
    """(all tensor bytes, routed-expert tensor bytes) from the safetensors headers in PATH."""
    tally = weight_tally_from_dir(path)
    return tally.total_bytes, tally.routed_expert_bytes


def weight_tally_from_dir(path: Path) -> ParamCounts:
    """Parameters and bytes by role (qwenprep.planning.timecost.ParamCounts) from the safetensors
    headers
    in PATH."""
    from qwenprep.planning.timecost import tally_tensors
    from qwenprep.util.safetensors_io import read_header

    index = path / "model.safetensors.index.json"
    if index.is_file():
        from qwenprep.util.jsonio import load_json_file

        obj = load_json_file(index, what="safetensors index")
        wm = obj.get("weight_map") if isinstance(obj, dict) else None
        if not isinstance(wm, dict):
            raise InputError(f"{index}: no weight_map object.", path=str(index))
        from qwenprep.model.checkpoint import unsafe_shard_names

        for v, why in unsafe_shard_names(wm.values()).items():
            raise InputError(
                f"{index}: weight_map names {v!r}, which {why}; refusing to open it.",
                hint=f"qwenprep verify {path} lists every problem of this index.",
                path=str(index),
            )
        shards = sorted(set(wm.values()))
    else:
        shards = sorted(p.name for p in path.glob("*.safetensors"))
    if not shards:
        raise InputError(
            f"{path}: no safetensors shards to size the weights from.",
            hint="pass --kv-memory SIZE (exact), or download the weights: qwenprep fetch ORG/NAME",
            path=str(path),
        )
    return tally_tensors(
        (t.name, t.shape, t.nbytes)
        for shard in shards
        for t in read_header(path / shard).tensors.values()
    )


def shape_from_dir(path: Path, *, with_weights: bool = True) -> ModelShape:
    from qwenprep.util.jsonio import load_json_file

    cfg = load_json_file(path / "config.json", what="config.json")
    if not isinstance(cfg, dict):
        raise InputError(f"{path / 'config.json'}: top level is not a JSON object.")
    total: int | None = None
    expert = 0
    source = "not read"
    tally = None
    if with_weights:
        try:
            tally = weight_tally_from_dir(path)
            total, expert = tally.total_bytes, tally.routed_expert_bytes
            source = f"safetensors headers in {path}"
        except InputError as e:
            source = f"unknown: {e.message}"
    return ModelShape.from_config(
        cfg,
        name=str(path),
        weight_bytes=total,
        expert_weight_bytes=expert,
        weights_source=source,
        params=tally,
    )


def shape_from_hub(spec: str) -> ModelShape:
    """Config and weight bytes of a Hub repo that is not downloaded: config.json (a small file)
    and the safetensors headers by range request (what ``HfApi.get_safetensors_metadata`` does,
    shard by shard)."""
    import tempfile

    from qwenprep.model.hub import (
        http_status_cause,
        hub_endpoint,
        offline_hint,
        offline_mode,
        unreachable_cause,
    )
    from qwenprep.util.redact import display_endpoint, redact, scrub_hub_logs
    from qwenprep.util.safetensors_io import DTYPE_BYTES

    repo_id, _, revision = spec.partition("@")
    if offline_mode():
        raise InputError(
            f"{spec}: not in the Hugging Face cache, and HF_HUB_OFFLINE is set, so "
            "its config and safetensors headers cannot be read from the Hub.",
            hint=f"unset HF_HUB_OFFLINE, or download it where the Hub is "
            f"reachable: qwenprep fetch {spec}",
        )
    endpoint = hub_endpoint()
    try:
        from huggingface_hub import HfApi, hf_hub_download

        scrub_hub_logs()
        api = HfApi(endpoint=endpoint)
        rev = revision or None
        # Small files go to a throwaway cache: a lone config.json (or index) in the real HF
        # cache would later look like a downloaded, weightless snapshot of this repo. That is
        # also why the shards are read one by one with parse_safetensors_file_metadata (range
        # requests) rather than get_safetensors_metadata, which caches the index itself.
        # The repo's file list first: one plain GET, which fails at once when the Hub cannot
        # be reached, where hf_hub_download's HEAD retries five times with backoff (about 25 s
        # of "Retrying in 8s" lines; huggingface_hub file_download.get_hf_file_metadata ->
        # http_backoff). fetch reads the same model_info first (qwenprep.ops.fetch.plan).
        listed = {s.rfilename for s in api.model_info(repo_id, revision=rev).siblings or ()}
        with tempfile.TemporaryDirectory(prefix="qwenprep-plan-") as tmp:
            cfg_path = hf_hub_download(
                repo_id, "config.json", revision=rev, cache_dir=tmp, endpoint=endpoint
            )
            cfg = json.loads(Path(cfg_path).read_text(encoding="utf-8"))
            if "model.safetensors.index.json" in listed:
                idx_path = hf_hub_download(
                    repo_id,
                    "model.safetensors.index.json",
                    revision=rev,
                    cache_dir=tmp,
                    endpoint=endpoint,
                )
                index = json.loads(Path(idx_path).read_text(encoding="utf-8"))
                shards = sorted(set(index["weight_map"].values()))
            else:
                shards = ["model.safetensors"]
        files = [api.parse_safetensors_file_metadata(repo_id, f, revision=rev) for f in shards]
    except Exception as e:  # noqa: BLE001 - hub errors come in many types; report them as input
        cause = unreachable_cause(e)
        http = http_status_cause(e)
        shown = cause if cause is not None else http[1] if http is not None else e
        first = redact(str(shown).splitlines()[0] if str(shown) else "")
        where = display_endpoint(endpoint)
        raise InputError(
            f"{spec}: cannot read config.json and safetensors headers from {where} ("
            + ("the Hub could not be reached: " if cause is not None else "")
            + f"{type(shown).__name__}: {first}).",
            hint=(offline_hint() + "; or download it: qwenprep fetch " + spec)
            if cause is not None
            else "check the repo id and the network, or download it: qwenprep fetch " + spec,
        ) from None
    if not isinstance(cfg, dict):
        raise InputError(f"{spec}: config.json on the Hub is not a JSON object.")
    total = expert = 0
    for file_meta in files:
        for name, t in file_meta.tensors.items():
            offs = getattr(t, "data_offsets", None)
            if offs:
                n = int(offs[1]) - int(offs[0])
            else:
                n = int(math.prod(t.shape) * DTYPE_BYTES.get(t.dtype, 2))
            total += n
            if _is_expert(name):
                expert += n
    return ModelShape.from_config(
        cfg,
        name=spec,
        weight_bytes=total,
        expert_weight_bytes=expert,
        weights_source=f"safetensors headers of {spec} on the Hub",
    )


def load_shape(spec: str) -> ModelShape:
    """MODEL as given on the command line: a directory or a cached ORG/NAME[@rev] (headers read
    locally); a repo id that is not downloaded is read from the Hub's header metadata."""
    from qwenprep.model.checkpoint import check_path_length, resolve_model
    from qwenprep.model.hub import parse_repo_spec

    check_path_length(spec)
    try:
        ckpt = resolve_model(spec)
    except InputError:
        if Path(spec).expanduser().exists() or parse_repo_spec(spec) is None:
            raise
        return shape_from_hub(spec)
    from qwenprep.model.lifecycle import require_live

    require_live(ckpt.path)  # a dangling overlay: its rebuild, not its missing weights' sizes
    shape = shape_from_dir(ckpt.path)
    if ckpt.repo_id:
        shape = replace(shape, name=f"{ckpt.repo_id}@{ckpt.revision} ({ckpt.path})")
    return shape
