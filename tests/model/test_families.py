"""The model view and the family registry: transformers-5 spellings read everywhere, and a
family added as one module + one registry line is patched, validated and planned."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import Result

from conftest import QWENPREP_BIN, TINY
from qwenprep.model.view import ModelView

CliFn = Callable[..., Result]


def _transformers5(cfg: dict[str, Any]) -> dict[str, Any]:
    """How transformers 5 writes a Qwen3-MoE config on save (FACTS: num_local_experts, dtype,
    rope_parameters with rope_theta inside)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if k == "num_experts":
            out["num_local_experts"] = v
        elif k == "torch_dtype":
            out["dtype"] = v
        elif k in ("rope_scaling", "rope_theta"):
            continue
        else:
            out[k] = v
    out["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    return out


def test_view_reads_aliases_rope_styles_and_nesting() -> None:
    cfg = json.loads((TINY / "config.json").read_text())
    v4, v5 = ModelView(cfg), ModelView(_transformers5(cfg))
    for v in (v4, v5):
        assert v.get("num_experts") == cfg["num_experts"]
        assert v.get("torch_dtype") == "bfloat16"
        assert v.effective_rope()["rope_theta"] == cfg["rope_theta"]
        assert v.family.name == "qwen3-moe"
    assert v4.rope_style == "rope_scaling" and v5.rope_style == "rope_parameters"
    assert v5.rope_theta_pointer == "$.rope_parameters.rope_theta"
    nested = ModelView({"model_type": "qwen3_moe", "text_config": _transformers5(cfg)})
    assert nested.nested and nested.pointer("rope_parameters") == "$.text_config.rope_parameters"
    assert nested.get("num_experts") == cfg["num_experts"]
    whole = nested.with_text({"a": 1})
    assert whole == {"model_type": "qwen3_moe", "text_config": {"a": 1}}


def test_a_transformers5_checkpoint_goes_through_every_command(tmp_path: Path) -> None:
    src = tmp_path / "t5"
    shutil.copytree(TINY, src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(_transformers5(cfg), indent=2))
    run = [str(QWENPREP_BIN)]
    for args in (
        ["verify", str(src)],
        ["validate", str(src)],
        ["plan", str(src), "--gpus", "1", "--kv-memory", "2GiB"],
    ):
        r = subprocess.run(run + args, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    ov = tmp_path / "ov"
    r = subprocess.run(
        run + ["patch", str(src), "-c", "1m", "-o", str(ov)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    patched = json.loads((ov / "config.json").read_text())
    assert patched["rope_parameters"] == {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 262144,
        "rope_theta": cfg["rope_theta"],
    }
    assert "num_local_experts" in patched and "num_experts" not in patched
    r = subprocess.run(run + ["validate", str(ov)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout


TOY = '''
"""A throwaway family: what CONTRIBUTING.md's recipe says a new family is."""
from qwenprep.model.families.base import Family, ServeProfile

FAMILY = Family(
    name="toy",
    title="Toy (test only)",
    model_types=frozenset({"toy_qwen"}),
    schema=SCHEMA,
    native_context=8192,
    max_yarn_factor=8.0,
    profiles=(ServeProfile("toy", lambda view, names: True, tp=1, tool_parser="hermes"),),
)
'''


@pytest.fixture
def toy_family(tmp_path: Path) -> Any:
    from qwenprep.model import families
    from qwenprep.util.schemas import load_schema

    schema = dict(load_schema("qwen3-config"))
    schema["properties"] = dict(schema["properties"], model_type={"const": "toy_qwen"})
    schema["allOf"] = []
    (tmp_path / "toy.schema.json").write_text(json.dumps(schema))
    mod = tmp_path / "toy_family.py"
    mod.write_text(
        textwrap.dedent(TOY).replace(
            "schema=SCHEMA", f"schema={str(tmp_path / 'toy.schema.json')!r}"
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import toy_family  # type: ignore[import-not-found]

        families.register(toy_family.FAMILY)  # the one registry line
        yield toy_family.FAMILY
        families.unregister(toy_family.FAMILY)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("toy_family", None)


def test_a_new_family_is_one_module_and_one_registry_line(
    cli: CliFn, tmp_path: Path, toy_family: Any
) -> None:
    src = tmp_path / "toy"
    shutil.copytree(TINY, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(model_type="toy_qwen", max_position_embeddings=8192)
    cfg.pop("num_experts")
    cfg.pop("num_experts_per_tok")
    cfg.pop("moe_intermediate_size")
    (src / "config.json").write_text(json.dumps(cfg, indent=2))
    r = cli("validate", str(src))
    assert r.exit_code == 0, r.output
    ov = tmp_path / "ov"
    r = cli("patch", str(src), "-c", "64k", "-o", str(ov), "--json")  # factor 8: the family's
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["factor"] == 8.0
    assert json.loads((ov / "config.json").read_text())["rope_scaling"] == {
        "rope_type": "yarn",
        "factor": 8.0,
        "original_max_position_embeddings": 8192,
    }
    assert cli("validate", str(ov)).exit_code == 0
    r = cli("plan", str(ov), "--gpus", "1", "--kv-memory", "1GiB", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["context"] == 65536
    from qwenprep.model.profile import model_profile

    assert (
        model_profile(ov, json.loads((ov / "config.json").read_text()), None).tool_parser
        == "hermes"
    )


def test_an_unknown_family_is_refused_naming_what_could_not_be_mapped(
    cli: CliFn, tmp_path: Path
) -> None:
    src = tmp_path / "vl"
    shutil.copytree(TINY, src)
    cfg = json.loads((src / "config.json").read_text())
    nested = {"model_type": "qwen9_vl", "text_config": dict(cfg, model_type="qwen9_text")}
    (src / "config.json").write_text(json.dumps(nested, indent=2))
    r = cli("patch", str(src), "-c", "1m", "-o", str(tmp_path / "ov"))
    assert r.exit_code == 3
    assert "model_type is 'qwen9_vl'; qwenprep knows these families" in r.stderr
    assert not (tmp_path / "ov").exists()
