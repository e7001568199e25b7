"""Engines behind one interface, found in one registry (issue 22): both engines satisfy the
protocol, the commands and the API reach an engine only through the registry, and
CONTRIBUTING.md's recipe "add an engine" (a package with a backend module holding ENGINE,
and one registry line) is walked here with a throwaway engine."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, TINY
from qwenprep import api, engines
from qwenprep.engines.base import Engine
from qwenprep.errors import UsageError

TOY = """
from qwenprep.util.report import Check


class ToyPlan:
    fits = True

    def to_dict(self):
        return {"serving_engine": "toy", "fits": True, "max_total_num_tokens": 42}


class ToyEngine:
    name = "toy"
    display = "Toy"
    emits_artefacts = False
    charts = False

    def plan_refusal(self, options):
        return None if options.dcp == 1 else "--dcp is vLLM's; this plan is Toy's."

    def kv_plan(self, model, options):
        return ToyPlan(), []

    def readback_checks(self, path, *, python):
        return [Check("engine.found", "pass", f"Toy read {path.name} back")]

    def check_hooks(self):
        return None

    def serve_plan(self, path, req, *, python, dry_run):
        raise NotImplementedError

    def start(self, plan, *, out, log_file, say):
        raise NotImplementedError


ENGINE = ToyEngine()
"""


def test_every_registered_engine_is_behind_the_interface() -> None:
    assert engines.ENGINES == ("vllm", "sglang")
    for name in engines.ENGINES:
        engine = engines.engine_for(name)
        assert isinstance(engine, Engine) and engine.name == name
    with pytest.raises(UsageError, match="choose vllm or sglang"):
        engines.engine_for("tgi")


def test_no_command_branches_on_an_engines_name() -> None:
    """The CLI and the API choose an engine only through the registry."""
    branch = re.compile(
        r"""(==|!=|\bin\b)\s*\(?["'](vllm|sglang)["']|["'](vllm|sglang)["']\s*(==|!=)"""
    )
    for path in [*sorted((REPO / "qwenprep" / "cli").glob("*.py")), REPO / "qwenprep" / "api.py"]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not branch.search(line), f"{path.name}:{n}: {line.strip()}"


def test_add_an_engine_is_one_package_and_one_registry_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "toyengine"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""A throwaway engine."""\n')
    (pkg / "backend.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(engines.REGISTRY, "toy", "toyengine.backend")  # the one registry line
    assert isinstance(engines.engine_for("toy"), Engine)
    got = api.plan(TINY, context="1m", serving_engine="toy")
    assert got == {"serving_engine": "toy", "fits": True, "max_total_num_tokens": 42}
    with pytest.raises(UsageError, match="this plan is Toy's"):
        api.plan(TINY, serving_engine="toy", dcp=2)
    got = api.verify(TINY, engine=True, serving_engine="toy")
    assert got["checks"][-1]["message"] == "Toy read tiny-qwen3-coder back"
    monkeypatch.setenv("QWENPREP_SERVING_ENGINE", "toy")  # its variable chooses it too
    assert api.plan(TINY)["serving_engine"] == "toy"
    monkeypatch.delitem(engines.REGISTRY, "toy")  # gone from the registry: refused by name
    with pytest.raises(UsageError, match="QWENPREP_SERVING_ENGINE 'toy': choose vllm or sglang"):
        api.plan(TINY)
