"""Hardening of the commands that can reach the Hub, against the real huggingface_hub client
and the real local HTTP hub of tests/hubserver.py, in fresh processes of the console script.

- `fetch --local-dir` never writes through links: an overlay (valid or not, or a directory
  inside one) and any directory holding a symlink the download would write (a file, a parent
  directory, huggingface_hub's `.cache/`, qwenprep's `.qwenprep/`) are refused with exit 3
  before any file is downloaded; the linked-to files stay byte-identical.
- Credentials never reach the output: HF_TOKEN / HUGGING_FACE_HUB_TOKEN / the stored token file,
  and user:password or `?token=` in HF_ENDPOINT, against a hub that echoes the Authorization
  header in its 401/403 answers; fetch and plan (the commands that go to the network), and
  verify / check / serve with a repo id (which must not go to the network at all).
- An unreachable endpoint says so (not "run the same command again").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TINY_FP8, tree_state
from hubserver import TINY_REPO, Commit, HubServer, hub_env, serving_tiny_hub

QWENPREP = Path(sys.executable).parent / "qwenprep"
TOKEN = "hf_hardeningTOKENxyz0123456789abcdef"  # the shape of a real token
PLAIN = "plainSecretNotHfShaped4242"  # no hf_ shape: only the literal value can catch it
PASSWORD = "endpointPa55wordQ7"
QSECRET = "querySecretZ9k2"
SHARD1 = "model-00001-of-00002.safetensors"


@pytest.fixture
def hub() -> Iterator[tuple[HubServer, Commit, Commit]]:
    with serving_tiny_hub() as served:
        yield served


def qp(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QWENPREP), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def resolves(server: HubServer) -> list[str]:
    return [s.path for s in server.requests if "/resolve/" in s.path]


def secret_free(r: subprocess.CompletedProcess[str], *secrets: str) -> None:
    for secret in secrets:
        assert secret not in r.stdout and secret not in r.stderr, secret
        assert secret[3:15] not in r.stdout + r.stderr, f"a fragment of {secret}"


def json_error(r: subprocess.CompletedProcess[str]) -> dict[str, object]:
    out = json.loads(r.stdout)
    assert out["schema_version"] == 1 and out["ok"] is False
    err = out["error"]
    assert isinstance(err, dict) and err["exit_code"] == r.returncode
    return err


# ------------------------------------------------------------------ fetch --local-dir


def source_unlike_the_hub(tmp_path: Path) -> Path:
    """The tiny FP8 checkpoint with small files that differ from the Hub's copies."""
    src = tmp_path / "src"
    shutil.copytree(TINY_FP8, src)
    for name in ("generation_config.json", "tokenizer_config.json"):
        p = src / name
        p.write_bytes(p.read_bytes().rstrip() + b"\n\n")
    return src


def overlay_refusal(ov: Path, context: str) -> tuple[str, str]:
    message = (
        f"--local-dir {ov} is a qwenprep overlay ({ov / '.qwenprep' / 'manifest.json'}): a "
        "download into it would write through its links into the checkpoint they point to, "
        "and replace its patched config.json."
    )
    hint = (
        f"fetch into the Hugging Face cache (qwenprep fetch {TINY_REPO}) or into another "
        f"directory (qwenprep fetch {TINY_REPO} --local-dir DIR), then rebuild the overlay from "
        f"it: qwenprep patch {TINY_REPO} --context {context} --out {ov} --force (patch DIR for a "
        "--local-dir download)"
    )
    return message, hint


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_fetch_into_an_overlay_is_refused_and_the_source_stays(
    hub: tuple[HubServer, Commit, Commit], tmp_path: Path, cache: str
) -> None:
    server = hub[0]
    env = hub_env(server, tmp_path / "hf")
    src = source_unlike_the_hub(tmp_path)
    ov = tmp_path / "ov"
    made = qp(env, "patch", str(src), "--context", "1m", "--out", str(ov))
    assert made.returncode == 0, made.stderr
    if cache == "warm":  # the repo is in the HF cache: huggingface_hub would copy from there
        assert qp(env, "fetch", TINY_REPO).returncode == 0
    src_before, ov_before = tree_state(src), tree_state(ov)
    server.requests.clear()
    message, hint = overlay_refusal(ov, "1048576")
    r = qp(env, "fetch", TINY_REPO, "--local-dir", str(ov))
    assert r.returncode == 3, r.stderr
    assert r.stdout == ""
    assert r.stderr.endswith(f"error: {message}\nHint: {hint}\n"), r.stderr
    r = qp(env, "fetch", TINY_REPO, "--local-dir", str(ov), "--json")
    assert r.returncode == 3
    assert json_error(r) == {"message": message, "hint": hint, "exit_code": 3}
    assert resolves(server) == [], "a file was downloaded before the refusal"
    assert tree_state(src) == src_before
    assert tree_state(ov) == ov_before


@pytest.mark.parametrize("where", ["overlay", "inside"])
def test_an_invalid_overlay_or_a_directory_inside_one_is_refused(
    hub: tuple[HubServer, Commit, Commit], tmp_path: Path, where: str
) -> None:
    server = hub[0]
    env = hub_env(server, tmp_path / "hf")
    ov = tmp_path / "broken-ov"
    (ov / ".qwenprep").mkdir(parents=True)
    (ov / ".qwenprep" / "manifest.json").write_text("{not json")
    dest = ov if where == "overlay" else ov / "sub" / "dir"
    r = qp(env, "fetch", TINY_REPO, "--local-dir", str(dest), "--json")
    assert r.returncode == 3, r.stderr
    err = json_error(r)
    message, hint = overlay_refusal(ov, "C")
    if where == "inside":
        message = message.replace(
            f"--local-dir {ov} is a qwenprep overlay",
            f"--local-dir {dest} is inside a qwenprep overlay, {ov}",
        )
    assert err == {"message": message, "hint": hint, "exit_code": 3}
    assert resolves(server) == []
    assert sorted(p.relative_to(ov).as_posix() for p in ov.rglob("*")) == [
        ".qwenprep",
        ".qwenprep/manifest.json",
    ]


@pytest.mark.parametrize(
    "link", ["tokenizer_config.json", SHARD1, ".cache", ".cache/huggingface", ".qwenprep"]
)
def test_a_symlink_the_download_would_write_through_is_refused(
    hub: tuple[HubServer, Commit, Commit], tmp_path: Path, link: str
) -> None:
    server = hub[0]
    env = hub_env(server, tmp_path / "hf")
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    outside.mkdir()
    is_dir = link.startswith(".")
    target = outside / ("somedir" if is_dir else "precious.bin")
    if is_dir:
        target.mkdir()
    else:
        target.write_bytes(b"precious bytes that are not the Hub's\n")
    (dest / link).parent.mkdir(parents=True, exist_ok=True)
    (dest / link).symlink_to(target)
    before = tree_state(outside)
    r = qp(env, "fetch", TINY_REPO, "--local-dir", str(dest))
    assert r.returncode == 3, r.stderr
    assert r.stdout == ""
    assert (
        f"error: --local-dir {dest} holds a symlink the download would write through: "
        f"{dest / link} -> {target}.\n"
        "Hint: fetch into a directory without links (qwenprep fetch "
        f"{TINY_REPO} --local-dir DIR) or into the Hugging Face cache (qwenprep fetch "
        f"{TINY_REPO}); a qwenprep overlay is rebuilt from there with: qwenprep patch "
        "SOURCE --context C --out OVERLAY --force\n"
    ) in r.stderr, r.stderr
    assert resolves(server) == []
    assert tree_state(outside) == before


def test_an_unrelated_symlink_in_the_local_dir_is_fine(
    hub: tuple[HubServer, Commit, Commit], tmp_path: Path
) -> None:
    """Precision: only links the download would write through are refused."""
    server, main, _ = hub
    env = hub_env(server, tmp_path / "hf")
    dest = tmp_path / "dest"
    dest.mkdir()
    notes = tmp_path / "notes.md"
    notes.write_text("mine\n")
    (dest / "README.md").symlink_to(notes)
    r = qp(env, "fetch", TINY_REPO, "--local-dir", str(dest), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    assert (dest / "config.json").read_bytes() == main.files["config.json"]
    assert notes.read_text() == "mine\n" and (dest / "README.md").is_symlink()


# ------------------------------------------------------------------ credentials


def token_env(server: HubServer, tmp_path: Path, how: str) -> tuple[dict[str, str], str]:
    """(environment, the secret the client sends) for each way huggingface_hub finds a token."""
    home = tmp_path / "hf"
    if how == "HF_TOKEN":
        return hub_env(server, home, HF_TOKEN=TOKEN), TOKEN
    if how == "HF_TOKEN-plain":
        return hub_env(server, home, HF_TOKEN=PLAIN), PLAIN
    if how == "HUGGING_FACE_HUB_TOKEN":
        return hub_env(server, home, HUGGING_FACE_HUB_TOKEN=PLAIN), PLAIN
    home.mkdir(parents=True, exist_ok=True)
    (home / "token").write_text(PLAIN)  # what `hf auth login` leaves behind
    return hub_env(server, home), PLAIN


@pytest.mark.parametrize("only", ["all", "shard"])
@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize(
    "how", ["HF_TOKEN", "HF_TOKEN-plain", "HUGGING_FACE_HUB_TOKEN", "token-file"]
)
def test_an_echoed_token_never_reaches_the_output(
    hub: tuple[HubServer, Commit, Commit], tmp_path: Path, status: int, how: str, only: str
) -> None:
    """Every request refused, or only the weights (plan then fails on the header range read,
    fetch on the download, after the Hub's file list came through)."""
    server = hub[0]
    server.faults.deny = status
    if only == "shard":
        server.faults.deny_only = {SHARD1}
    env, secret = token_env(server, tmp_path, how)
    for command in (["plan", TINY_REPO, "--kv-memory", "1GiB"], ["fetch", TINY_REPO]):
        for extra in ([], ["--json"]):
            server.auth_headers.clear()
            r = qp(env, *command, *extra)
            assert r.returncode == 3, r.stderr
            assert server.auth_headers == [f"Bearer {secret}"] * len(server.auth_headers)
            assert server.auth_headers, "the token was not sent: this test would prove nothing"
            assert any(s.path.endswith(SHARD1) for s in server.requests) or only == "all"
            secret_free(r, secret)
            if extra:
                err = json_error(r)
                text = f"{err['message']}\nHint: {err['hint']}"
                assert r.stderr.endswith(f"error: {text}\n")
            else:
                assert r.stdout == ""
                text = r.stderr.split("error: ", 1)[1]
            if command[0] == "fetch":
                reason = "Unauthorized" if status == 401 else "Forbidden"
                assert text.startswith(
                    f"{TINY_REPO}: the Hub at {server.url} refused access "
                    f"(HTTP {status} {reason}): "
                ), text
                assert text.rstrip("\n").endswith(
                    "\nHint: check the token huggingface_hub sends (HF_TOKEN, or hf auth login) "
                    f"and that it may read {TINY_REPO}; a gated repo also needs its terms "
                    "accepted on the model page"
                ), text
            else:
                assert text.startswith(
                    f"{TINY_REPO}: cannot read config.json and safetensors headers from "
                    f"{server.url} ("
                ), text


def endpoint_with_credentials(url: str, *, query: bool) -> str:
    host = url.split("://", 1)[1]
    return f"http://hfuser:{PASSWORD}@{host}" + (f"/?access_token={QSECRET}" if query else "")


def test_endpoint_credentials_never_reach_the_output(
    hub: tuple[HubServer, Commit, Commit], tmp_path: Path
) -> None:
    """user:password in HF_ENDPOINT works (the client sends it) and is never shown; a token in
    its query string breaks every URL the client builds, and is never shown either."""
    server = hub[0]
    working = hub_env(
        server,
        tmp_path / "hf",
        HF_TOKEN=TOKEN,
        HF_ENDPOINT=endpoint_with_credentials(server.url, query=False),
    )
    for args in (
        ["fetch", TINY_REPO],
        ["fetch", TINY_REPO, "--json"],
        ["fetch", TINY_REPO, "--local-dir", str(tmp_path / "d"), "--json"],
        ["plan", TINY_REPO, "--kv-memory", "1GiB"],
        ["plan", "Qwen/Not-Cached", "--kv-memory", "1GiB", "--json"],
    ):
        r = qp(working, *args)
        assert r.returncode == (3 if "Qwen/Not-Cached" in args else 0), r.stderr
        secret_free(r, TOKEN, PASSWORD)
    broken = dict(working, HF_ENDPOINT=endpoint_with_credentials(server.url, query=True))
    for args in (
        ["fetch", "Qwen/Other"],
        ["fetch", "Qwen/Other", "--json"],
        ["plan", "Qwen/Other", "--kv-memory", "1GiB"],
        ["plan", "Qwen/Other", "--kv-memory", "1GiB", "--json"],
    ):
        r = qp(broken, *args)
        assert r.returncode == 3, r.stderr
        secret_free(r, TOKEN, PASSWORD, QSECRET)
        assert "http://***@127.0.0.1:" in r.stderr and "access_token=***" in r.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["verify"],
        ["verify", "--deep", "--json"],
        ["check"],
        ["check", "--json"],
        ["serve", "--dry-run"],
        ["serve", "--dry-run", "--json"],
        ["validate", "--json"],
    ],
)
def test_commands_given_a_repo_id_stay_off_the_network(
    hub: tuple[HubServer, Commit, Commit], tmp_path: Path, command: list[str]
) -> None:
    server = hub[0]
    server.faults.deny = 401
    env = hub_env(
        server,
        tmp_path / "hf",
        HF_TOKEN=TOKEN,
        HF_ENDPOINT=endpoint_with_credentials(server.url, query=True),
    )
    r = qp(env, command[0], TINY_REPO, *command[1:])
    assert r.returncode == 3, r.stderr
    assert f"{TINY_REPO} is not in the Hugging Face cache ({tmp_path / 'hf' / 'hub'})" in r.stderr
    assert f"qwenprep fetch {TINY_REPO}" in r.stderr
    if "--json" in command:
        json_error(r)
    secret_free(r, TOKEN, PASSWORD, QSECRET)
    assert server.requests == []


# ------------------------------------------------------------------ unreachable


@pytest.mark.parametrize("as_json", [False, True])
def test_an_unreachable_endpoint_says_so(tmp_path: Path, as_json: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_HOME=str(tmp_path / "hf"),
        HF_TOKEN=TOKEN,
        NO_PROXY="127.0.0.1",
        HF_ENDPOINT=f"http://hfuser:{PASSWORD}@127.0.0.1:1/?token={QSECRET}",
    )
    r = qp(env, "fetch", TINY_REPO, *(["--json"] if as_json else []))
    assert r.returncode == 3, r.stderr
    shown = "http://***@127.0.0.1:1/?token=***"
    hint = (
        f"check the network and HF_ENDPOINT (now {shown}); a repo already in the Hugging Face "
        "cache needs no network: set HF_HUB_OFFLINE=1 and use it by its id"
    )
    if as_json:
        err = json_error(r)
        message = str(err["message"])
        assert err["hint"] == hint
    else:
        assert r.stdout == ""
        message = r.stderr.split("error: ", 1)[1].split("\nHint: ")[0]
        assert r.stderr.endswith(f"\nHint: {hint}\n")
    assert message.startswith(f"{TINY_REPO}: the Hub could not be reached at {shown} (")
    assert "Connection refused" in message
    assert "run the same command again" not in r.stdout + r.stderr
    secret_free(r, TOKEN, PASSWORD, QSECRET)


def test_plan_fails_fast_on_an_unreachable_endpoint(tmp_path: Path) -> None:
    """plan asks for the repo's file list first (one GET, as fetch does), so an unreachable
    Hub is said at once: no HEAD of config.json retried five times with backoff (about 25 s of
    "Retrying in 8s" lines from huggingface_hub), only the clean error, credentials masked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_HOME=str(tmp_path / "hf"),
        HF_TOKEN=TOKEN,
        NO_PROXY="127.0.0.1",
        HF_ENDPOINT=f"http://hfuser:{PASSWORD}@127.0.0.1:1?access_token={QSECRET}",
    )
    r = qp(env, "plan", "Qwen/Not-Cached", "--kv-memory", "1GiB", "--json")
    assert r.returncode == 3, r.stderr
    secret_free(r, TOKEN, PASSWORD, QSECRET)
    shown = "http://***@127.0.0.1:1?access_token=***"
    assert "Retry" not in r.stderr and "thrown while requesting" not in r.stderr, r.stderr
    err = json_error(r)
    assert err["message"] == (
        f"Qwen/Not-Cached: cannot read config.json and safetensors headers from {shown} (the "
        "Hub could not be reached: ConnectError: [Errno 111] Connection refused)."
    )
    assert err["hint"] == (
        f"check the network and HF_ENDPOINT (now {shown}); a repo already in the Hugging Face "
        "cache needs no network: set HF_HUB_OFFLINE=1 and use it by its id; or download it: "
        "qwenprep fetch Qwen/Not-Cached"
    )


def test_the_scrubber_masks_every_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qwenprep.util.redact import redact

    home = tmp_path / "hf"
    home.mkdir()
    (home / "token").write_text(PLAIN + "\n")
    (home / "stored_tokens").write_text("[work]\nhf_token = storedSecretValue77\n")
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_ENDPOINT", f"https://me:{PASSWORD}@hub.example/?sig={QSECRET}")
    text = (
        f"Authorization: Bearer {PLAIN}; basic dXNlcjpwYXNzd29yZA==; {TOKEN}; stored "
        f"storedSecretValue77; https://u:p4ss@mirror.example/a?x=1&token=t0k3n&access_token=a "
        f"{PASSWORD} {QSECRET}; hf_hub_download and hf_transfer stay"
    )
    assert redact(text) == (
        "Authorization: Bearer ***; basic ***; hf_***; stored ***; "
        "https://***@mirror.example/a?x=1&token=***&access_token=*** *** ***; "
        "hf_hub_download and hf_transfer stay"
    )
