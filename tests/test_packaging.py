"""The package as users get it: wheel contents, entry points, start-up cost, documentation."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import QWENPREP_BIN, REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
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
            str(out),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("qwenprep-*.whl")
    return whl


def test_wheel_ships_schemas_and_tiny_checkpoints(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for schema in (REPO / "schemas").glob("*.json"):
        assert f"qwenprep/schemas/{schema.name}" in names
    assert "qwenprep/_examples/tiny-qwen3-coder/model.safetensors" in names
    assert "qwenprep/_examples/tiny-qwen3-coder-fp8/model.safetensors.index.json" in names


def test_installed_wheel_loads_its_schemas(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    code = (
        "import json, qwenprep.util.schemas as s, qwenprep.ops.demo as d; "
        "print(json.dumps([str(s.schema_dir()), sorted(p.name for p in "
        "s.schema_dir().glob('*.json')), str(d.embedded_checkpoint()), "
        "s.load_schema('manifest')['title']]))"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    sdir, names, tiny, title = json.loads(r.stdout)
    assert sdir == str(target / "qwenprep" / "schemas")
    assert names == sorted(p.name for p in (REPO / "schemas").glob("*.json"))
    assert tiny == str(target / "qwenprep" / "_examples" / "tiny-qwen3-coder")
    assert title == "qwenprep overlay manifest"


def _commands() -> list[str]:
    from qwenprep.cli import cli

    return sorted(cli.commands)


def test_every_command_has_help_and_is_documented() -> None:
    from click.testing import CliRunner

    from qwenprep.cli import cli

    readme = (REPO / "README.md").read_text()
    for name in _commands():
        r = CliRunner().invoke(cli, [name, "--help"])
        assert r.exit_code == 0, name
        assert cli.commands[name].help, f"{name} has no help text"
        assert re.search(rf"qwenprep {name}\b", readme), f"README does not document {name}"


def test_help_imports_no_engine() -> None:
    code = (
        "import sys; from qwenprep.cli import cli; from click.testing import CliRunner; "
        "CliRunner().invoke(cli, ['--help']); CliRunner().invoke(cli, ['patch', '--help']); "
        "print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_patch_imports_no_engine(qwen_src: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from qwenprep.cli import cli; from click.testing import CliRunner; "
        f"r = CliRunner().invoke(cli, ['patch', {str(qwen_src)!r}, '-c', '1m', '-o', "
        f"{str(tmp_path / 'o')!r}]); assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_console_script_version_and_module() -> None:
    from qwenprep import __version__

    r = subprocess.run([str(QWENPREP_BIN), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"qwenprep, version {__version__}"
    r = subprocess.run([sys.executable, "-m", "qwenprep", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "Exit codes: 0 ok, 1 checks failed" in r.stdout


def test_unknown_command_is_usage_error() -> None:
    r = subprocess.run([str(QWENPREP_BIN), "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and "No such command 'frobnicate'" in r.stderr


def test_usage_errors_keep_the_json_contract() -> None:
    for argv in (
        ["patch", "--json"],
        ["patch", "x", "-o", "y", "--json"],
        ["validate", "--bogus", "--json"],
    ):
        r = subprocess.run([str(QWENPREP_BIN), *argv], capture_output=True, text=True)
        assert r.returncode == 2, argv
        out = json.loads(r.stdout)
        assert out["ok"] is False and out["error"]["exit_code"] == 2
        assert "Usage: qwenprep" in r.stderr
    r = subprocess.run([str(QWENPREP_BIN), "patch"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""


def test_help_lists_commands_in_workflow_order() -> None:
    r = subprocess.run([str(QWENPREP_BIN), "--help"], capture_output=True, text=True, check=True)
    listed = [
        line.split()[0] for line in r.stdout.split("Commands:")[1].splitlines() if line.strip()
    ]
    assert listed == [
        "fetch",
        "verify",
        "patch",
        "validate",
        "plan",
        "check",
        "serve",
        "list",
        "revert",
        "demo",
    ]
    assert "..." not in r.stdout.split("Commands:")[1]  # every one-line summary fits
