"""vLLM 0.34's extensible KV cache in qwenprep's rules (qwenprep.engines.vllm.kv_extensible): the
budget as
vLLM 0.34.0 computes it after warmup (vllm/v1/worker/extensible_kv_cache.py,
measure_kv_cache_bytes), plan for 0.34 beside 0.33, check's warning for a utilisation that caps
the cache, and the flags 0.34 deprecated. No engine needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY, invoke
from qwenprep.engines.vllm.core import NEWEST_KNOWN
from qwenprep.engines.vllm.kv_extensible import extensible_budget
from qwenprep.engines.vllm.launch import flag_warnings, option_value
from qwenprep.planning.capacity import make_plan, vllm_rule
from qwenprep.util.sizes import GiB, format_gib


def test_budget_is_vllms_measure_kv_cache_bytes() -> None:
    # 80 GiB GPU; 40 GiB weights + 3 GiB resident; 2 GiB transient -> margin max(1, 1.5) GiB
    b = extensible_budget(80 * GiB, weights=40 * GiB, resident=3 * GiB, transient=2 * GiB)
    assert b.utilization == 1.0 and b.requested == 80 * GiB
    assert b.margin == int(1.5 * GiB)
    assert b.tentative == 80 * GiB - 43 * GiB - 2 * GiB  # the profile run's budget
    # min(requested - non_kv_used, headroom - margin) - transient
    assert b.post_warmup == min(37 * GiB, 37 * GiB - int(1.5 * GiB)) - 2 * GiB
    assert b.available == b.post_warmup and b.withheld == 0
    # a small transient: the 1 GiB floor
    small = extensible_budget(80 * GiB, weights=40 * GiB, resident=3 * GiB, transient=GiB // 2)
    assert small.margin == GiB
    # a user's 0.9 caps it: requested 72 GiB -> 72 - 43 - 2 = 27 GiB, 6.5 GiB withheld
    capped = extensible_budget(
        80 * GiB, weights=40 * GiB, resident=3 * GiB, transient=2 * GiB, utilization=0.9
    )
    assert capped.post_warmup == 27 * GiB
    assert capped.withheld == b.post_warmup - 27 * GiB
    assert "withholds 6.50 GiB" in capped.text()


def test_the_newest_known_version_is_034() -> None:
    assert NEWEST_KNOWN[:2] == (0, 34)
    assert vllm_rule("0.34").note == ""  # no "0.33 rule is used" for 0.34
    assert "0.34 rule is used" in vllm_rule("0.40").note
    r34, r33 = vllm_rule("0.34"), vllm_rule("0.33")
    assert r34.extensible_kv_cache and r34.gpu_memory_utilization == 1.0
    assert not r33.extensible_kv_cache and r33.gpu_memory_utilization == 0.92


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qwenprep.testing.synth import make_shaped_checkpoint

    return make_shaped_checkpoint(tmp_path_factory.mktemp("q480") / "Qwen3-Coder-480B-FP8")


def test_plan_034_for_the_480b_on_8x_h200(big: Path) -> None:
    kw = dict(context="1m", gpus=8, gpu="H200")
    p33 = make_plan(str(big), vllm_version="0.33", **kw)  # type: ignore[arg-type]
    p34 = make_plan(str(big), vllm_version="0.34", **kw)  # type: ignore[arg-type]
    # 0.33 unchanged; H200 = 150,754,820,096 bytes as its driver reports (qwenprep.planning.catalog)
    assert format_gib(p33.kv.available_bytes) == "60.89 GiB"
    assert p33.extensible is None
    ext = p34.extensible
    assert ext is not None and ext.utilization == 1.0
    assert p34.kv.available_bytes == ext.post_warmup < ext.tentative
    assert p34.kv.available_bytes > p33.kv.available_bytes + 4 * GiB
    text = p34.summary()
    assert "post-warmup bound" in text and "tentative budget" in text
    d = p34.to_dict()
    assert d["estimate"]["extensible_kv_cache"]["post_warmup_bytes"] == ext.post_warmup
    assert d["vllm_rule"]["extensible_kv_cache"] is True
    # --kv-memory (vLLM's --kv-cache-memory-bytes) pins it: exact, the extensible cache is off
    pinned = make_plan(str(big), context="1m", tp=8, kv_memory="65GiB", vllm_version="0.34")
    assert pinned.exact and pinned.extensible is None
    assert pinned.kv.available_bytes == 65 * GiB
    assert "turns vLLM 0.34's extensible KV cache off" in pinned.summary()


def test_option_value_reads_both_spellings() -> None:
    assert option_value(["--gpu_memory_utilization=0.8"], "--gpu-memory-utilization") == "0.8"
    assert option_value(["-pp", "2", "--x"], "--pipeline-parallel-size", "-pp") == "2"
    assert option_value(["--enforce-eager"], "--enforce-eager") == ""
    assert option_value([], "--enforce-eager") is None


@pytest.mark.parametrize(
    ("extra", "version", "warned"),
    [
        (["--gpu-memory-utilization", "0.9"], (0, 34, 0), True),
        (["--gpu_memory_utilization=0.95"], (0, 34, 0), True),
        (["--gpu-memory-utilization", "0.9"], (0, 33, 0), False),
        (["--gpu-memory-utilization", "1.0"], (0, 34, 0), False),
        (["--gpu-memory-utilization", "0.9", "--kv-cache-memory-bytes", "60G"], (0, 34, 0), False),
        (["--gpu-memory-utilization", "0.9", "--num-gpu-blocks-override", "9"], (0, 34, 0), False),
        (["--gpu-memory-utilization", "0.9", "--no-enable-extensible-kv-cache"], (0, 34, 0), False),
    ],
)
def test_utilization_below_one_caps_034(
    extra: list[str], version: tuple[int, int, int], warned: bool
) -> None:
    got = [w for w in flag_warnings(extra, version) if "caps vLLM" in w]
    assert bool(got) == warned, got


def test_034_deprecations() -> None:
    assert any(
        w.startswith("--mamba-cache-mode is deprecated in vLLM 0.34 and has no effect")
        for w in flag_warnings(["--mamba-cache-mode", "align"], (0, 34, 0))
    )
    assert flag_warnings(["--mamba-cache-mode", "align"], (0, 33, 0)) == []


@pytest.mark.parametrize(
    ("args", "version", "said"),
    [
        (["--ir-op-priority", "{}"], (0, 34, 0), "vLLM IR is being removed"),
        (["--ir_op_priority.rms_norm=native"], (0, 34, 0), "vLLM IR is being removed"),
        (["--ir-op-priority", "{}"], (0, 33, 0), None),
        (["--log-config-file", "log.json"], (0, 32, 0), "--logging-config.pylogging_config_file"),
        (["--log_config_file=log.json"], (0, 34, 0), "--logging-config.pylogging_config_file"),
    ],
)
def test_the_other_deprecated_flags_of_032_and_034(
    args: list[str], version: tuple[int, int, int], said: str | None
) -> None:
    """Issue 21 item 1, "flags know the deprecations": besides --mamba-cache-mode, vLLM 0.34
    deprecates --ir-op-priority and still warns for --log-config-file (deprecated in 0.32)
    (vllm/engine/arg_utils.py, _IR_OP_PRIORITY_ and _LOG_CONFIG_FILE_DEPRECATION_MESSAGE)."""
    got = flag_warnings(args, version)
    assert [w for w in got if said and said in w] == got and bool(got) == bool(said), got


def test_check_warns_for_a_capping_utilization_offline(tmp_path: Path) -> None:
    ov = tmp_path / "ov"
    assert invoke("patch", str(TINY), "--context", "1m", "--out", str(ov)).exit_code == 0
    r = invoke(
        "check",
        str(ov),
        "--json",
        "--no-engine",
        "--kv-memory",
        "2GiB",
        "--vllm-version",
        "0.34",
        "--",
        "--gpu-memory-utilization",
        "0.9",
    )
    checks = {c["id"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["engine.flags"]["status"] == "warn", r.output
    assert "caps vLLM 0.34's KV cache" in checks["engine.flags"]["message"]


@pytest.mark.parametrize(("version", "advice"), [("0.34.0", "leave"), ("0.33.0", "raise")])
def test_out_of_kv_memory_hint_by_version(tmp_path: Path, version: str, advice: str) -> None:
    """vLLM 0.34 defaults to utilisation 1.0: telling its user to set 0.95 would take memory
    away (vllm/config/cache.py, CacheConfig.resolved_gpu_memory_utilization)."""
    from qwenprep.engines.vllm.core import EngineInfo, capabilities_for, parse_version
    from qwenprep.engines.vllm.engine import build_launch_plan
    from qwenprep.engines.vllm.server import explain

    ov = tmp_path / "ov"
    assert invoke("patch", str(TINY), "--context", "1m", "--out", str(ov)).exit_code == 0
    info = EngineInfo(
        "python", version, "vllm", True, None, None, capabilities_for(parse_version(version))
    )
    plan = build_launch_plan(ov, engine=info, offline_gate=False)
    causes, hint = explain(
        plan,
        "ValueError: To serve at least one request with the model's "
        "max seq len (1048576), (30.00 GiB KV cache is needed, ...",
    )
    assert causes == ["kv_memory"] and hint is not None
    if advice == "leave":
        assert "leave --gpu-memory-utilization unset" in hint and "0.95" not in hint
    else:
        assert "--gpu-memory-utilization 0.95" in hint
