"""The local adapter cache against an in-memory fetch: single-flight, integrity, LRU by bytes.

The same cache is also tested on a real SeaweedFS in tests/integration/test_registry_cache.py.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common.errors import IntegrityError
from common.peft_format import CONFIG_FILE, WEIGHTS_FILE
from registry.cache import ArtifactCache
from registry.manifest import Manifest, content_digest, file_entries, utc_now, version_of
from registry.settings import RegistrySettings

pytestmark = pytest.mark.unit


def make_version(name: str, size: int = 1000, seed: int = 0) -> tuple[Manifest, dict[str, bytes]]:
    files = {CONFIG_FILE: f'{{"seed": {seed}}}'.encode(),
             WEIGHTS_FILE: bytes([seed % 256]) * size}
    entries = file_entries(files)
    digest = content_digest(entries)
    manifest = Manifest(tenant="acme", name=name, version=version_of(digest), sha256=digest, files=entries,
                        size_bytes=sum(e.size for e in entries.values()), rank=4, alpha=8, target_modules=["q_proj"],
                        created_at=utc_now(), uploader="test")
    return manifest, files


class Storage:
    """An in-memory fetch that counts calls and can be told to serve other bytes."""

    def __init__(self, delay: float = 0.0):
        self.files: dict[tuple[str, str], bytes] = {}
        self.calls = 0
        self.delay = delay
        self.lock = threading.Lock()

    def add(self, manifest: Manifest, files: dict[str, bytes]) -> None:
        for filename, data in files.items():
            self.files[(manifest.version, filename)] = data

    def fetch(self, manifest: Manifest, filename: str) -> bytes:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        return self.files[(manifest.version, filename)]


def make_cache(tmp_path: Path, storage: Storage, max_bytes: int = 10**6) -> ArtifactCache:
    return ArtifactCache(RegistrySettings(cache_dir=tmp_path / "cache", cache_max_bytes=max_bytes), storage.fetch)


def test_files_land_verified_in_tenant_name_version(tmp_path):
    storage = Storage()
    manifest, files = make_version("a")
    storage.add(manifest, files)
    path = make_cache(tmp_path, storage).ensure_local(manifest)
    assert path == tmp_path / "cache" / "acme" / "a" / manifest.version
    assert {p.name: p.read_bytes() for p in path.iterdir()} == files


def test_concurrent_cold_requests_download_once(tmp_path):
    storage = Storage(delay=0.05)
    manifest, files = make_version("a")
    storage.add(manifest, files)
    cache = make_cache(tmp_path, storage)
    with ThreadPoolExecutor(16) as pool:
        paths = list(pool.map(lambda _: cache.ensure_local(manifest), range(16)))
    assert len(set(paths)) == 1
    assert storage.calls == 2  # one download: two files, fetched once each
    assert cache.stats["downloads"] == 1 and cache.stats["hits"] == 15


def test_sha_mismatch_publishes_nothing(tmp_path):
    storage = Storage()
    manifest, files = make_version("a")
    storage.add(manifest, {**files, WEIGHTS_FILE: b"\x01" * 1000})  # same size, other bytes
    cache = make_cache(tmp_path, storage)
    with pytest.raises(IntegrityError, match="SHA-256"):
        cache.ensure_local(manifest)
    assert not (tmp_path / "cache" / "acme" / "a" / manifest.version).exists()
    assert list((tmp_path / "cache" / ".tmp").iterdir()) == []
    assert cache.total_bytes() == 0


def test_truncated_cached_file_is_fetched_again(tmp_path):
    storage = Storage()
    manifest, files = make_version("a")
    storage.add(manifest, files)
    cache = make_cache(tmp_path, storage)
    path = cache.ensure_local(manifest)
    (path / WEIGHTS_FILE).write_bytes(b"short")
    assert cache.ensure_local(manifest) == path
    assert (path / WEIGHTS_FILE).read_bytes() == files[WEIGHTS_FILE]
    assert storage.calls == 4 and cache.stats["refetches"] == 1


def test_same_size_corruption_found_by_verify(tmp_path):
    storage = Storage()
    manifest, files = make_version("a")
    storage.add(manifest, files)
    cache = make_cache(tmp_path, storage)
    path = cache.ensure_local(manifest)
    (path / WEIGHTS_FILE).write_bytes(b"\xff" * 1000)
    cache.ensure_local(manifest)  # the cheap size check cannot see it...
    assert storage.calls == 2
    cache.ensure_local(manifest, verify=True)  # ...the re-hash does
    assert (path / WEIGHTS_FILE).read_bytes() == files[WEIGHTS_FILE]
    assert storage.calls == 4


def test_lru_eviction_by_bytes(tmp_path):
    storage = Storage()
    versions = [make_version(f"v{i}", size=1000, seed=i) for i in range(4)]
    for manifest, files in versions:
        storage.add(manifest, files)
    cache = make_cache(tmp_path, storage, max_bytes=3100)  # room for three versions of ~1012 bytes
    paths = [cache.ensure_local(m) for m, _ in versions[:3]]
    cache.ensure_local(versions[0][0])  # v0 is now the most recently used; v1 the least
    cache.ensure_local(versions[3][0])
    assert [p.exists() for p in paths] == [True, False, True]
    assert cache.stats["evictions"] == 1 and cache.total_bytes() <= 3100


def test_an_entry_larger_than_the_budget_is_still_returned(tmp_path):
    storage = Storage()
    manifest, files = make_version("big", size=5000)
    storage.add(manifest, files)
    path = make_cache(tmp_path, storage, max_bytes=100).ensure_local(manifest)
    assert (path / WEIGHTS_FILE).stat().st_size == 5000


def test_a_restarted_cache_finds_its_entries(tmp_path):
    storage = Storage()
    manifest, files = make_version("a")
    storage.add(manifest, files)
    make_cache(tmp_path, storage).ensure_local(manifest)
    (tmp_path / "cache" / ".tmp" / "half-done").mkdir(parents=True)
    again = make_cache(tmp_path, storage)
    assert again.total_bytes() == manifest.size_bytes
    again.ensure_local(manifest)
    assert storage.calls == 2 and not (tmp_path / "cache" / ".tmp" / "half-done").exists()
