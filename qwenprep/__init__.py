"""qwenprep: prepare Qwen3-Coder checkpoints for long-context serving on vLLM."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
