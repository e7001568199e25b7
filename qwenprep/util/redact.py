"""Scrub credentials out of any text qwenprep shows: the one place every error path, and every
line that shows the Hub endpoint, goes through.

What goes: the literal values of HF_TOKEN / HUGGING_FACE_HUB_TOKEN / VLLM_API_KEY, of the
token(s) huggingface_hub stored on disk (HF_TOKEN_PATH, else HF_HOME/token, and
HF_HOME/stored_tokens), of the credential options in this process's own argv (an engine's
`--hf-token X` / `--api-key X` after `--`), the credentials written into HF_ENDPOINT (userinfo,
token-like query values), then by shape: `Bearer ...` / `Basic ...`, `hf_...` tokens, the
userinfo of any URL, the values of token-like query parameters (`?token=`, `&access_token=`,
`X-Amz-Signature=`, ...), the value after a credential option (`--hf-token X`,
`--api-key=X`, an abbreviation the engine's parser accepts such as `--hf-tok X`, `--hf_token X`)
and of a credential-named variable or key (`HF_TOKEN=X`, `'api_key': 'X'`).

A credential option or variable is one whose name ends in token, key, secret, password,
passwd or credential(s) after at least one other word (hf-token, api-key, admin-api-key,
VLLM_API_KEY; not max-num-batched-tokens, ssl-keyfile or a lone "key"). Abbreviations: vLLM's
FlexibleArgumentParser (vllm/utils/argparse_utils.py, 0.32) is an argparse parser with
allow_abbrev left on, and turns `_` into `-` in option names before parsing; its credential
options are --hf-token (vllm/engine/arg_utils.py EngineArgs.add_cli_args) and --api-key, a
list (vllm/entrypoints/launchers/cli_args.py, api_key: list[str]); SGLang 0.5.23's are
--api-key and --admin-api-key (sglang/srt/arg_groups/fields/serving.py), through argparse too.
A few harmless options also end in "token" (SGLang's --bucket-time-to-first-token): their
value is masked in what is shown, never in what runs.

Reads only the environment and two small files; imports nothing heavy (cli._common.fail uses it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "***"
_TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY")
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

# the credential options the engines define, for their abbreviations (see the docstring)
KNOWN_CREDENTIAL_OPTIONS = ("--hf-token", "--api-key", "--admin-api-key")
_CREDENTIAL_WORD = re.compile(
    r"(?i)^[a-z0-9]+(?:[-_][a-z0-9]+)*[-_](?:token|key|secret|password|passwd|credentials?)$"
)
_MIN_ABBREV = 5  # "--hf-": shorter prefixes are ambiguous to any parser
# a shell word, quoted parts included (a bare one stops at ")" "," ";": prose around it; the
# literal values of this process's argv catch a secret holding those)
_VALUE = r"""(?:'[^']*'|"[^"]*"|[^\s'",;)]+)+"""
_OPTION_VALUE = re.compile(rf"(?<![\w-])(--[A-Za-z][\w-]*)(=|\s+)({_VALUE})")
_OPTION_VALUES = re.compile(
    rf"(?<![\w-])(--[A-Za-z][\w-]*)([ \t]+)({_VALUE}(?:[ \t]+(?!-){_VALUE})*)"
)
LIST_CREDENTIAL_OPTIONS = ("--api-key", "--admin-api-key")  # several values each (nargs +)
_NAMED_VALUE = re.compile(rf"(?<![\w./-])([A-Za-z][\w-]*)=({_VALUE})")
_QUOTED_KEY = re.compile(
    r"""(['"])([A-Za-z][\w-]*)\1(\s*:\s*)(\[[^\]]*\]|'[^']*'|"[^"]*"|[^\s,}\]]+)"""
)


def credential_name(name: str) -> bool:
    """NAME (an option, variable or key; dashes or underscores) carries a credential."""
    return bool(_CREDENTIAL_WORD.match(name.lstrip("-")))


def credential_option(word: str) -> bool:
    """WORD (`--name`, without `=value`) is an option whose value is a credential, or an
    abbreviation of one the engines define."""
    if not word.startswith("--") or word == "--":
        return False
    name = "--" + word[2:].replace("_", "-")
    if credential_name(name):
        return True
    return len(name) >= _MIN_ABBREV and any(o.startswith(name) for o in KNOWN_CREDENTIAL_OPTIONS)


def _argv_secrets(argv: list[str] | tuple[str, ...]) -> Iterator[tuple[str, str | None, str]]:
    """Each ARG of ARGV as (arg, the credential value it gives or None, the option word when
    it is `--opt=V`, else ""): values follow a credential option (`--opt V [V ...]`: vLLM's
    --api-key takes several) until the next option."""
    taking = False
    for arg in argv:
        if arg.startswith("-"):
            word, eq, value = arg.partition("=")
            secret = credential_option(word)
            taking = secret and not eq
            yield (arg, value, word) if eq and secret else (arg, None, "")
        else:
            yield arg, (arg if taking else None), ""


def argv_secrets(argv: list[str] | tuple[str, ...]) -> list[str]:
    """The values given to credential options in ARGV (`--opt V [V ...]`, `--opt=V`)."""
    return [value for _, value, _ in _argv_secrets(argv) if value is not None]


def redact_argv(argv: list[str] | tuple[str, ...]) -> list[str]:
    """ARGV with the values of its credential options masked (the options themselves kept)."""
    return [
        arg if value is None else (f"{word}={MASK}" if word else MASK)
        for arg, value, word in _argv_secrets(argv)
    ]


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
    import sys

    values = [os.environ.get(name) or "" for name in _TOKEN_ENV]
    values += _stored_tokens() + _endpoint_secrets() + argv_secrets(sys.argv[1:])
    wanted = {v.strip() for v in values if len(v.strip()) >= _MIN_SECRET}
    return sorted(wanted, key=len, reverse=True)


# Words of qwenprep's own prose that follow an option's name in a sentence ("reads it when
# --api-key is not given", "--hf-token or another"): never taken for its value. A secret that is
# one of them is still masked when it is a literal value this process knows (secrets()).
_PROSE = frozenset(
    "a an and another are as be by for from given if in is it its not of on or set the then "
    "to when where with without".split()
)
_TRAILING = re.compile(r"^(.+?)([:.!?]*)$")  # a word and the punctuation that ends its sentence


def _not_a_value(word: str) -> bool:
    """WORD, after an option's name in text, is prose or the next option, not its value."""
    return word.startswith("-") or word.rstrip(":.!?").lower() in _PROSE


def _secret_like(word: str) -> bool:
    """WORD could be a further value of a list option (`--api-key K1 K2`): not prose, and
    shaped like a key (a digit, a capital or a symbol in it, or 16 characters or more)."""
    bare = word.rstrip(":.!?")
    if _not_a_value(word) or not bare:
        return False
    return not bare.isalpha() or not bare.islower() or len(bare) >= 16


def _masked(word: str) -> str:
    m = _TRAILING.match(word)
    return MASK + m[2] if m else MASK


def _mask_values(m: re.Match[str]) -> str:
    """`--api-key K1 K2 ...` in text: the first word and each further key-shaped one masked,
    stopping at the first word of prose (vLLM's --api-key takes several: nargs +)."""
    name = "--" + m[1][2:].replace("_", "-")
    several = len(name) >= _MIN_ABBREV and any(o.startswith(name) for o in LIST_CREDENTIAL_OPTIONS)
    parts = re.split(r"([ \t]+)", m[3])
    if not several or _not_a_value(parts[0]):
        return m[0]
    out = [_masked(parts[0])]
    for i in range(2, len(parts), 2):
        if not _secret_like(parts[i]):
            out += parts[i - 1 :]
            break
        out += [parts[i - 1], _masked(parts[i])]
    return f"{m[1]}{m[2]}" + "".join(out)


def _mask_option(m: re.Match[str]) -> str:
    if not credential_option(m[1]) or _not_a_value(m[3]) or m[3].startswith(MASK):
        return m[0]
    return f"{m[1]}{m[2]}{_masked(m[3]) if m[2] != '=' else MASK}"


def _mask_named(m: re.Match[str]) -> str:
    return f"{m[1]}={MASK}" if credential_name(m[1]) else m[0]


def _mask_key(m: re.Match[str]) -> str:
    return f"{m[1]}{m[2]}{m[1]}{m[3]}{MASK}" if credential_name(m[2]) else m[0]


def redact(text: str, known: list[str] | None = None) -> str:
    """TEXT with every credential qwenprep knows of, or that looks like one, masked (KNOWN:
    secrets(), when the caller already has it)."""
    if not text:
        return text
    for secret in secrets() if known is None else known:
        text = text.replace(secret, MASK)
    for pattern, repl in _SHAPES:
        text = pattern.sub(repl, text)
    if "=" in text or "--" in text or ":" in text:
        text = _OPTION_VALUES.sub(_mask_values, text)
        text = _OPTION_VALUE.sub(_mask_option, text)
        text = _NAMED_VALUE.sub(_mask_named, text)
        text = _QUOTED_KEY.sub(_mask_key, text)
    return text


def redact_obj(obj: Any, known: list[str] | None = None) -> Any:
    """A copy of a JSON-like value with every string in it redacted (keys included), the
    value of a credential-named key masked (an environment, an emitted config), and each list
    of strings read as an argv (the values of its credential options masked). Numbers are
    never credentials (`bytes_per_gpu_per_token: 0` is a figure, not a secret)."""
    known = secrets() if known is None else known
    if isinstance(obj, str):
        return redact(obj, known)
    if isinstance(obj, dict):
        return {
            redact(str(k), known): (
                MASK
                if isinstance(k, str)
                and credential_name(k)
                and isinstance(v, (str, list))
                and v not in ("", [])
                and (isinstance(v, str) or all(isinstance(x, str) for x in v))
                else redact_obj(v, known)
            )
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        if obj and all(isinstance(v, str) for v in obj):
            obj = redact_argv(obj)
        return [redact_obj(v, known) for v in obj]
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
