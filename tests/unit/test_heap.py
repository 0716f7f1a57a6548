"""The gateway's garbage-collector handling: every collection timed, the start-up heap frozen."""

import gc
import time

import pytest

from serving import metrics
from serving.heap import PAUSES, freeze_startup_heap, watch_gc


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()  # the rest of the test session keeps a normal heap


def _full_gc_seconds(repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        gc.collect()
        best = min(best, time.perf_counter() - started)
    return best


def test_every_collection_is_timed_by_generation():
    watch_gc()
    watch_gc()  # once per process, however many gateways start in it
    assert gc.callbacks.count(PAUSES) == 1
    before = PAUSES.snapshot()
    observed = metrics.GC_PAUSE.labels("2")._sum.get()
    gc.collect(2)
    gc.collect(0)
    after = PAUSES.snapshot()
    assert after["count"][2] == before["count"][2] + 1 and after["count"][0] >= before["count"][0] + 1
    assert after["seconds"][2] > before["seconds"][2] and after["longest"][2] > 0
    assert metrics.GC_PAUSE.labels("2")._sum.get() > observed


def test_a_frozen_heap_makes_full_collections_short(unfrozen):
    gc.unfreeze()
    heap = [{"i": i, "nested": [i]} for i in range(300_000)]  # a start-up heap: long-lived, GC-tracked
    unfrozen_s = _full_gc_seconds()
    frozen = freeze_startup_heap()
    assert frozen >= 600_000 and gc.get_freeze_count() == frozen
    frozen_s = _full_gc_seconds()
    # the walk skips the frozen objects: measured ~10x shorter; half is the bar on a noisy shared host
    assert frozen_s < unfrozen_s / 2, (frozen_s, unfrozen_s)
    assert heap[-1]["i"] == 299_999  # still alive and intact: freezing exempts from collection, frees nothing
