"""Dual Chunk Attention (DCA) releases: Qwen2.5-7B/14B-Instruct-1M (``dual_chunk_attention_config``
in config.json, max_position_embeddings 1010000) and Qwen3-235B/30B-2507 (a ``config_1m.json``
beside config.json, with ``sparse_attention_config.json``).

vLLM ran DCA only on its V0 engine with the DUAL_CHUNK_FLASH_ATTN backend (``VLLM_USE_V1=0``,
``--enforce-eager``, chunked prefill with ``--max-num-batched-tokens 131072``: the Qwen2.5-1M
and 2507 model cards). vLLM 0.11.0 removed the V0 engine and that backend (vLLM PR 25351); on
the V1 engine a config carrying ``dual_chunk_attention_config`` fails at load
(``FlashAttentionImpl.__init__() got an unexpected keyword argument 'layer_idx'``: vLLM issues
24048, 33470). vLLM 0.32's qwen3_next.py / qwen2.py still pass ``layer_idx`` and
``dual_chunk_attention_config`` to ``Attention`` when the config has the block (read here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeGuard

from qwenprep.errors import InputError

CONFIG_1M = "config_1m.json"
SPARSE_CONFIG = "sparse_attention_config.json"
DCA_KEY = "dual_chunk_attention_config"
# the native length of every DCA release (config.json / config_1m.json of Qwen2.5-7B/14B-
# Instruct-1M and Qwen3-235B/30B-2507: dual_chunk_attention_config.original_max_position_embeddings)
KNOWN_NATIVE = 262144
V0_REMOVED = (0, 11, 0)  # vLLM PR 25351
WHY = (
    "vLLM 0.11.0 removed the V0 engine and its DUAL_CHUNK_FLASH_ATTN backend (vLLM PR "
    "25351); on the V1 engine a config with dual_chunk_attention_config fails at load "
    "(\"FlashAttentionImpl.__init__() got an unexpected keyword argument 'layer_idx'\", "
    "vLLM issues 24048 and 33470)"
)
V0_ENV = (("VLLM_USE_V1", "0"), ("VLLM_ATTENTION_BACKEND", "DUAL_CHUNK_FLASH_ATTN"))
V0_FLAGS = ("--enforce-eager", "--enable-chunked-prefill", "--max-num-batched-tokens", "131072")
V0_FLAGS_WHY = (
    "the Qwen2.5-1M and Qwen3-2507 model cards launch Dual Chunk Attention on the V0 engine in "
    "eager mode with chunked prefill of 131,072 tokens; other settings are not what the cards "
    "tested"
)


def dca_block(config: dict[str, Any]) -> dict[str, Any] | None:
    """The dual_chunk_attention_config of a (text) config, or None."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    assert isinstance(text, dict)
    block = text.get(DCA_KEY)
    return block if isinstance(block, dict) else None


def _pos_int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def dca_disagreement(config: dict[str, Any]) -> tuple[str, str] | None:
    """(JSON pointer, why) when CONFIG's DCA block is not to be believed, else None (also for
    a config without one). Its original_max_position_embeddings is the native length
    qwenprep patches to (``--context native``) and the length past which vLLM's DCA backend
    scales attention (``0.1 x log(len / original) + 1``: DualChunkFlashAttentionMetadata,
    vllm/attention/backends/dual_chunk_flash_attn.py, vLLM 0.10), so one edited number there
    is a native overlay that runs unscaled past the real native. It is believed only when it
    agrees with the rest: ``local_size`` < ``chunk_size`` <= original <
    ``max_position_embeddings`` (DCA chunks the sequence within the trained window to reach
    past it; vLLM divides by ``chunk_size - local_size``, and both are required arguments of
    DualChunkRotaryEmbedding, which get_rope builds from the block: vLLM 0.32
    model_executor/layers/rotary_embedding/__init__.py and dual_chunk_rope.py), and original
    is 262,144 (KNOWN_NATIVE), as in every DCA release."""
    block = dca_block(config)
    if block is None:
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    assert isinstance(text, dict)
    at = ("$.text_config." if text is not config else "$.") + DCA_KEY
    orig = block.get("original_max_position_embeddings")
    chunk, local = block.get("chunk_size"), block.get("local_size")
    mpe = text.get("max_position_embeddings")
    for key, value in (
        ("original_max_position_embeddings", orig),
        ("chunk_size", chunk),
        ("local_size", local),
    ):
        if not _pos_int(value):
            return f"{at}.{key}", f"{DCA_KEY}.{key} is {value!r}; expected a positive integer"
    if not _pos_int(mpe):
        return at, f"max_position_embeddings is {mpe!r}; expected a positive integer"
    assert _pos_int(orig) and _pos_int(chunk) and _pos_int(local)
    if orig >= mpe:
        return (
            f"{at}.original_max_position_embeddings",
            f"{DCA_KEY}.original_max_position_embeddings {orig} is not below "
            f"max_position_embeddings {mpe}; DCA is there to reach past the native length",
        )
    if not local < chunk <= orig:
        return (
            f"{at}.chunk_size",
            f"{DCA_KEY} has local_size {local}, chunk_size {chunk} and "
            f"original_max_position_embeddings {orig}; DCA needs local_size < chunk_size <= "
            "original_max_position_embeddings",
        )
    if orig != KNOWN_NATIVE:
        return (
            f"{at}.original_max_position_embeddings",
            f"{DCA_KEY}.original_max_position_embeddings is {orig}, but every Dual Chunk "
            f"Attention release (Qwen2.5-7B/14B-Instruct-1M, Qwen3-235B/30B-2507) has "
            f"{KNOWN_NATIVE}",
        )
    return None


def dca_native(config: dict[str, Any]) -> int | None:
    """The native context of a DCA config: the block's original_max_position_embeddings (the
    length DCA chunks over; 262,144 on the Qwen2.5-1M and 2507 releases), else None (no
    block). An InputError naming the field when the block's numbers disagree
    (dca_disagreement): a guess here is an unscaled overlay past the real native."""
    found = dca_disagreement(config)
    if found is not None:
        where, why = found
        raise InputError(
            f"config.json: {why}, so qwenprep cannot tell the native context.",
            hint="restore the release's config.json (qwenprep revert PATH, or download it "
            "again) or fix the field; qwenprep validate PATH lists every problem.",
            path=f"config.json:{where}",
        )
    block = dca_block(config)
    return None if block is None else int(block["original_max_position_embeddings"])


def dca_reach(view: dict[str, Any]) -> int:
    """How far the engine's Dual Chunk Attention reaches, from an engine view
    (qwenprep.engines.vllm.gate:
    what vLLM will use): its max_position_embeddings when it carries a DCA block whose numbers
    agree (dca_disagreement), else 0 (no DCA: the RoPE alone decides)."""
    block, mpe = view.get(DCA_KEY), view.get("max_position_embeddings")
    if not isinstance(block, dict) or not _pos_int(mpe):
        return 0
    return 0 if dca_disagreement({DCA_KEY: block, "max_position_embeddings": mpe}) else mpe


def engine_runs_dca(version: tuple[int, int, int]) -> bool:
    return version < V0_REMOVED


def without_dca(config: dict[str, Any]) -> dict[str, Any]:
    """CONFIG without the DCA block (key order kept), text part for nested configs."""

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k != DCA_KEY}

    if isinstance(config.get("text_config"), dict):
        return {**config, "text_config": strip(config["text_config"])}
    return strip(config)


# What config_1m.json may change from config.json: the DCA block and the length it serves
# (the 2507 model cards: "replace the content of your config.json with config_1m.json"), and
# the writer's version stamp, which no loader reads.
ONE_M_KEYS = frozenset({DCA_KEY, "max_position_embeddings", "transformers_version"})


def release_1m_differences(
    config: dict[str, Any],
    one_m: dict[str, Any],
    names: tuple[str, str] = ("config.json", CONFIG_1M),
) -> list[str]:
    """The keys (JSON paths) where ONE_M (config_1m.json) differs from CONFIG (config.json)
    other than ONE_M_KEYS, each with both values; [] when it is config.json plus the DCA
    block and the length. Another rope_theta or rope dict, another layer count: a different
    model than the release whose weights sit beside it. NAMES: what to call the two."""

    def shown(v: Any) -> str:
        text = json.dumps(v)
        return text if len(text) <= 60 else text[:57] + "..."

    def diff(a: dict[str, Any], b: dict[str, Any], at: str, free: frozenset[str]) -> list[str]:
        out = []
        for key in sorted(set(a) | set(b)):
            if key in free or (key == "text_config" and isinstance(a.get(key), dict)):
                continue
            va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
            if va != vb:
                out.append(
                    f"{at}{key}: {names[0]} {'absent' if va is _ABSENT else shown(va)}, "
                    f"{names[1]} {'absent' if vb is _ABSENT else shown(vb)}"
                )
        return out

    found = diff(config, one_m, "$.", ONE_M_KEYS)
    if isinstance(config.get("text_config"), dict):
        inner = one_m.get("text_config")
        if not isinstance(inner, dict):
            return [*found, f"$.text_config: {names[1]} has none"]
        found += diff(config["text_config"], inner, "$.text_config.", ONE_M_KEYS)
    return found


_ABSENT = object()


def release_1m_config(path: Path) -> Path | None:
    """config_1m.json beside the checkpoint's config.json (2507 releases), or None."""
    p = Path(path) / CONFIG_1M
    return p if p.is_file() else None


def is_dca_release(path: Path) -> bool:
    """PATH (a checkpoint, or an overlay of one) is a DCA release: config_1m.json beside it, or
    dual_chunk_attention_config in its (or its overlay source's) config.json."""
    from qwenprep.model.manifest import Manifest
    from qwenprep.util.jsonio import loads_located, read_regular_bytes

    def load(p: Path) -> Any:
        """Strictly parsed (qwenprep.util.jsonio: bounded depth and numbers, regular files only);
        None when unreadable: whoever reads the file for real reports its problem."""
        try:
            return loads_located(read_regular_bytes(p).decode("utf-8"), str(p))
        except (OSError, UnicodeDecodeError, InputError):
            return None

    path = Path(path)
    candidates = [path]
    raw = load(path / ".qwenprep" / "manifest.json")  # any manifest, qwenprep's or not
    source = Manifest.from_dict(raw).source if isinstance(raw, dict) else None
    if source is not None and isinstance(source.path, str):
        candidates.append(Path(source.path))
    for p in candidates:
        if release_1m_config(p) is not None:
            return True
        cfg = load(p / "config.json")
        if cfg is None:
            continue
        if isinstance(cfg, dict) and dca_block(cfg) is not None:
            return True
    return False


def dca_profile(name: str, **kw: Any) -> Any:
    """The serve profile of a DCA config (an overlay for vLLM < 0.11): the V0 engine with the
    DUAL_CHUNK_FLASH_ATTN backend, eager mode, chunked prefill of 131,072 tokens (the
    Qwen2.5-1M and Qwen3-2507 model cards); serve refuses it on vLLM >= 0.11."""
    from qwenprep.model.families.base import ServeProfile

    return ServeProfile(
        name,
        lambda view, names: dca_block(view.raw) is not None,
        flags=V0_FLAGS,
        env=V0_ENV,
        flags_why=V0_FLAGS_WHY,
        before_vllm=V0_REMOVED,
        unsupported_why=WHY,
        **kw,
    )
