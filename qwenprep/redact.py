"""Scrub credentials out of any text qwenprep shows: the one place every error path, and every
line that shows the Hub endpoint, goes through.

What goes: the literal values of HF_TOKEN / HUGGING_FACE_HUB_TOKEN and of the token(s)
huggingface_hub stored on disk (HF_TOKEN_PATH, else HF_HOME/token, and HF_HOME/stored_tokens),
the credentials written into HF_ENDPOINT (userinfo, token-like query values), then by shape:
`Bearer ...` / `Basic ...`, `hf_...` tokens, the userinfo of any URL, and the values of
token-like query parameters (`?token=`, `&access_token=`, `X-Amz-Signature=`, ...).

Reads only the environment and two small files; imports nothing heavy (cli._fail uses it).
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "***"
_TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_MIN_SECRET = 4  # shorter values would scrub ordinary words

_QUERY_KEYS = (
    "access_token|token|hf_token|auth|authorization|api_key|apikey|api-key|key|password|passwd"
    "|pwd|secret|client_secret|sig|signature|x-amz-signature|x-amz-credential"
    "|x-amz-security-token|x-goog-signature|x-goog-credential|code"
)
_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization header values, with or without the header name
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=:-]+"), rf"\1\2{MASK}"),
    # URL userinfo: scheme://user:password@host -> scheme://***@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#@'\"<>]+@"), rf"\1{MASK}@"),
    # token-like query parameters (also a bare `token=` that opens a query-looking string)
    (re.compile(rf"(?i)((?:^|[?&;\s'\"(])(?:{_QUERY_KEYS})=)[^&;\s'\"#<>)]*"), rf"\1{MASK}"),
    # Hugging Face user/org access tokens
    (re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{12,}"), f"hf_{MASK}"),
)
_QUERY_KEY = re.compile(rf"(?i)^(?:{_QUERY_KEYS})$")


def _hf_home() -> str:
    home = os.environ.get("HF_HOME")
    if home:
        return os.path.expandvars(os.path.expanduser(home))
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(xdg, "huggingface")


def _read_small(path: str) -> str:
    try:
        if os.path.getsize(path) > 64 * 1024:
            return ""
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _stored_tokens() -> list[str]:
    """The token huggingface_hub would read from disk, and the ones `hf auth login` keeps."""
    home = _hf_home()
    token_path = os.environ.get("HF_TOKEN_PATH")
    token_path = (
        os.path.expandvars(os.path.expanduser(token_path))
        if token_path
        else os.path.join(home, "token")
    )
    found = [line.strip() for line in _read_small(token_path).splitlines()]
    stored = os.environ.get("HF_STORED_TOKENS_PATH") or os.path.join(home, "stored_tokens")
    for line in _read_small(os.path.expanduser(stored)).splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().lower() == "hf_token":
            found.append(value.strip())
    return found


def _endpoint_secrets() -> list[str]:
    """Credentials written into HF_ENDPOINT: the userinfo and token-like query values."""
    endpoint = (os.environ.get("HF_ENDPOINT") or "").strip()
    if not endpoint:
        return []
    try:
        parts = urlsplit(endpoint)
        found = [parts.password or ""]  # the user name alone is no secret (and may be a word)
        found += [
            v for k, v in parse_qsl(parts.query, keep_blank_values=True) if _QUERY_KEY.match(k)
        ]
    except ValueError:
        return []
    return found + [unquote(v) for v in found]


def secrets() -> list[str]:
    """Literal secret values to scrub, longest first (so no part of one is left showing)."""
    values = [os.environ.get(name) or "" for name in _TOKEN_ENV]
    values += _stored_tokens() + _endpoint_secrets()
    wanted = {v.strip() for v in values if len(v.strip()) >= _MIN_SECRET}
    return sorted(wanted, key=len, reverse=True)


def redact(text: str) -> str:
    """TEXT with every credential qwenprep knows of, or that looks like one, masked."""
    if not text:
        return text
    for secret in secrets():
        text = text.replace(secret, MASK)
    for pattern, repl in _SHAPES:
        text = pattern.sub(repl, text)
    return text


def redact_obj(obj: Any) -> Any:
    """A copy of a JSON-like value with every string in it redacted (keys included)."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_obj(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj


def display_endpoint(endpoint: str | None) -> str:
    """The Hub endpoint as qwenprep shows it: without trailing '/', credentials masked."""
    return redact((endpoint or "https://huggingface.co").rstrip("/"))


_FILTERS: list[Any] = []  # the one redacting filter, made on first use (logging imported then)


def _redacting_filter() -> Any:
    """The logging filter that rewrites each record's message through redact()
    (huggingface_hub logs request URLs, HF_ENDPOINT credentials included, when it retries).
    Made once, on first use: importing logging costs every command a few milliseconds."""
    if not _FILTERS:
        import logging

        class RedactingFilter(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                try:
                    message = record.getMessage()
                except Exception:  # noqa: BLE001 - a malformed record: leave it to logging
                    return True
                clean = redact(message)
                if clean != message:
                    record.msg, record.args = clean, None
                return True

        _FILTERS.append(RedactingFilter())
    return _FILTERS[0]


def scrub_hub_logs() -> None:
    """Put the redacting filter on huggingface_hub's log handlers (idempotent). Call it after
    importing huggingface_hub, before its first request."""
    import logging

    redacting = _redacting_filter()
    hub = logging.getLogger("huggingface_hub")
    if redacting not in hub.filters:
        hub.addFilter(redacting)
    for logger in (hub, logging.getLogger()):
        for handler in logger.handlers:
            if redacting not in handler.filters:
                handler.addFilter(redacting)
