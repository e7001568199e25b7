"""Checks as data, and their rendering for people and for pipelines."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Literal

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

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def extend(self, checks: Iterable[Check]) -> None:
        self.checks.extend(checks)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": self.kind, "ok": self.ok}
        out.update(self.extra)
        out["checks"] = [c.to_dict() for c in self.checks]
        return out


_MARK = {"pass": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def render_checks(checks: Iterable[Check]) -> str:
    """A readable table: one line a check, status first."""
    rows = list(checks)
    if not rows:
        return "(no checks)"
    width = max(len(c.id) for c in rows)
    return "\n".join(f"[{_MARK[c.status]}] {c.id.ljust(width)}  {c.message}" for c in rows)


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)
