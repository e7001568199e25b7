"""One gate for `qwenprep check` and `qwenprep serve` (dry runs too), owned by vLLM.

A table of argvs after `--` goes through BOTH `qwenprep check OVERLAY ... -- ARGS` and
`qwenprep serve OVERLAY --dry-run -- ARGS`: they must agree (check exit 0 <-> serve exit 0,
check exit 1 <-> serve exit 3) and give the same reasons, which are vLLM's own answers: the
installed vLLM parses the exact argv serve would exec and builds the model config from it.
The probe (one import of vLLM) is paid once for the whole table (gate.probe_plans); two
cases also run through the real console script, with no cache in between. Without vLLM
(an interpreter that has none) the same table is judged offline, and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import QWENPREP_BIN, TINY, invoke
from qwenprep.engines import probe
from qwenprep.engines.vllm import core as vllm_core
from qwenprep.engines.vllm import engine as eng
from qwenprep.engines.vllm import gate
from qwenprep.engines.vllm import offline as gate_offline
from qwenprep.engines.vllm.launch import WORKER_ENTRY

VLLM_PY = os.environ.get("QWENPREP_VLLM_PYTHON") or sys.executable
INFO = vllm_core.discover(VLLM_PY)
HAVE_VLLM = INFO is not None and INFO.importable
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason=f"vLLM is not importable in {VLLM_PY}")

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 262144}
NO_THETA = json.dumps({"rope_scaling": YARN})
THETA_LOST = (
    "[engine.rope_theta] RoPE base (rope_theta): vLLM would use 10000 but config.json "
    "sets 10000000 (--hf-overrides replaces the whole rope_scaling dict without "
    "rope_theta: the base from config.json is gone)"
)
DOTTED = [
    "--hf-overrides.rope_scaling.rope_type",
    "yarn",
    "--hf-overrides.rope_scaling.factor",
    "4",
    "--hf-overrides.rope_scaling.original_max_position_embeddings",
    "262144",
]

# name -> (argv after --, yaml text for {yaml} or None, reasons both commands must give)
CASES: dict[str, tuple[list[str], str | None, list[str]]] = {
    "benign": (["--gpu-memory-utilization", "0.8", "--enforce-eager"], None, []),
    "benign-config-yaml": (
        ["--config", "{yaml}"],
        "gpu-memory-utilization: 0.8\nenforce-eager: true\n",
        [],
    ),
    "hf-overrides-without-theta": (["--hf-overrides", NO_THETA], None, [THETA_LOST]),
    "hf_overrides-underscore": (["--hf_overrides", NO_THETA], None, [THETA_LOST]),
    "hf-overrides-dotted": (DOTTED, None, [THETA_LOST]),
    "trap-inside-config-yaml": (
        ["--config", "{yaml}"],
        "hf-overrides:\n  rope_scaling:\n"
        "    rope_type: yarn\n    factor: 4.0\n"
        "    original_max_position_embeddings: 262144\n",
        [THETA_LOST],
    ),
    "rope_scaling-null": (
        ["--hf-overrides", '{"rope_scaling": null}'],
        None,
        [
            "[engine.rope_type] rope type: vLLM would use default but the overlay manifest "
            "intends yarn (--hf-overrides replaces the whole rope_scaling dict without "
            "rope_theta: the base from config.json is gone)",
            "[engine.rope_theta] RoPE base (rope_theta): vLLM would use 10000 but config.json sets "
            "10000000 (--hf-overrides replaces the whole rope_scaling dict without rope_theta: the "
            "base from config.json is gone)",
            "[engine.rope_scaling] vLLM would serve 1048576 tokens with default (unscaled) RoPE, "
            "past the native 262144: positions beyond it give wrong output.",
        ],
    ),
    "max_model_len-underscore": (
        ["--max_model_len", "2097152"],
        None,
        [
            "[engine.own_args] the arguments after -- change what qwenprep's own options set: "
            "max_model_len 1048576 -> 2097152.",
            "[engine.load] vLLM refuses to build the model config with these arguments: "
            "ValidationError: 1 validation error for ModelConfig",
        ],
    ),
    "max-model-le-abbreviation": (
        ["--max-model-le", "524288"],
        None,
        [
            "[engine.own_args] the arguments after -- change what qwenprep's own options set: "
            "max_model_len 1048576 -> 524288.",
            "[engine.max_model_len] max model length: vLLM would use 524288 but the plan asks for "
            "1048576",
        ],
    ),
    "mpe-only-bump": (
        ["--hf-overrides", '{"max_position_embeddings": 2097152}', "--max-model-len", "2097152"],
        None,
        [
            "[engine.own_args] the arguments after -- change what qwenprep's own options set: "
            "max_model_len 1048576 -> 2097152.",
            "[engine.max_model_len] max model length: vLLM would use 2097152 but the plan asks for "
            "1048576",
            "[engine.rope_scaling] vLLM would serve 2097152 tokens with YaRN factor 4 x original "
            "262144 = 1048576, past the native 262144: positions beyond it give wrong output.",
        ],
    ),
    "unknown-flag": (
        ["--no-such-flag", "1"],
        None,
        [
            "[engine.argv] vLLM 0.32.0's serve parser refuses the arguments: vllm: error: "
            "unrecognized arguments: --no-such-flag 1"
        ],
    ),
}


def _fill(argv: list[str], yaml_text: str | None, tmp: Path, name: str) -> list[str]:
    if yaml_text is None:
        return argv
    f = tmp / f"{name}.yaml"
    f.write_text(yaml_text)
    return [str(f) if a == "{yaml}" else a for a in argv]


def _reasons(check_out: dict[str, Any]) -> list[str]:
    return [
        f"[{c['id']}] {c['message'].split(' Hint: ')[0]}"
        for c in check_out["checks"]
        if c["status"] == "fail"
    ]


def _serve_reasons(message: str) -> list[str]:
    listed = message.split("): ", 1)[1]
    return ["[" + r for r in ("; " + listed).split("; [")[1:]]


def _both(
    ov: Path,
    extra: list[str],
    *,
    python: str,
    check_opts: tuple[str, ...] = (),
    serve_opts: tuple[str, ...] = (),
) -> tuple[Any, Any]:
    c = invoke(
        "check",
        str(ov),
        "--json",
        "--kv-memory",
        "2GiB",
        "--vllm-python",
        python,
        *check_opts,
        "--",
        *extra,
    )
    s = invoke(
        "serve", str(ov), "--dry-run", "--json", "--vllm-python", python, *serve_opts, "--", *extra
    )
    return c, s


def _agree(c: Any, s: Any, expected: list[str], offline: bool = False) -> None:
    out = json.loads(c.stdout)
    if not expected:
        assert (c.exit_code, s.exit_code) == (0, 0), (c.output, s.output)
        return
    assert (c.exit_code, s.exit_code) == (1, 3), (c.output, s.output)
    err = json.loads(s.stdout)["error"]
    tag = "(offline, not judged by vLLM) " if offline else ""
    got_check = [r.replace(tag, "") for r in _reasons(out)]
    got_serve = [r.replace(tag, "") for r in _serve_reasons(err["message"])]
    assert got_check == got_serve, (got_check, got_serve)
    for want in expected:
        assert any(r.startswith(want.rstrip(".")) for r in got_check), (want, got_check)


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ov = tmp_path_factory.mktemp("gate") / "ov"
    r = invoke("patch", str(TINY), "--context", "1m", "--out", str(ov), "--json")
    assert r.exit_code == 0, r.output
    return ov


# ---------------------------------------------------------------- vLLM judges (real vLLM)
@pytest.mark.engine
@needs_vllm
def test_check_and_serve_agree_on_every_argv(overlay: Path, tmp_path: Path) -> None:
    assert INFO is not None
    argvs = {n: _fill(a, y, tmp_path, n) for n, (a, y, _) in CASES.items()}
    plans = [
        eng.build_launch_plan(overlay, engine=INFO, extra_args=a, offline_gate=False)
        for a in argvs.values()
    ]
    gate.probe_plans(plans, probe.engine_python(INFO.python))  # one import of vLLM for all
    for name, (_, _, expected) in CASES.items():
        c, s = _both(overlay, argvs[name], python=VLLM_PY)
        try:
            _agree(c, s, expected)
        except AssertionError as e:
            raise AssertionError(f"case {name}: {e}") from None


@pytest.mark.engine
@needs_vllm
def test_model_after_dashdash_names_the_positional_path(overlay: Path) -> None:
    c, s = _both(overlay, ["--model", "/elsewhere"], python=VLLM_PY)
    _agree(
        c,
        s,
        [
            f"[engine.own_args] --model after -- names another model; the model is "
            f"qwenprep's positional PATH (here {overlay})",
            f"[engine.argv] vLLM 0.32.0's serve parser refuses the arguments: vllm: "
            f"error: unrecognized arguments: {overlay}",
        ],
    )


@pytest.mark.engine
@needs_vllm
def test_a_length_past_the_config_is_refused_by_both(overlay: Path) -> None:
    c, s = _both(
        overlay,
        [],
        python=VLLM_PY,
        check_opts=("--context", "2m"),
        serve_opts=("--max-model-len", "2m"),
    )
    assert (c.exit_code, s.exit_code) == (1, 3), (c.output, s.output)
    err = json.loads(s.stdout)["error"]
    assert err["message"].startswith(
        f"{overlay / 'config.json'}: --max-model-len 2097152 is "
        "above the 1048576 tokens this config allows"
    )
    plan = {x["id"]: x for x in json.loads(c.stdout)["checks"]}["engine.plan"]
    assert plan["status"] == "fail"
    assert plan["message"].startswith(f"qwenprep serve would refuse (exit 3): {err['message']}")


@pytest.mark.engine
@needs_vllm
def test_the_console_script_runs_the_gate_without_any_cache(overlay: Path) -> None:
    env = dict(os.environ, QWENPREP_VLLM_PYTHON=VLLM_PY)
    for extra, codes in (([], (0, 0)), (["--hf_overrides", NO_THETA], (1, 3))):
        c = subprocess.run(
            [
                str(QWENPREP_BIN),
                "check",
                str(overlay),
                "--json",
                "--kv-memory",
                "2GiB",
                "--",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        s = subprocess.run(
            [str(QWENPREP_BIN), "serve", str(overlay), "--dry-run", "--json", "--", *extra],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert (c.returncode, s.returncode) == codes, (c.stderr[-2000:], s.stderr[-2000:])
        if codes[0]:
            assert THETA_LOST in _reasons(json.loads(c.stdout))
            assert THETA_LOST in _serve_reasons(json.loads(s.stdout)["error"]["message"])
        else:
            plan = json.loads(s.stdout)
            assert (
                any(
                    n.startswith(f"vLLM {INFO.version}") and "own serve parser" in n
                    for n in plan["notes"]
                )
                if INFO
                else True
            )
            assert plan["argv"][1:4] == ["-c", WORKER_ENTRY, "serve"]


# ---------------------------------------------------------------- offline (no vLLM)
@pytest.fixture(scope="module")
def no_vllm_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    venv = tmp_path_factory.mktemp("novllm") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return str(venv / "bin" / "python")


OFFLINE = {
    "benign": [],
    "benign-config-yaml": [],
    "hf-overrides-without-theta": [THETA_LOST.replace("[engine.rope_theta] ", "")],
    "hf_overrides-underscore": [THETA_LOST.replace("[engine.rope_theta] ", "")],
    "hf-overrides-dotted": [THETA_LOST.replace("[engine.rope_theta] ", "")],
    "trap-inside-config-yaml": [THETA_LOST.replace("[engine.rope_theta] ", "")],
    "rope_scaling-null": [
        "rope type: vLLM would use default but the overlay manifest intends yarn"
    ],
    "max_model_len-underscore": [
        "the arguments after -- change what qwenprep's own options "
        "set: max_model_len 1048576 -> 2097152"
    ],
    "max-model-le-abbreviation": [
        "the arguments after -- change what qwenprep's own options "
        "set: max_model_len 1048576 -> 524288"
    ],
    "mpe-only-bump": [
        "vLLM would serve 2097152 tokens with YaRN factor 4 x original 262144 = "
        "1048576, past the native 262144"
    ],
    "unknown-flag": [
        "vLLM's serve parser would refuse the arguments: unrecognized arguments: --no-such-flag"
    ],
}


def test_offline_fallback_normalises_spellings_as_vllm_does(
    overlay: Path, tmp_path: Path, no_vllm_python: str
) -> None:
    assert vllm_core.discover(no_vllm_python) is None
    for name, expected in OFFLINE.items():
        argv, yaml_text, _ = CASES[name]
        c, s = _both(overlay, _fill(argv, yaml_text, tmp_path, name), python=no_vllm_python)
        out = json.loads(c.stdout)
        checks = {x["id"]: x for x in out["checks"]}
        assert checks["engine.readback"]["status"] == "skip"
        assert (
            "judged offline by qwenprep's reading of vLLM 0.32's serve parser, not by vLLM"
            in checks["engine.readback"]["message"]
        )
        assert checks["engine.argv"]["message"].startswith("(offline, not judged by vLLM) ")
        if not expected:
            assert (c.exit_code, s.exit_code) == (0, 0), (name, c.output, s.output)
            note = [n for n in json.loads(s.stdout)["notes"] if "judged offline" in n]
            assert note and note[0].startswith(
                "the vLLM arguments were judged offline, not by vLLM"
            )
            continue
        assert (c.exit_code, s.exit_code) == (1, 3), (name, c.output, s.output)
        msg = json.loads(s.stdout)["error"]["message"]
        assert "judged offline, not by vLLM" in msg, name
        fails = [x["message"] for x in out["checks"] if x["status"] == "fail"]
        for want in expected:
            assert any(want in f for f in fails), (name, want, fails)
            assert want in msg, (name, want, msg)


def test_offline_reading_of_spellings() -> None:
    d = gate_offline.offline_dests(
        [
            "--hf_overrides.rope_scaling.factor",
            "2",
            "--max-model-le",
            "1M",
            "-tp",
            "2",
            "--no-enable-expert-parallel",
            "--served_model_name=x",
        ]
    )
    assert d == {
        "hf_overrides": {"rope_scaling": {"factor": 2}},
        "max_model_len": 1048576,
        "tensor_parallel_size": "2",
        "enable_expert_parallel": False,
        "served_model_name": "x",
    }
    assert gate_offline.offline_dests(["--max-model-len", "1m"])["max_model_len"] == 1000000
    with pytest.raises(ValueError, match="ambiguous option: --hf could match"):
        gate_offline.offline_dests(["--hf", "x"])
    with pytest.raises(ValueError, match="unrecognized arguments: --rope-scaling"):
        gate_offline.offline_dests(["--rope-scaling", "{}"])


# ---------------------------------------------------------------- hardening in the gate's files
def test_garbage_after_the_probe_marker_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'QWENPREP_PROBE {this is not json'\n")
    fake.chmod(0o755)
    ov = tmp_path / "ov"
    assert invoke("patch", str(TINY), "--context", "1m", "--out", str(ov)).exit_code == 0
    for cmd in (["serve", str(ov), "--dry-run"], ["check", str(ov), "--kv-memory", "2GiB"]):
        p = subprocess.run(
            [str(QWENPREP_BIN), *cmd, "--json", "--vllm-python", str(fake)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "Traceback" not in p.stderr, p.stderr
        out = json.loads(p.stdout)  # exactly one JSON object
        text = json.dumps(out)
        assert "answered something that is not qwenprep's probe JSON" in text, text
        assert p.returncode == (3 if cmd[0] == "serve" else 1), p.stderr


def test_a_model_dir_named_like_a_flag_stays_a_value(tmp_path: Path) -> None:
    ov = tmp_path / "--x"
    assert invoke("patch", str(TINY), "--context", "1m", "--out", str(ov)).exit_code == 0
    plan = eng.build_launch_plan(ov, engine=None, served_model_name="--x", host="-h")
    assert "--served-model-name=--x" in plan.argv and "--host=-h" in plan.argv
    assert plan.argv[3:5] == ("serve", str(ov))


@pytest.mark.parametrize("port", ["-1", "0", "65536"])
def test_serve_port_out_of_range_is_a_usage_error(port: str) -> None:
    r = invoke("serve", str(TINY), "--dry-run", "--port", port)
    assert r.exit_code == 2, r.output
    assert "--port" in r.output and "1<=x<=65535" in r.output
