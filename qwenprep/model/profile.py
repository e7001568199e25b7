"""A model's serve profile: how `qwenprep serve` launches it (TP and EP where the model needs
them, tool and reasoning parsers, the served name, the family's launch flags), read from the
family table (qwenprep.model.families) and the names the model is known by. Engine-neutral:
both engines and the layout rule (qwenprep.engines.parallel.choose_layout) read it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenprep.errors import InputError
from qwenprep.model.checkpoint import CONFIG

if TYPE_CHECKING:
    from qwenprep.model.manifest import Manifest


@dataclass(frozen=True)
class Profile:
    name: str  # "qwen3-coder-480b" | "qwen3-coder" | "qwen3"
    tp: int | None  # None: the layout rule's (qwenprep.engines.parallel.choose_layout)
    ep: bool | None
    tool_parser: str | None
    served_model_name: str
    reasoning_parser: str | None = None
    flags: tuple[str, ...] = ()  # the family's launch flags (qwenprep.model.families)
    env: tuple[tuple[str, str], ...] = ()
    before_vllm: tuple[int, int, int] | None = None  # serve refuses this vLLM and newer
    unsupported_why: str = ""
    flags_why: str = ""  # why it sets FLAGS (engine.profile_flags: when one is undone)


def name_candidates(path: Path, manifest: Manifest | None, repo_id: str | None) -> list[str]:
    names = []
    src = manifest.source if manifest is not None else None
    for rid in (src.repo_id if src else None, repo_id):
        if rid:
            names.append(str(rid).split("@")[0].rstrip("/").split("/")[-1])
    if src and src.path:
        names.append(Path(str(src.path)).name)
    names.append(path.name)
    return [n for n in names if n]


def model_profile(
    path: Path, config: dict[str, Any], manifest: Manifest | None, repo_id: str | None = None
) -> Profile:
    """The family's serve profile for this model (qwenprep.model.families): TP, EP, parsers,
    name."""
    from qwenprep.model.families import lookup
    from qwenprep.model.view import ModelView

    names = name_candidates(path, manifest, repo_id)
    view = ModelView(config)
    family = lookup(view.model_type) or lookup(view.text_model_type)
    if family is None:
        return Profile("default", None, None, None, names[0])
    p = family.profile_for(view, names)
    return Profile(
        p.name,
        p.tp,
        p.ep,
        p.tool_parser,
        p.served_model_name or names[0],
        p.reasoning_parser,
        p.flags,
        p.env,
        p.before_vllm,
        p.unsupported_why,
        p.flags_why,
    )


def profile_at(model: str) -> Profile | None:
    """The serve profile of MODEL (a path, an overlay or a downloaded Hub repo), for the layout
    rule (qwenprep.engines.parallel.choose_layout) outside serve; None for a Hub repo not
    downloaded, which has no profile to read yet."""
    from qwenprep.model.checkpoint import resolve_model
    from qwenprep.model.manifest import read_manifest
    from qwenprep.util.jsonio import load_json_file

    try:
        c = resolve_model(model)
        cfg = load_json_file(c.path / CONFIG, what="config.json")
        if not isinstance(cfg, dict):
            return None
        return model_profile(c.path, cfg, read_manifest(c.path), c.repo_id)
    except (InputError, OSError):
        return None
