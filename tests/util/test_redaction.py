"""No credential reaches qwenprep's output: the values of the engines' credential options
(`--hf-token`, `--api-key` with its several values, `--opt=VALUE`, the abbreviations and `_`
spellings vLLM's parser accepts), of credential-named variables and of credential-named keys
are masked in every line and JSON object: check text and --json, serve --dry-run text and
--json, --emit-config's printed command, the `starting vLLM: ARGV` line and the failure that
quotes vLLM's log. `--emit k8s` refuses a credential in the engine arguments (a manifest is
applied as printed). The secrets are plain strings with no `hf_` shape: only the option, the
name or the literal value given can catch them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import QWENPREP_BIN, TINY, invoke
from qwenprep.engines.vllm import core as vllm_core
from qwenprep.util.redact import MASK, argv_secrets, redact, redact_argv, redact_obj

VLLM_PY = os.environ.get("QWENPREP_VLLM_PYTHON") or sys.executable
INFO = vllm_core.discover(VLLM_PY)
needs_vllm = pytest.mark.skipif(
    INFO is None or not INFO.importable, reason=f"vLLM is not importable in {VLLM_PY}"
)
KEY1, KEY2 = "plainApiKeyZ9q8w7e6", "secondKeyM4n5b6v7"
TOK1, TOK2 = "abbrevTokQ1w2e3r4", "underTokP0o9i8u7"
SECRETS = (KEY1, KEY2, TOK1, TOK2)
# vLLM 0.32's own options (vllm/engine/arg_utils.py --hf-token; vllm/entrypoints/launchers/
# cli_args.py --api-key, a list), spelled as its FlexibleArgumentParser accepts them
ENGINE_ARGS = ("--api-key", KEY1, KEY2, "--hf-tok", TOK1, f"--hf_token={TOK2}")
ONE_EACH = ("--api-key", KEY1, "--hf-token", TOK1)


def clean(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, secret
            assert secret[:10] not in text, f"a fragment of {secret}"


@pytest.mark.parametrize(
    "text",
    [
        f"starting vLLM 0.32.0: python -m vllm serve /m --api-key {KEY1} {KEY2} --hf-tok {TOK1}",
        f"vllm serve /m --api-key={KEY1} --hf_token '{TOK1}' --admin-api-key \"{TOK2}\"",
        f"export HF_TOKEN={KEY1}\nexport VLLM_API_KEY={TOK1}",
        f"non-default args: {{'api_key': ['{KEY1}'], 'hf_token': '{TOK1}', 'model': '/m'}}",
        f"engine flag given (--hf-token {TOK1}) and more",
        f'{{"hf-token": "{TOK1}", "api-key": "{KEY1}"}}',
    ],
)
def test_every_shape_of_a_credential_in_text_is_masked(text: str) -> None:
    out = redact(text)
    clean(out)
    assert MASK in out


def test_ordinary_options_and_keys_are_left_alone() -> None:
    text = (
        "vllm serve /m --max-num-batched-tokens 8192 --ssl-keyfile /k.pem "
        "--tokenizer /t --kv-cache-dtype auto; {'key': 'rope_theta', 'max_tokens': 5}"
    )
    assert redact(text) == text
    # figures under key names that end in "token" are numbers, never credentials (plan's
    # decode.bytes_per_gpu_per_token was printed as *** by the CLI while the API said 0)
    figures = {"decode": {"bytes_per_gpu_per_token": 0, "seconds_per_token": 0.5}}
    assert redact_obj(figures) == figures


def test_argv_lists_and_credential_keys_in_json_objects_are_masked() -> None:
    argv = ["vllm", "serve", "/m", *ENGINE_ARGS, "--tp", "2"]
    assert redact_argv(argv) == [
        *["vllm", "serve", "/m", "--api-key", MASK, MASK, "--hf-tok", MASK],
        *["--hf_token=" + MASK, "--tp", "2"],
    ]
    assert argv_secrets(argv) == [KEY1, KEY2, TOK1, TOK2]
    obj = {
        "argv": argv,
        "env": {"HF_TOKEN": TOK1, "VLLM_API_KEY": KEY1},
        "config": {"api-key": [KEY2]},
    }
    out = json.dumps(redact_obj(obj))
    clean(out)
    assert '"--tp", "2"' in out


@pytest.fixture
def ov(tmp_path: Path) -> Path:
    out = tmp_path / "ov"
    assert invoke("patch", str(TINY), "--context", "1m", "--out", str(out)).exit_code == 0
    return out


def test_emit_k8s_refuses_a_credential_before_anything_runs(ov: Path) -> None:
    r = subprocess.run(
        [str(QWENPREP_BIN), "serve", str(ov), "--emit", "k8s", "--json", "--", *ENGINE_ARGS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    err = json.loads(r.stdout)["error"]
    assert err["message"].startswith("--emit k8s: the engine arguments after -- carry a credential")
    assert "Kubernetes Secret" in err["hint"]
    clean(r.stdout, r.stderr)


def test_emit_config_refuses_a_credential_before_anything_runs(ov: Path, tmp_path: Path) -> None:
    """--emit-config FILE would keep --api-key's value in a plain 0644 YAML: refused like
    --emit k8s (exit 2, the environment named), and no file is written."""
    target = tmp_path / "serve.yaml"
    r = subprocess.run(
        [str(QWENPREP_BIN), "serve", str(ov), "--emit-config", str(target), "--json"]
        + ["--", *ENGINE_ARGS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    err = json.loads(r.stdout)["error"]
    assert err["message"].startswith(
        "--emit-config: the engine arguments after -- carry a credential"
    )
    assert "config file would hold it in plain text" in err["message"]
    assert "VLLM_API_KEY" in err["hint"] and "environment" in err["hint"]
    assert not target.exists()
    clean(r.stdout, r.stderr)


def _run_all(
    commands: list[list[str]], env: dict[str, str]
) -> list[subprocess.CompletedProcess[str]]:
    """Run the commands side by side (each asks the real vLLM once) and wait for them all."""
    procs = [
        subprocess.Popen(
            [str(QWENPREP_BIN), *c],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for c in commands
    ]
    out = []
    for c, p in zip(commands, procs, strict=True):
        stdout, stderr = p.communicate(timeout=900)
        out.append(subprocess.CompletedProcess(c, p.returncode, stdout, stderr))
    return out


@needs_vllm
@pytest.mark.engine
@pytest.mark.slow
def test_check_and_serve_plans_never_print_the_engines_credentials(
    ov: Path, tmp_path: Path
) -> None:
    env = dict(os.environ, QWENPREP_VLLM_PYTHON=VLLM_PY, VLLM_API_KEY=TOK1)
    kv = ["--kv-memory", "1GiB"]
    runs = _run_all(
        [
            ["check", str(ov), *kv, "--", *ENGINE_ARGS],
            ["check", str(ov), *kv, "--json", "--", *ENGINE_ARGS],
            ["serve", str(ov), "--dry-run", "--", *ENGINE_ARGS],
            ["serve", str(ov), "--dry-run", "--json", "--", *ENGINE_ARGS],
            # a --config file takes one value per option (qwenprep.engines.vllm.deploy)
            ["serve", str(ov), "--emit-config", str(tmp_path / "v.yaml"), "--", *ONE_EACH],
        ],
        env,
    )
    for r in runs:
        clean(r.stdout, r.stderr)
    check_text, check_json, dry_text, dry_json, emitted = runs
    for r in runs[:4]:
        assert r.returncode in (0, 1), (r.args, r.stdout, r.stderr)
    # a config file would hold the credential in plain text: refused, as --emit k8s is
    assert emitted.returncode == 2 and "VLLM_API_KEY" in emitted.stderr
    assert not (tmp_path / "v.yaml").exists()
    assert "--api-key *** " in check_text.stdout  # the engine.argv line, masked
    report = json.loads(check_json.stdout)
    assert report["checks"] and any("--api-key ***" in c["message"] for c in report["checks"])
    plan = json.loads(dry_json.stdout)
    assert plan["argv"][-6:] == ["--api-key", MASK, MASK, "--hf-tok", MASK, f"--hf_token={MASK}"]
    assert "--api-key *** ***" in dry_text.stdout


def _busy_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


@needs_vllm
@pytest.mark.engine
@pytest.mark.slow
def test_serve_never_prints_them_starting_vllm_or_quoting_its_log(ov: Path, tmp_path: Path) -> None:
    sock, port = _busy_port()
    try:
        serve = f"serve {ov} --host 127.0.0.1 --port {port} --log-file {tmp_path / 'v.log'}"
        r = subprocess.run(
            [str(QWENPREP_BIN), *serve.split(), "--", *ENGINE_ARGS],
            capture_output=True,
            text=True,
            timeout=700,
            env=dict(os.environ, QWENPREP_VLLM_PYTHON=VLLM_PY, VLLM_CPU_KVCACHE_SPACE="1"),
        )
    finally:
        sock.close()
    assert r.returncode == 3, r.stdout + r.stderr
    starting = [ln for ln in r.stderr.splitlines() if ln.startswith("starting vLLM")]
    assert len(starting) == 1 and "--api-key *** *** --hf-tok *** --hf_token=***" in starting[0]
    clean(r.stdout, r.stderr)
