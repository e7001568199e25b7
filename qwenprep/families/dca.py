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

from pathlib import Path
from typing import Any

CONFIG_1M = "config_1m.json"
SPARSE_CONFIG = "sparse_attention_config.json"
DCA_KEY = "dual_chunk_attention_config"
V0_REMOVED = (0, 11, 0)  # vLLM PR 25351
WHY = (
    "vLLM 0.11.0 removed the V0 engine and its DUAL_CHUNK_FLASH_ATTN backend (vLLM PR "
    "25351); on the V1 engine a config with dual_chunk_attention_config fails at load "
    "(\"FlashAttentionImpl.__init__() got an unexpected keyword argument 'layer_idx'\", "
    "vLLM issues 24048 and 33470)"
)
V0_ENV = (("VLLM_USE_V1", "0"), ("VLLM_ATTENTION_BACKEND", "DUAL_CHUNK_FLASH_ATTN"))
V0_FLAGS = ("--enforce-eager", "--enable-chunked-prefill", "--max-num-batched-tokens", "131072")


def dca_block(config: dict[str, Any]) -> dict[str, Any] | None:
    """The dual_chunk_attention_config of a (text) config, or None."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    assert isinstance(text, dict)
    block = text.get(DCA_KEY)
    return block if isinstance(block, dict) else None


def dca_native(config: dict[str, Any]) -> int | None:
    """The native context of a DCA config: the block's original_max_position_embeddings (the
    length DCA chunks over; 262,144 on the Qwen2.5-1M and 2507 releases), else None."""
    block = dca_block(config)
    if block is None:
        return None
    orig = block.get("original_max_position_embeddings")
    if isinstance(orig, int) and not isinstance(orig, bool) and orig > 0:
        return orig
    return None


def engine_runs_dca(version: tuple[int, int, int]) -> bool:
    return version < V0_REMOVED


def without_dca(config: dict[str, Any]) -> dict[str, Any]:
    """CONFIG without the DCA block (key order kept), text part for nested configs."""

    def strip(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k != DCA_KEY}

    if isinstance(config.get("text_config"), dict):
        return {**config, "text_config": strip(config["text_config"])}
    return strip(config)


def release_1m_config(path: Path) -> Path | None:
    """config_1m.json beside the checkpoint's config.json (2507 releases), or None."""
    p = Path(path) / CONFIG_1M
    return p if p.is_file() else None


def is_dca_release(path: Path) -> bool:
    """PATH (a checkpoint, or an overlay of one) is a DCA release: config_1m.json beside it, or
    dual_chunk_attention_config in its (or its overlay source's) config.json."""
    from qwenprep.errors import InputError
    from qwenprep.jsonio import loads_located, read_regular_bytes

    def load(p: Path) -> Any:
        """Strictly parsed (qwenprep.jsonio: bounded depth and numbers, regular files only);
        None when unreadable: whoever reads the file for real reports its problem."""
        try:
            return loads_located(read_regular_bytes(p).decode("utf-8"), str(p))
        except (OSError, UnicodeDecodeError, InputError):
            return None

    path = Path(path)
    candidates = [path]
    manifest = load(path / ".qwenprep" / "manifest.json")
    source = manifest.get("source") if isinstance(manifest, dict) else None
    if isinstance(source, dict) and isinstance(source.get("path"), str):
        candidates.append(Path(source["path"]))
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
    from qwenprep.families.base import ServeProfile

    return ServeProfile(
        name,
        lambda view, names: dca_block(view.raw) is not None,
        flags=V0_FLAGS,
        env=V0_ENV,
        before_vllm=V0_REMOVED,
        unsupported_why=WHY,
        **kw,
    )
