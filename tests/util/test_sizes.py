"""parse_size / format_gib: the units people and GPU vendors write."""

from __future__ import annotations

import pytest

from qwenprep.errors import UsageError
from qwenprep.util.sizes import GiB, format_gib, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("61.31GiB", int(61.31 * 1024**3)),
        ("80GiB", 80 * 1024**3),
        ("80 GiB", 80 * 1024**3),
        ("141GB", 141 * 1000**3),
        ("141gb", 141 * 1000**3),
        ("512MiB", 512 * 1024**2),
        ("143771MiB", 143771 * 1024**2),
        ("1.5TB", 1_500_000_000_000),
        ("65826897920B", 65826897920),
        ("1024B", 1024),
        (".5GiB", 512 * 1024**2),
        (7, 7),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_is_exact_in_decimal() -> None:
    # 0.1 GiB is not a whole byte count; Decimal arithmetic rounds down exactly, no float drift
    assert parse_size("0.1GiB") == 107374182
    assert parse_size("61.31GiB") == 65831111229


@pytest.mark.parametrize("text", ["", "GiB", "12 parsecs", "-3GiB", "1e9", "1.2.3G", "80 GiBs"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_size(text)
    assert f"unreadable size {text!r}." == e.value.message
    assert e.value.exit_code == 2
    assert "61.31GiB" in (e.value.hint or "")


def test_parse_size_rejects_negative_int() -> None:
    with pytest.raises(UsageError, match="negative"):
        parse_size(-1)


def test_format_gib_matches_vllm_two_decimals() -> None:
    assert format_gib(65826897920) == "61.31 GiB"
    assert format_gib(2 * GiB) == "2.00 GiB"


@pytest.mark.parametrize(
    ("text", "num", "big"),
    [
        ("141", "141", "G"),
        ("65826897920", "65826897920", "G"),
        ("8g", "8", "G"),
        ("2g", "2", "G"),
        ("512m", "512", "M"),
        ("1.5t", "1.5", "T"),
        ("4k", "4", "K"),
    ],
)
def test_parse_size_never_guesses(text: str, num: str, big: str) -> None:
    """No unit, or a single letter (binary in some tools, decimal in vLLM's parser): refused."""
    with pytest.raises(UsageError) as e:
        parse_size(text, "--gpu-memory")
    assert e.value.exit_code == 2
    assert e.value.message.startswith(f"--gpu-memory {text!r} ")
    assert e.value.message.endswith(f": did you mean {num}{big}iB or {num}{big}B?")


@pytest.mark.parametrize(("text", "meant"), [("141Gi", "141GiB"), ("512Mi", "512MiB")])
def test_kubernetes_units_get_a_did_you_mean(text: str, meant: str) -> None:
    """A Kubernetes quantity (141Gi) is one letter short of qwenprep's unit: refused (never
    guessed) with the spelling that works, as 141G is (before: 'unreadable size', no hint
    naming it)."""
    with pytest.raises(UsageError) as e:
        parse_size(text, "--gpu-memory")
    assert f"did you mean {meant}?" in e.value.message
    assert e.value.hint == f"write --gpu-memory {meant}."
    assert parse_size(meant) > 0  # and the spelling it offers is one qwenprep reads
