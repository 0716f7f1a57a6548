"""The validation gate: one crafted upload per rule, each refused with the rule named and a fix given."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from common.errors import InvalidAdapter
from common.peft_format import CONFIG_FILE, WEIGHTS_FILE
from registry.base_spec import BaseModelSpec
from registry.validation import AdapterValidator
from tests.helpers.tiny_artifacts import adapter_files, lora_config, lora_tensors, write_tiny_base

pytestmark = pytest.mark.unit



@pytest.fixture(scope="module")
def base(tmp_path_factory) -> BaseModelSpec:
    return BaseModelSpec.from_dir(write_tiny_base(tmp_path_factory.mktemp("base")))


@pytest.fixture
def validator(base) -> AdapterValidator:
    return AdapterValidator(max_rank=16, max_bytes=1024**2, base=base)


def refused(validator: AdapterValidator, files: dict[str, bytes], rule: str) -> str:
    with pytest.raises(InvalidAdapter) as info:
        validator.validate(files)
    assert info.value.rule == rule, info.value.message
    assert info.value.message.startswith(f"[{rule}]") and ":" in info.value.message  # what, then the fix
    return info.value.message


def raw_safetensors(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_peft_shaped_adapter_passes(validator, dtype):
    adapter = validator.validate(adapter_files(rank=8, targets=("q_proj", "v_proj", "down_proj"), dtype=dtype))
    assert adapter.rank == 8 and adapter.alpha == 16.0
    assert adapter.target_modules == ["down_proj", "q_proj", "v_proj"]
    assert "model.layers.1.mlp.down_proj" in adapter.modules


def test_pickle_file_refused(validator):
    files = {**adapter_files(), "adapter_model.bin": b"\x80\x04pickle"}
    assert "pickle" in refused(validator, files, "files")


def test_pickle_instead_of_safetensors_refused(validator):
    files = adapter_files()
    files["adapter_model.pt"] = files.pop(WEIGHTS_FILE)
    refused(validator, files, "files")


def test_extra_file_refused(validator):
    assert "README.md" in refused(validator, {**adapter_files(), "README.md": b"hi"}, "files")


def test_missing_file_refused(validator):
    files = adapter_files()
    del files[CONFIG_FILE]
    assert "add adapter_config.json" in refused(validator, files, "files")


def test_size_cap(base):
    small = AdapterValidator(max_bytes=1000, base=base)
    refused(small, adapter_files(), "size")


def test_config_not_json(validator):
    refused(validator, {**adapter_files(), CONFIG_FILE: b"{not json"}, "config-json")


def test_not_lora(validator):
    refused(validator, adapter_files(config=lora_config(peft_type="IA3")), "peft-type")


def test_rank_too_big(validator):
    message = refused(validator, adapter_files(rank=32), "rank")
    assert "retrain with r<=16" in message and "--max-lora-rank 32" in message


def test_dora_refused(validator):
    refused(validator, adapter_files(config=lora_config(use_dora=True)), "dora")


def test_modules_to_save_refused(validator):
    refused(validator, adapter_files(config=lora_config(modules_to_save=["lm_head"])), "modules-to-save")


def test_bias_refused(validator):
    refused(validator, adapter_files(config=lora_config(bias="lora_only")), "bias")


def mixed_rank_files(**overrides) -> dict[str, bytes]:
    """q_proj at rank 4 and v_proj at rank 8 (rank_pattern), with a per-module alpha."""
    tensors = lora_tensors(rank=4, targets=("q_proj",)) | lora_tensors(rank=8, targets=("v_proj",), seed=2)
    config = lora_config(rank=4, targets=("q_proj", "v_proj"), rank_pattern={"v_proj": 8},
                         alpha_pattern={"layers.1.self_attn.v_proj": 2})
    return adapter_files(tensors=tensors, config=config | overrides)


def test_rank_and_alpha_patterns_pass(validator):
    adapter = validator.validate(mixed_rank_files())
    assert adapter.rank == 4 and adapter.lora.max_rank == 8
    assert adapter.lora.rank_for("model.layers.0.self_attn.v_proj") == 8
    assert adapter.lora.scale_for("model.layers.0.self_attn.v_proj") == 1.0  # lora_alpha 8 / 8
    assert adapter.lora.scale_for("model.layers.1.self_attn.v_proj") == 0.25  # alpha_pattern 2 / 8
    assert adapter.lora.scale_for("model.layers.1.self_attn.q_proj") == 2.0


def test_tensors_must_have_the_pattern_rank(validator):
    message = refused(validator, mixed_rank_files(rank_pattern={}), "shape")
    assert "v_proj" in message and "rank 4" in message


def test_pattern_rank_over_the_maximum_refused(validator):
    assert "--max-lora-rank 32" in refused(validator, mixed_rank_files(rank_pattern={"v_proj": 32}), "rank")


@pytest.mark.parametrize("overrides", [
    {"rank_pattern": {"v_proj": 0}},
    {"rank_pattern": {"v_proj": 8.0}},
    {"rank_pattern": {"v_proj": True}},
    {"alpha_pattern": {"v_proj": "big"}},
    {"alpha_pattern": {"v_proj": -1}},
    {"rank_pattern": ["v_proj", 8]},
    {"alpha_pattern": {"": 2}},
    {"alpha_pattern": {"v" * 300: 2}},
    {"rank_pattern": {"(v_proj": 8}},  # not a regular expression
    {"alpha_pattern": {r"((.|..)+_pro)": 2}},  # backtracks for seconds on every module name
])
def test_malformed_or_hostile_patterns_refused(validator, overrides):
    refused(validator, mixed_rank_files(**overrides), "rank-pattern")


def test_bad_alpha(validator):
    refused(validator, adapter_files(config=lora_config(lora_alpha="big")), "alpha")


def test_target_modules_must_be_a_list(validator):
    refused(validator, adapter_files(config=lora_config(target_modules="all-linear")), "target-modules")


def test_target_module_missing_from_base(validator):
    files = adapter_files(config=lora_config(targets=("q_proj", "c_attn")))
    assert "c_attn" in refused(validator, files, "target-modules")


def test_wrong_key_prefix_refused(validator):
    # the adapter of a bare LlamaModel: keys lack the CausalLM's `model.`
    tensors = lora_tensors(prefix="base_model.model.")
    tensors = {k.replace("base_model.model.model.", "base_model.model."): v for k, v in tensors.items()}
    message = refused(validator, adapter_files(tensors=tensors), "base-module")
    assert "did you mean 'model.layers" in message


def test_key_without_peft_prefix_refused(validator):
    refused(validator, adapter_files(tensors=lora_tensors(prefix="")), "tensor-keys")


def test_tensor_outside_target_modules_refused(validator):
    tensors = lora_tensors(targets=("q_proj", "k_proj"))
    refused(validator, adapter_files(tensors=tensors, config=lora_config(targets=("q_proj",))), "tensor-keys")


def test_unpaired_lora_a_refused(validator):
    tensors = lora_tensors()
    del tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    refused(validator, adapter_files(tensors=tensors), "tensor-keys")


def test_dora_magnitude_key_refused(validator):
    magnitude = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    tensors = {**lora_tensors(), magnitude: torch.ones(64)}
    refused(validator, adapter_files(tensors=tensors), "tensor-keys")


def test_shape_mismatch_with_base_refused(validator):
    tensors = lora_tensors()
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = torch.randn(4, 65)
    refused(validator, adapter_files(tensors=tensors), "shape")


def test_tensor_rank_differs_from_config(validator):
    refused(validator, adapter_files(tensors=lora_tensors(rank=8), config=lora_config(rank=4)), "shape")


def test_nan_refused(validator):
    tensors = lora_tensors()
    tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"][3, 1] = float("nan")
    assert "NaN/inf" in refused(validator, adapter_files(tensors=tensors), "finite")


def test_bf16_inf_refused(validator):
    tensors = lora_tensors(dtype=torch.bfloat16)
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"][0, 0] = float("-inf")
    refused(validator, adapter_files(tensors=tensors), "finite")


def test_untrained_adapter_is_a_no_op(validator):
    tensors = {k: (torch.zeros_like(v) if "lora_B" in k else v) for k, v in lora_tensors().items()}
    refused(validator, adapter_files(tensors=tensors), "no-op")


def test_one_zero_lora_b_is_fine(validator):
    tensors = lora_tensors()
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].zero_()
    validator.validate(adapter_files(tensors=tensors))


def test_wrong_dtype_refused(validator):
    tensors = {k: v.to(torch.float64) for k, v in lora_tensors().items()}
    refused(validator, adapter_files(tensors=tensors), "dtype")


def test_truncated_file_refused(validator):
    files = adapter_files()
    files[WEIGHTS_FILE] = files[WEIGHTS_FILE][:-10]
    refused(validator, files, "safetensors-header")


def test_header_longer_than_file_refused(validator):
    files = {**adapter_files(), WEIGHTS_FILE: raw_safetensors(b"{}", length=500)}
    assert "truncated" in refused(validator, files, "safetensors-header")


def test_oversized_header_refused(validator):
    files = {**adapter_files(), WEIGHTS_FILE: raw_safetensors(b" " * 16, length=2**40)}
    assert "cap" in refused(validator, files, "safetensors-header")


def test_header_too_short_refused(validator):
    refused(validator, {**adapter_files(), WEIGHTS_FILE: b"\x01\x02"}, "safetensors-header")


def test_header_not_json_refused(validator):
    refused(validator, {**adapter_files(), WEIGHTS_FILE: raw_safetensors(b"\xff{]")}, "safetensors-header")


def test_offsets_outside_the_file_refused(validator):
    header = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
              {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]}}
    refused(validator, {**adapter_files(), WEIGHTS_FILE: raw_safetensors(header, b"\0" * 16)}, "safetensors-header")


def test_overlapping_tensors_refused(validator):
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    header = {"base_model.model.a.lora_A.weight": entry, "base_model.model.a.lora_B.weight": entry}
    refused(validator, {**adapter_files(), WEIGHTS_FILE: raw_safetensors(header, b"\0" * 8)}, "safetensors-header")


def test_duplicate_tensor_names_refused(validator):
    raw = (b'{"k": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},'
           b' "k": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}')
    refused(validator, {**adapter_files(), WEIGHTS_FILE: raw_safetensors(raw, b"\0" * 8)}, "safetensors-header")


def test_too_many_tensors_refused(base):
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(17000)}
    raw = json.dumps(header, separators=(",", ":")).encode()  # under the 1 MiB header cap
    big = AdapterValidator(max_bytes=4 * 1024**2, base=base)
    refused(big, {**adapter_files(), WEIGHTS_FILE: raw_safetensors(raw)}, "tensor-count")


def test_without_a_base_only_base_rules_are_skipped():
    no_base = AdapterValidator(max_rank=16)
    wrong_prefix = {k.replace("base_model.model.model.", "base_model.model."): v for k, v in lora_tensors().items()}
    no_base.validate(adapter_files(tensors=wrong_prefix))  # needs the base to know it is wrong
    no_base.validate(adapter_files(config=lora_config(targets=("q_proj", "v_proj", "c_attn"))))
    refused(no_base, adapter_files(rank=32), "rank")
    refused(no_base, adapter_files(tensors=lora_tensors(prefix="")), "tensor-keys")


def test_probes_run_last_and_can_refuse(validator):
    seen = []

    def probe(files, adapter):
        seen.append(adapter.rank)
        raise InvalidAdapter("no-op", "the probe found no change in outputs: train longer")

    validator.probes.append(probe)
    refused(validator, adapter_files(), "no-op")
    assert seen == [4]
