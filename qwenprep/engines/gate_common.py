"""The skeleton both engines' gates share (engines/vllm/gate.py, engines/sglang/gate.py):
the refusal serve raises (ArgsRefused, exit 3), the batched, cached probe that asks the engine
about every argv of several plans at once (GateProbe), the check for arguments after -- that
change what qwenprep's own options set (own_changes), the answer per node (node_checks), and
check's report of a plan serve would refuse (plan_refused), and what check asks of a gate
(GateAsk). What each engine asks and says is
its own gate's."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from qwenprep.engines.served import ServedPlan
from qwenprep.errors import EXIT_CANNOT_PROCEED, QwenprepError, UsageError
from qwenprep.util.report import Check

if TYPE_CHECKING:
    from qwenprep.checks.preflight import CheckOptions

PATCH_FIX = "qwenprep patch MODEL --context 1m --out DIR, then serve DIR"

PlanT = TypeVar("PlanT", bound=ServedPlan[Any, Any])
Items = list[dict[str, Any]]


class ArgsRefused(UsageError):
    """vLLM would refuse the launch, or run it with something other than what was asked.
    A UsageError (the arguments are the problem), but exit 3: qwenprep cannot proceed."""

    exit_code = EXIT_CANNOT_PROCEED


@dataclass(frozen=True)
class GateAsk:
    """What `check` asks an engine's gate: judge the plan `serve` would build for PATH from
    these options (ENGINE_ON: with the installed engine, else as --no-engine)."""

    path: Path
    engine_on: bool
    python: str | None
    tp: int | None
    ep: bool | None
    max_model_len: int | None
    extra_args: tuple[str, ...]
    repo_id: str | None = None

    @classmethod
    def of(
        cls, path: Path, opts: CheckOptions, max_model_len: int | None, repo_id: str | None
    ) -> GateAsk:
        """check's options OPTS, for the length MAX_MODEL_LEN (the context it resolved)."""
        return cls(
            path, opts.engine, opts.python, opts.tp, opts.ep, max_model_len, opts.vllm_args, repo_id
        )

    def plan_inputs(self) -> dict[str, Any]:
        """The engine's plan builder's keyword arguments for this ask: every field but the
        path and the engine to ask, and for_check."""
        skip = ("path", "engine_on", "python")
        asked = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        return {**asked, "for_check": True}


@dataclass
class GateProbe(Generic[PlanT]):
    """The engine's gate probe, batched and cached: ITEMS, the argvs of a plan as the probe
    takes them; KEY, the cache key of a plan's items for an interpreter; ASK, the engine's
    probe runner (python, args, timeout, env); WHO, the engine as its error names it."""

    who: str
    items: Callable[[PlanT], Items]
    key: Callable[[PlanT, str, Items], str]
    ask: Callable[[str, Sequence[str], float, dict[str, str] | None], dict[str, Any]]
    cache: dict[str, dict[str, Any]] = field(default_factory=dict)

    def batch(self, plans: Sequence[PlanT], python: str) -> None:
        """Ask the engine about several plans in one probe (one import) and keep the answers."""
        batch: list[tuple[str, Items]] = []
        for plan in plans:
            items = self.items(plan)
            key = self.key(plan, python, items)
            if key not in self.cache:
                batch.append((key, items))
        if not batch:
            return
        flat = [it for _, items in batch for it in items]
        got = self.ask(python, ["gate", json.dumps(flat)], 600, plans[0].child_env())
        results = got.get("results")
        if not isinstance(results, list) or len(results) != len(flat):
            from qwenprep.engines.probe import EngineError

            raise EngineError(
                f"{python}: the {self.who} probe (gate) answered {len(results or [])} "
                f"results for {len(flat)} argvs."
            )
        i = 0
        for key, items in batch:
            self.cache[key] = {**got, "results": results[i : i + len(items)]}
            i += len(items)

    def answer(self, plan: PlanT, python: str) -> dict[str, Any]:
        """The engine's answer for PLAN (asked now unless a batch already asked)."""
        key = self.key(plan, python, self.items(plan))
        if key not in self.cache:
            self.batch([plan], python)
        return self.cache[key]


def probe_items(
    plan: ServedPlan[Any, Any],
    argvs: Sequence[Sequence[str]],
    after: Callable[[Sequence[str]], int],
    native: int | None,
) -> Items:
    """The engine's part of each argv PLAN would exec (from AFTER(argv) on), with how many of
    its items are qwenprep's own and the overlay's native length, as the gate probe takes them."""
    out = []
    for argv in argvs:
        part = list(argv[after(argv) :])
        out.append({"argv": part, "base": len(part) - len(plan.extra_args), "native": native})
    return out


def own_changes(
    changed: dict[str, list[Any]],
    own_option: Mapping[str, str],
    fmt: Callable[[Any], str] = str,
) -> list[Check]:
    """A fail when the arguments after -- change a setting qwenprep's own options set (CHANGED:
    the setting's name -> [qwenprep's value, the value with the arguments]); its hint names
    the option of each (OWN_OPTION)."""
    if not changed:
        return []
    parts = [f"{d} {fmt(a)} -> {fmt(b)}" for d, (a, b) in changed.items()]
    fixes = sorted({own_option.get(d, d) for d in changed})
    return [
        Check(
            "engine.own_args",
            "fail",
            "the arguments after -- change what qwenprep's own options set: "
            + ", ".join(parts)
            + ". Hint: "
            + "; ".join(fixes),
        )
    ]


def node_checks(
    results: Sequence[dict[str, Any]], judge: Callable[[dict[str, Any], str], list[Check]]
) -> list[Check]:
    """The checks of each argv's answer (JUDGE: the answer and its node's words): all of the
    first (the single node, or the head); of the per-node argvs only their refusals."""
    checks: list[Check] = []
    for n, r in enumerate(results):
        got = judge(r, "" if n == 0 else f" (node {n - 1})")
        checks += got if n == 0 else [c for c in got if c.status == "fail"]
    return checks


def refused_listing(bad: Sequence[Check]) -> str:
    """The failed checks as a refusal lists them (each without its hint)."""
    return "; ".join(f"[{c.id}] {c.message.split(' Hint: ')[0]}" for c in bad)


def plan_refused(e: QwenprepError, command: str) -> list[Check]:
    """check's report of a plan that COMMAND (qwenprep serve ...) would refuse."""
    hint = f" Hint: {e.hint}" if e.hint else ""
    return [
        Check(
            "engine.plan",
            "fail",
            f"{command} would refuse (exit {e.exit_code}): {e.message}{hint}",
            e.path,
        )
    ]


def parsed_checks(
    r: dict[str, Any],
    parser: str,
    shown: str,
    node: str,
    own: Callable[[dict[str, list[Any]]], list[Check]],
    remote_code: str,
    where: str,
) -> tuple[list[Check], bool]:
    """What the engine's parser (PARSER, as people read it) made of one argv's answer R: the
    checks, and whether it parsed. OWN: own_changes as the engine words it; REMOTE_CODE: the
    warning when --trust-remote-code was asked."""
    if r.get("stage") == "parse":
        refused = f"{parser} refuses the arguments{node}: {r['error']}"
        return [Check("engine.argv", "fail", refused)], False
    out = [Check("engine.argv", "pass", f"{parser} accepts {shown}{node}")]
    out += own(r.get("changed") or {})
    if r.get("trust_remote_code_asked"):
        out.append(Check("engine.remote_code", "warn", remote_code, where))
    return out, True


def load_refused(r: dict[str, Any], who: str, node: str, length_key: str, where: str) -> Check:
    """The engine's refusal to build the model config (R: the answer; LENGTH_KEY: the engine's
    name for the served length, which with `rope` in the error earns the patch hint)."""
    err = str(r.get("error"))
    hint = f" Hint: {PATCH_FIX}" if length_key in err or "rope" in err else ""
    return Check(
        "engine.load",
        "fail",
        f"{who} refuses to build the model config with these arguments{node}: {err}{hint}",
        where,
    )
