"""The base model's module shapes and identity, read from config.json and safetensors headers only."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file

from registry.base_spec import BaseModelSpec
from tests.helpers.tiny_artifacts import tiny_modules, write_tiny_base

pytestmark = pytest.mark.unit


def test_modules_and_fingerprint(tmp_path):
    spec = BaseModelSpec.from_dir(write_tiny_base(tmp_path / "base"))
    # every 2-D `.weight` (the embedding too: LoRA on it uses lora_embedding_* keys, refused later); no norms
    assert spec.modules == {**tiny_modules(), "model.embed_tokens": (128, 64)}
    fp = spec.fingerprint
    assert (fp.model_type, fp.architecture, fp.hidden_size, fp.num_layers, fp.vocab_size) == \
           ("llama", "LlamaForCausalLM", 64, 2, 128)
    assert spec.matches_target("q_proj") and spec.matches_target("mlp.down_proj")
    assert not spec.matches_target("proj") and not spec.matches_target("c_attn")


def test_identity_tells_apart_two_random_inits(tmp_path):
    one = BaseModelSpec.from_dir(write_tiny_base(tmp_path / "a", seed=0)).fingerprint
    same = BaseModelSpec.from_dir(write_tiny_base(tmp_path / "b", seed=0)).fingerprint
    other = BaseModelSpec.from_dir(write_tiny_base(tmp_path / "c", seed=1)).fingerprint
    assert one.weights_sha256 == same.weights_sha256 != other.weights_sha256


def test_sharded_checkpoint(tmp_path):
    root = write_tiny_base(tmp_path / "base")
    tensors = load_file(root / "model.safetensors")
    (root / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(root / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert BaseModelSpec.from_dir(root).modules["model.layers.1.mlp.up_proj"] == (128, 64)


def test_not_a_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        BaseModelSpec.from_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        BaseModelSpec.from_dir(tmp_path)
