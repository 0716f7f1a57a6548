"""The base is enforced: adapters of embeddings / the LM head refused, a foreign base fingerprint refused at
upload (422 naming both), a version validated against another base refused before serving (409)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save

from common.errors import BaseMismatch, InvalidAdapter
from common.peft_format import CONFIG_FILE, KEY_PREFIX, WEIGHTS_FILE
from registry.base_check import (
    FINGERPRINT_KEY,
    adapter_fingerprint,
    check_served_base,
    describe,
    fingerprint_metadata,
)
from registry.base_spec import BaseModelSpec
from registry.manifest import FileEntry, Manifest
from registry.safetensors_header import parse_header
from registry.validation import AdapterValidator
from tests.helpers.tiny_artifacts import HIDDEN, VOCAB, adapter_files, lora_config, lora_tensors, write_tiny_base

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> tuple[BaseModelSpec, BaseModelSpec]:
    """Two bases of identical shape and different random weights."""
    return (BaseModelSpec.from_dir(write_tiny_base(tmp_path_factory.mktemp("a"), seed=0)),
            BaseModelSpec.from_dir(write_tiny_base(tmp_path_factory.mktemp("b"), seed=1)))


def with_fingerprint(files: dict[str, bytes], metadata: dict[str, str]) -> dict[str, bytes]:
    from safetensors.torch import load

    return {**files, WEIGHTS_FILE: save(load(files[WEIGHTS_FILE]), metadata=metadata)}


def refusal(validator: AdapterValidator, files: dict[str, bytes]) -> InvalidAdapter:
    with pytest.raises(InvalidAdapter) as info:
        validator.validate(files)
    return info.value


@pytest.mark.parametrize("target", ["lm_head", "embed_tokens", "model.embed_tokens"])
def test_embedding_and_lm_head_targets_refused(bases, target):
    files = adapter_files(config=lora_config(targets=("q_proj", target)))
    error = refusal(AdapterValidator(base=bases[0]), files)
    assert error.rule == "embedding-target" and "served as the base model's" in error.message
    assert "all-linear" in error.message  # the fix


def test_lm_head_tensors_refused_even_when_the_config_hides_them(bases):
    tensors = lora_tensors(targets=("q_proj",))
    tensors[f"{KEY_PREFIX}lm_head.lora_A.weight"] = torch.randn(4, HIDDEN)
    tensors[f"{KEY_PREFIX}lm_head.lora_B.weight"] = torch.randn(VOCAB, 4)
    files = adapter_files(tensors=tensors, config=lora_config(targets=("q_proj",)))
    assert refusal(AdapterValidator(base=bases[0]), files).rule == "embedding-target"


def test_peft_embedding_lora_keys_refused_without_a_base():
    tensors = lora_tensors(targets=("q_proj",))
    tensors[f"{KEY_PREFIX}model.embed_tokens.lora_embedding_A"] = torch.randn(4, VOCAB)
    tensors[f"{KEY_PREFIX}model.embed_tokens.lora_embedding_B"] = torch.randn(HIDDEN, 4)
    files = adapter_files(tensors=tensors, config=lora_config(targets=("q_proj",)))
    error = refusal(AdapterValidator(), files)
    assert error.rule == "embedding-target" and "lora_embedding_A" in error.message


def test_dora_refused_with_the_reason():
    error = refusal(AdapterValidator(), adapter_files(config=lora_config(use_dora=True)))
    assert error.rule == "dora" and "use_dora=False" in error.message


def test_a_matching_fingerprint_passes_and_is_reported(bases):
    a, _ = bases
    files = with_fingerprint(adapter_files(), fingerprint_metadata(a.fingerprint))
    assert AdapterValidator(base=a).validate(files).trained_on == a.fingerprint


def test_a_foreign_fingerprint_is_refused_naming_both_bases(bases):
    a, b = bases
    assert a.fingerprint.weights_sha256 != b.fingerprint.weights_sha256
    files = with_fingerprint(adapter_files(), fingerprint_metadata(b.fingerprint))
    error = refusal(AdapterValidator(base=a), files)
    assert error.rule == "base-mismatch"
    assert describe(b.fingerprint) in error.message and describe(a.fingerprint) in error.message


def test_without_a_fingerprint_only_shapes_are_checked(bases):
    adapter = AdapterValidator(base=bases[0]).validate(adapter_files())
    assert adapter.trained_on is None


@pytest.mark.parametrize("raw", ["not json", json.dumps({"model_type": "llama"}), "x" * 5000])
def test_a_malformed_fingerprint_is_refused(bases, raw):
    files = with_fingerprint(adapter_files(), {FINGERPRINT_KEY: raw})
    assert refusal(AdapterValidator(base=bases[0]), files).rule == "base-fingerprint"


def test_fingerprint_round_trips_through_the_header(bases):
    data = save({"x": torch.zeros(1)}, metadata=fingerprint_metadata(bases[1].fingerprint))
    assert adapter_fingerprint(parse_header(data)) == bases[1].fingerprint


def _manifest(base) -> Manifest:
    return Manifest(tenant="t", name="n", version="0" * 16, sha256="0" * 64,
                    files={CONFIG_FILE: FileEntry(sha256="0" * 64, size=1)}, size_bytes=1, rank=4, alpha=8,
                    target_modules=["q_proj"], base_model=base, created_at="2026-01-01T00:00:00Z", uploader="t")


def test_serving_refuses_a_version_validated_against_another_base(bases):
    a, b = bases
    check_served_base(_manifest(a.fingerprint), a.fingerprint)
    check_served_base(_manifest(None), a.fingerprint)  # validated without a base: nothing to compare
    with pytest.raises(BaseMismatch) as info:
        check_served_base(_manifest(a.fingerprint), b.fingerprint)
    assert info.value.status == 409 and info.value.code == "base_mismatch"
    assert describe(a.fingerprint) in info.value.message and describe(b.fingerprint) in info.value.message
