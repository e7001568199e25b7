"""SGLang as the second engine, with the same proof, against the real SGLang package.

SGLang lives in its own interpreter (REPO/.venv-sglang, made by ./dev setup; or
$QWENPREP_SGLANG_PYTHON). Every argv the tests send through qwenprep is parsed by SGLang's own
server-argument parser and read back through its ModelConfig in sglang_probe.py. The probe
(~8-10 s of imports) is paid once: the module fixture builds every plan the commands will
build and asks SGLang about all of them in one batch (sglang_gate.probe_plans); the commands
then find the answers by the same fingerprint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, TINY, invoke
from qwenprep.util.sizes import GiB

SG_PY = os.environ.get("QWENPREP_SGLANG_PYTHON") or str(REPO / ".venv-sglang" / "bin" / "python")
HAVE = Path(SG_PY).is_file()
pytestmark = [
    pytest.mark.sglang,
    pytest.mark.skipif(
        not HAVE,
        reason=f"SGLang's interpreter {SG_PY} is absent "
        "(./dev setup installs sglang==0.5.23 into .venv-sglang)",
    ),
]

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 262144}
MPE_ONLY = [
    "--json-model-override-args",
    '{"max_position_embeddings": 1048576}',
    "--context-length",
    "1048576",
]
FLAT_ON_NESTED = [
    "--json-model-override-args",
    json.dumps(
        {"max_position_embeddings": 1048576, "rope_parameters": {**YARN, "rope_theta": 10000000}}
    ),
]
PARTIAL_NESTED = [
    "--json-model-override-args",
    json.dumps({"text_config": {"rope_parameters": YARN}}),
]
ENV_VAR = "SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN"


def _nested(dest: Path) -> Path:
    """A tiny Qwen3.5-MoE-shaped config (text settings in text_config, M-RoPE sections)."""
    dest.mkdir()
    cfg = json.loads((TINY / "config.json").read_text())
    text = {
        k: v
        for k, v in cfg.items()
        if k
        not in (
            "architectures",
            "rope_scaling",
            "rope_theta",
            "transformers_version",
            "torch_dtype",
        )
    }
    text.update(
        model_type="qwen3_5_moe_text",
        dtype="bfloat16",
        full_attention_interval=2,
        layer_types=["linear_attention", "full_attention"],
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000000,
            "mrope_section": [11, 11, 10],
            "mrope_interleaved": True,
            "partial_rotary_factor": 0.25,
        },
    )
    (dest / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["Qwen3_5MoeForConditionalGeneration"],
                "model_type": "qwen3_5_moe",
                "text_config": text,
                "tie_word_embeddings": False,
                "vision_config": {
                    "depth": 1,
                    "hidden_size": 32,
                    "num_heads": 2,
                    "out_hidden_size": 128,
                },
            },
            indent=1,
        )
    )
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(TINY / f, dest / f)
    return dest


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from qwenprep.engines.sglang import core as sglang
    from qwenprep.engines.sglang.gate import probe_plans

    tmp = tmp_path_factory.mktemp("sglang")
    ov = tmp / "ov"
    r = invoke("patch", str(TINY), "--context", "1m", "--out", str(ov), "--json")
    assert r.exit_code == 0, r.output
    nested = _nested(tmp / "nested")
    nxt = tmp / "next-ov"
    r = invoke(
        "patch",
        str(REPO / "examples" / "tiny-qwen3-next"),
        "--context",
        "1m",
        "--out",
        str(nxt),
        "--json",
    )
    assert r.exit_code == 0, r.output
    qwen2, dense = _qwen2_and_dense(tmp)
    info = sglang.discover(SG_PY)
    assert info is not None and info.importable
    plans = [
        sglang.build_plan(
            p,
            engine=info,
            for_check=True,
            max_model_len=n,
            extra_args=x,
            tp=tp,
            nnodes=nn,
            gpus_per_node=g,
        )
        for p, n, x, tp, nn, g in [
            (ov, None, (), None, None, None),
            (TINY, None, (), None, None, None),
            (nxt, None, (), None, None, None),
            (qwen2, None, (), None, None, None),
            (dense, None, (), None, None, None),
            (TINY, None, tuple(MPE_ONLY), None, None, None),
            (ov, None, ("--bogus-flag", "1"), None, None, None),
            (ov, None, (), 2, 2, 1),
            (nested, None, tuple(FLAT_ON_NESTED), None, None, None),
            (nested, None, tuple(PARTIAL_NESTED), None, None, None),
        ]
    ]
    probe_plans(plans, SG_PY)  # one import of SGLang for the whole module
    return {"ov": ov, "nested": nested, "info": info, "next": nxt, "qwen2": qwen2, "dense": dense}


def _qwen2_and_dense(tmp: Path) -> tuple[Path, Path]:
    """128K overlays of a Qwen2.5-7B-shaped checkpoint (no head_dim key; native 32,768, DCA
    block dropped) and of a Qwen3-dense config: the two other families qwenprep knows."""
    from qwenprep.testing.synth import make_shaped_checkpoint, qwen25_7b_instruct_1m_config

    cfg = qwen25_7b_instruct_1m_config()
    cfg.pop("dual_chunk_attention_config")
    cfg.update(max_position_embeddings=32768, rope_theta=1000000.0, num_hidden_layers=4)
    src = make_shaped_checkpoint(tmp / "Qwen2.5-7B-Instruct", config=cfg, fp8=False, shards=1)
    dense = tmp / "Qwen3-8B"
    shutil.copytree(TINY, dense)
    c = json.loads((dense / "config.json").read_text())
    for k in ("num_experts", "num_experts_per_tok", "moe_intermediate_size"):
        c.pop(k, None)
    c.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"], max_position_embeddings=32768)
    (dense / "config.json").write_text(json.dumps(c, indent=2))
    out = []
    for s in (src, dense):
        r = invoke("patch", str(s), "--context", "128k", "--out", str(tmp / f"{s.name}-128k"))
        assert r.exit_code == 0, r.output
        out.append(tmp / f"{s.name}-128k")
    return out[0], out[1]


@pytest.mark.parametrize("which,theta", [("qwen2", "1000000"), ("dense", "10000000")])
def test_qwen2_and_qwen3_dense_read_back_through_sglang(
    env: dict[str, Any], which: str, theta: str
) -> None:
    """Every family qwenprep knows reads back through SGLang's ModelConfig at its extended
    context (the dense overlay reuses MoE weights, so only the engine checks are judged)."""
    code, out = _check(env[which])
    engine = {c["id"]: c for c in out["checks"] if c["id"].startswith("engine.")}
    assert all(c["status"] == "pass" for c in engine.values()), engine
    assert (
        engine["engine.max_model_len"]["message"] == "max model length: SGLang 0.5.23 uses 131072"
    )
    assert engine["engine.rope_original"]["message"].endswith("SGLang 0.5.23 uses 32768")
    assert engine["engine.rope_theta"]["message"].endswith(f"SGLang 0.5.23 uses {theta}")
    if which == "qwen2":
        assert code == 0, _fails(out)


def _fails(out: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["message"] for c in out["checks"] if c["status"] == "fail"}


def _check(path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    r = invoke(
        "check",
        str(path),
        "--json",
        "--kv-memory",
        "2GiB",
        "--serving-engine",
        "sglang",
        "--engine-python",
        SG_PY,
        *args,
    )
    return r.exit_code, json.loads(r.stdout)


def _serve(path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    r = invoke(
        "serve",
        str(path),
        "--dry-run",
        "--json",
        "--serving-engine",
        "sglang",
        "--engine-python",
        SG_PY,
        *args,
    )
    return r.exit_code, json.loads(r.stdout)


def test_overlay_check_serve_verify_pass(env: dict[str, Any]) -> None:
    ov = env["ov"]
    code, out = _check(ov)
    assert code == 0, _fails(out)
    ids = {c["id"]: c for c in out["checks"]}
    assert "SGLang 0.5.23" in ids["engine.found"]["message"]
    assert ids["engine.max_model_len"]["message"] == "max model length: SGLang 0.5.23 uses 1048576"
    assert ids["engine.rope_theta"]["message"].endswith("SGLang 0.5.23 uses 10000000")
    code, plan = _serve(ov)
    assert code == 0, plan
    assert plan["serving_engine"] == "sglang"
    assert plan["argv"][1:] == [
        "-m",
        "sglang.launch_server",
        "--model-path",
        str(ov.absolute()),
        "--tp-size",
        "1",
        "--tool-call-parser",
        "qwen3_coder",
        "--served-model-name=tiny-qwen3-coder",
        "--context-length",
        "1048576",
    ]
    assert plan["unset_env"] == [] and plan["url"] == "http://127.0.0.1:30000"
    r = invoke(
        "verify",
        str(ov),
        "--engine",
        "--serving-engine",
        "sglang",
        "--engine-python",
        SG_PY,
        "--json",
    )
    assert r.exit_code == 0, r.output
    got = {c["id"]: c["status"] for c in json.loads(r.stdout)["checks"]}
    assert got["engine.rope_type"] == got["engine.rope_factor"] == "pass"


def test_a_hybrid_qwen3_next_overlay_passes_the_sglang_gate(env: dict[str, Any]) -> None:
    """The Qwen3-Next family (hybrid layers, partial_rotary_factor) read back by SGLang's own
    ModelConfig: 1M with YaRN x4 over 262,144 and rope_theta kept."""
    code, out = _check(env["next"])
    assert code == 0, _fails(out)
    ids = {c["id"]: c["message"] for c in out["checks"]}
    assert ids["engine.max_model_len"] == "max model length: SGLang 0.5.23 uses 1048576"
    assert ids["engine.rope_factor"] == "YaRN factor: SGLang 0.5.23 uses 4"
    assert ids["engine.rope_theta"].endswith("SGLang 0.5.23 uses 10000000")
    code, plan = _serve(env["next"])
    assert code == 0, plan
    assert plan["argv"][-2:] == ["--context-length", "1048576"]


def test_argv_parsed_by_sglangs_own_parser(env: dict[str, Any]) -> None:
    from qwenprep.engines.sglang import core as sglang
    from qwenprep.engines.sglang.gate import _CACHE, _items, _key

    plan = sglang.build_plan(env["ov"], engine=env["info"], for_check=True)
    answer = _CACHE[_key(plan, SG_PY, _items(plan))]["results"][0]
    assert answer["args"]["context_length"] == 1048576
    assert answer["args"]["tool_call_parser"] == "qwen3_coder"
    assert answer["args"]["served_model_name"] == "tiny-qwen3-coder"
    assert answer["view"]["derived_context_len"] == 1048576
    code, out = _check(env["ov"], "--", "--bogus-flag", "1")
    assert code == 1
    assert _fails(out)["engine.argv"] == (
        "SGLang 0.5.23's server-argument parser refuses the "
        "arguments: sglang serve: error: unrecognized "
        "arguments: --bogus-flag 1"
    )


def test_unpatched_checkpoint(env: dict[str, Any]) -> None:
    code, out = _check(TINY)
    assert code == 0, _fails(out)
    code, plan = _serve(TINY)
    assert code == 0 and plan["max_model_len"] == 262144
    r = invoke(
        "serve",
        str(TINY),
        "--dry-run",
        "--json",
        "--serving-engine",
        "sglang",
        "--engine-python",
        SG_PY,
        "--max-model-len",
        "1m",
    )
    assert r.exit_code == 3
    msg = json.loads(r.stdout)["error"]["message"]
    assert "above the 262144 tokens SGLang 0.5.23 derives" in msg
    r = invoke(
        "verify",
        str(TINY),
        "--engine",
        "--serving-engine",
        "sglang",
        "--engine-python",
        SG_PY,
        "--json",
    )
    assert r.exit_code == 0, r.output


def test_env_var_refused_and_unset(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "1")
    code, out = _check(TINY, "--context", "1m")
    assert code == 1
    assert (
        f"{ENV_VAR} is set in this environment; qwenprep removes it" in _fails(out)["engine.plan"]
    )
    code, plan = _serve(env["ov"])
    assert code == 0, plan
    assert plan["unset_env"] == [ENV_VAR]
    assert ENV_VAR not in " ".join(plan["argv"])
    assert any(f"{ENV_VAR} is removed from SGLang's environment" in n for n in plan["notes"])


def test_mpe_only_bump_refused(env: dict[str, Any]) -> None:
    code, out = _check(TINY, "--", *MPE_ONLY)
    assert code == 1
    f = _fails(out)
    assert f["engine.override_mpe"].startswith(
        "--json-model-override-args raises max_position_embeddings to 1048576 without a YaRN block"
    )
    assert "1048576 tokens with default (unscaled) RoPE" in f["engine.rope_scaling"]
    code, s = _serve(TINY, "--", *MPE_ONLY)
    assert code == 3 and "[engine.override_mpe]" in s["error"]["message"]


def test_flat_override_on_nested_refused(env: dict[str, Any]) -> None:
    code, out = _check(env["nested"], "--", *FLAT_ON_NESTED)
    assert code == 1
    assert (
        "SGLang applies the override to the top-level config only"
        in _fails(out)["engine.override_nested"]
    )


def test_partial_nested_rope_dict_refused(env: dict[str, Any]) -> None:
    code, out = _check(env["nested"], "--", *PARTIAL_NESTED)
    assert code == 1
    f = _fails(out)
    assert (
        "without rope_theta, mrope_section, mrope_interleaved, partial_rotary_factor"
        in f["engine.override_rope_partial"]
    )
    assert f["engine.rope_theta"].startswith(
        "RoPE base (rope_theta): SGLang 0.5.23 would use 10000 but config.json sets 10000000"
    )


def test_multinode_in_sglangs_terms(env: dict[str, Any]) -> None:
    code, plan = _serve(env["ov"], "--tp", "2", "--nnodes", "2", "--gpus-per-node", "1")
    assert code == 0, plan
    worker = plan["nodes"][1]["argv"]
    i = worker.index("--nnodes")
    assert worker[i : i + 6] == [
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--dist-init-addr",
        "HEAD_NODE_IP:5000",
    ]
    assert worker[worker.index("--tp-size") + 1] == "2"
    assert "--expect-digest" in plan["nodes"][1]["guard"]


def test_engine_selection(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    r = invoke("serve", str(env["ov"]), "--dry-run", "--json", "--vllm-python", SG_PY)
    assert r.exit_code == 0 and json.loads(r.stdout)["serving_engine"] == "sglang"
    monkeypatch.setenv("QWENPREP_SERVING_ENGINE", "nope")
    r = invoke("serve", str(env["ov"]), "--dry-run", "--json", "--engine-python", SG_PY)
    assert r.exit_code == 2 and "choose vllm or sglang" in json.loads(r.stdout)["error"]["message"]


def test_plan_sglang_numbers() -> None:
    # SGLang 0.5.23 (engines/sglang/kv.py): cell = kv_heads/tp x (head_dim + v_head_dim) x
    # layers x bytes = 2 x 64 x 2 x 2; tokens = budget // cell // page(1); max_num_reqs =
    # min(clamp(int(tokens / ctx x 512), 2048, 4096), tokens // 2); req_to_token int32
    # (reqs + 1) x (ctx + 4)
    r = invoke(
        "plan",
        str(TINY),
        "--context",
        "1m",
        "--kv-memory",
        "2GiB",
        "--serving-engine",
        "sglang",
        "--json",
    )
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)
    cell = 2 * (32 + 32) * 2 * 2
    tokens = 2 * GiB // cell
    reqs = min(max(min(int(tokens / 1048576 * 512), 4096), 2048), tokens // 2)
    assert (
        (p["bytes_per_token_per_gpu"], p["max_total_num_tokens"])
        == (cell, tokens)
        == (512, 4194304)
    )
    assert p["max_concurrency"] == 4.0 and p["max_running_requests"] == reqs == 2048
    assert p["req_to_token_bytes"] == 2049 * 1048580 * 4
    # from GPU memory: mem_fraction_static by SGLang's default for an 80 GiB GPU, TP 1:
    # reserved = 512 + 1.5 x 8192 + 1 / 8 x 1024 + 2 x 256 = 13440 MB (> 10 GiB floor)
    r = invoke(
        "plan",
        str(TINY),
        "--context",
        "256k",
        "--gpus",
        "1",
        "--gpu-memory",
        "80GiB",
        "--serving-engine",
        "sglang",
        "--json",
    )
    q = json.loads(r.stdout)
    frac = round((81920 - 13440) / 81920, 3)
    assert q["mem_fraction_static"] == frac == 0.836
    assert q["kv_cache_bytes_per_gpu"] == int(80 * GiB * frac) - q["weights_per_gpu_bytes"]
    assert q["max_total_num_tokens"] == q["kv_cache_bytes_per_gpu"] // cell
    assert q["slack_bytes"] == int(80 * GiB * (1 - frac))


def test_plan_sglang_text_is_drawn_like_vllms() -> None:
    """The text plan for SGLang is the same (what, value) table as vLLM's, then the verdict:
    the same numbers as --json."""
    args = ["plan", str(TINY), "--context", "1m", "--kv-memory", "2GiB", "--serving-engine"]
    text = invoke(*args, "sglang")
    assert text.exit_code == 0, text.output
    j = json.loads(invoke(*args, "sglang", "--json").stdout)
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["what", "value"]
    row = next(ln for ln in lines if ln.startswith("max_total_num_tokens "))
    assert f"{j['max_total_num_tokens']:,};" in row
    assert "fits: yes" in lines
    assert lines.index("fits: yes") > lines.index(row)


@pytest.mark.slow
def test_sglang_ending_before_ready_is_exit_3(tmp_path: Path) -> None:
    """The real SGLang started on this CPU machine stops at once (no accelerator): serve exits
    3 (qwenprep's "cannot proceed"), as it does for vLLM, with SGLang's own code in the JSON;
    it used to pass SGLang's 1 through, which reads as "checks failed"."""
    import subprocess

    from conftest import QWENPREP_BIN

    r = subprocess.run(
        [
            str(QWENPREP_BIN),
            "serve",
            str(TINY),
            "--serving-engine",
            "sglang",
            "--engine-python",
            SG_PY,
            "--port",
            "18571",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 3, r.stderr[-2000:]
    err = json.loads(r.stdout)["error"]
    assert err["exit_code"] == 3 and err["engine_exit_code"] == 1
    assert "before it was ready" in err["message"]
    from qwenprep.util.schemas import validator

    assert not list(validator("serve-plan").iter_errors(json.loads(r.stdout)))


def test_the_api_serves_sglang_as_the_command_does(env: dict[str, Any]) -> None:
    """api.plan, api.check, api.verify and api.serve_plan take serving_engine (issue 22) and
    give what `plan/check/verify/serve --serving-engine sglang --json` print."""
    from qwenprep import api

    ov = env["ov"]

    def seen(out: dict[str, Any]) -> dict[str, tuple[str, str]]:
        return {
            c["id"]: (c["status"], c["message"])
            for c in out["checks"]
            if not c["id"].startswith("disk")  # free space moves between two reads
        }

    code, cli = _check(ov)
    got = api.check(ov, kv_memory="2GiB", serving_engine="sglang", vllm_python=SG_PY)
    assert code == 0 and got["ok"] and seen(got) == seen(cli)
    assert got["serving_engine"] == cli["serving_engine"] == "sglang"
    code, cli = _serve(ov)
    got = api.serve_plan(ov, serving_engine="sglang", vllm_python=SG_PY)
    assert code == 0 and got == cli and got["argv"][1:3] == ["-m", "sglang.launch_server"]
    r = invoke("plan", str(TINY), "--context", "1m", "--kv-memory", "2GiB", "--json",
               "--serving-engine", "sglang")  # fmt: skip
    got = api.plan(TINY, context="1m", kv_memory="2GiB", serving_engine="sglang")
    assert r.exit_code == 0 and got == json.loads(r.stdout)
    assert got["max_total_num_tokens"] == 4194304  # SGLang's arithmetic, not vLLM's
    got = api.verify(ov, engine=True, serving_engine="sglang", vllm_python=SG_PY)
    ids = {c["id"]: c for c in got["checks"]}
    assert ids["engine.rope_type"]["status"] == "pass"
    assert "SGLang 0.5.23" in ids["engine.found"]["message"]
