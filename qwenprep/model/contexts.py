"""Context lengths and the pure config patch (raw JSON in, raw JSON out).

The patch that works on every vLLM (0.10 .. 0.33) and transformers (4.51 .. 5.x) release:
keep every key, set ``max_position_embeddings = factor x native`` and a YaRN block whose
``original_max_position_embeddings`` is the native length, keep ``rope_theta``.
See docs/facts.md, "The one config that every version reads the same way".
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn, TypeGuard

from qwenprep.errors import InputError, UsageError
from qwenprep.model.view import ModelView, RopeStyle, rope_type_of

NATIVE_QWEN3_CODER = 262144
MAX_SUPPORTED_FACTOR = 4.0  # Qwen claims 1M (4 x 256K) and no more

_COUNT = re.compile(r"^\s*(\d{1,40}(?:\.\d{1,12})?)\s*([kKmM]?)\s*$", re.ASCII)
MAX_CONTEXT_TOKENS = 2**32  # no model comes near; a longer number is a typo, refused


@dataclass(frozen=True)
class ContextRequest:
    """What the user asked for: 'native', a named size, or a token count."""

    text: str
    tokens: int | None  # None means "native"
    # DCA releases (qwenprep.model.families.dca), set by `qwenprep patch`:
    yarn_on_dca: bool = False  # --yarn-on-dca: YaRN over the DCA release's native length
    vllm: str | None = None  # the vLLM version the overlay is for ("0.10"; None: current)
    dca_engine: bool = False  # that vLLM still runs DCA (< 0.11, V0 engine)
    release_1m: dict[str, Any] | None = None  # the release's config_1m.json (2507), if any

    @property
    def native(self) -> bool:
        """'native': no fixed count; the model's config decides."""
        return self.tokens is None


def parse_context(text: str) -> ContextRequest:
    """Parse native|256k|512k|1m|N. Suffixes are the model world's binary k and M (1m = 1048576)."""
    raw = str(text).strip()
    low = raw.lower()
    if low == "native":
        return ContextRequest(raw, None)
    m = _COUNT.match(low)
    shown = repr(raw) if len(raw) <= 24 else repr(raw[:20]) + f"... ({len(raw)} characters)"
    if not m and raw.isascii() and raw.isdigit():  # a count, of more digits than _COUNT reads
        _too_large(shown)
    if not m:
        raise UsageError(
            f"unknown context {shown}.",
            hint="use native, 256k, 512k, 1m, or a token count such as 1048576.",
        )
    number, suffix = m.group(1), m.group(2)
    scale = {"": 1, "k": 1024, "m": 1024 * 1024}[suffix]
    value = Decimal(number) * scale
    if value != int(value) or value <= 0:
        raise UsageError(f"context {raw!r} is not a positive whole number of tokens.")
    if value > MAX_CONTEXT_TOKENS:
        _too_large(shown)
    return ContextRequest(raw, int(value))


def _too_large(shown: str) -> NoReturn:
    raise UsageError(
        f"context {shown} is too large: the most qwenprep takes is {MAX_CONTEXT_TOKENS:,} "
        "tokens (4096m); no model has such a context.",
        hint="use native, 256k, 512k, 1m, or a token count such as 1048576.",
    )


def _rope_block(config: dict[str, Any]) -> tuple[RopeStyle, dict[str, Any] | None]:
    """Which key of the text config carries the rope settings (qwenprep.model.view.ModelView)."""
    return ModelView(config).rope_block


def rope_style(config: dict[str, Any]) -> RopeStyle:
    return ModelView(config).rope_style


def rope_type(block: dict[str, Any] | None) -> str:
    return rope_type_of(block)


def effective_rope(config: dict[str, Any]) -> dict[str, Any]:
    """The rope dict the engine uses (qwenprep.model.view.ModelView.effective_rope)."""
    return ModelView(config).effective_rope()


def _positive_int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def _where(view: ModelView, key: str) -> str:
    return ("text_config." if view.nested else "") + f"{view.rope_style}.{key}"


def native_context(config: dict[str, Any]) -> int:
    """The model's native context, taken only from settings that agree with each other.

    No rope scaling: max_position_embeddings. YaRN: original_max_position_embeddings, and only
    when it is a positive integer, the factor a finite number >= 1, and factor x original ==
    max_position_embeddings. Anything else (a float original, a length that disagrees, another
    scaling type) is refused naming the field: a guess here is how a 1M overlay ends up with
    unscaled RoPE.
    """
    view = ModelView(config)
    mpe = view.max_position_embeddings
    mpe_name = ("text_config." if view.nested else "") + "max_position_embeddings"
    if not _positive_int(mpe):
        raise InputError(
            f"config.json: {mpe_name} is {mpe!r}; expected a positive integer"
            + (
                f" (write {int(mpe)}, not {mpe!r})"
                if isinstance(mpe, float) and math.isfinite(mpe) and mpe == int(mpe) and mpe > 0
                else ""
            )
            + ".",
            hint="run qwenprep validate PATH for every problem in this config.",
        )
    style, block = view.rope_block
    kind = rope_type(block)
    if kind == "default":
        from qwenprep.model.families.dca import dca_native

        return dca_native(config) or int(mpe)
    hint = (
        "restore the release's config.json (qwenprep revert PATH) or fix the field; "
        "qwenprep validate PATH lists every problem."
    )
    if kind != "yarn" or block is None:
        raise InputError(
            f"config.json: {_where(view, 'rope_type')} is {kind!r}; qwenprep knows the native "
            "context only of unscaled or YaRN configs, and will not guess it.",
            hint=hint,
        )
    orig = block.get("original_max_position_embeddings")
    factor = block.get("factor")
    if not _positive_int(orig):
        raise InputError(
            f"config.json: {_where(view, 'original_max_position_embeddings')} is {orig!r}; "
            "the native context must be a positive integer.",
            hint=hint,
        )
    if not (
        isinstance(factor, (int, float))
        and not isinstance(factor, bool)
        and math.isfinite(factor)
        and factor >= 1
    ):
        raise InputError(
            f"config.json: {_where(view, 'factor')} is {factor!r}; expected a finite number >= 1.",
            hint=hint,
        )
    if abs(factor * orig - mpe) >= 0.5:
        raise InputError(
            f"config.json: {mpe_name} is {mpe} but {_where(view, 'factor')} "
            f"{factor:.8g} x {_where(view, 'original_max_position_embeddings')} {orig} = "
            f"{factor * orig:.8g}; these must agree before qwenprep can tell the native "
            "context.",
            hint=hint,
        )
    return int(orig)


@dataclass(frozen=True)
class PatchResult:
    config: dict[str, Any]
    native: int
    target: int
    factor: float
    style: RopeStyle


def target_and_factor(
    native: int,
    req: ContextRequest,
    *,
    force: bool = False,
    max_factor: float = MAX_SUPPORTED_FACTOR,
) -> tuple[int, float]:
    """Resolve a request against the native length; refuse factors below 1 and (unless forced)
    above MAX_FACTOR (the family's largest claimed YaRN factor)."""
    if req.tokens is None:
        return native, 1.0
    target, factor = req.tokens, req.tokens / native
    if factor < 1.0:
        raise UsageError(
            f"context {req.text} ({target} tokens) is below the native {native}; "
            "a YaRN factor below 1 is never valid.",
            hint="to serve a shorter context, keep the native config and pass "
            "--max-model-len to vLLM (qwenprep serve PATH --max-model-len N).",
        )
    if factor > max_factor and not force:
        raise UsageError(
            f"context {req.text} means YaRN factor {factor:.8g} over the native {native}; "
            f"Qwen supports at most factor {max_factor:g} ({int(native * max_factor)} tokens).",
            hint="pass --force to write it anyway (quality past 1M is unverified).",
        )
    return target, factor


def max_factor_of(config: dict[str, Any]) -> float:
    from qwenprep.model.families import lookup

    view = ModelView(config)
    fam = lookup(view.model_type) or lookup(view.text_model_type)
    return fam.max_yarn_factor if fam is not None else MAX_SUPPORTED_FACTOR


def patch_config(
    config: dict[str, Any], req: ContextRequest, *, force: bool = False
) -> PatchResult:
    """Pure: return a new config for the requested context. Every other key and the key order
    are kept; an already patched config is re-patched from its native values. The text config
    is what changes (text_config for nested configs); a rope_parameters dict keeps every key it
    has (rope_theta, mrope_section, partial_rotary_factor, ...)."""
    view = ModelView(config)
    native = native_context(config)
    dca = _dca_patch(config, req, native, force=force)
    if dca is not None:
        return dca
    target, factor = target_and_factor(native, req, force=force, max_factor=max_factor_of(config))
    style, block = view.rope_block
    text = view.text
    if (
        factor == 1.0
        and rope_type(block) == "default"
        and text.get("max_position_embeddings") == native
    ):
        return PatchResult(copy.deepcopy(config), native, target, 1.0, style)  # already native
    new = copy.deepcopy(text)
    new.pop("dual_chunk_attention_config", None)  # only --yarn-on-dca gets here with one
    new["max_position_embeddings"] = target
    if style == "rope_parameters":
        params = {k: v for k, v in (block or {}).items() if k not in YARN_KEYS}
        theta = params.pop("rope_theta", text.get("rope_theta"))
        if factor == 1.0:
            params["rope_type"] = "default"
        else:
            params.update(
                rope_type="yarn", factor=float(factor), original_max_position_embeddings=native
            )
        if theta is not None:
            params["rope_theta"] = theta
        new["rope_parameters"] = params
    else:
        if factor == 1.0:
            new["rope_scaling"] = None
        else:
            new["rope_scaling"] = {
                "rope_type": "yarn",
                "factor": float(factor),
                "original_max_position_embeddings": native,
            }
    whole = view.with_text(new)
    if whole is new:
        return PatchResult(new, native, target, float(factor), style)
    return PatchResult(copy.deepcopy(whole), native, target, float(factor), style)


YARN_KEYS = {
    "type",
    "rope_type",
    "factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
    "attention_factor",
}


def _dca_patch(
    config: dict[str, Any], req: ContextRequest, native: int, *, force: bool = False
) -> PatchResult | None:
    """What a DCA release (qwenprep.model.families.dca) becomes; None: patch it as any other config.

    native: the config without the DCA block, max_position_embeddings = native. Longer, for a
    vLLM that runs DCA (< 0.11): the release's own DCA config (config_1m.json where it has one),
    unchanged. Longer, for a current vLLM: refused (it fails at load), unless --yarn-on-dca asks
    for YaRN over the native length instead (then None: the YaRN patch, DCA block dropped)."""
    from qwenprep.model.families.dca import WHY, dca_block, without_dca

    view = ModelView(config)
    has_dca = dca_block(config) is not None
    if not has_dca and req.release_1m is None:
        return None
    style = view.rope_style
    if req.tokens is None or req.tokens == native:
        if not has_dca:
            return None  # a 2507 release's config.json is already the native one
        new = without_dca(config)
        text = ModelView(new).text
        text["max_position_embeddings"] = native
        return PatchResult(new, native, native, 1.0, style)
    if req.yarn_on_dca:
        return None
    what = (
        "its config.json carries dual_chunk_attention_config"
        if has_dca
        else "its long context is config_1m.json (dual_chunk_attention_config + sparse attention)"
    )
    if req.dca_engine:
        return _release_dca(config, req.release_1m if not has_dca else None, native, force)
    raise InputError(
        f"this is a Dual Chunk Attention release: {what}. It reaches 1M only by DCA, and "
        f"{WHY}. qwenprep will not write an overlay that fails at load or runs unscaled past "
        f"{native}.",
        hint=f"--context native gives the {native}-token config without the DCA block; "
        "--vllm-version 0.10 writes the DCA overlay for a vLLM < 0.11 (V0 engine); "
        "--yarn-on-dca writes YaRN x4 instead (not what the release was tuned for).",
    )


def _release_dca(
    config: dict[str, Any], one_m: dict[str, Any] | None, native: int, force: bool
) -> PatchResult:
    """The release's own DCA config for a vLLM that runs DCA: config.json itself (Qwen2.5-1M),
    or ONE_M (the 2507's config_1m.json) when it is config.json but for the DCA block and the
    length (families.dca.release_1m_differences). Its DCA numbers must agree with each other
    (families.dca.dca_disagreement) and with config.json's native length, and its length stay
    within the family's factor over native unless forced, as a YaRN patch would."""
    from qwenprep.model.families.dca import dca_block, dca_disagreement, release_1m_differences

    name = "config.json" if one_m is None else "config_1m.json"
    dca_cfg = config if one_m is None else one_m
    hint = "restore the release's files (download them again) or fix the field."
    found = release_1m_differences(config, one_m) if one_m is not None else []
    if found:
        raise InputError(
            f"config_1m.json differs from config.json in {len(found)} key(s) besides "
            f"dual_chunk_attention_config and max_position_embeddings: "
            f"{'; '.join(found[:4])}{' ...' if len(found) > 4 else ''}. qwenprep will not "
            "serve the release's weights under another model's settings.",
            hint=hint,
        )
    block = dca_block(dca_cfg)
    wrong = dca_disagreement(dca_cfg)
    if block is None or wrong is not None:
        raise InputError(
            f"{name}: "
            + (wrong[1] if wrong else "no dual_chunk_attention_config")
            + "; this is not the release's Dual Chunk Attention config.",
            hint=hint,
            path=f"{name}:{wrong[0] if wrong else '$'}",
        )
    view = ModelView(dca_cfg)
    if block["original_max_position_embeddings"] != native:
        raise InputError(
            f"{name}: dual_chunk_attention_config.original_max_position_embeddings is "
            f"{block['original_max_position_embeddings']} but config.json's native context is "
            f"{native}.",
            hint=hint,
        )
    target = view.max_position_embeddings
    assert _positive_int(target)  # dca_disagreement checked it
    limit = max_factor_of(dca_cfg)
    if target > native * limit and not force:
        raise UsageError(
            f"{name}: max_position_embeddings {target} is {target / native:.8g} x the native "
            f"{native}; the Dual Chunk Attention releases claim at most {limit:g} x "
            f"({int(native * limit)} tokens).",
            hint="pass --force to write it anyway (quality past 1M is unverified).",
        )
    return PatchResult(copy.deepcopy(dca_cfg), native, target, 1.0, view.rope_style)
