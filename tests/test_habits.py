"""The project's habits: one version, a typed package, and the import rules `./dev lint` runs
(tools/check_imports.py: no new import cycle, only qwenprep/cli/ imports click)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import qwenprep
from conftest import REPO

try:
    import tomllib
except ImportError:  # Python 3.10: hatchling (test extra) brings tomli
    import tomli as tomllib  # type: ignore[no-redef]

CHECKER = REPO / "tools" / "check_imports.py"


# ------------------------------------------------------------------ the version, in one place
def test_installed_metadata_version_is_the_package_version() -> None:
    assert importlib.metadata.version("qwenprep") == qwenprep.__version__


def test_pyproject_reads_the_version_from_the_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"], "the version is written in two places"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "qwenprep/_version.py"


def test_wheel_carries_the_version_and_py_typed(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (whl,) = tmp_path.glob("qwenprep-*.whl")
    assert whl.name.startswith(f"qwenprep-{qwenprep.__version__}-")
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        assert "qwenprep/py.typed" in names
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        lines = z.read(meta).decode().splitlines()
    assert f"Version: {qwenprep.__version__}" in lines


# ------------------------------------------------------------------ shipped data, one way
def test_shipped_data_rule_mirrors_the_wheel_layout() -> None:
    from qwenprep.util.schemas import SHIPPED, shipped_dir

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    force = project["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    seen = set()
    for src, dst in force.items():
        package, name, *_ = dst.split("/")
        assert package == "qwenprep" and name in SHIPPED, (src, dst)
        assert src.split("/")[0] == SHIPPED[name], (src, dst)
        assert Path(dst).relative_to(f"qwenprep/{name}") == Path(src).relative_to(SHIPPED[name])
        seen.add(name)
    assert seen == set(SHIPPED)
    # in this checkout (an editable install), the repository's folders
    assert shipped_dir("schemas") == REPO / "schemas"
    assert shipped_dir("_examples") == REPO / "examples"


# ------------------------------------------------------------------ the import rules
def _check(root: Path | None = None, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(CHECKER), *args]
    if root is not None:
        argv += ["--root", str(root)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def _tree(root: Path, files: dict[str, str], allowed: str | None = None) -> Path:
    for name, text in {"qwenprep/__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    if allowed is not None:
        (root / "tools").mkdir(exist_ok=True)
        (root / "tools" / "import_cycles_allowed.txt").write_text(textwrap.dedent(allowed))
    return root


def test_the_repository_keeps_its_import_rules() -> None:
    r = _check()
    assert r.returncode == 0, r.stderr
    assert "import rules ok" in r.stderr


def test_imports_flow_down_the_layers(tmp_path: Path) -> None:
    """Rule 3: a module imports from its layer or below; engines never import each other; the
    probes import nothing of qwenprep; the exceptions file only shrinks."""
    files = {
        "qwenprep/model/__init__.py": "",
        "qwenprep/model/view.py": "def f():\n    from qwenprep.ops.patch import g\n",
        "qwenprep/ops/__init__.py": "",
        "qwenprep/ops/patch.py": "def g(): pass\n",
        "qwenprep/engines/__init__.py": "",
        "qwenprep/engines/sglang/__init__.py": "",
        "qwenprep/engines/sglang/gate.py": "from qwenprep.engines.vllm import core\n",
        "qwenprep/engines/sglang/backend.py": "from qwenprep.ops import patch\n",  # sits with ops
        "qwenprep/engines/vllm/__init__.py": "",
        "qwenprep/engines/vllm/core.py": "",
        "qwenprep/_probes/vllm_probe.py": "import qwenprep.model.view\n",
    }
    r = _check(_tree(tmp_path, files))
    assert r.returncode == 1
    assert (
        "qwenprep/model/view.py:2: model.view imports ops.patch (in f(): from qwenprep.ops.patch "
        "import g); model is below ops" in r.stderr
    )
    assert "engines/sglang and engines/vllm never import each other" in r.stderr
    assert "qwenprep/_probes/vllm_probe.py:1:" in r.stderr and "imports nothing" in r.stderr
    assert "backend.py" not in r.stderr and "import rules: 3 problem(s)" in r.stderr
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "layers_allowed.txt").write_text(
        "model.view -> ops.patch\nengines.sglang.gate -> engines.vllm.core\n"
        "_probes.vllm_probe -> model.view\nutil.gone -> model.view  # fixed since\n"
    )
    r = _check(tmp_path)
    assert r.returncode == 1 and "import rules: 1 problem(s)" in r.stderr
    assert "layers_allowed.txt:4: util.gone -> model.view no longer breaks" in r.stderr


def test_a_cycle_through_a_function_level_import_fails_naming_the_lines(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "qwenprep/a.py": "from qwenprep.b import g\n",
            "qwenprep/b.py": """\
            def g():
                from qwenprep import a
                return a
            """,
            "qwenprep/c.py": "import qwenprep.a\n",  # depends on the cycle, is not part of it
        },
    )
    r = _check(root)
    assert r.returncode == 1
    assert "new import cycle" in r.stderr
    assert "a -> b -> a" in r.stderr
    assert "qwenprep/a.py:1: from qwenprep.b import g  (top level)" in r.stderr
    assert "qwenprep/b.py:2: from qwenprep import a  (in g())" in r.stderr
    assert "qwenprep/c.py" not in r.stderr


def test_relative_imports_count_and_type_checking_imports_do_not(tmp_path: Path) -> None:
    files = {
        "qwenprep/sub/__init__.py": "",
        "qwenprep/sub/x.py": "from . import y\n",
        "qwenprep/sub/y.py": """\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from qwenprep.sub.x import T
            """,
    }
    assert _check(_tree(tmp_path / "ok", files)).returncode == 0
    files["qwenprep/sub/y.py"] = "def f():\n    from ..sub import x\n"
    r = _check(_tree(tmp_path / "bad", files))
    assert r.returncode == 1 and "sub.x -> sub.y -> sub.x" in r.stderr


def test_allowed_cycles_pass_and_a_new_one_beside_them_fails(tmp_path: Path) -> None:
    files = {
        "qwenprep/a.py": "import qwenprep.b\n",
        "qwenprep/b.py": "def f():\n    import qwenprep.a\n",
    }
    allowed = "# to be removed\na -> b\nb -> a\n"
    r = _check(_tree(tmp_path, files, allowed))
    assert r.returncode == 0, r.stderr
    assert "2 known edge(s) in 1 cycle group(s)" in r.stderr
    # a third module joining the known cycle is a new cycle: only its edges are reported
    _tree(
        tmp_path,
        {
            **files,
            "qwenprep/c.py": "def h():\n    from qwenprep import a\n",
            "qwenprep/b.py": "import qwenprep.c\ndef f():\n    import qwenprep.a\n",
        },
    )
    r = _check(tmp_path)
    assert r.returncode == 1
    assert "new import cycle: b imports c" in r.stderr
    assert "new import cycle: c imports a" in r.stderr
    assert "new import cycle: a imports b" not in r.stderr


def test_one_import_that_joins_two_cycles_is_named_alone(tmp_path: Path) -> None:
    files = {
        "qwenprep/a.py": "import qwenprep.b\nimport qwenprep.x\n",
        "qwenprep/b.py": "import qwenprep.x\ndef f():\n    import qwenprep.a\n",
        "qwenprep/x.py": "import qwenprep.y\n",
        "qwenprep/y.py": "def g():\n    import qwenprep.x\n",
    }
    allowed = "a -> b\nb -> a\nx -> y\ny -> x\n"
    assert _check(_tree(tmp_path, files, allowed)).returncode == 0
    # one new import, y -> a, puts the old a -> x and b -> x into a cycle too: it alone is the
    # import to remove, and it is the one named
    files["qwenprep/y.py"] += "    import qwenprep.a\n"
    r = _check(_tree(tmp_path, files))
    assert r.returncode == 1
    assert "new import cycle: y imports a" in r.stderr
    assert "a imports x" not in r.stderr and "b imports x" not in r.stderr
    assert "2 other import(s) are in a cycle only through" in r.stderr
    assert r.stderr.strip().endswith("import rules: 1 problem(s) (tools/check_imports.py)")


def test_an_allowed_edge_that_no_longer_closes_a_cycle_must_be_deleted(tmp_path: Path) -> None:
    files = {"qwenprep/a.py": "import qwenprep.b\n", "qwenprep/b.py": ""}
    r = _check(_tree(tmp_path, files, "a -> b\nb -> a\n"))
    assert r.returncode == 1
    assert (
        "tools/import_cycles_allowed.txt:1: a still imports, but no longer in a cycle with, b"
    ) in r.stderr
    assert "tools/import_cycles_allowed.txt:2: b no longer imports a" in r.stderr
    assert "delete this line" in r.stderr


def test_only_cli_imports_click(tmp_path: Path) -> None:
    files = {
        "qwenprep/cli/__init__.py": "import click\nfrom qwenprep.cli import serving\n",
        "qwenprep/cli/serving.py": "import click\n",
        "qwenprep/core.py": "def f():\n    from click import echo\n    echo('x')\n",
        "qwenprep/cli.py": "import click\n",  # a module beside the package is not it
    }
    r = _check(_tree(tmp_path, files))
    assert r.returncode == 1
    assert "qwenprep/core.py:2: imports click; only qwenprep/cli/ may" in r.stderr
    assert "qwenprep/cli.py:1: imports click" in r.stderr
    assert "qwenprep/cli/" + "__init__.py:" not in r.stderr
    assert "qwenprep/cli/serving.py:" not in r.stderr
    del files["qwenprep/core.py"], files["qwenprep/cli.py"]
    assert _check(_tree(tmp_path / "ok", files)).returncode == 0


def test_the_command_line_is_a_package_of_small_modules() -> None:
    from qwenprep import cli

    pkg = REPO / "qwenprep" / "cli"
    assert Path(cli.__file__) == pkg / "__init__.py"
    assert not (REPO / "qwenprep" / "cli.py").exists()
    for f in sorted(pkg.glob("*.py")):
        assert len(f.read_text().splitlines()) <= 600, f
    assert sorted(cli.cli.commands) == [
        "check",
        "demo",
        "fetch",
        "list",
        "patch",
        "plan",
        "revert",
        "serve",
        "validate",
        "verify",
    ]


def test_the_repository_has_no_import_cycle_and_allows_none() -> None:
    r = _check(None, "--list")
    assert r.returncode == 0 and r.stdout == "", r.stdout
    assert "0 known edge(s)" in r.stderr
    allowed = (REPO / "tools" / "import_cycles_allowed.txt").read_text()
    assert not [ln for ln in allowed.splitlines() if ln.split("#")[0].strip()]


def test_list_prints_every_known_cycle_with_its_import_lines(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "qwenprep/a.py": "from qwenprep.b import g\n",
            "qwenprep/b.py": "def g():\n    from qwenprep import a\n    return a\n",
        },
        allowed="a -> b\nb -> a\n",
    )
    r = _check(root, "--list")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("cycle among: a, b"), r.stdout
    shown = [ln for ln in r.stdout.splitlines() if ln.startswith("    ")]
    assert len(shown) == 2
    for line in shown:
        path, _, rest = line.strip().partition(": ")
        file, _, lineno = path.partition(":")
        assert "import" in rest and lineno.isdigit()
        source = (root / file).read_text().splitlines()[int(lineno) - 1]
        assert rest.split("  (")[0] == source.strip()


@pytest.mark.parametrize("argv", [["--bogus"], ["--root"]])
def test_checker_usage_errors_exit_2(argv: list[str]) -> None:
    r = subprocess.run([sys.executable, str(CHECKER), *argv], capture_output=True, text=True)
    assert r.returncode == 2 and "Usage:" in r.stderr


def test_no_module_is_over_600_lines() -> None:
    """The size rule (issue 10), on the code as `ruff format` lays it out (./dev lint checks the
    formatting): a module that outgrows it is split along a seam, not compressed."""
    big = {
        str(f.relative_to(REPO)): n
        for f in sorted((REPO / "qwenprep").rglob("*.py"))
        if (n := len(f.read_text(encoding="utf-8").splitlines())) > 600
    }
    assert not big, big


def test_tests_never_depend_on_wall_clock_speed() -> None:
    """A CI that fails at random drops good work (issue 20): no hypothesis deadline anywhere
    (the suite's profile has none and no test sets one), no timing assert, and pytest refuses
    unknown markers, passing xfails and qwenprep's own warnings."""
    import re

    from hypothesis import settings

    assert settings().deadline is None
    timed = re.compile(r"deadline=(?!None)|assert [^\n]*(elapsed|took|duration)[^\n]*<")
    found = [
        f"{p.name}:{n}"
        for p in sorted((REPO / "tests").rglob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if timed.search(line) and p.name != "test_habits.py"
    ]
    assert found == [], found
    pytest_options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]
    ini = pytest_options["ini_options"]
    assert "--strict-markers" in ini["addopts"].split() and ini["xfail_strict"] is True
    assert "error:::qwenprep" in ini["filterwarnings"]


def test_no_test_folder_shadows_a_package_the_tests_import() -> None:
    """pytest puts test folders on sys.path: a folder tests/engines/vllm made `import vllm`
    (and pytest.importorskip("vllm")) find the tests themselves where vLLM is not installed,
    so the no-engine pass ran the vLLM tests instead of skipping them."""
    shadowing = {"vllm", "sglang", "torch", "transformers", "huggingface_hub", "numpy", "yaml"}
    found = sorted(
        p.relative_to(REPO).as_posix()
        for p in (REPO / "tests").rglob("*")
        if p.is_dir() and p.name in shadowing
    )
    assert found == []
