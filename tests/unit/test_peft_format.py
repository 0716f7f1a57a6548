"""The PEFT adapter format: per-module rank and scale as PEFT computes them, and the tensor-key parser."""

from __future__ import annotations

import math

import pytest

from common.peft_format import (
    ADAPTER_FILES,
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterConfig,
    LoraKey,
    PatternError,
    is_adapter_dir,
    lora_key,
    lora_pairs,
    parse_key,
    pattern_value,
)

pytestmark = pytest.mark.unit

Q0, Q1 = "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"
V0, DOWN1 = "model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"


def test_the_two_files():
    assert ADAPTER_FILES == (CONFIG_FILE, WEIGHTS_FILE) == ("adapter_config.json", "adapter_model.safetensors")


def test_plain_scale_is_alpha_over_r():
    config = AdapterConfig.from_dict({"r": 8, "lora_alpha": 16, "rank_pattern": {}, "alpha_pattern": None})
    assert config.scale_for(Q0) == 2.0 and config.rank_for(Q0) == 8 and config.max_rank == 8


def test_rslora_scale_is_alpha_over_sqrt_r():
    config = AdapterConfig.from_dict({"r": 16, "lora_alpha": 8, "use_rslora": True})
    assert config.scale_for(Q0) == pytest.approx(8 / 4)


def test_missing_fields_take_peft_defaults():
    config = AdapterConfig.from_dict({})
    assert (config.r, config.lora_alpha, config.use_rslora) == (8, 8, False) and config.scale_for(Q0) == 1.0


def test_patterns_override_rank_and_alpha_per_module():
    config = AdapterConfig.from_dict({"r": 8, "lora_alpha": 16, "rank_pattern": {"layers.0.self_attn.q_proj": 2},
                                      "alpha_pattern": {"v_proj": 4, "q_proj": 32}})
    assert (config.rank_for(Q0), config.alpha_for(Q0), config.scale_for(Q0)) == (2, 32, 16.0)
    assert (config.rank_for(Q1), config.scale_for(Q1)) == (8, 4.0)
    assert (config.rank_for(V0), config.scale_for(V0)) == (8, 0.5)
    assert config.scale_for(DOWN1) == 2.0  # named by neither pattern
    assert config.max_rank == 8


def test_patterns_with_rslora():
    config = AdapterConfig.from_dict({"r": 4, "lora_alpha": 8, "use_rslora": True, "rank_pattern": {"v_proj": 16},
                                      "alpha_pattern": {"v_proj": 2}})
    assert config.scale_for(V0) == pytest.approx(2 / math.sqrt(16))
    assert config.scale_for(Q0) == pytest.approx(8 / math.sqrt(4))
    assert config.max_rank == 16


@pytest.mark.parametrize(("key", "module", "matches"), [
    ("q_proj", Q0, True),
    ("self_attn.q_proj", Q0, True),
    ("proj", Q0, False),  # a key matches whole dot-separated segments, not the tail of one
    ("_proj", Q0, False),
    ("layers.0.self_attn.q_proj", Q1, False),
    (r"layers\.[01]\.self_attn\.q_proj", Q1, True),  # keys are regular expressions
    ("model.layers.0.self_attn.q_proj", Q0, True),
    ("q_pro", Q0, False),
])
def test_pattern_keys_match_as_in_peft(key, module, matches):
    from peft.utils.other import get_pattern_key

    assert (pattern_value({key: 1}, module) == 1) is matches
    assert (get_pattern_key([key], module) == key) is matches


def test_the_first_matching_pattern_wins():
    assert pattern_value({"nothing": 1, "q_proj": 2, "self_attn.q_proj": 3}, Q0) == 2


@pytest.mark.parametrize("key", ["(unclosed", "((a|aa)+b)"])
def test_an_invalid_or_runaway_pattern_raises(key):
    with pytest.raises(PatternError):
        pattern_value({key: 1}, "a" * 40)


def test_keys_round_trip():
    assert parse_key(lora_key(Q0, "A")) == LoraKey(Q0, "A")
    assert parse_key("base_model.model.lm_head.lora_B.weight") == LoraKey("lm_head", "B")


@pytest.mark.parametrize("key", [
    "base_model.model.model.layers.0.self_attn.q_proj.weight",  # a base weight, not LoRA
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",  # adapter name left in
    "base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight",
    "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight\n",
    "base_model.model..lora_A.weight",
    "base_model.model.model/../../etc.lora_A.weight",
    "base_model.model.model.layers.0.self_attn.q_proj .lora_A.weight",
    "base_model.model.model.lаyers.0.q_proj.lora_A.weight",  # Cyrillic 'а'
    "model.layers.0.self_attn.q_proj.lora_A.weight",  # no PEFT prefix
    "xbase_model.model.q_proj.lora_A.weight",
    "base_model.model.lora_A.weight",
    "",
    None,
])
def test_hostile_or_foreign_keys_are_not_lora_keys(key):
    assert parse_key(key) is None


def test_pairs_need_both_halves():
    keys = [lora_key(Q0, "A"), lora_key(Q0, "B"), lora_key(Q1, "A"), "junk"]
    assert lora_pairs(keys) == {Q0: {"A": lora_key(Q0, "A"), "B": lora_key(Q0, "B")}}


def test_is_adapter_dir(tmp_path):
    (tmp_path / CONFIG_FILE).write_text("{}")
    assert not is_adapter_dir(tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"")
    assert is_adapter_dir(tmp_path) and not is_adapter_dir(tmp_path / "missing")
