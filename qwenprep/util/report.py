"""Checks as data, and their rendering for people and for pipelines."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Literal

Status = Literal["pass", "warn", "fail", "skip"]
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Check:
    """One check: a stable id, its status, and a message for people."""

    id: str
    status: Status
    message: str
    path: str | None = None  # JSON path or file the check is about, when there is one

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["path"] is None:
            del d["path"]
        return d


@dataclass
class Report:
    """A list of checks plus free-form fields; ok when no check failed."""

    kind: str
    checks: list[Check] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    strict: bool = False  # --strict: a skipped check fails the report too

    @property
    def ok(self) -> bool:
        bad = ("fail", "skip") if self.strict else ("fail",)
        return all(c.status not in bad for c in self.checks)

    def counts(self) -> dict[str, int]:
        """{"passed", "failed", "warned", "skipped"}: how many checks have each status."""
        return counts(self.checks)

    def extend(self, checks: Iterable[Check]) -> None:
        self.checks.extend(checks)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": self.kind, "ok": self.ok}
        out.update(self.extra)
        out["summary"] = self.counts()
        if self.strict:
            out["strict"] = True
        out["checks"] = [c.to_dict() for c in self.checks]
        return out


_MARK = {"pass": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


_WORD = {"pass": "passed", "fail": "failed", "warn": "warned", "skip": "skipped"}
Paint = Callable[[str, Status], str]  # (text, status) -> the text coloured for a terminal


def counts(checks: Iterable[Check]) -> dict[str, int]:
    out = {"passed": 0, "failed": 0, "warned": 0, "skipped": 0}
    for c in checks:
        out[_WORD[c.status]] += 1
    return out


def summary_line(checks: Iterable[Check], *, strict: bool = False) -> str:
    """ "31 passed, 0 failed, 2 skipped" (", 1 warning(s)" when there are warnings)."""
    n = counts(checks)
    line = f"{n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped"
    if n["warned"]:
        line += f", {n['warned']} warning" + ("s" if n["warned"] != 1 else "")
    if strict and n["skipped"]:
        line += " (--strict: skipped checks fail)"
    return line


def render_checks(
    checks: Iterable[Check],
    *,
    failed_only: bool = False,
    paint: Paint | None = None,
    strict: bool = False,
) -> str:
    """A readable table: one line a check, status first; failures first (with --strict the
    skipped checks count as failures), then the rest in their order. failed_only keeps only
    the failures."""
    bad = ("fail", "skip") if strict else ("fail",)
    rows = list(checks)
    rows = [c for c in rows if c.status in bad] + (
        [] if failed_only else [c for c in rows if c.status not in bad]
    )
    if not rows:
        return "(no failed checks)" if failed_only else "(no checks)"
    width = max(len(c.id) for c in rows)

    def mark(c: Check) -> str:
        m = f"[{_MARK[c.status]}]"
        return paint(m, c.status) if paint is not None else m

    return "\n".join(f"{mark(c)} {c.id.ljust(width)}  {c.message}" for c in rows)


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)
