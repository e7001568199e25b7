"""One typed view over a config.json that every module reads through.

It unwraps ``text_config`` (vision-language releases keep everything textual there), finds the
rope block in either style (``rope_scaling`` + a top-level ``rope_theta``, or transformers 5's
``rope_parameters`` with ``rope_theta`` inside), reads the aliases transformers writes
(``num_experts``/``num_local_experts``, ``torch_dtype``/``dtype``), and says where a patch must
write. It never mutates the config it wraps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from qwenprep.errors import InputError

if TYPE_CHECKING:
    from qwenprep.model.families import Family

RopeStyle = Literal["rope_scaling", "rope_parameters"]

# transformers' spellings of one setting: the first is qwenprep's name for it. transformers 5
# writes the second on save (docs/facts.md: Qwen3MoeConfig.attribute_map maps num_experts to
# num_local_experts; torch_dtype became dtype).
ALIASES: dict[str, tuple[str, ...]] = {
    "num_experts": ("num_experts", "num_local_experts"),
    "torch_dtype": ("torch_dtype", "dtype"),
}


@dataclass(frozen=True)
class ModelView:
    """A read-only view of a config.json dict (see the module docstring)."""

    raw: dict[str, Any]

    @classmethod
    def of(cls, config: Any, *, where: str = "config.json") -> ModelView:
        if not isinstance(config, dict):
            raise InputError(f"{where}: top level is not a JSON object.")
        return cls(config)

    # ---------------------------------------------------------------- where things live
    @property
    def nested(self) -> bool:
        """Everything textual lives under text_config (Qwen3.5/3.6 and other VL releases)."""
        return isinstance(self.raw.get("text_config"), dict)

    @property
    def text(self) -> dict[str, Any]:
        tc = self.raw.get("text_config")
        return tc if isinstance(tc, dict) else self.raw

    @property
    def prefix(self) -> str:
        """The JSON path of the text config: "$" or "$.text_config"."""
        return "$.text_config" if self.nested else "$"

    def pointer(self, key: str) -> str:
        return f"{self.prefix}.{key}"

    @property
    def model_type(self) -> Any:
        return self.raw.get("model_type")

    @property
    def text_model_type(self) -> Any:
        return self.text.get("model_type", self.model_type)

    @property
    def family_name(self) -> str | None:
        """The registered family's name, or None when the model type is not known."""
        from qwenprep.model.families import lookup

        f = lookup(self.model_type) or lookup(self.text_model_type)
        return f.name if f is not None else None

    @property
    def family(self) -> Family:
        from qwenprep.model.families import family_of

        return family_of(self)

    # ---------------------------------------------------------------- values
    def key_of(self, name: str) -> str:
        """The spelling NAME has in this config (the first alias present; NAME when none)."""
        for k in ALIASES.get(name, (name,)):
            if self.text.get(k) is not None:
                return k
        return name

    def get(self, name: str, default: Any = None) -> Any:
        """A text-config value by qwenprep's name, whichever alias the file uses."""
        value = self.text.get(self.key_of(name))
        return default if value is None else value

    def has(self, name: str) -> bool:
        return any(k in self.text for k in ALIASES.get(name, (name,)))

    @property
    def max_position_embeddings(self) -> Any:
        return self.text.get("max_position_embeddings")

    @property
    def num_layers(self) -> Any:
        return self.text.get("num_hidden_layers")

    @property
    def quantization(self) -> dict[str, Any] | None:
        """quantization_config, where either the whole file or its text part carries it."""
        qc = self.raw.get("quantization_config", self.text.get("quantization_config"))
        return qc if isinstance(qc, dict) else None

    # ---------------------------------------------------------------- rope
    @property
    def rope_style(self) -> RopeStyle:
        return self.rope_block[0]

    @property
    def rope_block(self) -> tuple[RopeStyle, dict[str, Any] | None]:
        """Which key carries the rope settings; if both exist, rope_scaling wins (as in
        transformers)."""
        t = self.text
        if isinstance(t.get("rope_scaling"), dict):
            return "rope_scaling", t["rope_scaling"]
        if isinstance(t.get("rope_parameters"), dict):
            return "rope_parameters", t["rope_parameters"]
        if "rope_parameters" in t and "rope_scaling" not in t:
            return "rope_parameters", None
        return "rope_scaling", None

    @property
    def rope_type(self) -> str:
        return rope_type_of(self.rope_block[1])

    def effective_rope(self) -> dict[str, Any]:
        """The rope dict the engine uses, rope_theta filled from the top level of the text
        config where the style keeps it there (transformers 4); inside for transformers 5."""
        _, block = self.rope_block
        out: dict[str, Any] = dict(block or {})
        out.setdefault("rope_type", rope_type_of(block))
        if "rope_theta" not in out and "rope_theta" in self.text:
            out["rope_theta"] = self.text["rope_theta"]
        return out

    @property
    def rope_theta_pointer(self) -> str:
        if self.rope_style == "rope_parameters":
            return self.pointer("rope_parameters.rope_theta")
        return self.pointer("rope_theta")

    def has_rope_theta(self) -> bool:
        """rope_theta sits where the engine reads it for this style."""
        style, block = self.rope_block
        if style == "rope_parameters":
            return isinstance(block, dict) and "rope_theta" in block
        return "rope_theta" in self.text

    # ---------------------------------------------------------------- writing
    def with_text(self, text: dict[str, Any]) -> dict[str, Any]:
        """A new whole config whose text part is TEXT (key order kept)."""
        if not self.nested:
            return text
        out = dict(self.raw)
        out["text_config"] = text
        return out


def rope_type_of(block: dict[str, Any] | None) -> str:
    if not block:
        return "default"
    return str(block.get("rope_type", block.get("type", "default")))


def deep_merge(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """BASE updated by UPDATES, dict values merged key by key at every depth (a copy): how vLLM
    0.32 applies a nested --hf-overrides such as {"text_config": {"rope_parameters": {...}}}
    (ModelConfig._update_nested keeps the keys the override does not name)."""
    out = dict(base)
    for k, v in updates.items():
        old = out.get(k)
        out[k] = deep_merge(old, v) if isinstance(v, dict) and isinstance(old, dict) else v
    return out
