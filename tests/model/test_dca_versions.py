"""Dual Chunk Attention is judged for a vLLM version: the V0 engine and its DUAL_CHUNK_FLASH_ATTN
backend exist before vLLM 0.11 and are gone from 0.11 on (docs/qwen-line.md). validate asks the
installed vLLM (its distribution metadata), and says so when there is none."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import Result

from qwenprep.checks.validate import VllmVersion, validate_checkpoint

CliFn = Callable[..., Result]
NO_VLLM = str(Path(sys.base_prefix) / "bin" / "python3")  # an interpreter without vLLM


@pytest.fixture(scope="module")
def qwen25_1m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qwenprep.testing.synth import make_shaped_checkpoint, qwen25_7b_instruct_1m_config

    return make_shaped_checkpoint(
        tmp_path_factory.mktemp("q25") / "Qwen2.5-7B-Instruct-1M",
        config=qwen25_7b_instruct_1m_config(),
        fp8=False,
        shards=2,
    )


def _dca(checks: list[Any]) -> Any:
    found = [c for c in checks if (c["id"] if isinstance(c, dict) else c.id) == "invariant.dca"]
    assert len(found) == 1
    return found[0]


def test_validate_without_vllm_warns_and_says_why(
    cli: CliFn, qwen25_1m: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no vLLM to judge for, a DCA config is neither passed nor failed: a warning that
    names both sides and how to decide (it used to fail as if vLLM >= 0.11 were certain)."""
    monkeypatch.setenv("QWENPREP_VLLM_PYTHON", NO_VLLM)
    r = cli("validate", str(qwen25_1m), "--json")
    assert r.exit_code == 0, r.output
    dca = _dca(json.loads(r.stdout)["checks"])
    assert dca["status"] == "warn"
    assert "No vLLM version is known" in dca["message"] and "vLLM < 0.11" in dca["message"]
    assert "--context native" in dca["message"]
    assert "not an executable interpreter" not in dca["message"]


def test_a_typo_in_the_engine_interpreter_is_named(
    cli: CliFn, qwen25_1m: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """QWENPREP_VLLM_PYTHON pointing at nothing reads as "no vLLM known": the warning says why."""
    typo = str(tmp_path / "venv" / "bin" / "pyhton")
    monkeypatch.setenv("QWENPREP_VLLM_PYTHON", typo)
    r = cli("validate", str(qwen25_1m), "--json")
    assert r.exit_code == 0, r.output
    dca = _dca(json.loads(r.stdout)["checks"])
    assert dca["status"] == "warn"
    assert f"(QWENPREP_VLLM_PYTHON={typo} is not an executable interpreter)" in dca["message"]


def test_validate_judges_for_the_installed_vllm(cli: CliFn, qwen25_1m: Path) -> None:
    pytest.importorskip("vllm")  # the test venv's vLLM (0.32): no V0 engine
    r = cli("validate", str(qwen25_1m), "--json")
    assert r.exit_code == 1, r.output
    dca = _dca(json.loads(r.stdout)["checks"])
    assert dca["status"] == "fail" and "installed in" in dca["message"]
    assert "25351" in dca["message"]


@pytest.mark.parametrize(
    "version,status",
    [((0, 10, 2), "pass"), ((0, 10, 0), "pass"), ((0, 11, 0), "fail"), ((0, 32, 0), "fail")],
)
def test_dca_by_version(qwen25_1m: Path, version: tuple[int, int, int], status: str) -> None:
    dca = _dca(validate_checkpoint(qwen25_1m, vllm=VllmVersion(version, "--vllm-version")))
    assert dca.status == status
    shown = ".".join(map(str, version))
    assert f"vLLM {shown} (--vllm-version)" in dca.message


def test_check_judges_dca_for_the_named_version(cli: CliFn, qwen25_1m: Path) -> None:
    """check --vllm-version 0.10.2 --no-engine: the config and the launch plan are judged for
    0.10.2 (DCA runs there, on the V0 engine); 0.32 refuses both. Before, the plan assumed the
    newest vLLM whatever was named, so 0.10.2 failed with '0.33.0 (assumed)'."""
    r = cli(
        "check",
        str(qwen25_1m),
        "--no-engine",
        "--vllm-version",
        "0.10.2",
        "--kv-memory",
        "60GiB",
        "--json",
    )
    out = json.loads(r.stdout)
    fails = {c["id"]: c["message"] for c in out["checks"] if c["status"] == "fail"}
    assert r.exit_code == 0, fails
    assert _dca(out["checks"])["status"] == "pass"
    r = cli(
        "check",
        str(qwen25_1m),
        "--no-engine",
        "--vllm-version",
        "0.32",
        "--kv-memory",
        "60GiB",
        "--json",
    )
    assert r.exit_code == 1
    fails = {c["id"]: c["message"] for c in json.loads(r.stdout)["checks"] if c["status"] == "fail"}
    assert "invariant.dca" in fails and "0.32" in fails["engine.plan"]


def test_validate_for_a_named_version(cli: CliFn, qwen25_1m: Path) -> None:
    r = cli("validate", str(qwen25_1m), "--vllm-version", "0.10.2", "--json")
    assert r.exit_code == 0, r.output
    assert "vLLM 0.10.2 (--vllm-version)" in _dca(json.loads(r.stdout)["checks"])["message"]
    r = cli("validate", str(qwen25_1m), "--vllm-version", "0.11")
    assert r.exit_code == 1 and "vLLM 0.11.0 (--vllm-version)" in r.output
    r = cli("validate", str(qwen25_1m), "--vllm-version", "latest")
    assert r.exit_code == 2 and "unreadable vLLM version" in r.output


# ------------------------------------------------------------------ DCA numbers that agree
# (hostile-test round 3, items 3, 7 and 21)


def _q25_with(tmp: Path, **block: Any) -> Path:
    """A Qwen2.5-7B-Instruct-1M-shaped checkpoint (2 layers) whose DCA block has BLOCK's
    values (None: the key removed)."""
    from qwenprep.testing.synth import make_shaped_checkpoint, qwen25_7b_instruct_1m_config

    cfg = qwen25_7b_instruct_1m_config()
    cfg["num_hidden_layers"] = 2
    dca = cfg["dual_chunk_attention_config"]
    for key, value in block.items():
        if value is None:
            dca.pop(key)
        else:
            dca[key] = value
    return make_shaped_checkpoint(tmp / "Qwen2.5-7B-Instruct-1M", config=cfg, fp8=False, shards=1)


@pytest.mark.parametrize(
    "block,named",
    [
        ({"original_max_position_embeddings": 1010000}, "is not below max_position_embeddings"),
        ({"original_max_position_embeddings": 2000000}, "is not below max_position_embeddings"),
        ({"original_max_position_embeddings": 100000}, "local_size < chunk_size <="),
        (
            {"original_max_position_embeddings": 131072, "chunk_size": 131072},
            "every Dual Chunk Attention release",
        ),
        ({"local_size": 262144}, "local_size < chunk_size <="),
    ],
)
def test_a_dca_native_that_disagrees_is_refused(
    cli: CliFn, tmp_path: Path, block: dict[str, Any], named: str
) -> None:
    """The DCA block's original_max_position_embeddings is the native length qwenprep patches
    to; edited to 1,010,000 it used to give an unscaled 1,010,000-token native overlay that
    validate, check and serve passed. Believed only when it agrees with chunk_size, local_size,
    max_position_embeddings and the releases' 262,144: else patch (native, YaRN) and validate
    refuse, naming the field."""
    src = _q25_with(tmp_path, **block)
    for extra in (
        ["-c", "native"],
        ["-c", "1m", "--yarn-on-dca"],
        ["-c", "1m", "--vllm-version", "0.10"],
    ):
        out = tmp_path / "ov"
        r = cli("patch", str(src), *extra, "-o", str(out))
        assert r.exit_code == 3, (extra, r.output)
        assert "dual_chunk_attention_config" in r.stderr and named in r.stderr, r.stderr
        assert "Traceback" not in r.output and not out.exists()
    r = cli("validate", str(src), "--vllm-version", "0.10", "--json")
    assert r.exit_code == 1
    dca = _dca(json.loads(r.stdout)["checks"])
    assert dca["status"] == "fail" and named in dca["message"]


@pytest.fixture
def release_2507(tmp_path: Path) -> Callable[..., Path]:
    """A Qwen3-30B-A3B-Instruct-2507-shaped release (tiny weights): config.json, and
    config_1m.json = config.json + the DCA block + max_position_embeddings 1010000, with
    CHANGES applied to config_1m.json (dca_original: the block's original)."""

    def make(name: str = "Qwen3-30B-A3B-Instruct-2507", **changes: Any) -> Path:
        from qwenprep.testing.synth import make_shaped_checkpoint, tiny_fp8_config

        cfg = tiny_fp8_config()
        cfg.pop("quantization_config")
        src = make_shaped_checkpoint(tmp_path / name, config=cfg, fp8=False, shards=1)
        one_m = dict(
            cfg,
            max_position_embeddings=1010000,
            dual_chunk_attention_config={
                "chunk_size": 262144,
                "local_size": 8192,
                "original_max_position_embeddings": changes.pop("dca_original", 262144),
                "sparse_attention_enabled": True,
                "sparse_attention_threshold": 32768,
            },
        )
        one_m.update(changes)
        (src / "config_1m.json").write_text(json.dumps(one_m, indent=2))
        (src / "sparse_attention_config.json").write_text('{"sparse": true}\n')
        return src

    return make


@pytest.mark.parametrize(
    "changes,exit_code,named",
    [
        ({"rope_theta": 10000}, 3, "$.rope_theta: config.json 10000000, config_1m.json 10000"),
        ({"num_hidden_layers": 3}, 3, "$.num_hidden_layers"),
        (
            {"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}},
            3,
            '$.rope_scaling: config.json null, config_1m.json {"rope_type": "dynamic"',
        ),
        ({"dca_original": 1010000}, 3, "is not below max_position_embeddings"),
        ({"max_position_embeddings": 4194304}, 2, "claim at most 4 x"),
    ],
)
def test_config_1m_must_be_config_json_plus_the_dca_block(
    cli: CliFn,
    tmp_path: Path,
    release_2507: Callable[..., Path],
    changes: dict[str, Any],
    exit_code: int,
    named: str,
) -> None:
    """patch --vllm-version 0.10 copied config_1m.json into the overlay unchecked: another
    rope_theta, another rope dict, a 4M length without --force, a DCA original of 1,010,000.
    Now it must equal config.json but for the DCA block and the length."""
    src = release_2507(**changes)
    out = tmp_path / "ov"
    r = cli("patch", str(src), "-c", "1m", "--vllm-version", "0.10", "-o", str(out))
    assert r.exit_code == exit_code, r.output
    assert named in r.stderr and not out.exists(), r.stderr
    if "max_position_embeddings" in changes:  # a length past 4 x native: only when forced
        r = cli("patch", str(src), "-c", "1m", "--vllm-version", "0.10", "-o", str(out), "--force")
        assert r.exit_code == 0, r.output


def test_an_edited_dca_overlay_fails_validate(
    cli: CliFn, tmp_path: Path, release_2507: Callable[..., Path]
) -> None:
    """validate of a DCA overlay compares it with its source's config.json: another
    rope_theta written into the overlay (by hand, or by an older qwenprep from a bad
    config_1m.json) fails; the overlay as written passes."""
    src = release_2507()
    ov = tmp_path / "ov"
    assert (
        cli("patch", str(src), "-c", "1m", "--vllm-version", "0.10", "-o", str(ov)).exit_code == 0
    )
    r = cli("validate", str(ov), "--vllm-version", "0.10", "--json")
    assert r.exit_code == 0, r.output
    checks = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["invariant.dca_source"]["status"] == "pass"
    cfg = json.loads((ov / "config.json").read_text())
    cfg["rope_theta"] = 10000
    (ov / "config.json").write_text(json.dumps(cfg, indent=2))
    r = cli("validate", str(ov), "--vllm-version", "0.10", "--json")
    assert r.exit_code == 1
    checks = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["invariant.dca_source"]["status"] == "fail"
    assert (
        "$.rope_theta: the source 10000000, the overlay 10000"
        in checks["invariant.dca_source"]["message"]
    )


def _check_010(cli: CliFn, ov: Path, *extra: str) -> Result:
    """check OV --no-engine, judged for vLLM 0.10, with EXTRA after --."""
    return cli(
        "check",
        str(ov),
        "--no-engine",
        "--vllm-version",
        "0.10",
        "--kv-memory",
        "10GiB",
        "--json",
        "--",
        *extra,
    )


def test_dca_overlays_for_vllm_010_pass_check_for_010(
    cli: CliFn, tmp_path: Path, release_2507: Callable[..., Path]
) -> None:
    """Every correct DCA overlay for vLLM 0.10 failed `check --vllm-version 0.10`
    ("engine.rope_scaling ... default (unscaled) RoPE"): the gate's comparison had no DCA case
    (DCA reaches the config's max_position_embeddings; qwenprep.model.families.dca.dca_reach), and
    with another vLLM installed the plan was built for that one. Both releases' overlays
    now pass, judged for 0.10 (offline: the installed vLLM is not 0.10); dropping the DCA
    block with --hf-overrides is still refused."""
    q25 = _q25_with(tmp_path)
    for src in (release_2507(), q25):
        ov = tmp_path / f"{src.name}-v010"
        r = cli("patch", str(src), "-c", "1m", "--vllm-version", "0.10", "-o", str(ov))
        assert r.exit_code == 0, r.output
        assert "Dual Chunk Attention over the native 262144, for vLLM < 0.11" in r.stderr
        assert "YaRN factor 1" not in r.stderr
        for engine in (["--no-engine"], []):
            r = cli(
                "check",
                str(ov),
                *engine,
                "--vllm-version",
                "0.10",
                "--kv-memory",
                "10GiB",
                "--json",
            )
            out = json.loads(r.stdout)
            fails = {c["id"]: c["message"] for c in out["checks"] if c["status"] == "fail"}
            assert r.exit_code == 0 and not fails, (engine, fails)
        r = _check_010(cli, ov, "--hf-overrides", '{"dual_chunk_attention_config": null}')
        fails = {
            c["id"]: c["message"] for c in json.loads(r.stdout)["checks"] if c["status"] == "fail"
        }
        assert r.exit_code == 1 and "unscaled" in fails["engine.rope_scaling"], fails


def test_patch_says_native_and_dca_without_yarn_factor_1(cli: CliFn, tmp_path: Path) -> None:
    src = _q25_with(tmp_path)
    r = cli("patch", str(src), "-c", "native", "-o", str(tmp_path / "nat"))
    assert r.exit_code == 0, r.output
    assert "262144 tokens (native, RoPE unscaled)" in r.stderr and "YaRN" not in r.stderr


def test_a_dca_profile_flag_turned_off_is_honoured_with_a_warning(
    cli: CliFn, tmp_path: Path
) -> None:
    """Hostile test round 3, item 21: a --no-X after -- silently undid a profile's --X. Every
    on/off flag of the DCA profile (--enforce-eager, --enable-chunked-prefill), in any
    spelling vLLM reads (a --config YAML's `X: false` too): check warns, naming the profile
    and why it sets the flag; the value flag (--max-num-batched-tokens 131072) stays."""
    from qwenprep.engines.vllm.engine import build_launch_plan

    ov = tmp_path / "q25-v010"
    assert (
        cli(
            "patch", str(_q25_with(tmp_path)), "-c", "1m", "--vllm-version", "0.10", "-o", str(ov)
        ).exit_code
        == 0
    )
    yml = tmp_path / "user.yaml"
    yml.write_text("enable-chunked-prefill: false\n")
    for extra in (
        ["--no-enforce-eager", "--no_enable_chunked_prefill"],
        ["--no-enforce-eager", "--config", str(yml)],
    ):
        r = _check_010(cli, ov, *extra)
        warned = [
            c["message"] for c in json.loads(r.stdout)["checks"] if c["id"] == "engine.profile"
        ]
        assert len(warned) == 2 and all(c.count("model cards") == 1 for c in warned), warned
        assert "turns off --enforce-eager" in warned[0] and "chunked-prefill" in warned[1]
        plan = build_launch_plan(ov, engine=None, extra_args=extra, assume_version=(0, 10, 2))
        core = plan.argv[: len(plan.argv) - len(extra)]
        assert "--enforce-eager" not in core and "--enable-chunked-prefill" not in core
        assert core[core.index("--max-num-batched-tokens") + 1] == "131072"
        assert len(plan.profile_overrides) == 2 and set(plan.profile_overrides) <= set(plan.notes)
