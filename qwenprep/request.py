"""What a command asks for, as one value each: ServeRequest (serve, and check's view of the
launch; its multi-node part is MultiNode) and PlanRequest (plan). The command line and the
Python API build the same objects from their options, through the one reading of contexts
(qwenprep.model.contexts.parse_context: 1m = 1,048,576) and of sizes
(qwenprep.util.sizes.parse_size:
a unit is required), so both read `1m` and `141GB` the same way and refuse the same input.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

# ------------------------------------------------------------------ the rules of the options
# One rule per option, for the command line and the Python API alike (the commands' click types
# say the same lower bounds and choices; these are what both pass through): a refusal is a
# UsageError (exit 2) naming the option, never a TypeError from deep inside the arithmetic.

# GPUs in one deployment (--gpus, and what --tp x --pp, --nnodes and --gpus-per-node may ask
# for). The largest one vLLM or SGLang deployment runs on a few thousand GPUs; 65,536 (8,192
# nodes of 8) is far past it. A larger count is a typo, and counting it GPU by GPU (check lists
# each GPU it is told of) would only exhaust memory.
MAX_GPUS = 65_536
MAX_GPUS_WHY = (
    f"at most {MAX_GPUS:,}: qwenprep plans one deployment, and no one serving deployment is near "
    f"{MAX_GPUS:,} GPUs (8,192 nodes of 8); a larger number is a typo"
)
KV_CACHE_DTYPES = ("auto", "fp8")
MULTINODE_MODES = ("native", "dp", "ray")
PORTS = (1, 65535)


def whole(value: Any, option: str, *, low: int = 1, high: int | None = None) -> int:
    """VALUE as a whole number from LOW to HIGH (MAX_GPUS: said with its reason); UsageError
    for anything else (a bool, a float, a string: the API takes what the command line typed)."""
    from qwenprep.errors import UsageError

    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise UsageError(f"{option} takes a whole number (got {value!r}).")
    n = operator.index(value)
    if n < low:
        raise UsageError(f"{option} must be at least {low} (got {n}).")
    if high is not None and n > high:
        why = MAX_GPUS_WHY if high == MAX_GPUS else f"at most {high}"
        raise UsageError(f"{option} {n} is too large: {why}.")
    return n


def maybe_whole(value: Any, option: str, **bounds: Any) -> int | None:
    return None if value is None else whole(value, option, **bounds)


def flag(value: Any, option: str, *, optional: bool = False) -> Any:
    """True or False (None too when OPTIONAL: "the model profile's")."""
    from qwenprep.errors import UsageError

    if isinstance(value, bool) or (optional and value is None):
        return value
    raise UsageError(f"{option} takes True or False (got {value!r}).")


def text(value: Any, option: str, *, choices: Sequence[str] = (), optional: bool = True) -> Any:
    """A string (or None: not given, when OPTIONAL); one of CHOICES when there are some."""
    from qwenprep.errors import UsageError

    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise UsageError(f"{option} takes a string (got {value!r}).")
    if choices and value not in choices:
        raise UsageError(f"{option} {value!r}: use {' or '.join(choices)}.")
    return no_nul(value, option)


def no_nul(value: str, option: str) -> str:
    """VALUE, refused when it holds a NUL byte: no path, host or argument can (the OS ends a
    C string there: os.stat raises ValueError, exec cannot pass it)."""
    from qwenprep.errors import UsageError

    if "\0" in value:
        raise UsageError(
            f"{option} holds a NUL byte (\\0) at character {value.index(chr(0))}: no path, "
            "name or argument can carry one.",
            hint="pass the value without it.",
        )
    return value


def words(values: Any, option: str) -> tuple[str, ...]:
    """A list of strings, as a shell passes arguments (a single string is not a list of them)."""
    from qwenprep.errors import UsageError

    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise UsageError(f"{option} takes a list of strings, one per argument (got {values!r}).")
    odd = [v for v in values if not isinstance(v, str)]
    if odd:
        raise UsageError(
            f"{option}: every argument must be a string, as on a command line (got {odd[0]!r})."
        )
    return tuple(no_nul(v, option) for v in values)


def seconds(value: Any, option: str) -> float | None:
    """A positive, finite number of seconds, or None."""
    from qwenprep.errors import UsageError

    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{option} takes a number of seconds (got {value!r}).")
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{option} must be a finite number of seconds above 0 (got {value}).")
    return float(value)


def context_value(value: Any, option: str) -> str | None:
    """A context as typed (1m, 256k, native, a token count) in text; None: not given."""
    from qwenprep.errors import UsageError

    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{option} takes a token count such as 1048576, 1m or 256k.")
    return str(value)


def layout(tp: Any, pp: Any, gpus: Any) -> tuple[int | None, int, int | None]:
    """--tp, --pp and --gpus by their rules; TP x PP no more GPUs than one deployment has."""
    from qwenprep.errors import UsageError

    t = maybe_whole(tp, "--tp", high=MAX_GPUS)
    p = whole(pp, "--pp", high=MAX_GPUS)
    g = maybe_whole(gpus, "--gpus", high=MAX_GPUS)
    if t is not None and t * p > MAX_GPUS:
        raise UsageError(f"TP {t} x PP {p} = {t * p:,} GPUs is too many: {MAX_GPUS_WHY}.")
    return t, p, g


def one_memory_budget(kv_memory: Any, gpu_memory: Any) -> None:
    """--kv-memory (exact) and --gpu-memory (an estimate) exclude each other: UsageError."""
    from qwenprep.errors import UsageError

    if kv_memory is not None and gpu_memory is not None:
        raise UsageError(
            "--kv-memory and --gpu-memory exclude each other: the first is exact, "
            "the second an estimate.",
            hint="pass one of them.",
        )


def context_tokens(text: str | int | None, option: str = "--context") -> int | None:
    """A context as qwenprep reads it (1m = 1,048,576; 256k; a count) as tokens; None for
    None. "native" (no fixed count) is refused here: OPTION takes a token count."""
    from qwenprep.errors import UsageError
    from qwenprep.model.contexts import parse_context

    if text is None:
        return None
    req = parse_context(str(text))
    if req.tokens is None:
        raise UsageError(f"{option} takes a token count such as 1048576, 1m or 256k.")
    return req.tokens


def size_bytes(value: str | int | None, option: str) -> int | None:
    """A size as every command reads it (qwenprep.util.sizes.parse_size: 141GB, 80GiB, 1024B; an
    int is a byte count; a bare number or 8g is refused); None for None."""
    from qwenprep.util.sizes import parse_size

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
        """From options as typed: MAX_LEN in qwenprep's spelling (1m, 256k, a count); each
        option by its rule (UsageError)."""
        checked = {
            "tp": maybe_whole(kw.pop("tp", None), "--tp", high=MAX_GPUS),
            "ep": flag(kw.pop("ep", None), "--ep", optional=True),
            "port": maybe_whole(kw.pop("port", None), "--port", low=PORTS[0], high=PORTS[1]),
        }
        for name in ("host", "served_model_name", "expect_digest", "repo_id"):
            if name in kw:
                checked[name] = text(kw.pop(name), "--" + name.replace("_", "-"))
        multinode = MultiNode(
            maybe_whole(nnodes, "--nnodes", high=MAX_GPUS),
            maybe_whole(gpus_per_node, "--gpus-per-node", high=MAX_GPUS),
            text(master_addr, "--master-addr"),
            text(multinode_mode, "--multinode-mode", choices=MULTINODE_MODES),
        )
        return cls(
            max_model_len=context_tokens(
                context_value(max_len, "--max-model-len"), "--max-model-len"
            ),
            extra_args=words(extra_args, "extra_args"),
            multinode=multinode,
            **checked,
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


@dataclass(frozen=True)
class PlanRequest:
    """What `plan` is asked: sizes and context as given (a size in text keeps the user's
    spelling; an int byte count becomes "NB"), each already checked by the one reader."""

    context: str | None = None
    tp: int | None = None
    pp: int = 1
    ep: bool | None = None  # None: the layout rule's (qwenprep.engines.parallel)
    gpus: int | None = None
    gpu_memory: str | None = None  # memory of one GPU, with its unit
    kv_memory: str | None = None  # KV cache per GPU, exact, with its unit
    kv_cache_dtype: str = "auto"
    block_size: int = 16
    gpu: str | None = None  # a catalog name (H200, ...)
    vllm_version: str | None = None
    prefill_budget: float | None = None
    dcp: int = 1  # vLLM --decode-context-parallel-size (qwenprep.engines.vllm.dcp)
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
        from qwenprep.model.contexts import parse_context

        ctx = context_value(context, "--context")
        if ctx is not None:
            parse_context(ctx)  # refused here, before anything is read
        tp, pp, gpus = layout(kw.pop("tp", None), kw.pop("pp", 1), kw.pop("gpus", None))
        return cls(
            context=ctx,
            tp=tp,
            pp=pp,
            gpus=gpus,
            gpu_memory=_checked(gpu_memory, "--gpu-memory"),
            kv_memory=_checked(kv_memory, "--kv-memory"),
            ep=flag(kw.pop("ep", None), "--ep", optional=True),
            kv_cache_dtype=text(
                kw.pop("kv_cache_dtype", "auto"),
                "--kv-cache-dtype",
                choices=KV_CACHE_DTYPES,
                optional=False,
            ),
            block_size=whole(kw.pop("block_size", 16), "--block-size"),
            gpu=text(kw.pop("gpu", None), "--gpu"),
            vllm_version=text(kw.pop("vllm_version", None), "--vllm-version"),
            prefill_budget=seconds(kw.pop("prefill_budget", None), "--prefill-budget"),
            dcp=whole(kw.pop("dcp", 1), "--dcp", high=MAX_GPUS),
            prefix_caching=flag(
                kw.pop("prefix_caching", None), "--[no-]prefix-caching", optional=True
            ),
            **kw,
        )

    def plan_options(self) -> dict[str, Any]:
        """The keyword arguments of qwenprep.planning.capacity.make_plan(MODEL, ...) for this
        request
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
