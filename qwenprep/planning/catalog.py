"""GPU catalog for time estimates: dense peak throughput, HBM bandwidth and memory per GPU.

Every figure is the dense one (no structured sparsity; vendors' headline tensor figures are
often the 2:4-sparse ones, twice these) and names the datasheet it comes from; docs/time.md
lists the same table with its sources. Memory is what the driver reports (NVML's
nvmlDeviceGetMemoryInfo total, nvidia-smi's memory.total, rocm-smi's VRAM Total Memory), in
bytes, with where that figure was read: a datasheet's "GB" is neither GB nor GiB exactly (an
H200's "141 GB" is 140.40 GiB = 150.75 GB as NVML reports it). A card with no public driver
figure on record keeps its datasheet "GB" read as GiB and says so (memory_source); pass
--gpu-memory with what nvidia-smi prints there.

A GPU found by NVML / nvidia-smi is looked up by its reported name; a name not in the table is
unknown and never guessed (an "H100 NVL" is neither the SXM nor the PCIe card).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from qwenprep.errors import UsageError
from qwenprep.util.sizes import GiB, MiB


@dataclass(frozen=True)
class GPUSpec:
    name: str
    bf16_tflops: float  # dense BF16 tensor-core peak
    fp8_tflops: float | None  # dense FP8 tensor-core peak; None: no FP8 tensor cores
    hbm_tb_s: float  # memory bandwidth, TB/s (10^12 bytes/s)
    memory_bytes: int  # per GPU, as the driver reports it (see the module doc)
    source: str
    memory_source: str  # where memory_bytes was read
    aliases: tuple[str, ...] = ()
    # the GPU's NVLink / Infinity Fabric bandwidth to its peers, GB/s, both directions together
    # as the datasheets print it (one direction is half); None: PCIe only
    nvlink_gb_s: float | None = None
    # NVSwitch with in-switch reduction (NVLink SHARP, NCCL's NVLS; TensorRT-LLM's MultiShot):
    # an all-reduce moves each GPU's tensor about once each way instead of a ring's twice
    nvlink_sharp: bool = False
    # the high end of the prefill efficiency band on this GPU, where measurements show its
    # kernels run closer to peak than EFFICIENCY_BAND's 0.75 (docs/time.md); None: 0.75
    efficiency_high: float | None = None

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GiB

    @property
    def memory_note(self) -> str:
        """'GPU memory 140.40 GiB per GPU from the catalog (H200, ...)' for plan and check."""
        how = (
            f"the datasheet's {self.memory_gib:g} GB read as GiB: no driver figure on record"
            if self.memory_source.startswith("no driver")
            else "as its driver reports it"
        )
        return (
            f"GPU memory {self.memory_gib:.2f} GiB per GPU from the catalog ({self.name}, {how}; "
            "pass --gpu-memory for another figure)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bf16_tflops": self.bf16_tflops,
            "fp8_tflops": self.fp8_tflops,
            "hbm_tb_s": self.hbm_tb_s,
            "memory_bytes": self.memory_bytes,
            "source": self.source,
            "nvlink_gb_s": self.nvlink_gb_s,
            "memory_source": self.memory_source,
        }


_NV_SPARSE = "; the sheet's tensor figures are with sparsity, halved here"


def _smi(mib: int, where: str) -> tuple[int, str]:
    """(bytes, source) for a memory.total that nvidia-smi printed in MiB."""
    return mib * MiB, f"{mib:,} MiB as nvidia-smi / NVML report it ({where})"


def _sheet(gb: int) -> tuple[int, str]:
    """(bytes, source) for a card with no public driver figure on record: the datasheet's GB
    read as GiB, an upper bound (every reported NVIDIA HBM figure is at or below it)."""
    return gb * GiB, (
        f"no driver-reported figure on record: the datasheet's {gb} GB read as GiB, an upper bound"
    )


_H100_SXM = _smi(81559, "'NVIDIA H100 80GB HBM3', github.com/NVIDIA/nccl/issues/1264")
_H200 = (
    150_754_820_096,
    "150,754,820,096 bytes = 143,771 MiB as NVML reports it on an H200 (nvmlDeviceGetMemoryInfo)",
)
_B200 = _smi(183359, "'NVIDIA B200', github.com/NVIDIA/TensorRT-LLM/issues/10278")
_L40S = _smi(46068, "'NVIDIA L40S', github.com/akash-network/provider-configs/pull/99")
_A100 = _smi(81920, "'A100 80GB', github.com/modal-labs/modal-client/pull/2797")
_MI300X = (
    206_141_652_992,
    "206,141,652,992 bytes as rocm-smi reports VRAM Total Memory "
    "(github.com/ROCm/legacy-rocm-build/issues/4750; rocminfo's pool 201,310,208 KB agrees)",
)

CATALOG: tuple[GPUSpec, ...] = (
    GPUSpec(
        "H100 SXM",
        989.0,
        1979.0,
        3.35,
        _H100_SXM[0],
        "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column" + _NV_SPARSE,
        _H100_SXM[1],
        ("h100 sxm", "h100 sxm5", "h100 sxm5 80gb", "h100 80gb hbm3"),
        nvlink_gb_s=900.0,
        nvlink_sharp=True,
    ),
    GPUSpec(
        "H100 PCIe",
        756.0,
        1513.0,
        2.0,
        _sheet(80)[0],
        "NVIDIA H100 Tensor Core GPU datasheet, H100 PCIe column" + _NV_SPARSE,
        _sheet(80)[1],
        ("h100 pcie", "h100 pcie 80gb"),
    ),
    GPUSpec(
        "H200",
        989.0,
        1979.0,
        4.8,
        _H200[0],
        "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column" + _NV_SPARSE,
        _H200[1],
        ("h200", "h200 sxm", "h200 141gb hbm3e"),
        nvlink_gb_s=900.0,
        nvlink_sharp=True,
    ),
    GPUSpec(
        "H20",
        148.0,
        296.0,
        4.0,
        _sheet(96)[0],
        "NVIDIA HGX H20 product specification (dense; docs/time.md, The GPU catalog)",
        _sheet(96)[1],
        ("h20",),
        nvlink_gb_s=900.0,
        nvlink_sharp=True,
        # measured: 0.86 and 0.91 of the dense peak (docs/time.md, Published errors); the H20 has
        # 27 bytes/s of HBM per 1,000 FLOP/s of BF16, eight times an H100's, so kernels stay fed
        efficiency_high=0.95,
    ),
    GPUSpec(
        "B200",
        2250.0,
        4500.0,
        8.0,
        _B200[0],
        "NVIDIA DGX B200 / HGX B200 datasheet, 8-GPU totals divided by 8" + _NV_SPARSE,
        _B200[1],
        ("b200", "b200 sxm"),
        nvlink_gb_s=1800.0,
        nvlink_sharp=True,
    ),
    GPUSpec(
        "GB200",
        2500.0,
        5000.0,
        8.0,
        _sheet(186)[0],
        "NVIDIA GB200 NVL72 datasheet, rack totals divided by its 72 GPUs" + _NV_SPARSE,
        _sheet(186)[1],
        ("gb200",),
        nvlink_gb_s=1800.0,
        nvlink_sharp=True,
    ),
    GPUSpec(
        "MI300X",
        1307.4,
        2614.9,
        5.3,
        _MI300X[0],
        "AMD Instinct MI300X accelerator data sheet (figures without sparsity)",
        _MI300X[1],
        ("mi300x",),
        nvlink_gb_s=896.0,  # 7 Infinity Fabric links x 128 GB/s
    ),
    GPUSpec(
        "MI325X",
        1307.4,
        2614.9,
        6.0,
        _sheet(256)[0],
        "AMD Instinct MI325X accelerator data sheet (figures without sparsity)",
        _sheet(256)[1],
        ("mi325x",),
        nvlink_gb_s=896.0,
    ),
    GPUSpec(
        "GH200 144GB",
        989.0,
        1979.0,
        4.9,
        _sheet(144)[0],
        "NVIDIA GH200 Grace Hopper Superchip datasheet, the 144 GB HBM3e version (its Hopper GPU "
        "has the H100 SXM's tensor cores)" + _NV_SPARSE,
        _sheet(144)[1],
        ("gh200 144gb", "gh200 144g hbm3e", "gh200 144gb hbm3e"),
        nvlink_gb_s=900.0,
        nvlink_sharp=True,
    ),
    GPUSpec(
        "L40S",
        362.05,
        733.0,
        0.864,
        _L40S[0],
        "NVIDIA L40S GPU datasheet" + _NV_SPARSE,
        _L40S[1],
        ("l40s",),
    ),
    GPUSpec(
        "A100 80GB SXM",
        312.0,
        None,
        2.0,
        _A100[0],
        "NVIDIA A100 Tensor Core GPU datasheet, A100 80GB SXM column (no FP8 tensor cores; "
        "2,039 GB/s, 2.0 TB/s as docs/time.md rounds it)" + _NV_SPARSE,
        _A100[1],
        ("a100 80gb sxm", "a100 sxm4 80gb", "a100 80g", "a100 80g sxm"),
        nvlink_gb_s=600.0,
    ),
)

_DROP = {"nvidia", "amd", "instinct", "tensor", "core", "gpu", "accelerator"}


def normalize(name: str) -> str:
    """Lower case, punctuation to spaces, vendor words dropped: 'NVIDIA A100-SXM4-80GB' ->
    'a100 sxm4 80gb'."""
    words = re.sub(r"[^0-9a-z]+", " ", name.lower()).split()
    return " ".join(w for w in words if w not in _DROP)


def _key(name: str) -> str:
    """normalize() with the spaces gone too: 'H100SXM', 'h100 sxm' and 'H100-SXM' read alike."""
    return normalize(name).replace(" ", "")


# The names people type for a card sold in more than one form: the form meant is named in a
# note wherever it is used (plan, check), so the choice is never silent.
_SHORT = {
    "h100": "H100 SXM",
    "h10080gb": "H100 SXM",
    "a100": "A100 80GB SXM",
    "a10080gb": "A100 80GB SXM",
}


def lookup(name: str) -> GPUSpec | None:
    """The catalog entry whose name or alias equals NAME after normalize(), spaces ignored;
    None otherwise (no partial or fuzzy matching: an unknown GPU stays unknown). This is how a
    name NVML / nvidia-smi reports is read ('NVIDIA H100 80GB HBM3', 'NVIDIA A100-SXM4-80GB')."""
    key = _key(name)
    if not key:
        return None
    for spec in CATALOG:
        if key == _key(spec.name) or key in {_key(a) for a in spec.aliases}:
            return spec
    return None


def known_names() -> list[str]:
    return [s.name for s in CATALOG]


def short_name_note(gpu: str) -> str | None:
    """The note for a short name (H100, A100) that picks one form of the card; None else."""
    name = None if lookup(gpu) is not None else _SHORT.get(_key(gpu))
    if name is None:
        return None
    others = [s.name for s in CATALOG if s.name != name and _key(s.name).startswith(_key(gpu))]
    also = f" (the catalog also has {', '.join(others)}: name it to use it)" if others else ""
    return f"--gpu {gpu!r} read as {name}{also}"


def require(gpu: str) -> GPUSpec:
    """The catalog entry for --gpu NAME: a catalog name or alias, nvidia-smi's product name,
    or a short name (H100 -> H100 SXM, A100 -> A100 80GB SXM; short_name_note says so). A
    NAME that begins several entries' names is a UsageError listing them; an unknown NAME is a
    UsageError (exit 2) listing the known ones."""
    spec = lookup(gpu)
    if spec is None and _key(gpu) in _SHORT:
        spec = next(s for s in CATALOG if s.name == _SHORT[_key(gpu)])
    if spec is not None:
        return spec
    key = _key(gpu)
    choices = [s.name for s in CATALOG if key and _key(s.name).startswith(key)]
    if len(choices) > 1:
        raise UsageError(
            f"--gpu {gpu!r} is ambiguous: it could be {', '.join(choices)}.",
            hint=f'name one, e.g. --gpu "{choices[0]}"',
        )
    raise UsageError(
        f"--gpu {gpu!r} is not in the GPU catalog; its peaks are unknown and are not guessed.",
        hint="one of: "
        + ", ".join(known_names())
        + " (or leave --gpu out: the time estimates are then left out)",
    )


def gpu_memory_for(
    gpu: str | None,
    *,
    gpu_memory: str | None,
    kv_memory: str | None,
    gpus: int | None = None,
) -> tuple[GPUSpec | None, str | None, list[str]]:
    """``check --gpu NAME``: (catalog entry, --gpu-memory to use, notes). The catalog's memory
    is used only when neither --gpu-memory nor --kv-memory is given, and then --gpus must say
    how many: the same UsageError as ``plan --gpu NAME`` without --gpus (named_gpu)."""
    if gpu is None:
        return None, gpu_memory, []
    spec = require(gpu)
    notes = [n for n in (short_name_note(gpu),) if n]
    if gpu_memory is not None or kv_memory is not None:
        return spec, gpu_memory, notes
    if gpus is None:
        raise UsageError(
            "--gpu NAME needs --gpus N: how many of them.",
            hint=f"qwenprep check MODEL --gpu {spec.name.replace(' ', '')} --gpus 8",
        )
    return spec, f"{spec.memory_bytes}B", [*notes, spec.memory_note]


def named_gpu(
    gpu: str | None,
    *,
    gpu_memory: str | None,
    kv_memory: str | None,
    gpus: int | None,
    tp: int | None,
    pp: int,
) -> tuple[GPUSpec | None, str | None, int | None, list[str]]:
    """``plan --gpu NAME``: (catalog entry, --gpu-memory to use, --gpus to use, notes). Without
    --gpu-memory / --kv-memory the catalog's memory is used; without --gpus, TP x PP of them.
    An unknown NAME is a UsageError (exit 2) listing the known ones."""
    if gpu is None:
        return None, gpu_memory, gpus, []
    spec = require(gpu)
    notes = [n for n in (short_name_note(gpu),) if n]
    if gpu_memory is None and kv_memory is None:
        gpu_memory = f"{spec.memory_bytes}B"
        notes.append(spec.memory_note)
    if gpus is None and kv_memory is None:
        if tp is None:
            raise UsageError(
                "--gpu NAME needs --gpus N (or --tp N): how many of them.",
                hint=f"qwenprep plan MODEL --gpu {spec.name.replace(' ', '')} --gpus 8",
            )
        gpus = tp * pp
    return spec, gpu_memory, gpus, notes


def detected_gpu(inv: Any) -> tuple[GPUSpec | None, str, str | None]:
    """(catalog entry or None, the reported name(s), a note when unknown) for GPUs found by
    NVML / nvidia-smi (qwenprep.planning.gpus.Inventory). Mixed models are not guessed either."""
    names = sorted({g.name for g in inv.gpus})
    reported = " + ".join(names)
    spec = lookup(names[0]) if len(names) == 1 else None
    if spec is not None:
        return spec, reported, None
    return (
        None,
        reported,
        (
            f"GPU {reported!r} (found by {inv.source}) is not in the catalog: "
            "time estimates are left out; name a catalog GPU with --gpu to get "
            "them"
        ),
    )


# The link between nodes, per GPU and direction: one 400 Gb/s NIC per GPU (NVIDIA ConnectX-7,
# InfiniBand NDR or 400 GbE, as the HGX H100 / H200 / H20 reference designs pair them) = 50 GB/s.
# Pipeline stages on different nodes pass their activations over it (qwenprep.planning.timecost).
INTER_NODE_GB_S = 50.0
INTER_NODE_SOURCE = "NVIDIA ConnectX-7 datasheet: 400 Gb/s per port, one NIC per GPU in HGX nodes"
GPUS_PER_NODE = 8  # an HGX / MI300X baseboard; an NVL32 / NVL72 rack is one NVLink domain


def peer_gb_s(gpu: GPUSpec, across_nodes: bool) -> float:
    """GB/s one GPU sends to a peer in one direction: the inter-node NIC across nodes, half the
    datasheet's (two-way) NVLink figure inside a node, PCIe Gen4 x16's 32 GB/s without NVLink."""
    if across_nodes:
        return INTER_NODE_GB_S
    return gpu.nvlink_gb_s / 2 if gpu.nvlink_gb_s else 32.0
