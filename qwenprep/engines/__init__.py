"""The serving engines qwenprep drives (vLLM and SGLang): how each is found, asked (in a
subprocess, through the engine's own parser and config code), planned for and started, and the
engine data qwenprep keeps for when the engine itself cannot be asked."""
