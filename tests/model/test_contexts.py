from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from qwenprep.errors import InputError, UsageError
from qwenprep.model.contexts import (
    ContextRequest,
    effective_rope,
    native_context,
    parse_context,
    patch_config,
)


@pytest.mark.parametrize(
    "text,tokens",
    [
        ("native", None),
        ("NATIVE", None),
        ("256k", 262144),
        ("512K", 524288),
        ("1m", 1048576),
        ("1M", 1048576),
        ("1048576", 1048576),
        ("300000", 300000),
        ("0.5m", 524288),
    ],
)
def test_parse_context(text: str, tokens: int | None) -> None:
    assert parse_context(text).tokens == tokens


@pytest.mark.parametrize("text", ["", "huge", "1g", "-5", "0", "1.5", "1mm"])
def test_parse_context_rejects(text: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_context(text)
    assert e.value.exit_code == 2


def test_patch_1m_on_release_config(ref_config: dict[str, Any]) -> None:
    before = copy.deepcopy(ref_config)
    res = patch_config(ref_config, parse_context("1m"))
    assert ref_config == before  # pure
    new = res.config
    assert list(new) == list(ref_config)  # key order kept
    assert new["max_position_embeddings"] == 1048576
    assert new["rope_scaling"] == {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 262144,
    }
    assert new["rope_theta"] == 10000000
    changed = {k for k in new if new[k] != ref_config[k]}
    assert changed == {"max_position_embeddings", "rope_scaling"}
    assert (res.native, res.target, res.factor, res.style) == (262144, 1048576, 4.0, "rope_scaling")


def test_512k_is_factor_2(ref_config: dict[str, Any]) -> None:
    res = patch_config(ref_config, parse_context("512k"))
    assert res.config["rope_scaling"]["factor"] == 2.0
    assert res.config["max_position_embeddings"] == 524288


def test_token_count_gives_exact_factor(ref_config: dict[str, Any]) -> None:
    res = patch_config(ref_config, parse_context("393216"))
    assert res.factor == 1.5
    assert res.config["max_position_embeddings"] == 393216


def test_repatch_starts_from_native(ref_config: dict[str, Any]) -> None:
    once = patch_config(ref_config, parse_context("1m")).config
    twice = patch_config(once, parse_context("1m"))
    assert twice.factor == 4.0  # never 16
    assert twice.config == once
    back = patch_config(once, parse_context("native")).config
    assert json.dumps(back) == json.dumps(ref_config)  # the original back, order included


def test_old_recipe_type_key_is_understood(ref_config: dict[str, Any]) -> None:
    edited = dict(
        ref_config,
        max_position_embeddings=1048576,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 262144},
    )
    assert native_context(edited) == 262144
    assert patch_config(edited, parse_context("native")).config == ref_config


def test_factor_above_4_needs_force(ref_config: dict[str, Any]) -> None:
    with pytest.raises(UsageError) as e:
        patch_config(ref_config, parse_context("2m"))
    assert "at most factor 4" in e.value.message and "--force" in (e.value.hint or "")
    forced = patch_config(ref_config, parse_context("2m"), force=True)
    assert forced.factor == 8.0


def test_factor_below_1_always_refused(ref_config: dict[str, Any]) -> None:
    with pytest.raises(UsageError) as e:
        patch_config(ref_config, parse_context("128k"), force=True)
    assert "below the native 262144" in e.value.message


def test_transformers5_style_patched_in_its_own_style() -> None:
    cfg = {
        "model_type": "qwen3_moe",
        "max_position_embeddings": 262144,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0},
        "dtype": "bfloat16",
    }
    res = patch_config(cfg, parse_context("1m"))
    assert "rope_scaling" not in res.config
    assert res.config["rope_parameters"] == {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 262144,
        "rope_theta": 10000000.0,
    }
    assert res.style == "rope_parameters"
    back = patch_config(res.config, parse_context("native")).config
    assert back["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000000.0}
    assert effective_rope(res.config)["rope_theta"] == 10000000.0


def test_effective_rope_takes_top_level_theta(ref_config: dict[str, Any]) -> None:
    rope = effective_rope(patch_config(ref_config, parse_context("1m")).config)
    assert rope == {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 262144,
        "rope_theta": 10000000,
    }


def test_string_mpe_is_refused_clearly() -> None:
    with pytest.raises(InputError) as e:
        native_context({"max_position_embeddings": "262144"})
    assert "max_position_embeddings is '262144'" in e.value.message


def test_native_request_object() -> None:
    assert parse_context("native") == ContextRequest("native", None)
