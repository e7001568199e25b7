"""What a serve plan shows, whichever engine runs it: the part of vLLM's LaunchPlan
(engines/vllm/launch.py) and SGLang's SglangPlan (engines/sglang/core.py) that `serve --dry-run
--json`, the server handles and the deploy artefacts read alike. A frozen dataclass base: each
engine's plan is a frozen dataclass that adds its own fields after these (and names its own
engine and node types as the type arguments). Launch is what both plan builders hand over alike:
the launch inputs their multi-node functions take and ServedPlan.launched turns into the shared
fields."""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from qwenprep.errors import UsageError
from qwenprep.request import MultiNode


class _Shown(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


InfoT = TypeVar("InfoT", bound=_Shown)  # the engine's info (EngineInfo, SglangInfo)
NodeT = TypeVar("NodeT", bound=_Shown)  # the engine's per-node command (NodeCommand, SglangNode)
PlanT = TypeVar("PlanT", bound="ServedPlan[Any, Any]")


@dataclass(frozen=True)
class Launch:
    """The launch inputs both engines' plan builders share, once the engine's own flags (CORE)
    are chosen: the overlay, the interpreter, the TP size, the overlay digest, the user's
    --host/--port and arguments after --, and the multi-node ask (--nnodes, --gpus-per-node,
    --master-addr). A port outside 1-65535 is refused here."""

    path: Path
    python: str
    core: tuple[str, ...]  # the engine's flags, after the model and before --host/--port
    tp: int
    digest: str | None
    host: str | None
    port: int | None
    extra: tuple[str, ...]  # the user's part after --, at the end of every argv
    multinode: MultiNode

    def __post_init__(self) -> None:
        if self.port is not None and not 1 <= self.port <= 65535:
            raise UsageError(f"--port {self.port} is not a TCP port (1-65535).")

    @property
    def net(self) -> list[str]:
        """--host/--port as both engines spell them (--host=HOST: a name like "--x" stays a
        value), on the head's argv only."""
        net: list[str] = []
        if self.host is not None:
            net.append(f"--host={self.host}")
        if self.port is not None:
            net += ["--port", str(self.port)]
        return net

    @property
    def model(self) -> str:
        """The overlay as an absolute path, as the engine's argv names it."""
        return str(self.path if self.path.is_absolute() else self.path.absolute())

    def span(self, *, strict: bool) -> tuple[int, int] | None:
        """(nodes, GPUs per node) when the ask spans nodes, None when it stays on one.
        STRICT (vLLM) also refuses --nnodes below 1 and fewer nodes than TP needs; SGLang's
        own TP = nodes x GPUs check refuses the latter."""
        nnodes, gpn, tp = self.multinode.nnodes, self.multinode.gpus_per_node, self.tp
        if nnodes is None and gpn is None:
            return None
        if gpn is not None and gpn < 1:
            raise UsageError(f"--gpus-per-node {gpn} must be at least 1.")
        if strict and nnodes is not None and nnodes < 1:
            raise UsageError(f"--nnodes {nnodes} must be at least 1.")
        need = math.ceil(tp / gpn) if gpn else 1
        n = nnodes if nnodes is not None else need
        if strict and n < need:
            raise UsageError(f"TP {tp} needs {need} nodes of {gpn} GPUs; --nnodes {n} is too few.")
        if n <= 1:
            return None
        if gpn is None:
            raise UsageError("--nnodes needs --gpus-per-node to split the plan across nodes.")
        return n, gpn

    def guard(self, notes: list[str], *engine_flags: str) -> tuple[str, ...]:
        """The dry-run each node runs first to check it serves this overlay (its digest), with
        ENGINE_FLAGS after the path; none, and a note, when the model is not an overlay."""
        if self.digest:
            path = str(self.path)
            return (
                "qwenprep",
                "serve",
                path,
                *engine_flags,
                "--expect-digest",
                self.digest,
                "--dry-run",
            )
        notes.append("not a qwenprep overlay: nodes cannot check that they serve the same config")
        return ()


@dataclass(frozen=True)
class ServedPlan(Generic[InfoT, NodeT]):
    """The fields every engine's plan has, in the order its constructor takes them."""

    argv: tuple[str, ...]
    env: dict[str, str]  # set for the child, on top of the inherited environment
    unset_env: tuple[str, ...]  # removed from the inherited environment
    model_path: str
    max_model_len: int
    max_len_allowed: int
    served_model_name: str
    host: str | None
    port: int
    profile: str
    engine: InfoT | None
    digest: str | None
    multinode_mode: str | None = None
    nodes: tuple[NodeT, ...] = ()
    notes: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()  # the user's part after --, at the end of every argv

    DEFAULT_PORT: ClassVar[int]  # the engine's own port when --port is not given

    @classmethod
    def launched(
        cls: type[PlanT],
        launch: Launch,
        argv: Sequence[str],
        *,
        multinode: tuple[str | None, tuple[Any, ...]],
        env: dict[str, str],
        unset_env: Sequence[str],
        max_model_len: int,
        max_len_allowed: int,
        served_model_name: str,
        profile: str,
        engine: Any,
        notes: Sequence[str],
        **own: Any,
    ) -> PlanT:
        """The plan that runs LAUNCH as ARGV; MULTINODE: the engine's multi-node function's
        (mode, per-node commands); OWN: the engine's own fields."""
        mode, nodes = multinode
        return cls(
            argv=tuple(argv),
            env=env,
            unset_env=tuple(unset_env),
            model_path=str(launch.path),
            max_model_len=max_model_len,
            max_len_allowed=max_len_allowed,
            served_model_name=served_model_name,
            host=launch.host,
            port=launch.port if launch.port is not None else cls.DEFAULT_PORT,
            profile=profile,
            engine=engine,
            digest=launch.digest,
            multinode_mode=mode,
            nodes=nodes,
            notes=tuple(notes),
            extra_args=launch.extra,
            **own,
        )

    def to_dict(self) -> dict[str, Any]:
        """The plan as `serve --dry-run --json` prints it (each engine's own keys included)."""
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        """Where a client reaches the server: a wildcard bind address means this machine."""
        host = self.host if self.host not in (None, "", "0.0.0.0", "::") else "127.0.0.1"
        if host and ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def child_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The engine's environment: BASE (default: ours) less unset_env, plus env."""
        env = dict(os.environ if base is None else base)
        for k in self.unset_env:
            env.pop(k, None)
        env.update(self.env)
        return env

    def plan_dict(self) -> dict[str, Any]:
        """The plan as `serve --dry-run --json` prints it (the keys every engine shares)."""
        return {
            "argv": list(self.argv),
            "command": shlex.join(self.argv),
            "env": dict(self.env),
            "unset_env": list(self.unset_env),
            "model_path": self.model_path,
            "max_model_len": self.max_model_len,
            "max_len_allowed": self.max_len_allowed,
            "served_model_name": self.served_model_name,
            "url": self.base_url,
            "profile": self.profile,
            "engine": self.engine.to_dict() if self.engine else None,
            "digest": self.digest,
            "multinode_mode": self.multinode_mode,
            "nodes": [n.to_dict() for n in self.nodes],
            "notes": list(self.notes),
        }
