"""qwenprep validate: schema + invariants, every violation collected with its JSON path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import Result

from qwenprep.util.schemas import load_schema, schema_dir

CliFn = Callable[..., Result]


def _write(src: Path, cfg: dict[str, Any]) -> None:
    (src / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def _fails(r: Result) -> dict[str, dict[str, Any]]:
    out = json.loads(r.stdout)
    return {c["id"]: c for c in out["checks"] if c["status"] == "fail"}


def test_release_config_is_valid(cli: CliFn, qwen_src: Path) -> None:
    r = cli("validate", str(qwen_src), "--json")
    assert r.exit_code == 0
    out = json.loads(r.stdout)
    assert out["ok"] is True and out["schema_version"] == 1
    assert {c["id"] for c in out["checks"]} >= {
        "schema",
        "invariant.context_needs_rope",
        "invariant.rope_theta",
        "invariant.head_dim",
        "invariant.quantization",
    }


def test_tiny_checkpoints_are_valid(cli: CliFn) -> None:
    from conftest import TINY, TINY_FP8

    for p in (TINY, TINY_FP8):
        r = cli("validate", str(p))
        assert r.exit_code == 0, r.output
        assert r.stdout.rstrip().endswith("valid")


def test_yarn_length_mismatch(cli: CliFn, qwen_src: Path, ref_config: dict[str, Any]) -> None:
    cfg = dict(
        ref_config,
        rope_scaling={
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 262144,
        },
    )
    _write(qwen_src, cfg)  # the seed-era recipe without the mpe change
    r = cli("validate", str(qwen_src), "--json")
    assert r.exit_code == 1
    f = _fails(r)["invariant.yarn_length"]
    assert f["path"] == "$.max_position_embeddings"
    assert (
        "max_position_embeddings is 262144 but YaRN factor 4 x original 262144 = 1048576"
        in f["message"]
    )
    assert f["message"].startswith(f"{qwen_src / 'config.json'}:13: ")


def test_context_above_native_needs_rope(
    cli: CliFn, qwen_src: Path, ref_config: dict[str, Any]
) -> None:
    _write(qwen_src, dict(ref_config, max_position_embeddings=1048576))
    r = cli("validate", str(qwen_src))
    assert r.exit_code == 1
    assert ":13: max_position_embeddings is 1048576 but no rope scaling is set" in r.stdout
    assert "Hint: qwenprep patch MODEL --context 1m --out DIR" in r.stdout
    assert r.stdout.rstrip().endswith("INVALID: see the FAIL lines above")


def test_rope_parameters_without_theta(
    cli: CliFn, qwen_src: Path, ref_config: dict[str, Any]
) -> None:
    cfg = {k: v for k, v in ref_config.items() if k not in ("rope_theta", "rope_scaling")}
    cfg["max_position_embeddings"] = 1048576
    cfg["rope_parameters"] = {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 262144,
    }
    _write(qwen_src, cfg)
    r = cli("validate", str(qwen_src), "--json")
    assert r.exit_code == 1
    f = _fails(r)
    assert list(f) == ["invariant.rope_theta"]
    assert f["invariant.rope_theta"]["path"] == "$.rope_parameters.rope_theta"
    assert "default base 10000" in f["invariant.rope_theta"]["message"]


def test_missing_head_dim_and_many_violations_collected(
    cli: CliFn, qwen_src: Path, ref_config: dict[str, Any]
) -> None:
    cfg = {k: v for k, v in ref_config.items() if k not in ("head_dim", "rope_theta")}
    cfg["num_experts"] = "160"
    cfg["quantization_config"] = {
        "quant_method": "fp8",
        "weight_block_size": [128],
        "modules_to_not_convert": ["model.layers.70.mlp.gate"],
    }
    _write(qwen_src, cfg)
    r = cli("validate", str(qwen_src), "--json")
    assert r.exit_code == 1
    out = json.loads(r.stdout)
    paths = sorted(c.get("path", "") for c in out["checks"] if c["status"] == "fail")
    assert paths == [
        "$",
        "$.head_dim",
        "$.num_experts",
        "$.quantization_config",
        "$.quantization_config.weight_block_size",
        "$.rope_theta",
    ]
    msgs = " | ".join(c["message"] for c in out["checks"])
    assert "'head_dim' is a required property" in msgs
    assert "$.num_experts: is '160' (str); expected integer" in msgs
    assert "lm_head is not in modules_to_not_convert" in msgs
    assert "names layers beyond 62" in msgs


def test_overlay_intent_is_checked(cli: CliFn, qwen_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    assert cli("patch", str(qwen_src), "-c", "1m", "-o", str(out)).exit_code == 0
    cfg = json.loads((out / "config.json").read_text())
    cfg["max_position_embeddings"] = 524288
    cfg["rope_scaling"]["factor"] = 2.0
    (out / "config.json").write_text(json.dumps(cfg))
    r = cli("validate", str(out), "--json")
    assert r.exit_code == 1
    assert (
        "differs from the manifest's target_context 1048576"
        in _fails(r)["invariant.manifest"]["message"]
    )


def test_malformed_json(cli: CliFn, qwen_src: Path) -> None:
    (qwen_src / "config.json").write_text('{"a": 1,,}')
    r = cli("validate", str(qwen_src), "--json")
    assert r.exit_code == 3
    assert json.loads(r.stdout)["error"]["message"].endswith(
        "config.json:1:9: malformed JSON: Expecting property name enclosed in double quotes."
    )


def test_missing_path(cli: CliFn, tmp_path: Path) -> None:
    r = cli("validate", str(tmp_path / "x"))
    assert r.exit_code == 3 and "no such directory" in r.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in schema_dir().glob("*.json")))
def test_shipped_schemas_are_valid_2020_12(name: str) -> None:
    from jsonschema import Draft202012Validator

    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
