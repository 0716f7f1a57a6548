"""The adapter cache fed by the real registry on SeaweedFS."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from common.errors import IntegrityError, ModelNotFound
from common.peft_format import CONFIG_FILE, WEIGHTS_FILE
from registry import layout
from registry.adapter_registry import AdapterRegistry
from registry.cache import ArtifactCache
from tests.helpers.tiny_artifacts import adapter_files

pytestmark = pytest.mark.integration


@pytest.fixture
def adapters(store, registry_settings) -> AdapterRegistry:
    return AdapterRegistry(store, registry_settings)


def counting(fetch):
    calls = []
    lock = threading.Lock()

    def wrapped(manifest, filename):
        with lock:
            calls.append(filename)
        return fetch(manifest, filename)

    return wrapped, calls


def test_concurrent_cold_requests_download_once(adapters, registry_settings):
    manifest = adapters.publish("acme", "chat", adapter_files(), uploader="a")
    fetch, calls = counting(adapters.open_file)
    cache = ArtifactCache(registry_settings, fetch)
    with ThreadPoolExecutor(16) as pool:
        paths = set(pool.map(lambda _: cache.ensure_local(adapters.resolve("acme", "chat")), range(16)))
    assert len(paths) == 1 and sorted(calls) == [CONFIG_FILE, WEIGHTS_FILE]
    path = paths.pop()
    for filename, entry in manifest.files.items():
        assert hashlib.sha256((path / filename).read_bytes()).hexdigest() == entry.sha256


def test_tampered_object_in_storage_is_never_cached(adapters, store, registry_settings):
    manifest = adapters.publish("acme", "chat", adapter_files(), uploader="a")
    key = layout.file_key("acme", "chat", manifest.version, WEIGHTS_FILE)
    store.put(key, b"tampered")
    cache = ArtifactCache(registry_settings, adapters.open_file)
    with pytest.raises(IntegrityError):
        cache.ensure_local(manifest)
    assert not (registry_settings.cache_dir / "acme" / "chat" / manifest.version).exists()


def test_deleted_version_cannot_be_fetched(adapters, registry_settings):
    manifest = adapters.publish("acme", "chat", adapter_files(), uploader="a")
    adapters.delete_version("acme", "chat", manifest.version)
    with pytest.raises(ModelNotFound):
        ArtifactCache(registry_settings, adapters.open_file).ensure_local(manifest)
