"""Pure logic of the residency tiers: budgets by bytes, scan resistance, pins never evicted, prefetch on queue.

The engine and S3 paths themselves are covered by tests/e2e/test_scale_tiers.py.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from registry.cache import ArtifactCache
from registry.settings import RegistrySettings
from registry.slru import SegmentedLRU
from serving.residency import AdapterResidency
from serving.tiers import Tiers
from tests.unit.test_registry_cache import Storage, make_version

pytestmark = pytest.mark.unit


def test_budget_is_bytes_so_a_large_rank_takes_the_room_of_several_small_ones():
    lru = SegmentedLRU(max_bytes=800, max_count=10)
    for key in "abcdefgh":
        lru.add(key, 100)  # eight rank-8 adapters fill it
    assert not lru.over_budget()
    victims = lru.victims(extra_bytes=400, extra_count=1)  # one rank-32 adapter: 4x the bytes
    assert victims == ["a", "b", "c", "d"]


def test_count_budget_holds_even_when_bytes_are_left():
    lru = SegmentedLRU(max_bytes=10**9, max_count=3)
    for key in "abc":
        lru.add(key, 1)
    assert lru.victims(extra_bytes=1, extra_count=1) == ["a"]


def test_a_scan_of_one_off_keys_does_not_evict_the_popular_set():
    lru = SegmentedLRU(max_bytes=1000, max_count=10)
    popular = [f"hot{i}" for i in range(5)]
    for key in popular:
        lru.add(key, 100)
        lru.touch(key)  # used twice: protected
    for i in range(200):  # a burst of adapters used once each, evicting as a tier would
        key = f"once{i}"
        for victim in lru.victims(100, 1):
            lru.remove(victim)
        lru.add(key, 100)
    assert all(key in lru for key in popular)
    assert len(lru) <= 10 and lru.bytes <= 1000


def test_plain_lru_would_have_lost_them():
    """The same scan against a one-segment LRU (what residency was before): the check above can fail."""
    from collections import OrderedDict
    lru: OrderedDict[str, None] = OrderedDict((f"hot{i}", None) for i in range(5))
    for i in range(200):
        if len(lru) >= 10:
            lru.popitem(last=False)
        lru[f"once{i}"] = None
    assert not any(f"hot{i}" in lru for i in range(5))


def test_protected_segment_is_bounded_so_new_popular_keys_get_in():
    lru = SegmentedLRU(max_bytes=1000, max_count=10, protected_share=0.5)
    for i in range(10):
        lru.add(f"k{i}", 100)
        lru.touch(f"k{i}")
    assert lru.usage().protected_bytes <= 500


def test_kept_entries_are_skipped_and_the_budget_is_exceeded_rather_than_break_them():
    lru = SegmentedLRU(max_bytes=300, max_count=3)
    for key in "abc":
        lru.add(key, 100)
    assert lru.victims(100, 1, keep=lambda k: k in {"a", "b"}) == ["c"]
    assert lru.victims(100, 1, keep=lambda k: True) == []


def test_random_traffic_never_passes_the_budget_when_nothing_is_kept():
    rng = random.Random(0)
    lru = SegmentedLRU(max_bytes=5000, max_count=12)
    for _ in range(5000):
        key, size = f"a{rng.randrange(100)}", rng.choice([100, 200, 800])
        if key in lru:
            lru.touch(key)
            continue
        for victim in lru.victims(size, 1):
            lru.remove(victim)
        lru.add(key, size)
        assert lru.bytes <= 5000 and len(lru) <= 12


class Engine:
    def __init__(self):
        self.loads: list[str] = []
        self.unloads: list[str] = []

    async def load_lora(self, name, path):
        await asyncio.sleep(0)
        self.loads.append(name)

    async def unload_lora(self, name):
        self.unloads.append(name)


def _sized(tmp_path: Path, name: str, size: int):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    (d / "adapter_model.safetensors").write_bytes(b"x" * size)

    async def path():
        return d
    return path


def test_engine_tier_counts_real_sizes_and_never_evicts_in_flight_or_pinned(tmp_path):
    async def go():
        eng = Engine()
        res = AdapterResidency(eng, capacity=8, max_bytes=1000, pinned=lambda n: n == "pinned")
        await res.warm("pinned", _sized(tmp_path, "pinned", 300))
        await res.acquire("busy", _sized(tmp_path, "busy", 300))  # held: a request in flight
        for i in range(30):  # other adapters of mixed sizes come and go
            name = f"a{i}"
            await res.warm(name, _sized(tmp_path, name, [100, 400][i % 2]))
            assert "pinned" in res.resident and "busy" in res.resident
            assert res.usage().bytes <= 1000
        return eng, res
    eng, res = asyncio.run(go())
    assert "pinned" not in eng.unloads and "busy" not in eng.unloads
    assert eng.loads.count("pinned") == 1


def _tiers(tmp_path, storage, engine, max_bytes=10**6):
    settings = RegistrySettings(cache_dir=tmp_path / "cache", cache_max_bytes=max_bytes,
                                engine_adapter_max_bytes=10**6)
    cache = ArtifactCache(settings, storage.fetch)
    residency = AdapterResidency(engine, capacity=4, max_bytes=10**6)
    tiers = Tiers(settings, residency, cache, adapters=None, pins=None)
    tiers._refreshed = float("inf")  # no pins to read in these tests
    return tiers, cache


def test_a_queued_request_prefetches_its_adapter_into_the_disk_tier_once(tmp_path):
    storage = Storage(delay=0.05)
    manifest, files = make_version("queued")
    storage.add(manifest, files)

    async def go():
        tiers, cache = _tiers(tmp_path, storage, Engine())
        for _ in range(5):  # five requests for it wait in the queue
            tiers.prefetch(manifest)
        while tiers._background:
            await asyncio.sleep(0.01)
        return cache
    cache = asyncio.run(go())
    assert cache.holds(manifest)
    assert storage.calls == len(files)  # one download, whatever the number of waiting requests
    assert cache.stats["downloads"] == 1


def test_behind_a_queue_the_adapter_is_loaded_into_the_engine_while_it_waits(tmp_path):
    """Others wait already: the request will too, so its adapter is loaded meanwhile (once, whatever the number
    of its requests) and its turn at the front finds it resident: no load, a residency hit."""
    from serving.residency import engine_lora_name

    storage = Storage(delay=0.02)
    manifest, files = make_version("behind")
    storage.add(manifest, files)
    name = engine_lora_name(manifest.tenant, manifest.name, manifest.version)

    async def go():
        eng = Engine()
        tiers, cache = _tiers(tmp_path, storage, eng)
        for _ in range(3):
            tiers.prefetch(manifest, queued=True)
        while tiers._background:
            await asyncio.sleep(0.01)
        assert tiers.residency.holds(name) and eng.loads == [name]
        await tiers.residency.acquire(name, tiers.local_path(manifest))  # the request's turn
        tiers.residency.release(name)
        return eng
    eng = asyncio.run(go())
    assert eng.loads == [name] and storage.calls == len(files)


def test_a_queued_request_marks_its_resident_adapter_used_so_it_is_not_the_next_victim(tmp_path):
    async def go():
        res = AdapterResidency(Engine(), capacity=3)
        for n in "abc":
            await res.warm(n, _sized(tmp_path, n, 10))
        res.touch("a")  # a request for "a" is queued
        await res.warm("d", _sized(tmp_path, "d", 10))
        return res
    res = asyncio.run(go())
    assert res.holds("a") and not res.holds("b")


class ReadingEngine(Engine):
    """Reads the adapter's files a moment after the load call, as vLLM does (a missing file: the load fails)."""

    async def load_lora(self, name, path):
        await asyncio.sleep(0.02)
        if not path.exists() or not any(path.iterdir()):
            from common.errors import EngineError
            raise EngineError(f"No adapter found for {path}")
        self.loads.append(name)


def test_many_loads_at_once_on_a_small_disk_tier_do_not_evict_each_others_files(tmp_path):
    """A thousand warm uploads at once: each load's files must stay on disk until the engine has read them,
    though the disk tier holds fewer versions than are loading (seen: 25 of 1,000 warm loads failed with the
    engine's "No adapter found", their files evicted by the fetches of the others)."""
    storage = Storage(delay=0.005)
    versions = []
    for i in range(12):
        m, f = make_version(f"w{i}", size=1000, seed=i + 1)
        storage.add(m, f)
        versions.append(m)

    async def go():
        eng = ReadingEngine()
        tiers, _cache = _tiers(tmp_path, storage, eng, max_bytes=2500)  # room for two versions on disk
        tiers.residency.capacity = 100
        tiers.residency._lru.max_count = 100
        await asyncio.gather(*(tiers.warm(m) for m in versions))
        return eng
    eng = asyncio.run(go())
    assert len(eng.loads) == len(versions)


def test_disk_tier_keeps_pinned_versions_through_a_scan(tmp_path):
    storage = Storage()
    pinned, files = make_version("pinned", size=1000, seed=1)
    storage.add(pinned, files)
    others = []
    for i in range(20):
        m, f = make_version(f"other{i}", size=1000, seed=i + 2)
        storage.add(m, f)
        others.append(m)
    tiers, cache = _tiers(tmp_path, storage, Engine(), max_bytes=5000)
    tiers._pinned_keys = {f"{pinned.tenant}/{pinned.name}/{pinned.version}"}
    path = cache.ensure_local(pinned)
    for m in others:
        cache.ensure_local(m)
        assert path.exists()
    assert cache.total_bytes() <= 5000 + 1100
    assert cache.usage().pinned == 1


def test_engine_tier_returns_within_budget_once_the_requests_holding_it_finish(tmp_path):
    async def go():
        eng = Engine()
        res = AdapterResidency(eng, capacity=8, max_bytes=300)
        for name in "abcde":  # five requests in flight at once: the tier must hold them all
            await res.acquire(name, _sized(tmp_path, name, 100))
        assert res.usage().bytes == 500
        for name in "abcde":
            res.release(name)
        for _ in range(10):
            await asyncio.sleep(0)
        return eng, res
    eng, res = asyncio.run(go())
    assert res.usage().bytes <= 300 and len(eng.unloads) == 2


def test_disk_tier_keeps_the_files_of_every_adapter_the_engine_holds(tmp_path):
    """vLLM re-reads a registered adapter's files when it moves it into a batch slot: they must stay."""
    storage = Storage()
    versions = []
    for i in range(12):
        m, f = make_version(f"v{i}", size=1000, seed=i)
        storage.add(m, f)
        versions.append(m)

    async def go():
        tiers, cache = _tiers(tmp_path, storage, Engine(), max_bytes=2000)
        for m in versions[:4]:  # four in the engine (its capacity): more than the disk tier's two
            await tiers.warm(m)
        return tiers, cache
    tiers, cache = asyncio.run(go())
    for m in versions[:4]:
        assert cache.holds(m) and (tmp_path / "cache" / m.tenant / m.name / m.version).is_dir()
