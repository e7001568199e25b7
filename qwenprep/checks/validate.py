"""Validation of a config of the Qwen line: the family's JSON Schema (schemas/*-config.schema.json)
plus the invariants a schema cannot say. Every violation is collected, each with its JSON path."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from qwenprep.errors import InputError, QwenprepError
from qwenprep.model.checkpoint import CONFIG
from qwenprep.model.contexts import NATIVE_QWEN3_CODER, rope_type
from qwenprep.model.families.dca import WHY as DCA_WHY
from qwenprep.model.families.dca import dca_block, dca_disagreement, dca_native, engine_runs_dca
from qwenprep.model.view import ModelView
from qwenprep.util.jsonio import loads_located, read_regular_bytes
from qwenprep.util.report import Check

if TYPE_CHECKING:
    from qwenprep.model.manifest import Manifest

PATCH_HINT = "qwenprep patch MODEL --context 1m --out DIR"


def _num(x: Any) -> TypeGuard[int | float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool)


def _pointer(path: Any) -> str:
    parts = list(path)
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


@dataclass(frozen=True)
class SchemaProblem:
    """One schema violation: where (the JSON path's parts) and what."""

    parts: tuple[str | int, ...]
    message: str

    @property
    def pointer(self) -> str:
        return _pointer(self.parts)

    @property
    def top_key(self) -> str | None:
        return str(self.parts[0]) if self.parts else None

    def __str__(self) -> str:
        return f"{self.pointer}: {self.message}"


def schema_errors(config: dict[str, Any]) -> list[SchemaProblem]:
    """Every schema violation, sorted by path."""
    from qwenprep.model.families import REGISTRY, lookup
    from qwenprep.util.schemas import validator

    view = ModelView(config)
    family = lookup(view.model_type) or lookup(view.text_model_type)
    if family is None:
        known = "; ".join(f"{f.title}: {', '.join(sorted(f.model_types))}" for f in REGISTRY)
        text = f" (nor text_config.model_type {view.text_model_type!r})" if view.nested else ""
        return [
            SchemaProblem(
                ("model_type",),
                f"model_type is {view.model_type!r}; qwenprep "
                f"knows these families ({known}) and cannot map another one's "
                f"context, RoPE and layers{text}",
            )
        ]
    base: tuple[str | int, ...] = ("text_config",) if view.nested else ()
    errors = sorted(
        (_innermost(e) for e in validator(family.schema).iter_errors(view.text)),
        key=lambda e: [str(p) for p in e.absolute_path],
    )
    return [SchemaProblem(base + tuple(e.absolute_path), _message(e)) for e in errors]


def _innermost(e: Any) -> Any:
    """For "null or a rope block" (oneOf), the error inside the block, which names the field
    ($.rope_scaling.original_max_position_embeddings: is 262144.0 ...), not the whole dict."""
    while e.validator in ("oneOf", "anyOf") and e.context:
        inner = [
            c for c in e.context if not (c.validator == "type" and c.validator_value == "null")
        ]
        if not inner:
            break
        e = max(inner, key=lambda c: len(c.absolute_path))
    return e


def schema_problems(config: dict[str, Any]) -> list[str]:
    """Schema violations as 'JSON path: message' strings, sorted by path."""
    return [str(p) for p in schema_errors(config)]


def _message(e: Any) -> str:
    if e.validator == "enum" and list(e.absolute_path) == ["model_type"]:
        from qwenprep.model.families import known_model_types

        return f"model_type is {e.instance!r}; qwenprep handles {', '.join(known_model_types())}"
    if e.validator == "type":
        return f"is {e.instance!r} ({type(e.instance).__name__}); expected {e.validator_value}"
    return str(e.message)


def _line_of(text: str, key: str) -> int | None:
    m = re.search(r'^\s*"' + re.escape(key) + r'"\s*:', text, re.MULTILINE)
    return text.count("\n", 0, m.start()) + 1 if m else None


def invariant_checks(
    config: dict[str, Any],
    *,
    native: int | None = None,
    manifest: Manifest | None = None,
    vllm: VllmVersion | None = None,
) -> list[Check]:
    """What a schema cannot say. NATIVE, when known (from a manifest), sharpens the check that a
    context above native needs rope scaling. VLLM: the version the config is judged for, where
    that matters (Dual Chunk Attention); None when none is known."""
    checks: list[Check] = []
    view = ModelView(config)
    mpe = view.max_position_embeddings
    mpe_at = view.pointer("max_position_embeddings")
    rope = view.effective_rope()
    kind = rope_type(rope)
    if not _int(mpe):
        return [Check("invariant.context", "skip", "max_position_embeddings is not an integer")]

    if kind == "yarn":
        factor = rope.get("factor")
        orig = rope.get("original_max_position_embeddings")
        if _num(factor) and _int(orig) and factor >= 1 and math.isfinite(factor * orig):
            expect = factor * orig
            shown = f"{expect:.0f}" if expect == int(expect) else f"{expect:g}"
            if abs(expect - mpe) < 0.5:
                checks.append(
                    Check(
                        "invariant.yarn_length",
                        "pass",
                        f"max_position_embeddings {mpe} == factor {factor:.8g} x original {orig}",
                    )
                )
            else:
                checks.append(
                    Check(
                        "invariant.yarn_length",
                        "fail",
                        f"max_position_embeddings is {mpe} but YaRN factor {factor:.8g} x original "
                        f"{orig} = {shown}; vLLM <= 0.29 serves {shown}, >= 0.30 serves {mpe}, "
                        f"and transformers <= 4.55 recomputes the factor. Hint: {PATCH_HINT}",
                        mpe_at,
                    )
                )
        # (schema reports a missing factor/original)
    elif dca_block(config) is not None:
        pass  # dca_checks says what vLLM does with it
    else:
        limit = native if native is not None else NATIVE_QWEN3_CODER
        if mpe > limit:
            what = (
                "no rope scaling is set"
                if kind == "default"
                else f"the rope scaling is {kind!r}, not the YaRN Qwen3 is trained to extend with"
            )
            how = "unscaled" if kind == "default" else f"with {kind} scaling"
            checks.append(
                Check(
                    "invariant.context_needs_rope",
                    "fail",
                    f"max_position_embeddings is {mpe} but {what} (native "
                    f"{limit}{'' if native else ', the largest native Qwen3 context'}); positions "
                    f"past {limit} would run {how}. "
                    f"Hint: {PATCH_HINT}",
                    mpe_at,
                )
            )
        else:
            checks.append(
                Check(
                    "invariant.context_needs_rope", "pass", f"context {mpe} needs no rope scaling"
                )
            )

    style = view.rope_style
    has_theta = view.has_rope_theta()
    where = view.rope_theta_pointer
    if has_theta:
        theta = rope.get("rope_theta")
        checks.append(
            Check(
                "invariant.rope_theta",
                "pass",
                f"rope_theta {theta!r} present where the engine reads it",
            )
        )
    else:
        checks.append(
            Check(
                "invariant.rope_theta",
                "fail",
                "rope_theta is missing from the rope settings; vLLM would silently use its default "
                "base 10000 (Qwen3-Coder needs 10000000). Add rope_theta "
                + ("inside rope_parameters" if style == "rope_parameters" else "at the top level"),
                where,
            )
        )

    from qwenprep.model.families import lookup

    family = lookup(view.model_type) or lookup(view.text_model_type)
    if "head_dim" in view.text:
        checks.append(
            Check("invariant.head_dim", "pass", f"head_dim {view.text['head_dim']} given")
        )
    elif family is not None and family.derive_head_dim:
        checks.append(
            Check(
                "invariant.head_dim",
                "pass",
                f"head_dim absent: {family.title} derives it as hidden_size / "
                "num_attention_heads, as transformers and vLLM do",
            )
        )
    else:
        checks.append(
            Check(
                "invariant.head_dim",
                "fail",
                "head_dim is missing; for Qwen3-Coder it is not hidden_size / heads "
                "(96 x 128 != 6144), so engines would derive a wrong one",
                view.pointer("head_dim"),
            )
        )

    if family is not None and family.invariants is not None:
        checks.extend(family.invariants(view))
    checks.extend(dca_checks(view, vllm))
    qc = view.quantization
    if qc is not None:
        checks.extend(_quantization_checks(view, qc))
    if manifest is not None:
        if manifest.target_context == mpe:
            checks.append(
                Check(
                    "invariant.manifest",
                    "pass",
                    f"context {mpe} is what the overlay manifest intends",
                )
            )
        else:
            checks.append(
                Check(
                    "invariant.manifest",
                    "fail",
                    f"max_position_embeddings {mpe} differs from the manifest's "
                    f"target_context {manifest.target_context}",
                    mpe_at,
                )
            )
    return checks


@dataclass(frozen=True)
class VllmVersion:
    """The vLLM a config is judged for: its version and where that came from ("installed",
    "--vllm-version", "assumed")."""

    version: tuple[int, int, int]
    source: str

    def __str__(self) -> str:
        return f"vLLM {'.'.join(map(str, self.version))} ({self.source})"


def installed_vllm(python: str | None = None) -> VllmVersion | None:
    """The vLLM installed in PYTHON (or $QWENPREP_VLLM_PYTHON, or this interpreter), read from its
    distribution metadata (no import of vLLM); None when there is none."""
    from qwenprep.engines.vllm.core import discover

    try:
        info = discover(python)
    except QwenprepError:
        return None
    if info is None:
        return None
    return VllmVersion(info.version_tuple, f"installed in {info.python}")


def dca_checks(view: ModelView, vllm: VllmVersion | None = None) -> list[Check]:
    """A dual_chunk_attention_config (Qwen2.5-1M, the 2507 config_1m.json) runs only on vLLM <
    0.11 (V0 engine, qwenprep.model.families.dca): judged for VLLM, it passes below 0.11 and fails
    from 0.11 on (the config fails at load there); with no version known it is a warning that
    names both. Deleting the key alone would leave the length above native with unscaled RoPE,
    so the hint offers the overlays that are right on a current vLLM."""
    block = dca_block(view.raw)
    if block is None:
        return []
    wrong = dca_disagreement(view.raw)
    if wrong is not None:
        return [
            Check(
                "invariant.dca",
                "fail",
                f"{wrong[1]}: qwenprep cannot tell the native context from it, and an overlay "
                "built on it would run unscaled (or scale attention) from the wrong length. "
                "Hint: restore the release's config.json (qwenprep revert PATH, or download "
                "it again)",
                wrong[0],
            )
        ]
    native = dca_native(view.raw)
    mpe = view.max_position_embeddings
    at = view.pointer("dual_chunk_attention_config")
    what = (
        f"config.json carries dual_chunk_attention_config (max_position_embeddings {mpe}, "
        f"DCA over native {native})"
    )
    runs = (
        "it serves only on vLLM < 0.11, with VLLM_USE_V1=0 and "
        "VLLM_ATTENTION_BACKEND=DUAL_CHUNK_FLASH_ATTN (qwenprep serve sets both)"
    )
    hint = (
        f"Hint: qwenprep patch MODEL --context native --out DIR (DCA block dropped, "
        f"max_position_embeddings {native}), or --context 1m --yarn-on-dca (YaRN, not what "
        "the release was tuned for)"
    )
    if vllm is None:
        from qwenprep.engines.vllm.core import engine_python_problem

        problem = engine_python_problem()
        why = f" ({problem})" if problem else ""
        return [
            Check(
                "invariant.dca",
                "warn",
                f"{what}; {runs}: {DCA_WHY}. No vLLM version is known here{why}, so it is not "
                "judged: pass --vllm-version, or install vLLM beside qwenprep. " + hint,
                at,
            )
        ]
    if engine_runs_dca(vllm.version):
        return [
            Check(
                "invariant.dca",
                "pass",
                f"{what}: {vllm} still has the V0 engine and its DUAL_CHUNK_FLASH_ATTN "
                f"backend; {runs}",
                at,
            )
        ]
    return [
        Check(
            "invariant.dca",
            "fail",
            f"{what}; {vllm}: {DCA_WHY}. {runs[0].upper()}{runs[1:]}. {hint}",
            at,
        )
    ]


def _quantization_checks(view: ModelView, qc: dict[str, Any]) -> list[Check]:
    if qc.get("quant_method") != "fp8":
        return [
            Check(
                "invariant.quantization",
                "pass",
                f"quantization {qc.get('quant_method')!r} (not checked further)",
            )
        ]
    problems = []
    block = qc.get("weight_block_size")
    if block is None:
        problems.append("weight_block_size is missing (the release uses [128, 128])")
    if "activation_scheme" not in qc:
        problems.append("activation_scheme is missing")
    skip = qc.get("modules_to_not_convert") or []
    if not isinstance(skip, list) or not all(isinstance(m, str) for m in skip):
        skip = []  # the schema reports the wrong type
    layers = view.num_layers
    if skip and "lm_head" not in skip:
        problems.append("lm_head is not in modules_to_not_convert")
    if isinstance(layers, int):
        bad = [
            m
            for m in skip
            if (mm := re.match(r"model\.layers\.(\d+)\.", m)) and int(mm.group(1)) >= layers
        ]
        if bad:
            problems.append(f"modules_to_not_convert names layers beyond {layers}: {bad[:3]}")
    if problems:
        return [
            Check(
                "invariant.quantization",
                "fail",
                "quantization_config: " + "; ".join(problems),
                "$.quantization_config",
            )
        ]
    return [
        Check(
            "invariant.quantization", "pass", f"fp8 quantization_config well formed (block {block})"
        )
    ]


def validate_config_text(
    text: str,
    where: str,
    *,
    manifest: Manifest | None = None,
    vllm: VllmVersion | None = None,
) -> list[Check]:
    config = loads_located(text, where)
    if not isinstance(config, dict):
        return [Check("schema", "fail", f"{where}: top level is not a JSON object", "$")]
    checks: list[Check] = []
    problems = schema_errors(config)
    for p in problems:
        line = _line_of(text, p.top_key) if p.top_key else None
        loc = f"{where}:{line}" if line else where
        checks.append(Check("schema", "fail", f"{loc}: {p}", p.pointer))
    if not problems:
        from qwenprep.model.families import lookup

        view = ModelView(config)
        fam = lookup(view.model_type) or lookup(view.text_model_type)
        checks.append(
            Check(
                "schema",
                "pass",
                f"{where} matches the {fam.title if fam else 'Qwen3'} config schema",
            )
        )
    native = manifest.native_context if manifest is not None else None
    for c in invariant_checks(config, native=native, manifest=manifest, vllm=vllm):
        if c.status == "fail" and c.path:
            parts = c.path.removeprefix("$.").split(".")
            key = parts[1] if parts[0] == "text_config" and len(parts) > 1 else parts[0]
            line = _line_of(text, key)
            if line:
                c = Check(c.id, c.status, f"{where}:{line}: {c.message}", c.path)
        checks.append(c)
    return checks


def validate_checkpoint(path: Path, *, vllm: VllmVersion | None = None) -> list[Check]:
    """Schema + invariants of PATH/config.json (PATH may be an overlay: its manifest's intent
    is checked too), judged for VLLM where the version matters."""
    from qwenprep.model.manifest import read_manifest

    cfg = path / CONFIG
    try:
        text = read_regular_bytes(cfg).decode("utf-8")
    except FileNotFoundError:
        raise InputError(
            f"{cfg}: missing.", hint="pass a checkpoint directory with a config.json"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{cfg}: cannot read ({e}).") from None
    from qwenprep.model.lifecycle import require_live

    manifest = read_manifest(path)
    if vllm is None and '"dual_chunk_attention_config"' in text:
        vllm = installed_vllm()  # the one config whose validity depends on the engine
    checks = validate_config_text(text, str(cfg), manifest=manifest, vllm=vllm)
    if manifest is not None and '"dual_chunk_attention_config"' in text:
        checks += dca_source_checks(loads_located(text, str(cfg)), manifest)
    if manifest is not None:
        stale = require_live(path)  # a dangling overlay raises: exit 3, with the rebuild
        checks += [Check("overlay.fresh", "warn", w, str(path)) for w in stale] or [
            Check("overlay.fresh", "pass", "the overlay's source is there and unchanged")
        ]
    return checks


def dca_source_checks(config: Any, manifest: Manifest) -> list[Check]:
    """An overlay that carries a DCA block (the vLLM < 0.11 overlay of a DCA release) is its
    source's config.json (Qwen2.5-1M) or config_1m.json, which is config.json but for the DCA
    block and the length (families.dca.release_1m_differences): anything else (another
    rope_theta, another layer count) is another model's settings over the release's weights.
    Nothing when the source's config.json cannot be read (overlay.fresh says why)."""
    from qwenprep.model.families.dca import release_1m_differences

    path = manifest.source.path
    if not isinstance(config, dict) or dca_block(config) is None or not isinstance(path, str):
        return []
    where = Path(path) / CONFIG
    try:
        source = loads_located(read_regular_bytes(where).decode("utf-8"), str(where))
    except (OSError, UnicodeDecodeError, InputError):
        return []
    if not isinstance(source, dict):
        return []
    found = release_1m_differences(source, config, ("the source", "the overlay"))
    if not found:
        return [
            Check(
                "invariant.dca_source",
                "pass",
                f"the DCA config is the source's {CONFIG} but for the DCA block and the length",
            )
        ]
    return [
        Check(
            "invariant.dca_source",
            "fail",
            f"the overlay's DCA config differs from the source's {where} in {len(found)} key(s) "
            f"besides dual_chunk_attention_config and max_position_embeddings: "
            f"{'; '.join(found[:4])}{' ...' if len(found) > 4 else ''}. Hint: rebuild it with "
            "qwenprep patch SOURCE --context 1m --vllm-version 0.10 --out DIR --force from the "
            "release's own files",
            "$",
        )
    ]
