"""qwenprep: prepare Qwen3-Coder checkpoints for long-context serving on vLLM.

The public API (each returns what the command's --json prints; see qwenprep.api):
patch, validate, verify, plan, check, revert, serve_plan. Importing qwenprep loads none of
them until one is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "check", "patch", "plan", "revert", "serve_plan", "validate", "verify"]

if TYPE_CHECKING:
    from qwenprep.api import check, patch, plan, revert, serve_plan, validate, verify


def __getattr__(name: str) -> Any:
    """The API functions, imported from qwenprep.api on first use (keeps `import qwenprep`
    cheap)."""
    if name in __all__ and name != "__version__":
        # By name, not an import statement: qwenprep.api's modules import this package for
        # __version__ only (defined above), so this is no cycle at run time.
        import importlib

        return getattr(importlib.import_module("qwenprep.api"), name)
    raise AttributeError(f"module 'qwenprep' has no attribute {name!r}")
