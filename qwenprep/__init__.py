"""qwenprep: prepare the Qwen line (Qwen3-Coder, Qwen3-Next, Qwen3.5/3.6, the 2507 and 2.5-1M
releases) for long-context serving on vLLM and SGLang: locate, verify, patch into an overlay,
validate, plan, check, serve with proof, revert.

The public API (each returns what the command's --json prints; see qwenprep.api):
patch, validate, verify, plan, check, revert, serve_plan. Importing qwenprep loads none of
them until one is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qwenprep._version import __version__

__all__ = ["__version__", "check", "patch", "plan", "revert", "serve_plan", "validate", "verify"]

if TYPE_CHECKING:
    from qwenprep.api import check, patch, plan, revert, serve_plan, validate, verify


def __getattr__(name: str) -> Any:
    """The API functions, imported from qwenprep.api on first use (keeps `import qwenprep`
    cheap)."""
    if name in __all__ and name != "__version__":
        # no module of qwenprep imports this package itself (the version is in _version), so
        # this edge closes no cycle
        from qwenprep import api

        return getattr(api, name)
    raise AttributeError(f"module 'qwenprep' has no attribute {name!r}")
