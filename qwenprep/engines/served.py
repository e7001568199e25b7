"""What a serve plan shows, whichever engine runs it: the part of vLLM's LaunchPlan
(engines/vllm/launch.py) and SGLang's SglangPlan (engines/sglang/core.py) that `serve --dry-run
--json`, the server handles and the deploy artefacts read alike. A frozen dataclass base: each
engine's plan is a frozen dataclass that adds its own fields after these (and names its own
engine and node types as the type arguments)."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar


class _Shown(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


InfoT = TypeVar("InfoT", bound=_Shown)  # the engine's info (EngineInfo, SglangInfo)
NodeT = TypeVar("NodeT", bound=_Shown)  # the engine's per-node command (NodeCommand, SglangNode)


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
