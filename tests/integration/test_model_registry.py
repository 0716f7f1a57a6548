"""Full and merged models as registry artifacts on a real SeaweedFS: models/ beside adapters/."""

from __future__ import annotations

import io
import json
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save

from common.errors import AliasConflict, IntegrityError, InvalidAdapter, ModelNotFound, VersionInUse
from registry import layout
from registry.adapter_registry import AdapterRegistry
from registry.model_registry import ModelRegistry
from registry.tenants import TenantRegistry
from tests.helpers.tiny_artifacts import write_tiny_base

pytestmark = pytest.mark.integration


@pytest.fixture
def models(store, registry_settings) -> ModelRegistry:
    return ModelRegistry(store, registry_settings, AdapterRegistry(store, registry_settings).base_spec)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A full model directory: the tiny base's shape with other weights, plus tokenizer-ish JSON files."""
    root = write_tiny_base(tmp_path_factory.mktemp("full"), seed=7)
    (root / "generation_config.json").write_text(json.dumps({"do_sample": False}))
    (root / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    return root


def files_of(directory: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(directory.iterdir())}


def refused(models: ModelRegistry, files: dict, rule: str, kind: str = "full") -> str:
    with pytest.raises(InvalidAdapter) as info:
        models.publish("acme", "m", files, kind=kind, uploader="acme")
    assert info.value.rule == rule, info.value.message
    return info.value.message


def test_publish_a_full_model_content_addressed(models, model_dir, store):
    meta = {"training": {"method": "full", "dataset_sha256": "ab" * 32}}
    m = models.publish("acme", "ft", files_of(model_dir), kind="full", uploader="acme", metadata=meta,
                       derived_from={"name": "tiny"})
    weights = load_file(str(model_dir / "model.safetensors"))
    assert m.parameter_count == sum(t.numel() for t in weights.values()) and m.dtypes == {"F32": m.parameter_count}
    assert (m.kind, m.metadata, m.shape.architecture, m.shape.num_layers) == ("full", meta, "LlamaForCausalLM", 2)
    assert m.derived_from["name"] == "tiny" and m.derived_from["served_base"]["architecture"] == "LlamaForCausalLM"
    assert set(m.files) == {"config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json"}
    # The same bytes (even as in-memory bytes, by another uploader) are the same version.
    again = models.publish("acme", "ft", {n: p.read_bytes() for n, p in files_of(model_dir).items()}, kind="full",
                           uploader="other")
    assert again == m
    assert store.list(layout.version_prefix("acme", "ft", m.version, layout.MODELS)) == sorted(
        layout.file_key("acme", "ft", m.version, f, layout.MODELS) for f in [*m.files, "manifest.json"])
    assert store.list("adapters/") == [] and AdapterRegistry(store, models.settings).list_adapters("acme") == []
    assert [i.name for i in models.list_models("acme")] == ["ft"]
    for ref in ("ft", f"ft@{m.version}"):
        assert models.resolve("acme", ref) == m
    with pytest.raises(ModelNotFound):
        models.resolve("other", "ft")  # another tenant sees nothing


def test_concurrent_identical_uploads_make_one_version(models, model_dir, store):
    files = {n: p.read_bytes() for n, p in files_of(model_dir).items()}
    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(lambda i: models.publish("acme", "ft", files, kind="merged", uploader=f"u{i}"), range(8)))
    assert len({m.model_dump_json() for m in out}) == 1
    assert len([k for k in store.list("models/acme/ft/") if k.endswith("manifest.json")]) == 1


def test_the_gate_refuses_unsafe_or_broken_models(models, model_dir, store, tmp_path):
    good = {n: p.read_bytes() for n, p in files_of(model_dir).items()}
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    assert "pickle" in refused(models, {**good, "pytorch_model.bin": pickle.dumps(Payload())}, "files")
    assert not marker.exists()  # refused by name, never unpickled
    refused(models, {**good, "run.sh": b"#!/bin/sh\n"}, "files")
    refused(models, {k: v for k, v in good.items() if k != "config.json"}, "files")
    refused(models, {**good, "model-00001-of-00002.safetensors": good["model.safetensors"]}, "files")
    refused(models, {**good, "model.safetensors": b"\xff" * 64}, "safetensors-header")
    refused(models, {**good, "config.json": b"{not json"}, "config-json")
    refused(models, {**good, "config.json": b"{}"}, "config-json")
    tensors = load_file(str(model_dir / "model.safetensors"))
    tensors["lm_head.weight"][0, 0] = float("nan")
    refused(models, {**good, "model.safetensors": save(tensors)}, "finite")
    refused(models, good, "kind", kind="lora")
    assert store.list("models/") == []  # nothing of a refused upload is stored


def test_sharded_models_need_a_matching_index(models, tmp_path, model_dir):
    tensors = load_file(str(model_dir / "model.safetensors"))
    keys = sorted(tensors)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": {k: tensors[k] for k in keys[:half]},
              "model-00002-of-00002.safetensors": {k: tensors[k] for k in keys[half:]}}
    files = {name: save(t) for name, t in shards.items()} | {"config.json": (model_dir / "config.json").read_bytes()}
    index = {"metadata": {}, "weight_map": {k: n for n, t in shards.items() for k in t}}
    m = models.publish("acme", "sharded", {**files, "model.safetensors.index.json": json.dumps(index).encode()},
                       kind="full", uploader="acme")
    assert m.parameter_count == sum(t.numel() for t in tensors.values())
    index["weight_map"].pop(keys[0])
    refused(models, {**files, "model.safetensors.index.json": json.dumps(index).encode()}, "files")


def test_aliases_compare_and_swap_and_deletion(models, model_dir):
    v1 = models.publish("acme", "ft", files_of(model_dir), kind="full", uploader="a")
    other = dict(files_of(model_dir), **{"generation_config.json": json.dumps({"do_sample": True}).encode()})
    v2 = models.publish("acme", "ft", other, kind="full", uploader="a")
    assert v1.version != v2.version and models.resolve("acme", "ft") == v2  # newest without prod
    models.set_alias("acme", "ft", "prod", v1.version, None)
    assert models.resolve("acme", "ft") == models.resolve("acme", "ft@prod") == v1
    with pytest.raises(AliasConflict):
        models.set_alias("acme", "ft", "prod", v2.version, v2.version)
    models.set_alias("acme", "ft", "prod", v2.version, v1.version)
    with pytest.raises(VersionInUse):
        models.delete_version("acme", "ft", v2.version)
    models.delete_version("acme", "ft", v1.version)
    assert [v.version for v in models.get_model("acme", "ft").versions] == [v2.version]


def test_fetch_into_the_verified_cache(models, model_dir, store, registry_settings, tmp_path):
    m = models.publish("acme", "ft", files_of(model_dir), kind="full", uploader="a")
    cache = models.cache()
    assert Path(cache.root) == Path(registry_settings.model_cache_dir)
    local = models.fetch("acme", "ft", cache)
    for name, path in files_of(model_dir).items():
        assert (local / name).read_bytes() == path.read_bytes()
    torch.testing.assert_close(load_file(str(local / "model.safetensors")),
                               load_file(str(model_dir / "model.safetensors")))
    # A damaged local copy is fetched again; a damaged stored object is never handed out.
    (local / "model.safetensors").write_bytes(b"\0" * m.files["model.safetensors"].size)
    assert models.fetch("acme", "ft", cache, verify=True) == local and cache.stats["refetches"] == 1
    assert (local / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    key = layout.file_key("acme", "ft", m.version, "config.json", layout.MODELS)
    store.put(key, store.get(key)[0].replace(b"Llama", b"Llamb"))
    fresh = models.cache().__class__(registry_settings.model_copy(update={"cache_dir": tmp_path / "c2"}),
                                     models.open_file)
    with pytest.raises(IntegrityError):
        models.fetch("acme", "ft", fresh)
    assert not (tmp_path / "c2" / "acme").exists() or not any((tmp_path / "c2" / "acme").rglob("config.json"))


def test_deleting_a_tenant_removes_its_models(models, model_dir, store):
    tenants = TenantRegistry(store)
    tenants.create("gone")
    models.publish("gone", "ft", files_of(model_dir), kind="full", uploader="gone")
    tenants.delete("gone")
    assert store.list("models/gone/") == []
    with pytest.raises(ModelNotFound):
        models.resolve("gone", "ft")


def test_open_files_are_read_from_the_start(models, model_dir):
    """Spooled uploads arrive as open files, possibly already read: they are rewound, checked and stored."""
    handles = {n: io.BytesIO(p.read_bytes()) for n, p in files_of(model_dir).items()}
    for h in handles.values():
        h.read()
    m = models.publish("acme", "ft", handles, kind="full", uploader="a")
    assert models.open_file(m, "config.json") == (model_dir / "config.json").read_bytes()
