"""After a server is ready: show that a prompt past the model's native window runs.

The config check proves what the engine *would* compute; this asks the running server to do it.
One completion whose prompt is longer than the native window (the length the model was trained
at, before YaRN): the prompt is a list of token ids, so its length is exact without a tokenizer
(vLLM's and SGLang's OpenAI-compatible /v1/completions both take one), with one output token,
streamed, so the time to the first streamed token is the time to first token. Engine-neutral:
it needs only the server's base URL and served name.

Also: the engine's own KV-cache figure, read from vLLM's Prometheus metrics
(`vllm:cache_config_info`, a gauge whose labels are CacheConfig's fields - vLLM 0.32
v1/metrics/loggers.py, PrometheusStatLogger.log_metrics_info), when the server exposes it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenprep.errors import InputError, UsageError

# Past native by at least this many tokens (or 1/64 of native, whichever is more): far enough
# that YaRN's scaled frequencies are what the positions use, small enough to run in seconds on
# the tiny checkpoints.
MIN_MARGIN = 256


@dataclass(frozen=True)
class ProofRequest:
    native: int
    prompt_tokens: int
    vocab_size: int


def native_and_vocab(model_path: str | Path) -> tuple[int, int]:
    """The native window and vocabulary size of the served config (text config for the
    multimodal releases)."""
    from qwenprep.model.contexts import native_context
    from qwenprep.util.jsonio import load_json_file

    cfg = load_json_file(Path(model_path) / "config.json", what="config.json")
    if not isinstance(cfg, dict):
        raise InputError(f"{model_path}/config.json is not a JSON object.")
    nested = cfg.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else cfg
    vocab = text.get("vocab_size") or cfg.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 2:
        raise InputError(f"{model_path}/config.json has no usable vocab_size.")
    return native_context(cfg), vocab


def proof_request(
    model_path: str | Path, max_model_len: int, tokens: int | None = None
) -> ProofRequest | None:
    """The past-native request to send, or None when the served length does not go past the
    native window (there is nothing past native to show). TOKENS: the prompt length asked for
    (--proof-tokens); refused unless it is past native and leaves room for one output token."""
    native, vocab = native_and_vocab(model_path)
    room = max_model_len - 1
    if tokens is None:
        if max_model_len <= native:
            return None
        tokens = min(native + max(MIN_MARGIN, native // 64), room)
    elif not native < tokens <= room:
        raise UsageError(
            f"--proof-tokens {tokens} is not past the native window: it must be more than "
            f"{native:,} (native) and at most {room:,} (the served length less one output "
            "token).",
            hint=f"use --proof-tokens {min(native + MIN_MARGIN, room)}, or --no-proof.",
        )
    return ProofRequest(native=native, prompt_tokens=tokens, vocab_size=vocab)


def prompt_ids(n: int, vocab_size: int) -> list[int]:
    """N token ids spread over the vocabulary (no long run of one token), never id 0."""
    span = max(1, min(vocab_size, 32000) - 1)
    return [1 + (i * 7919) % span for i in range(n)]


def run_proof(
    base_url: str, model: str, req: ProofRequest, timeout: float = 600.0
) -> dict[str, Any]:
    """Send the past-native completion; return {"prompt_tokens", "native",
    "seconds_to_first_token", "seconds_total", "ok"} (and "error" when not ok)."""
    import urllib.error
    import urllib.request

    body = {
        "model": model,
        "prompt": prompt_ids(req.prompt_tokens, req.vocab_size),
        "max_tokens": 1,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    out: dict[str, Any] = {
        "prompt_tokens": req.prompt_tokens,
        "native": req.native,
        "seconds_to_first_token": None,
        "seconds_total": None,
        "ok": False,
    }
    http = urllib.request.Request(
        base_url + "/v1/completions",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    t0 = time.monotonic()
    first: float | None = None
    usage: dict[str, Any] | None = None
    try:
        with urllib.request.urlopen(http, timeout=timeout) as resp:  # noqa: S310 (local URL)
            for raw in resp:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("choices") and first is None:
                    first = time.monotonic() - t0
                if event.get("usage"):
                    usage = event["usage"]
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")[:300]
        out["error"] = f"HTTP {e.code}: {detail}"
        return out
    except (urllib.error.URLError, OSError, ValueError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    out["seconds_total"] = round(time.monotonic() - t0, 3)
    if first is None:
        out["error"] = "the server answered without a token"
        return out
    out["seconds_to_first_token"] = round(first, 3)
    counted = (usage or {}).get("prompt_tokens")
    if counted is not None and counted != req.prompt_tokens:
        out["error"] = f"the server counted {counted} prompt tokens, not {req.prompt_tokens}"
        return out
    out["ok"] = True
    return out


_INFO = re.compile(r"^vllm:cache_config_info\{(?P<labels>[^}]*)\}", re.M)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def engine_kv(base_url: str, timeout: float = 10.0) -> dict[str, Any] | None:
    """vLLM's own KV figure from /metrics (num_gpu_blocks x block_size), or None when the
    server has no such metric (SGLang, or metrics off)."""
    import urllib.request

    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=timeout) as resp:  # noqa: S310
            text = resp.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    m = _INFO.search(text)
    if m is None:
        return None
    labels = dict(_LABEL.findall(m.group("labels")))
    try:
        blocks = int(labels["num_gpu_blocks"])
        block = int(labels["block_size"])
    except (KeyError, ValueError):
        return None
    return {"num_gpu_blocks": blocks, "block_size": block, "tokens": blocks * block}


def describe(proof: dict[str, Any]) -> str:
    """One line for people."""
    if proof.get("ok"):
        return (
            f"past native: a {proof['prompt_tokens']:,}-token prompt (native window "
            f"{proof['native']:,}) ran; first token after {proof['seconds_to_first_token']:.2f} s"
        )
    return (
        f"past native: a {proof['prompt_tokens']:,}-token prompt (native window "
        f"{proof['native']:,}) FAILED: {proof.get('error')}"
    )
