#!/usr/bin/env python3
"""The import rules of qwenprep, checked by `./dev lint`.

1. No import cycles between qwenprep modules. An import counts wherever it is written: at the
   top of a module or inside a function (a lazy import is still a dependency, and a cycle of
   lazy imports is still a knot in the design). Imports under `if TYPE_CHECKING:` are not
   counted: they never run.
   The cycles that existed when this rule came in are listed, edge by edge, in
   tools/import_cycles_allowed.txt, to be removed. An edge (`a -> b`: module a imports
   module b) that closes a cycle and is not in that file fails the check; so does a line of
   that file whose edge no longer closes a cycle (delete the line: the list only shrinks).
2. Only the qwenprep/cli/ package imports click: the core never talks to the terminal.
3. Imports flow one way, down the layers (LAYERS: cli -> api -> ops -> checks -> planning ->
   engines -> request -> model -> util -> errors): a module imports from its own layer or one
   below, never above. An engine's `backend` module (engines/NAME/backend.py) is that engine's
   face to ops/ and sits with it. Besides: engines/vllm and engines/sglang never import each
   other, the families (model/families) never import an engine, and the probe scripts
   (_probes/) import nothing of qwenprep (they run by path in the engine's interpreter).
   The edges that broke this when the rule came in are listed in tools/layers_allowed.txt, to
   be removed; like the cycle list, it only shrinks.

Usage: python tools/check_imports.py [--list] [--root DIR]
  --list      print every import cycle (allowed or not) with the import lines, then check.
  --root DIR  check DIR/qwenprep against DIR/tools/import_cycles_allowed.txt (default: this
              repository; the tests use it on small made-up trees).
Exit 0 when the rules hold, 1 when one is broken (each problem says file:line and what to do),
2 on a usage error.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "qwenprep"
ALLOW_NAME = "tools/import_cycles_allowed.txt"
LAYERS_ALLOW_NAME = "tools/layers_allowed.txt"
LAYERS = (
    "cli",
    "api",
    "ops",
    "checks",
    "planning",
    "engines",
    "request",
    "model",
    "util",
    "errors",
)
ENGINE_PACKAGES = ("engines.vllm", "engines.sglang")
CLICK_HOME = f"{PACKAGE}/cli/"  # the command-line package


@dataclass(frozen=True)
class Import:
    src: str  # importing module, dotted, e.g. "qwenprep.planning.capacity"
    dst: str  # imported qwenprep module, dotted
    where: str  # "qwenprep/planning/capacity.py:42"
    scope: str  # "top level" or "in f()"
    text: str  # the import statement as written


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def short(module: str) -> str:
    """capacity for qwenprep.planning.capacity; qwenprep for the package itself."""
    return module[len(PACKAGE) + 1 :] if module.startswith(PACKAGE + ".") else module


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, path: Path, is_package: bool, known: set[str]) -> None:
        self.module, self.path, self.known = module, path, known
        self.package = module if is_package else module.rpartition(".")[0]
        self.rel = path.relative_to(ROOT).as_posix()
        self.source = path.read_text(encoding="utf-8").splitlines()
        self.functions: list[str] = []
        self.imports: list[Import] = []
        self.click: list[str] = []

    # -- scopes
    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:  # the else branch runs
                self.visit(child)
            return
        self.generic_visit(node)

    # -- imports
    def _closest(self, dotted: str) -> str | None:
        while dotted:
            if dotted in self.known:
                return dotted
            dotted = dotted.rpartition(".")[0]
        return None

    def _add(self, node: ast.stmt, dotted: str) -> None:
        if dotted == "click" or dotted.startswith("click."):
            if not self.rel.startswith(CLICK_HOME):
                self.click.append(f"{self.rel}:{node.lineno}")
            return
        if dotted != PACKAGE and not dotted.startswith(PACKAGE + "."):
            return
        target = self._closest(dotted)
        if target is None or target == self.module:
            return
        scope = f"in {self.functions[-1]}()" if self.functions else "top level"
        text = self.source[node.lineno - 1].strip()
        where = f"{self.rel}:{node.lineno}"
        if any(i.where == where and i.dst == target for i in self.imports):
            return  # one line per statement, however many names it imports
        self.imports.append(Import(self.module, target, f"{self.rel}:{node.lineno}", scope, text))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        for alias in node.names:
            # `from qwenprep import engine` names a module; `from qwenprep.x import f` does not
            full = f"{stem}.{alias.name}"
            self._add(node, full if full in self.known else stem)


def collect() -> tuple[list[Import], list[str], int]:
    mods = modules()
    known = set(mods)
    imports: list[Import] = []
    click: list[str] = []
    for name, path in mods.items():
        c = _Collector(name, path, path.name == "__init__.py", known)
        c.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        imports += c.imports
        click += c.click
    return imports, click, len(mods)


def components(edges: dict[tuple[str, str], list[Import]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                comp: set[str] = set()
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.add(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def cyclic_edges(edges: dict[tuple[str, str], list[Import]]) -> set[tuple[str, str]]:
    """The edges that lie on some cycle: both ends in one strongly connected component."""
    comps = components(edges)
    return {e for e in edges for comp in comps if e[0] in comp and e[1] in comp}


def shortest_cycle(
    edge: tuple[str, str], inside: set[str], edges: dict[tuple[str, str], list[Import]]
) -> list[str]:
    """The shortest cycle through EDGE within one component: [a, b, ..., a]."""
    a, b = edge
    prev: dict[str, str] = {b: b}
    queue = deque([b])
    while queue:
        node = queue.popleft()
        if node == a:
            break
        for x, y in sorted(edges):
            if x == node and y in inside and y not in prev:
                prev[y] = node
                queue.append(y)
    path = [a]
    while path[-1] != b:
        path.append(prev[path[-1]])
    path.reverse()  # b ... a
    return [a] + path


def layer_of(module: str) -> str | None:
    """The layer of MODULE (rule 3), or None for what stands outside the layers (the package,
    __main__, _version, the probes, testing/)."""
    parts = short(module).split(".")
    if len(parts) >= 3 and parts[0] == "engines" and parts[2] == "backend":
        return "ops"  # an engine's face to ops/
    return parts[0] if parts[0] in LAYERS else None


def _under(module: str, package: str) -> bool:
    s = short(module)
    return s == package or s.startswith(package + ".")


def layer_problem(imp: Import) -> str | None:
    """Why IMP breaks rule 3, or None."""
    if _under(imp.src, "_probes"):
        return (
            "a probe script runs by path in the engine's interpreter: it imports nothing "
            "of qwenprep"
        )
    for a, b in (ENGINE_PACKAGES, ENGINE_PACKAGES[::-1]):
        if _under(imp.src, a) and _under(imp.dst, b):
            return (
                f"{a.replace('.', '/')} and {b.replace('.', '/')} never import each other: "
                "move what both need to qwenprep/engines/ (engine-neutral)"
            )
    if _under(imp.src, "model.families") and _under(imp.dst, "engines"):
        return "a family never imports an engine (the engine reads the family)"
    src, dst = layer_of(imp.src), layer_of(imp.dst)
    if src is not None and dst is not None and LAYERS.index(dst) < LAYERS.index(src):
        return (
            f"{src} is below {dst} ({' -> '.join(LAYERS)}): move what it needs down, or pass "
            "it in as an argument"
        )
    return None


def read_allowed(name: str = ALLOW_NAME) -> dict[tuple[str, str], int]:
    allowed: dict[tuple[str, str], int] = {}
    allow_file = ROOT / name
    if not allow_file.exists():
        return allowed
    for n, line in enumerate(allow_file.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        a, sep, b = (part.strip() for part in line.partition("->"))
        if not sep or not a or not b:
            raise SystemExit(
                f"{name}:{n}: expected 'a -> b' (module names without '{PACKAGE}.'), got {line!r}"
            )
        allowed[
            (f"{PACKAGE}.{a}" if a != PACKAGE else a, f"{PACKAGE}.{b}" if b != PACKAGE else b)
        ] = n
    return allowed


def describe(cycle: list[str], edges: dict[tuple[str, str], list[Import]]) -> list[str]:
    lines = ["  " + " -> ".join(short(m) for m in cycle)]
    for a, b in zip(cycle, cycle[1:], strict=False):
        for imp in edges[(a, b)]:
            lines.append(f"    {imp.where}: {imp.text}  ({imp.scope})")
    return lines


def main(argv: list[str]) -> int:
    global ROOT
    args = list(argv)
    if "--root" in args:
        i = args.index("--root")
        if i + 1 >= len(args):
            print(__doc__, file=sys.stderr)
            return 2
        ROOT = Path(args.pop(i + 1)).resolve()
        args.pop(i)
    if any(arg != "--list" for arg in args):
        print(__doc__, file=sys.stderr)
        return 2
    if not (ROOT / PACKAGE).is_dir():
        print(f"error: no {PACKAGE}/ under {ROOT}", file=sys.stderr)
        return 2
    imports, click, n_modules = collect()
    edges: dict[tuple[str, str], list[Import]] = {}
    for imp in imports:
        edges.setdefault((imp.src, imp.dst), []).append(imp)
    comps = components(edges)
    cyclic = cyclic_edges(edges)
    allowed = read_allowed()
    allow_name = ALLOW_NAME
    problems: list[str] = []  # lines for people
    count = 0  # problems

    if "--list" in args:
        for comp in sorted(comps, key=lambda c: sorted(c)):
            print("cycle among: " + ", ".join(sorted(short(m) for m in comp)))
            for a, b in sorted(e for e in cyclic if e[0] in comp):
                mark = "" if (a, b) in allowed else "   [NOT ALLOWED]"
                print(f"  {short(a)} -> {short(b)}{mark}")
                for imp in edges[(a, b)]:
                    print(f"    {imp.where}: {imp.text}  ({imp.scope})")

    bad = cyclic - set(allowed)
    # The import(s) that, taken away alone, leave only allowed cycles: when one new import
    # joins two groups, it is named, not the dozens of old imports its cycle now runs through.
    culprits = {
        e for e in bad if cyclic_edges({k: v for k, v in edges.items() if k != e}) <= set(allowed)
    }
    shown = sorted(culprits or bad)
    for edge in shown:
        count += 1
        comp = next(c for c in comps if edge[0] in c)
        problems.append(
            f"new import cycle: {short(edge[0])} imports {short(edge[1])}, "
            f"which leads back to {short(edge[0])}:"
        )
        problems += describe(shortest_cycle(edge, comp, edges), edges)
        problems.append(
            "  what to do: move what both need into a module that imports neither "
            "(or pass it in as an argument); do not add the edge to "
            f"{allow_name}."
        )
    if culprits and len(bad) > len(culprits):
        problems.append(
            f"  ({len(bad) - len(culprits)} other import(s) are in a cycle only "
            "through the import(s) above; --list shows them all.)"
        )
    for edge, n in sorted(allowed.items(), key=lambda kv: kv[1]):
        if edge in cyclic:
            continue
        count += 1
        what = (
            "no longer imports"
            if edge not in edges
            else "still imports, but no longer in a cycle with,"
        )
        problems.append(
            f"{allow_name}:{n}: {short(edge[0])} {what} {short(edge[1])}: good; "
            "delete this line so the cycle cannot come back."
        )
    layer_allowed = read_allowed(LAYERS_ALLOW_NAME)
    broken: dict[tuple[str, str], str] = {}
    for imp in imports:
        why = layer_problem(imp)
        if why is None:
            continue
        broken[(imp.src, imp.dst)] = why
        if (imp.src, imp.dst) in layer_allowed:
            continue
        count += 1
        problems.append(
            f"{imp.where}: {short(imp.src)} imports {short(imp.dst)} ({imp.scope}: {imp.text}); "
            f"{why}. Do not add the edge to {LAYERS_ALLOW_NAME}."
        )
    for edge, n in sorted(layer_allowed.items(), key=lambda kv: kv[1]):
        if edge not in broken:
            count += 1
            problems.append(
                f"{LAYERS_ALLOW_NAME}:{n}: {short(edge[0])} -> {short(edge[1])} no longer breaks "
                "the layer rule: good; delete this line so it cannot come back."
            )
    for where in click:
        count += 1
        problems.append(
            f"{where}: imports click; only {CLICK_HOME} may (the core returns data "
            "and raises qwenprep.errors; the CLI prints and exits). Move the "
            "terminal code to qwenprep/cli/."
        )

    if problems:
        print("\n".join(problems), file=sys.stderr)
        print(f"import rules: {count} problem(s) (tools/check_imports.py)", file=sys.stderr)
        return 1
    known = len(cyclic)
    print(
        f"import rules ok: {n_modules} qwenprep modules, no new import "
        f"cycle ({known} known edge(s) in {len(comps)} cycle group(s) allowed by {allow_name}, "
        f"to be removed); layers in order ({len(layer_allowed)} known edge(s) allowed by "
        f"{LAYERS_ALLOW_NAME}, to be removed); click only in {CLICK_HOME}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
