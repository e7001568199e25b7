"""GPU inventory: NVML (nvidia-ml-py) when importable, else ``nvidia-smi``, else the flags.

Nothing here needs a GPU to import; each source is tried lazily and its failure is recorded in
``Inventory.notes`` so people can see why a source was not used.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from qwenprep.errors import InputError, UsageError
from qwenprep.util.sizes import MiB

Source = Literal["nvml", "nvidia-smi", "flags", "none"]
SMI_QUERY = "--query-gpu=name,memory.total,memory.free"
SMI_FORMAT = "--format=csv,noheader,nounits"


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    memory_total: int  # bytes
    memory_free: int | None  # bytes; None when unknown (flags)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # index, name, memory_total, memory_free


@dataclass(frozen=True)
class Inventory:
    source: Source
    gpus: tuple[GPU, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def count(self) -> int:
        return len(self.gpus)

    @property
    def min_total(self) -> int | None:
        return min((g.memory_total for g in self.gpus), default=None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "count": self.count,
            "gpus": [g.to_dict() for g in self.gpus],
            "notes": list(self.notes),
        }


def from_nvml() -> tuple[GPU, ...]:
    """Raises ImportError when nvidia-ml-py is missing, RuntimeError when NVML cannot start."""
    import pynvml  # nvidia-ml-py

    try:
        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - NVMLError and friends
        raise RuntimeError(f"NVML did not start ({e})") from None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            if isinstance(name, bytes):
                name = name.decode()
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            out.append(GPU(i, str(name), int(mem.total), int(mem.free)))
        return tuple(out)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def parse_smi_csv(text: str) -> tuple[GPU, ...]:
    """Parse ``nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits``
    (MiB values, one GPU a line)."""
    gpus = []
    rows = (r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r))
    for i, row in enumerate(rows):
        if len(row) != 3:
            raise InputError(
                f"nvidia-smi line {i + 1}: expected 3 fields (name, memory.total, "
                f"memory.free), got {row!r}."
            )
        name, total, free = (c.strip() for c in row)
        try:
            t, f = int(float(total) * MiB), int(float(free) * MiB)
        except ValueError:
            raise InputError(
                f"nvidia-smi line {i + 1}: memory fields {total!r}, {free!r} are "
                "not numbers in MiB."
            ) from None
        gpus.append(GPU(i, name, t, f))
    return tuple(gpus)


def from_nvidia_smi(exe: str | None = None, *, timeout: float = 20.0) -> tuple[GPU, ...]:
    """Raises FileNotFoundError when nvidia-smi is not on PATH, RuntimeError when it fails."""
    exe = exe or shutil.which("nvidia-smi")
    if not exe:
        raise FileNotFoundError("nvidia-smi is not on PATH")
    try:
        res = subprocess.run(
            [exe, SMI_QUERY, SMI_FORMAT],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=os.environ.copy(),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"nvidia-smi did not run ({e})") from None
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise RuntimeError(f"nvidia-smi exited {res.returncode}" + (f": {msg[0]}" if msg else ""))
    return parse_smi_csv(res.stdout)


def check_flags(count: int, memory: int) -> None:
    """--gpus and --gpu-memory as a deploy target: a count by its rule (qwenprep.request:
    at most MAX_GPUS) and a positive size. Nothing is listed per GPU."""
    from qwenprep.request import MAX_GPUS, whole

    whole(count, "--gpus", high=MAX_GPUS)
    if memory <= 0:
        raise UsageError("--gpu-memory must be positive.")


def from_flags(
    count: int, memory: int, name: str = "(from --gpus/--gpu-memory)"
) -> tuple[GPU, ...]:
    """The flags' GPUs one by one, for a report that lists them (check's): at most MAX_GPUS."""
    check_flags(count, memory)
    return tuple(GPU(i, name, memory, None) for i in range(count))


def inventory(*, gpus: int | None = None, gpu_memory: int | None = None) -> Inventory:
    """The flags when both are given (they say what the deploy target has, which need not be
    this machine); else NVML; else nvidia-smi; else none."""
    if (gpus is None) != (gpu_memory is None):
        raise UsageError(
            "--gpus and --gpu-memory go together.",
            hint="e.g. --gpus 8 --gpu H200, or --gpus 8 --gpu-memory 143771MiB",
        )
    if gpus is not None and gpu_memory is not None:
        return Inventory("flags", from_flags(gpus, gpu_memory))
    notes: list[str] = []
    try:
        found = from_nvml()
        if found:
            return Inventory("nvml", found, tuple(notes))
        notes.append("NVML: no GPUs")
    except ImportError:
        notes.append("NVML: nvidia-ml-py is not installed")
    except RuntimeError as e:
        notes.append(f"NVML: {e}")
    try:
        found = from_nvidia_smi()
        if found:
            return Inventory("nvidia-smi", found, tuple(notes))
        notes.append("nvidia-smi: no GPUs listed")
    except FileNotFoundError as e:
        notes.append(str(e))
    except (RuntimeError, InputError) as e:
        notes.append(f"nvidia-smi: {e}")
    return Inventory("none", (), tuple(notes))


def on_this_node() -> Inventory | None:
    """The GPUs NVML or nvidia-smi see here, for serve (its TP where nothing else sets it, and
    the note when one node cannot hold the plan); None when there are none or asking failed
    (this never fails a plan)."""
    try:
        inv = inventory()
    except Exception:  # noqa: BLE001 - a broken driver must not stop a plan
        return None
    return inv if inv.count else None
