"""vLLM 0.34's extensible KV cache, for plans and checks: how much memory the KV cache gets when
vLLM sizes it after warmup (the default on CUDA and ROCm from 0.34.0).

What vLLM 0.34.0 does (read in its wheel):
- ``VllmConfig._resolve_extensible_kv_cache`` (vllm/config/vllm.py) turns
  ``CacheConfig.enable_extensible_kv_cache`` on where it is left unset, except off CUDA/ROCm and
  when ``--kv-cache-memory-bytes``, ``--num-gpu-blocks-override``, elastic EP or some KV
  connectors decide the size instead.
- ``CacheConfig.resolved_gpu_memory_utilization`` (vllm/config/cache.py) is then 1.0 unless
  the user gave ``--gpu-memory-utilization`` (0.92 with the extensible cache off);
  ``request_memory`` (vllm/v1/worker/utils.py) requests ``ceil(total x utilisation)``.
- The profile run sizes a *tentative* cache as before (``Worker.determine_available_memory``,
  vllm/v1/worker/gpu_worker.py: requested - non-KV memory - CUDA-graph estimate, printed as
  "Available KV cache memory"); it only reserves address space (the capacity in blocks).
- After warmup and CUDA-graph capture the final size is measured
  (``measure_kv_cache_bytes``, vllm/v1/worker/extensible_kv_cache.py):
  ``available = min(requested - non_kv_used, headroom - margin) - transient_peak`` with
  ``margin = max(1 GiB, 0.75 x transient_peak)`` (3 GiB floor on ROCm); the committed cache
  is at most the tentative capacity (``ExtensibleKVCache.commit``). Half a GiB of the margin
  (``KV_CACHE_NON_TORCH_RESERVE_BYTES``, 1 GiB on ROCm) is kept outside torch's caching
  allocator; it is part of the margin, not a further cut.
- ``measure_kv_cache_blocks`` warns when an explicit utilisation in (0.7, 1.0) withholds at
  least 1 GiB from the cache.

Before launch the parts are estimates (qwenprep.engines.vllm.kv.overhead_estimate): the transient
peak
is the profile run's activations and sampler logits; what stays resident besides the weights is
the non-torch memory and the CUDA graphs; the free memory at startup is taken as the GPU's
total. With ``kv_memory`` (vLLM's ``--kv-cache-memory-bytes``) the extensible cache is off and
the numbers are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwenprep.util.sizes import GiB, format_gib

# vllm/v1/worker/extensible_kv_cache.py (0.34.0), CUDA values
MARGIN_FLOOR_BYTES = 1 * GiB  # KV_CACHE_MARGIN_FLOOR_BYTES
MARGIN_FRACTION = 0.75  # KV_CACHE_MARGIN_FRACTION
NON_TORCH_RESERVE_BYTES = GiB // 2  # KV_CACHE_NON_TORCH_RESERVE_BYTES
EXTENSIBLE_FROM = (0, 34)  # the first vLLM with the extensible KV cache on by default
# measure_kv_cache_blocks warns for an explicit utilisation in this open range
WARNED_UTILIZATION = (0.7, 1.0)


def extensible_by_default(version: tuple[int, ...]) -> bool:
    """Whether vLLM VERSION sizes the KV cache after warmup unless told otherwise."""
    return tuple(version[:2]) >= EXTENSIBLE_FROM


@dataclass(frozen=True)
class ExtensibleBudget:
    """The KV memory per GPU of vLLM 0.34's extensible cache, as qwenprep estimates it."""

    total: int  # GPU memory (bytes), taken as free at startup
    utilization: float  # CacheConfig.resolved_gpu_memory_utilization
    requested: int  # request_memory: ceil(total x utilisation)
    non_kv_resident: int  # weights + non-torch + CUDA graphs, resident after warmup
    transient_peak: int  # activations + sampler logits (the profiled peak)
    tentative: int  # the profile's "Available KV cache memory": the reserved capacity
    margin: int  # max(1 GiB, 0.75 x transient peak)
    post_warmup: int  # measure_kv_cache_bytes: what the cache is extended to
    withheld: int  # what a utilisation below 1.0 keeps out of the cache (0 at 1.0)

    @property
    def available(self) -> int:
        """The KV memory the plan uses: the post-warmup bound, never above the capacity."""
        return max(0, min(self.tentative, self.post_warmup))

    def text(self) -> str:
        return (
            f"post-warmup bound {format_gib(self.post_warmup)} = min(requested "
            f"{format_gib(self.requested)} (x {self.utilization}) - resident non-KV "
            f"{format_gib(self.non_kv_resident)}, headroom - margin "
            f"{format_gib(self.margin)}) - transient peak {format_gib(self.transient_peak)}; "
            f"tentative budget (profile run) {format_gib(self.tentative)}"
            + (
                f"; --gpu-memory-utilization {self.utilization} withholds "
                f"{format_gib(self.withheld)}"
                if self.withheld > 0
                else ""
            )
            + " (vLLM 0.34 extensible KV cache, estimate)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu_memory_utilization": self.utilization,
            "requested_bytes": self.requested,
            "non_kv_resident_bytes": self.non_kv_resident,
            "transient_peak_bytes": self.transient_peak,
            "tentative_bytes": self.tentative,
            "margin_bytes": self.margin,
            "post_warmup_bytes": self.post_warmup,
            "withheld_bytes": self.withheld,
            "non_torch_reserve_bytes": NON_TORCH_RESERVE_BYTES,
        }


def _measure(requested: int, free: int, non_kv: int, transient: int, margin: int) -> int:
    """measure_kv_cache_bytes (vllm/v1/worker/extensible_kv_cache.py, 0.34.0) with nothing
    committed before the final sizing and no torch reservation growth beyond the peak."""
    headroom = free - non_kv
    return max(0, min(requested - non_kv, headroom - margin) - transient)


def extensible_budget(
    total: int,
    *,
    weights: int,
    resident: int,
    transient: int,
    utilization: float | None = None,
) -> ExtensibleBudget:
    """The extensible cache's budget on a GPU of TOTAL bytes: WEIGHTS and RESIDENT (non-torch,
    CUDA graphs) stay after warmup, TRANSIENT is the activation peak; UTILIZATION is the
    user's --gpu-memory-utilization (None: vLLM's 1.0)."""
    import math

    util = 1.0 if utilization is None else utilization
    requested = math.ceil(total * util)
    non_kv = weights + resident
    margin = max(MARGIN_FLOOR_BYTES, int(transient * MARGIN_FRACTION))
    post = _measure(requested, total, non_kv, transient, margin)
    unbounded = _measure(total, total, non_kv, transient, margin)
    return ExtensibleBudget(
        total=total,
        utilization=util,
        requested=requested,
        non_kv_resident=non_kv,
        transient_peak=transient,
        tentative=requested - non_kv - transient,
        margin=margin,
        post_warmup=post,
        withheld=max(0, unbounded - post),
    )


def utilization_warning(version: tuple[int, ...], args: dict[str, Any]) -> str | None:
    """What `check` says when the serve arguments ARGS (vLLM dests) give vLLM VERSION a
    --gpu-memory-utilization below 1.0 while the extensible KV cache sizes the cache; None
    otherwise (older versions, no utilisation given, or the cache pinned another way)."""
    util = args.get("gpu_memory_utilization")
    if not extensible_by_default(version) or not isinstance(util, (int, float)) or util >= 1.0:
        return None
    if args.get("enable_extensible_kv_cache") is False:
        return None
    for pin in ("kv_cache_memory_bytes", "num_gpu_blocks_override"):
        if args.get(pin) is not None:
            return None  # VllmConfig._resolve_extensible_kv_cache: the cache is off then
    return (
        f"--gpu-memory-utilization {util} caps vLLM {version[0]}.{version[1]}'s KV cache at "
        f"{util} of GPU memory: from 0.34 the cache is sized after warmup and CUDA-graph "
        "capture (the extensible KV cache), so vLLM needs no headroom below 1.0 "
        "(vllm/v1/worker/extensible_kv_cache.py, measure_kv_cache_blocks); leave it unset "
        "unless other processes share the GPU"
    )
