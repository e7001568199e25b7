"""No config.json, however hostile at the fields capacity, integrity and engine read, makes
`verify`, `check`, `plan` or `serve --dry-run` end in a traceback; and serve refuses the same
version-dependent flags as check."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY
from qwenprep.engines.vllm.kv import ModelShape
from qwenprep.errors import InputError

BASE: dict[str, Any] = json.loads((TINY / "config.json").read_text())

# the fields kvrules.ModelShape, integrity's tensor-name checks and engine's launch plan read
TOP_FIELDS = [
    "num_key_value_heads",
    "num_attention_heads",
    "head_dim",
    "hidden_size",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "num_hidden_layers",
    "quantization_config",
    "rope_scaling",
    "rope_parameters",
    "max_position_embeddings",
    "torch_dtype",
    "vocab_size",
    "mlp_only_layers",
    "decoder_sparse_step",
    "intermediate_size",
]
NESTED = {
    "quantization_config": [
        "quant_method",
        "weight_block_size",
        "modules_to_not_convert",
        "activation_scheme",
    ],
    "rope_scaling": [
        "rope_type",
        "type",
        "factor",
        "original_max_position_embeddings",
        "rope_theta",
    ],
    "rope_parameters": [
        "rope_type",
        "type",
        "factor",
        "original_max_position_embeddings",
        "rope_theta",
    ],
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**6),
    st.sampled_from([0, -1, 2**63, 10**40]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, 0.5, 4.0]),
    st.text(max_size=6),
    st.sampled_from(["fp8", "yarn", "x", "bfloat16", "4"]),
)
hostile = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def hostile_configs(draw: st.DrawFn) -> dict[str, Any]:
    cfg = copy.deepcopy(BASE)
    cfg["quantization_config"] = {
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
        "modules_to_not_convert": ["lm_head"],
    }
    if draw(st.booleans()):
        cfg["rope_scaling"] = {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 262144,
        }
        cfg["max_position_embeddings"] = 1048576
    if draw(st.booleans()):
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000000}
    for key in draw(st.lists(st.sampled_from(TOP_FIELDS), min_size=1, max_size=3)):
        cfg[key] = draw(hostile)
    for parent, key in draw(
        st.lists(st.sampled_from([(p, k) for p, ks in NESTED.items() for k in ks]), max_size=3)
    ):
        if isinstance(cfg.get(parent), dict):
            cfg[parent][key] = draw(hostile)
    for key in draw(st.lists(st.sampled_from(TOP_FIELDS), max_size=2)):
        cfg.pop(key, None)
    return cfg


COMMANDS = [
    ("verify", "{p}", "--json"),
    ("check", "{p}", "--no-engine", "--json", "--gpus", "1", "--gpu-memory", "80GiB"),
    ("plan", "{p}", "--json", "--kv-memory", "1GiB", "--tp", "1"),
    ("serve", "{p}", "--dry-run", "--json"),
]


def _invoke(args: list[str]) -> Result:
    from qwenprep.cli import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("hostile") / "tiny"
    shutil.copytree(TINY, dest)
    return dest


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cfg=hostile_configs())
def test_hostile_config_never_tracebacks(hostile_dir: Path, cfg: dict[str, Any]) -> None:
    (hostile_dir / "config.json").write_text(json.dumps(cfg))
    for cmd in COMMANDS:
        args = [a.format(p=hostile_dir) for a in cmd]
        r = _invoke(args)
        assert r.exit_code in (0, 1, 2, 3), (args, r.output)
        out = json.loads(r.stdout)  # exactly one JSON object, nothing else
        assert isinstance(out, dict) and "ok" in out, (args, r.stdout)


def _write(src: Path, **changes: Any) -> Path:
    dest = src.parent / "bad"
    shutil.copytree(src, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg.update(changes)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_key_value_heads", "x"),
        ("num_experts", "4"),
        ("quantization_config", [1]),
        ("vocab_size", -1),
        ("moe_intermediate_size", 2.5),
        ("torch_dtype", 7),
    ],
)
def test_model_shape_names_the_bad_field(field: str, value: Any) -> None:
    cfg = copy.deepcopy(BASE)
    cfg[field] = value
    with pytest.raises(InputError) as e:
        ModelShape.from_config(cfg)
    assert e.value.message.startswith(f"config.json: {field} is {value!r}")
    assert e.value.exit_code == 3


def test_model_shape_of_the_tiny_config_is_unchanged() -> None:
    s = ModelShape.from_config(BASE)
    assert (
        s.num_kv_heads,
        s.num_experts,
        s.moe_intermediate_size,
        s.vocab_size,
        s.dtype_bytes,
        s.quant_block,
    ) == (2, 4, 256, 576, 2, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_key_value_heads", "x"),
        ("quantization_config", [1]),
        ("num_experts", None),
    ],
)
def test_the_reported_configs(tmp_path: Path, field: str, value: Any) -> None:
    src = tmp_path / "tiny"
    shutil.copytree(TINY, src)
    bad = _write(src, **{field: value})
    r = _invoke(["verify", str(bad), "--json"])
    out = json.loads(r.stdout)
    if field != "num_key_value_heads":
        names = [c for c in out["checks"] if c["id"] == "tensors.names"]
        assert names and names[0]["status"] == "skip"
        assert f"qwenprep validate {bad}" in names[0]["message"]
    r = _invoke(["plan", str(bad), "--json", "--kv-memory", "1GiB", "--tp", "1"])
    if value is None:  # null is absent: capacity plans it as a dense model (same KV numbers)
        assert r.exit_code == 0 and json.loads(r.stdout)["bytes_per_token_per_gpu"] == 512
        return
    assert r.exit_code == 3
    assert json.loads(r.stdout)["error"]["message"].startswith(f"config.json: {field} is {value!r}")


@pytest.mark.parametrize("factor", ["4", True, [4], 1e308, 0, -2.0])
def test_rope_arithmetic_runs_on_numbers_only(factor: Any) -> None:
    from qwenprep.engines.vllm.core import capabilities_for, max_len_allowed

    cfg = dict(
        BASE,
        max_position_embeddings=1048576,
        rope_scaling={
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": 262144,
        },
    )
    old = capabilities_for((0, 29, 0))  # the original x factor rule
    with pytest.raises(InputError) as e:
        max_len_allowed(cfg, old)
    assert e.value.exit_code == 3
    assert e.value.message.startswith("config.json: ")
    assert "factor" in e.value.message
    cfg["rope_scaling"]["factor"] = 4.0
    assert max_len_allowed(cfg, old) == 1048576
    assert max_len_allowed(cfg, capabilities_for((0, 30, 0))) == 1048576


# ----------------------------------------------------------------- serve's flag table


@pytest.mark.parametrize(
    ("flag", "version", "why"),
    [
        ("--kv-cache-memory-bytes=8g", "0.10.1", "added in vLLM 0.10.2"),
        ("--nnodes", "0.10.2", "added in vLLM 0.11.1 (native multi-node)"),
        ("--rope-scaling", "0.12.0", "removed in vLLM 0.11.1 (PR #28006)"),
    ],
)
def test_serve_refuses_what_check_refuses(
    tmp_path: Path, flag: str, version: str, why: str
) -> None:
    from qwenprep.checks.preflight_items import flag_checks
    from qwenprep.engines.vllm.core import EngineInfo, capabilities_for, parse_version
    from qwenprep.engines.vllm.engine import build_launch_plan
    from qwenprep.errors import UsageError
    from qwenprep.planning.capacity import vllm_rule

    src = tmp_path / "tiny"
    shutil.copytree(TINY, src)
    info = EngineInfo(
        "python3", version, "vllm", True, None, None, capabilities_for(parse_version(version))
    )
    with pytest.raises(UsageError) as e:
        build_launch_plan(src, engine=info, extra_args=[flag, "2"])
    assert e.value.message.startswith(f"{flag.split('=')[0]} was {why}")
    assert (
        f"; vLLM {version} (installed) would stop with 'unrecognized arguments'." in e.value.message
    )
    assert e.value.exit_code == 2
    check = flag_checks(vllm_rule(version), (flag,))[0]
    assert check.status == "fail" and why in check.message
    newest = EngineInfo("python3", "0.32.0", "vllm", True, None, None, capabilities_for((0, 32, 0)))
    if flag.startswith("--rope"):
        with pytest.raises(UsageError):
            build_launch_plan(src, engine=newest, extra_args=[flag, "2"])
    else:
        plan = build_launch_plan(src, engine=newest, extra_args=[flag, "2"])
        assert flag in plan.argv


def test_serve_dry_run_refuses_a_flag_through_the_cli(tmp_path: Path) -> None:
    src = tmp_path / "tiny"
    shutil.copytree(TINY, src)
    r = _invoke(["serve", str(src), "--dry-run", "--json", "--", "--rope-theta", "1"])
    assert r.exit_code == 2
    assert "--rope-theta was removed in vLLM 0.11.1" in json.loads(r.stdout)["error"]["message"]


def test_hf_overrides_without_rope_theta_still_refused(tmp_path: Path) -> None:
    from qwenprep.engines.vllm.engine import build_launch_plan
    from qwenprep.errors import UsageError

    src = tmp_path / "tiny"
    shutil.copytree(TINY, src)
    with pytest.raises(UsageError, match="without rope_theta"):
        build_launch_plan(
            src,
            engine=None,
            extra_args=["--hf-overrides", json.dumps({"rope_scaling": {"rope_type": "yarn"}})],
        )


# ----------------------------------------------------------------- one version rule


def test_one_newest_known_version() -> None:
    from qwenprep.engines.vllm import core as vllm_core
    from qwenprep.engines.vllm import engine
    from qwenprep.planning import capacity

    assert vllm_core.NEWEST_KNOWN == (0, 34, 0)
    assert not hasattr(engine, "ASSUMED_VERSION")
    assert not hasattr(capacity, "KNOWN_NEWEST")
    assert capacity.parse_version is vllm_core.parse_version
    assert capacity.vllm_rule("0.11.1rc2").version == "0.11.1"
    assert capacity.vllm_rule("0.10.2+cpu").has_kv_cache_memory_bytes is True
    assert capacity.vllm_rule("0.10.1").has_kv_cache_memory_bytes is False
    assert "newer than the known range 0.10-0.34" in capacity.vllm_rule("0.40").note


def test_engine_does_not_import_urllib_request() -> None:
    import subprocess
    import sys

    code = (
        "import sys, qwenprep.engines.vllm.engine, qwenprep.checks.integrity, "
        "qwenprep.checks.preflight; "
        "print('urllib.request' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "False"


def test_plan_json_schema_version_is_the_report_one() -> None:
    from qwenprep.planning.capacity import KVRequest, plan_capacity, vllm_rule
    from qwenprep.util.report import SCHEMA_VERSION

    plan = plan_capacity(
        ModelShape.from_config(BASE), KVRequest(context=4096, kv_memory=2**30), vllm_rule("0.32")
    )
    assert plan.to_dict()["schema_version"] == SCHEMA_VERSION


def test_format_bytes() -> None:
    from qwenprep.util.sizes import format_bytes

    assert [format_bytes(n) for n in (0, 1023, 1024, 1536 * 1024, 3 * 2**30, 5 * 2**40)] == [
        "0 B",
        "1023 B",
        "1.00 KiB",
        "1.50 MiB",
        "3.00 GiB",
        "5.00 TiB",
    ]


def test_a_composed_module_error_is_one_fail_check(tmp_path: Path) -> None:
    """check calls validation/integrity/engine directly; an error one raises (here: no such
    interpreter for the engine readback) is one fail check, and the other checks still run."""
    from qwenprep.checks.preflight import CheckOptions, run_checks

    src = tmp_path / "tiny"
    shutil.copytree(TINY, src)
    missing = str(tmp_path / "no-python")
    rep = run_checks(src, CheckOptions(kv_memory=2**30, python=missing, tp=1))
    (eng,) = [c for c in rep.checks if c.id == "engine.gate"]
    assert eng.status == "fail"
    assert eng.message == (
        f"{missing}: no such interpreter. Hint: pass --vllm-python "
        "/path/to/venv/bin/python (the environment that has vLLM) or set "
        "QWENPREP_VLLM_PYTHON."
    )
    ids = [c.id for c in rep.checks]
    assert ids.index("engine.gate") > ids.index("shard.headers")
    assert "kv.fits" in ids and "parallel.heads" in ids
