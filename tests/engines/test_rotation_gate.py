"""The gate judges the rotation itself (issue 19): vLLM's own rotary embedding, built from the
text config it derives with the exact argv, against the one built from the overlay alone, and
the overlay's against YaRN from first principles. Every spelling that changes the rotation is
refused in words; every spelling that changes nothing passes. One import of vLLM pays for the
whole table (gate.probe_plans); two cases also run through check and serve --dry-run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, TINY, invoke
from qwenprep.engines import probe
from qwenprep.engines.rotation import reference
from qwenprep.engines.vllm import core as vllm_core
from qwenprep.engines.vllm import engine as eng
from qwenprep.engines.vllm import gate

VLLM_PY = os.environ.get("QWENPREP_VLLM_PYTHON") or sys.executable
INFO = vllm_core.discover(VLLM_PY)
needs_vllm = pytest.mark.skipif(
    INFO is None or not INFO.importable, reason=f"vLLM is not importable in {VLLM_PY}"
)
YARN = {
    "rope_type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 262144,
    "rope_theta": 10000000,
}


def _hf(over: dict[str, Any]) -> list[str]:
    return ["--hf-overrides", json.dumps(over)]


# name -> (family, argv after --, yaml text for {yaml} or None, the words of the refusal or None)
CASES: dict[str, tuple[str, list[str], str | None, str | None]] = {
    # refused: each passed the key-list gate
    "partial-0.5-json": (
        "moe",
        _hf({"partial_rotary_factor": 0.5}),
        None,
        "would rotate 16 of 32 dimensions instead of 32",
    ),
    "partial-0.5-yaml": (
        "moe",
        ["--config", "{yaml}"],
        'hf_overrides: {"partial_rotary_factor": 0.5}\n',
        "would rotate 16 of 32 dimensions instead of 32",
    ),
    "partial-0.5-dotted-abbrev": (
        "moe",
        ["--hf-o.partial_rotary_factor", "0.5"],
        None,
        "would rotate 16 of 32 dimensions instead of 32",
    ),
    "attention_factor-hf-ov": (
        "moe",
        ["--hf-ov", json.dumps({"rope_scaling": {**YARN, "attention_factor": 0.01}})],
        None,
        "attention scaling 0.01 instead of 1.1386",
    ),
    "beta_fast": (
        "moe",
        _hf({"rope_scaling": {**YARN, "beta_fast": 64}}),
        None,
        "inverse frequencies differ at dim",
    ),
    "rope_dim-in-dict": (
        "moe",
        _hf({"rope_scaling": {**YARN, "rope_dim": 8}}),
        None,
        "would rotate 8 of 32 dimensions instead of 32",
    ),
    "truncate-false": (
        "moe",
        _hf({"rope_scaling": {**YARN, "truncate": False}}),
        None,
        "inverse frequencies differ at dim",
    ),
    "next-restated-without-partial": (
        "next",
        _hf({"rope_parameters": YARN}),
        None,
        "would rotate 32 of 32 dimensions instead of 8",
    ),
    "next-restated-without-partial-rope_scaling": (
        "next",
        _hf({"rope_scaling": YARN}),
        None,
        "would rotate 32 of 32 dimensions instead of 8",
    ),
    "qwen35-nested-rope_dim": (
        "qwen35",
        _hf({"text_config": {"rope_parameters": {"rope_dim": 4}}}),
        None,
        "would rotate 4 of 32 dimensions instead of 8",
    ),
    "qwen35-nested-attention_factor-dotted": (
        "qwen35",
        ["--hf-overrides.text_config.rope_parameters.attention_factor", "0.01"],
        None,
        "attention scaling 0.01 instead of 1.1386",
    ),
    # accepted: spellings that change nothing
    "own-dict-restated": ("moe", _hf({"rope_scaling": YARN}), None, None),
    "own-dict-restated-yaml": (
        "moe",
        ["--config", "{yaml}"],
        "hf-overrides:\n  rope_scaling: " + json.dumps(YARN) + "\n",
        None,
    ),
    "mscale_all_dim-alone": (
        "moe",
        _hf({"rope_scaling": {**YARN, "mscale_all_dim": 1.0}}),
        None,
        None,
    ),
    "top-level-rope_dim": ("moe", _hf({"rope_dim": 8}), None, None),
    "next-restated-with-partial": (
        "next",
        _hf({"rope_parameters": {**YARN, "partial_rotary_factor": 0.25}}),
        None,
        None,
    ),
    "qwen35-nested-theta-restated": (
        "qwen35",
        _hf({"text_config": {"rope_parameters": {"rope_theta": 10000000}}}),
        None,
        None,
    ),
    "benign": ("moe", ["--enforce-eager"], None, None),
    # a DCA release (Qwen2.5-7B-Instruct-1M, qwen2: head 128) patched --yarn-on-dca: vLLM
    # cannot build its Dual Chunk Attention rotary embedding without CUDA, and says so
    "dca-block-added-back": (
        "dca",
        _hf({"dual_chunk_attention_config": {"chunk_size": 262144, "local_size": 8192}}),
        None,
        "fails to build its rotary embedding (RuntimeError",
    ),
    "dca-own-dict-restated": ("dca", ["--hf-ov", json.dumps({"rope_scaling": YARN})], None, None),
}
SOURCES = {
    "moe": TINY,
    "next": EXAMPLES / "tiny-qwen3-next",
    "qwen35": EXAMPLES / "tiny-qwen3.5-moe",
}


@pytest.fixture(scope="module")
def overlays(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from qwenprep.testing.synth import make_shaped_checkpoint, qwen25_7b_instruct_1m_config

    root = tmp_path_factory.mktemp("rot")
    dca = make_shaped_checkpoint(
        root / "Qwen2.5-7B-Instruct-1M", config=qwen25_7b_instruct_1m_config(), fp8=False, shards=2
    )
    out = {}
    for fam, src in {**SOURCES, "dca": dca}.items():
        ov = root / fam
        more = ["--yarn-on-dca"] if fam == "dca" else []
        r = invoke("patch", str(src), "--context", "1m", *more, "--out", str(ov), "--json")
        assert r.exit_code == 0, r.output
        out[fam] = ov
    return out


def _fill(argv: list[str], yaml_text: str | None, tmp: Path, name: str) -> list[str]:
    if yaml_text is None:
        return argv
    f = tmp / f"{name}.yaml"
    f.write_text(yaml_text)
    return [str(f) if a == "{yaml}" else a for a in argv]


def _problems(name: str, checks: list[Any], words: str | None) -> list[str]:
    """What is wrong with one case's checks: the overlay's rotation must match first
    principles; a spelling that changes nothing passes; any other is refused in WORDS."""
    out = []
    said = [f"[{c.id}] {c.message}" for c in checks if c.status == "fail"]
    ref = next((c for c in checks if c.id == "engine.rotation_reference"), None)
    if ref is None or ref.status != "pass":
        out.append(f"{name}: the overlay's rotation was not held to first principles")
    if words is None and said:
        out.append(f"{name}: refused: {said}")
    if words is not None and not any(
        r.startswith("[engine.rotation]") and words in r for r in said
    ):
        out.append(f"{name}: wanted a refusal saying {words!r}, got {said}")
    return out


@pytest.mark.engine
@needs_vllm
def test_the_rotation_is_judged_numerically(overlays: dict[str, Path], tmp_path: Path) -> None:
    assert INFO is not None
    plans = {
        name: eng.build_launch_plan(
            overlays[fam], engine=INFO, extra_args=_fill(a, y, tmp_path, name), offline_gate=False
        )
        for name, (fam, a, y, _) in CASES.items()
    }
    gate.probe_plans(list(plans.values()), probe.engine_python(INFO.python))
    problems = [
        p
        for name, (_, _, _, words) in CASES.items()
        for p in _problems(name, gate.gate(plans[name], engine=INFO).checks, words)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.engine
@needs_vllm
def test_check_and_serve_refuse_a_lost_partial_factor(overlays: dict[str, Path]) -> None:
    """Hostile test item 2 through the CLI: Qwen3-Next's YaRN dict restated with rope_theta
    (what the old hint said to do) but without partial_rotary_factor."""
    argv = _hf({"rope_parameters": YARN})
    ov = str(overlays["next"])
    c = invoke("check", ov, "--json", "--kv-memory", "2GiB", "--vllm-python", VLLM_PY, "--", *argv)
    s = invoke("serve", ov, "--dry-run", "--json", "--vllm-python", VLLM_PY, "--", *argv)
    assert (c.exit_code, s.exit_code) == (1, 3), (c.output, s.output)
    rot = {x["id"]: x for x in json.loads(c.stdout)["checks"]}["engine.rotation"]
    assert "would rotate 32 of 32 dimensions instead of 8" in rot["message"]
    assert (
        "would rotate 32 of 32 dimensions instead of 8" in json.loads(s.stdout)["error"]["message"]
    )


def test_first_principles_yarn_matches_the_published_numbers() -> None:
    """The pure-Python reference: YaRN x4 over 262,144 with theta 1e7 on a 32-dim head
    (attention scaling 0.1 ln 4 + 1; the fastest dims extrapolate, the slowest interpolate by 4),
    the partial factor and the M-RoPE sections of Qwen3.5."""
    cfg = json.loads((TINY / "config.json").read_text())
    cfg["rope_scaling"] = dict(YARN)
    ref = reference(cfg)
    assert ref["rotary_dim"] == 32
    assert ref["attention_scaling"] == pytest.approx(1.1386294361)
    assert ref["inv_freq"][0] == 1.0
    assert ref["inv_freq"][-1] == pytest.approx(1e7 ** (-30 / 32) / 4)
    q35 = json.loads((EXAMPLES / "tiny-qwen3.5-moe" / "config.json").read_text())
    r35 = reference(q35)
    assert (r35["rotary_dim"], r35["attention_scaling"], r35["mrope_section"]) == (
        8,
        1.0,
        [2, 1, 1],
    )


def test_an_unbuildable_rotation_compares_the_derived_parameters() -> None:
    """Where the engine cannot build its rotary embedding (vLLM's DCA class needs CUDA), the
    parameters get_rope would take are compared, and the check says that is what it did."""
    from qwenprep.engines.rotation import judge

    dca = {"rope_type": "default", "rotary_dim": 128, "head_size": 128, "rope_theta": 1e6}
    own = {
        "built": False,
        "why": "RuntimeError: no CUDA",
        "derived": {**dca, "dca.chunk_size": 262144},
    }
    same = judge(dict(own), own, "vLLM 0.10.2", "config.json")
    assert same.status == "pass" and "could not build its rotary embedding here" in same.message
    other = {**own, "derived": {**own["derived"], "dca.chunk_size": 131072, "rotary_dim": 64}}
    bad = judge(other, own, "vLLM 0.10.2", "config.json")
    assert bad.status == "fail"
    assert "dca.chunk_size 131072 instead of 262144" in bad.message
    assert "vLLM 0.10.2 would rotate 64 of 128 dimensions instead of 128" in bad.message


# ---------------------------------------------------------------- SGLang (real SGLang)
SG_PY = os.environ.get("QWENPREP_SGLANG_PYTHON") or str(
    Path(__file__).resolve().parents[2] / ".venv-sglang" / "bin" / "python"
)


def _jm(over: dict[str, Any]) -> list[str]:
    return ["--json-model-override-args", json.dumps(over)]


Q35 = {**YARN, "mrope_section": [2, 1, 1], "mrope_interleaved": True, "partial_rotary_factor": 0.25}
# name -> (family, argv after --, the words of the refusal or None)
SG_CASES: dict[str, tuple[str, list[str], str | None]] = {
    "extrapolation_factor-0": (
        "moe",
        _jm({"rope_scaling": {**YARN, "extrapolation_factor": 0.0}}),
        "inverse frequencies differ at dim 0",
    ),
    "attn_factor": (
        "moe",
        _jm({"rope_scaling": {**YARN, "attn_factor": 0.01}}),
        "attention scaling",
    ),
    "beta_fast": ("moe", _jm({"rope_scaling": {**YARN, "beta_fast": 64}}), "inverse frequencies"),
    "beta_slow": ("moe", _jm({"rope_scaling": {**YARN, "beta_slow": 2}}), "inverse frequencies"),
    "mscale": (
        "moe",
        _jm({"rope_scaling": {**YARN, "mscale": 50, "mscale_all_dim": 0.0001}}),
        "attention scaling",
    ),
    "next-restated-without-partial": (
        "next",
        _jm({"rope_scaling": YARN, "partial_rotary_factor": 1.0}),
        "would rotate 32 of 32 dimensions instead of 8",
    ),
    # accepted: the overlay's own dict restated; a key SGLang's Qwen3-MoE never reads
    "own-dict-restated": ("moe", _jm({"rope_scaling": YARN}), None),
    "partial-ignored-by-qwen3_moe": ("moe", _jm({"partial_rotary_factor": 0.5}), None),
    "next-own-dict-restated": ("next", _jm({"rope_scaling": YARN}), None),
    "qwen35-own-dict-restated": ("qwen35", _jm({"text_config": {"rope_parameters": Q35}}), None),
    "qwen35-extrapolation_factor-0": (
        "qwen35",
        _jm({"text_config": {"rope_parameters": {**Q35, "extrapolation_factor": 0.0}}}),
        "inverse frequencies differ at dim 0",
    ),
}


@pytest.mark.sglang
@pytest.mark.skipif(not Path(SG_PY).is_file(), reason=f"SGLang's interpreter {SG_PY} is absent")
def test_sglang_judges_the_rotation_numerically(overlays: dict[str, Path]) -> None:
    from qwenprep.engines.sglang import core as sglang
    from qwenprep.engines.sglang.gate import gate_checks, probe_plans

    info = sglang.discover(SG_PY)
    assert info is not None and info.importable
    plans = {
        name: sglang.build_plan(overlays[fam], engine=info, for_check=True, extra_args=tuple(a))
        for name, (fam, a, _) in SG_CASES.items()
    }
    probe_plans(list(plans.values()), SG_PY)
    problems = [
        p
        for name, (_, _, words) in SG_CASES.items()
        for p in _problems(name, gate_checks(plans[name], info), words)
    ]
    assert not problems, "\n".join(problems)
