"""What a command asks for, as one value each: ServeRequest (serve, and check's view of the
launch; its multi-node part is MultiNode) and PlanRequest (plan). The command line and the
Python API build the same objects from their options, through the one reading of contexts
(qwenprep.contexts.parse_context: 1m = 1,048,576) and of sizes (qwenprep.sizes.parse_size:
a unit is required), so both read `1m` and `141GB` the same way and refuse the same input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any


def context_tokens(text: str | int | None, option: str = "--context") -> int | None:
    """A context as qwenprep reads it (1m = 1,048,576; 256k; a count) as tokens; None for
    None. "native" (no fixed count) is refused here: OPTION takes a token count."""
    from qwenprep.contexts import parse_context
    from qwenprep.errors import UsageError

    if text is None:
        return None
    req = parse_context(str(text))
    if req.tokens is None:
        raise UsageError(f"{option} takes a token count such as 1048576, 1m or 256k.")
    return req.tokens


def size_bytes(value: str | int | None, option: str) -> int | None:
    """A size as every command reads it (qwenprep.sizes.parse_size: 141GB, 80GiB, 1024B; an
    int is a byte count; a bare number or 8g is refused); None for None."""
    from qwenprep.sizes import parse_size

    return None if value is None else parse_size(value, option)


def size_text(value: str | int | None, option: str) -> str | None:
    """The same, as an exact byte count in text ("1024B") for the functions that take text."""
    n = size_bytes(value, option)
    return None if n is None else f"{n}B"


def _checked(value: str | int | None, option: str) -> str | None:
    """VALUE read once by parse_size (refusals name OPTION); text stays as typed."""
    size_bytes(value, option)
    if value is None or isinstance(value, str):
        return value
    return size_text(value, option)


@dataclass(frozen=True)
class MultiNode:
    """serve --nnodes/--gpus-per-node/--master-addr/--multinode-mode."""

    nnodes: int | None = None
    gpus_per_node: int | None = None
    master_addr: str | None = None
    mode: str | None = None  # native | dp | ray; None: what the version and TP call for

    @property
    def asked(self) -> bool:
        return self.nnodes is not None or self.gpus_per_node is not None


@dataclass(frozen=True)
class ServeRequest:
    """What `serve` is asked to launch; None means "the model profile's / the overlay's"."""

    tp: int | None = None
    ep: bool | None = None
    max_model_len: int | None = None
    host: str | None = None
    port: int | None = None
    served_model_name: str | None = None
    extra_args: tuple[str, ...] = ()  # the user's arguments after --
    repo_id: str | None = None  # the repo the model path came from, for its name
    expect_digest: str | None = None
    multinode: MultiNode = field(default_factory=MultiNode)

    @classmethod
    def from_options(
        cls,
        *,
        max_len: str | int | None = None,
        extra_args: Sequence[str] = (),
        nnodes: int | None = None,
        gpus_per_node: int | None = None,
        master_addr: str | None = None,
        multinode_mode: str | None = None,
        **kw: Any,
    ) -> ServeRequest:
        """From options as typed: MAX_LEN in qwenprep's spelling (1m, 256k, a count)."""
        return cls(
            max_model_len=context_tokens(max_len, "--max-model-len"),
            extra_args=tuple(extra_args),
            multinode=MultiNode(nnodes, gpus_per_node, master_addr, multinode_mode),
            **kw,
        )

    @classmethod
    def from_keywords(cls, request: ServeRequest | None, **options: Any) -> ServeRequest:
        """REQUEST, or one built from build_launch_plan's former keyword arguments (tp, ep,
        max_model_len, ..., nnodes, gpus_per_node, master_addr, multinode_mode)."""
        if request is not None:
            if options:
                raise TypeError(
                    f"a ServeRequest and keyword options ({', '.join(options)}) together"
                )
            return request
        own = {f.name for f in fields(cls)} - {"multinode"}
        multi = {
            "nnodes": "nnodes",
            "gpus_per_node": "gpus_per_node",
            "master_addr": "master_addr",
            "multinode_mode": "mode",
        }
        unknown = set(options) - own - set(multi)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        kw = {k: v for k, v in options.items() if k in own}
        if "extra_args" in kw:
            kw["extra_args"] = tuple(kw["extra_args"])
        mn = MultiNode(**{multi[k]: v for k, v in options.items() if k in multi})
        return cls(**kw, multinode=mn)

    def sglang_options(self) -> dict[str, Any]:
        """The same request as SGLang's serve_plan takes it (its own keyword form)."""
        return {
            "tp": self.tp,
            "ep": self.ep,
            "max_len": None if self.max_model_len is None else str(self.max_model_len),
            "host": self.host,
            "port": self.port,
            "served_model_name": self.served_model_name,
            "extra_args": self.extra_args,
            "expect_digest": self.expect_digest,
            "nnodes": self.multinode.nnodes,
            "gpus_per_node": self.multinode.gpus_per_node,
            "master_addr": self.multinode.master_addr,
            "multinode_mode": self.multinode.mode,
        }


@dataclass(frozen=True)
class PlanRequest:
    """What `plan` is asked: sizes and context as given (a size in text keeps the user's
    spelling; an int byte count becomes "NB"), each already checked by the one reader."""

    context: str | None = None
    tp: int | None = None
    pp: int = 1
    ep: bool = True
    gpus: int | None = None
    gpu_memory: str | None = None  # memory of one GPU, with its unit
    kv_memory: str | None = None  # KV cache per GPU, exact, with its unit
    kv_cache_dtype: str = "auto"
    block_size: int = 16
    gpu: str | None = None  # a catalog name (H200, ...)
    vllm_version: str | None = None
    prefill_budget: float | None = None
    dcp: int = 1  # vLLM --decode-context-parallel-size (qwenprep.dcp)
    prefix_caching: bool | None = None  # vLLM --[no-]enable-prefix-caching; None: its default

    @classmethod
    def from_options(
        cls,
        *,
        context: str | int | None = None,
        gpu_memory: str | int | None = None,
        kv_memory: str | int | None = None,
        **kw: Any,
    ) -> PlanRequest:
        """From options as typed: sizes with their unit (or int bytes), a context in
        qwenprep's spelling; refusals are UsageErrors (exit 2) naming the option."""
        from qwenprep.contexts import parse_context

        text = None if context is None else str(context)
        if text is not None:
            parse_context(text)  # refused here, before anything is read
        return cls(
            context=text,
            gpu_memory=_checked(gpu_memory, "--gpu-memory"),
            kv_memory=_checked(kv_memory, "--kv-memory"),
            **kw,
        )

    def plan_options(self) -> dict[str, Any]:
        """The keyword arguments of qwenprep.capacity.make_plan(MODEL, ...) for this request
        (this module imports no command's code: capacity leads back to the engine)."""
        return {
            "context": self.context,
            "tp": self.tp,
            "pp": self.pp,
            "gpus": self.gpus,
            "gpu_memory": self.gpu_memory,
            "kv_memory": self.kv_memory,
            "kv_cache_dtype": self.kv_cache_dtype,
            "ep": self.ep,
            "vllm_version": self.vllm_version,
            "block_size": self.block_size,
            "gpu": self.gpu,
            "prefill_budget": self.prefill_budget,
            "dcp": self.dcp,
            "prefix_caching": self.prefix_caching,
        }
