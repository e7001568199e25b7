"""What `qwenprep patch` asks before patching a Dual Chunk Attention release: which vLLM the
overlay is for (named, installed, or the newest known) and whether that vLLM still runs DCA.
Kept out of qwenprep.model.families.dca, which declares the family's facts and imports no engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qwenprep.model.families.dca import (
    CONFIG_1M,
    engine_runs_dca,
    is_dca_release,
    release_1m_config,
)


def request_for(path: Path, req: Any, *, yarn_on_dca: bool, vllm_version: str | None) -> Any:
    """REQ (contexts.ContextRequest) with what a DCA release's patch needs: the vLLM version it
    is for (named, else the installed one, else the newest known), whether that vLLM runs DCA,
    and the release's config_1m.json. Other checkpoints: REQ with yarn_on_dca only."""
    from dataclasses import replace

    from qwenprep.errors import InputError

    if not is_dca_release(path):
        return replace(req, yarn_on_dca=yarn_on_dca)
    from qwenprep.engines.vllm.core import parse_version
    from qwenprep.planning.capacity import resolve_rule

    rule = resolve_rule(vllm_version)
    version = parse_version(rule.version)
    release_1m = None
    p1m = release_1m_config(path)
    if p1m is not None:
        from qwenprep.util.jsonio import load_json_file

        release_1m = load_json_file(p1m, what=CONFIG_1M)
        if not isinstance(release_1m, dict):
            raise InputError(f"{p1m}: top level is not a JSON object.", path=str(p1m))
    return replace(
        req,
        yarn_on_dca=yarn_on_dca,
        vllm=rule.version,
        dca_engine=engine_runs_dca(version),
        release_1m=release_1m,
    )
