"""The engine's own rotary embedding, measured at a few positions (run inside the engine's
interpreter; imported by vllm_probe.py and sglang_probe.py from beside them, so it needs
nothing from qwenprep).

Both engines build the whole max_position x rotary_dim cos/sin table in the rotary
embedding's constructor (vLLM 0.32 RotaryEmbeddingBase.__init__ -> _compute_cos_sin_cache;
SGLang 0.5.23 likewise): 1M x 128 float32 is 512 MB. To stay bounded, the constructor runs
with torch.arange answering a long position range (the table's rows) with only the positions
asked for; every other step (inverse frequencies, YaRN ramp, mscale, the cos/sin) is the
engine's own code. From the rows: the rotary dimension (the table's width), the inverse
frequencies (the angle at position 1), the attention scaling (the magnitude at position 0) and
cos/sin at each position.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable, Iterator
from typing import Any

LONG = 8192  # a torch.arange(end) longer than this is a position table: answered sparsely


def positions(served: int, native: int) -> list[int]:
    """0 and 1 (scaling and frequencies), then points spread over 0..served, past native too."""
    pts = {0, 1, 1000, native // 2, native - 1, native, native + 1, served // 2, served - 1}
    pts |= {native + (served - native) * k // 4 for k in (1, 2, 3)} if served > native else set()
    return sorted(p for p in pts if 0 <= p < max(served, 2))


@contextlib.contextmanager
def _sparse_tables(wanted: list[int], seen: list[int]) -> Iterator[None]:
    torch: Any = importlib.import_module("torch")
    real = torch.arange

    def arange(*args: Any, **kw: Any) -> Any:
        end = args[0] if len(args) == 1 and "end" not in kw and "start" not in kw else None
        if isinstance(end, (int, float)) and not isinstance(end, bool) and end > LONG:
            seen.append(int(end))
            keep = [p for p in wanted if p < end]
            return torch.tensor(keep, dtype=kw.get("dtype") or torch.float32)
        return real(*args, **kw)

    torch.arange = arange
    try:
        yield
    finally:
        torch.arange = real


def measure(build: Callable[[], Any], table: str, wanted: list[int]) -> dict[str, Any]:
    """Build with BUILD() under sparse tables and read the cos/sin rows of attribute TABLE."""
    seen: list[int] = []
    with _sparse_tables(wanted, seen):
        obj = build()
    cache = getattr(obj, table).float()
    length = seen[-1] if seen else int(cache.shape[0])
    rows = wanted if seen else [p for p in wanted if p < length]
    if not seen:
        cache = cache[rows]
    half = int(cache.shape[1]) // 2
    got: dict[str, list[float]] = {}
    for i, p in enumerate(rows[: int(cache.shape[0])]):
        got[str(p)] = [float(x) for x in cache[i].tolist()]
    out: dict[str, Any] = {
        "built": True,
        "class": type(obj).__name__,
        "rotary_dim": 2 * half,
        "table_positions": length,
        "rows": got,
    }
    if "0" in got:
        out["attention_scaling"] = got["0"][0]
    if "0" in got and "1" in got:
        c, s = got["1"][:half], got["1"][half:]
        out["inv_freq"] = [math.atan2(b, a) for a, b in zip(c, s, strict=True)]
    return out


def _head_size(cfg: Any) -> int:
    """head_dim as the Qwen model code takes it (vLLM 0.32 qwen3_moe.py / qwen3_next.py:
    config.head_dim or hidden_size // heads; qwen2.py: hidden_size // heads)."""
    heads = int(cfg.num_attention_heads)
    own = getattr(cfg, "head_dim", None) if getattr(cfg, "model_type", "") != "qwen2" else None
    return int(own or int(cfg.hidden_size) // heads)


def vllm_rotation(cfg: Any, wanted: list[int], mrope_factor: int = 1) -> dict[str, Any]:
    """vLLM's rotary embedding for text config CFG, built by the call the Qwen attention
    layers make (vLLM 0.32 qwen3_moe.py Qwen3MoeAttention, qwen3_next.py Qwen3NextAttention,
    qwen2.py Qwen2Attention: get_rope(head_dim, max_position=config.max_position_embeddings,
    rope_parameters=config.rope_parameters, dual_chunk_attention_config=...,
    mrope_positions_factor=...)) inside set_current_vllm_config(VllmConfig())."""
    rope_mod = importlib.import_module("vllm.model_executor.layers.rotary_embedding")
    config_mod = importlib.import_module("vllm.config")
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    dca = getattr(cfg, "dual_chunk_attention_config", None)
    head = _head_size(cfg)
    mpe = int(getattr(cfg, "max_position_embeddings", 8192))
    derived = _derived(params, head, dca)

    import inspect

    modern = "rope_parameters" in inspect.signature(rope_mod.get_rope).parameters
    if not modern:  # vLLM <= 0.11.0: get_rope(head, rotary_dim, max_position, base, ...)
        params = dict(getattr(cfg, "rope_scaling", None) or {})
        prf = getattr(cfg, "partial_rotary_factor", 1.0)
        base = getattr(cfg, "rope_theta", 10000)
        derived = _derived({**params, "rope_theta": base, "partial_rotary_factor": prf}, head, dca)

    def build() -> Any:
        rope_mod._ROPE_DICT.clear()  # get_rope caches by its arguments: build afresh
        with config_mod.set_current_vllm_config(config_mod.VllmConfig()):
            if not modern:
                return rope_mod.get_rope(
                    head,
                    rotary_dim=head,
                    max_position=mpe,
                    base=base,
                    rope_scaling=params or None,
                    partial_rotary_factor=prf,
                    dual_chunk_attention_config=dca,
                )
            return rope_mod.get_rope(
                head,
                max_position=mpe,
                rope_parameters=params,
                dual_chunk_attention_config=dca,
                mrope_positions_factor=mrope_factor,
            )

    return _built(build, wanted, derived)


def _built(build: Callable[[], Any], wanted: list[int], derived: dict[str, Any]) -> dict[str, Any]:
    """The rotation BUILD() makes, measured at WANTED, with DERIVED beside it; or why it could
    not be built here (vLLM's DCA needs CUDA, for one) and DERIVED alone."""
    try:
        got = measure(build, "cos_sin_cache", wanted)
    except Exception as e:  # noqa: BLE001 - say what stopped it
        why = " ".join((str(e) or type(e).__name__).split())[:300]
        return {"built": False, "why": f"{type(e).__name__}: {why}", "derived": derived}
    return {**got, "derived": derived}


def _derived(params: dict[str, Any], head: int, dca: Any) -> dict[str, Any]:
    """The arguments get_rope takes from the rope parameters (vLLM 0.32
    rotary_embedding/__init__.py get_rope: rope_dim, else int(head_size *
    partial_rotary_factor); base rope_theta, default 10000; YaRN's extra keys; DCA's
    chunk_size and local_size) - compared when the object cannot be built here."""
    dim = params.get("rope_dim") or int(head * float(params.get("partial_rotary_factor", 1.0)))
    keep = (
        "rope_type",
        "factor",
        "original_max_position_embeddings",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "attention_factor",
        "attn_factor",  # SGLang's YaRN
        "extrapolation_factor",  # SGLang's YaRN
        "truncate",
        "mrope_section",
        "mrope_interleaved",
    )
    out = {k: _plain(params[k]) for k in keep if k in params}
    out.setdefault("rope_type", "default")
    out.update(rotary_dim=int(dim), rope_theta=params.get("rope_theta", 10000), head_size=int(head))
    if isinstance(dca, dict):
        out.update({f"dca.{k}": dca.get(k) for k in ("chunk_size", "local_size")})
    return out


def sglang_rotation(cfg: Any, wanted: list[int]) -> dict[str, Any]:
    """SGLang's rotary embedding for text config CFG, built by the call its Qwen attention
    layer makes (SGLang 0.5.23): models/qwen3_moe.py and qwen2.py take (theta, rope_scaling)
    from get_rope_config and pass no partial factor; qwen3_next.py takes config.rope_theta
    (default 10000), rope_parameters when the config has it (else rope_scaling) and
    config.partial_rotary_factor; qwen3_5.py takes get_rope_config, getattr(partial, 1.0) and
    drops a rope dict without a type. Built as with SGLANG_USE_CPU_ENGINE=1 (base.py's _is_cpu;
    otherwise the constructor imports vLLM's ops for its fallback kernel on this CPU)."""
    common = importlib.import_module("sglang.srt.utils.hf_transformers.common")
    kind = str(getattr(cfg, "model_type", ""))
    head = _head_size(cfg)
    prf: Any = 1.0
    if kind == "qwen3_next":
        theta = getattr(cfg, "rope_theta", 10000)
        has = "rope_parameters" in cfg
        params = getattr(cfg, "rope_parameters" if has else "rope_scaling", None)
        prf = cfg.partial_rotary_factor
    else:
        theta, params = common.get_rope_config(cfg)
        if kind.startswith("qwen3_5"):
            prf = getattr(cfg, "partial_rotary_factor", 1.0)
            if params and not ("rope_type" in params or "type" in params):
                params = None
    params = dict(params) if params else None
    mpe = int(getattr(cfg, "max_position_embeddings", 8192))
    dca = (
        getattr(cfg, "dual_chunk_attention_config", None)
        if kind in ("qwen2", "qwen3_moe")
        else None
    )
    derived = _derived(
        {**(params or {}), "rope_theta": theta, "partial_rotary_factor": prf}, head, dca
    )
    base_mod: Any = importlib.import_module("sglang.srt.layers.rotary_embedding.base")
    saved = base_mod._is_cpu
    base_mod._is_cpu = True  # what SGLANG_USE_CPU_ENGINE=1 sets: no vLLM kernel import

    def build() -> Any:
        rope_mod = importlib.import_module("sglang.srt.layers.rotary_embedding.factory")
        rope_mod._ROPE_DICT.clear()  # get_rope caches by its arguments: build afresh
        return rope_mod.get_rope(
            head,
            rotary_dim=head,
            max_position=mpe,
            base=theta,
            rope_scaling=params,
            partial_rotary_factor=prf,
            dual_chunk_attention_config=dca,
        )

    try:
        return _built(build, wanted, derived)
    finally:
        base_mod._is_cpu = saved


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
