"""The worker's lookup of a registered adapter: the stock branch for a load, one dict lookup for the rest.

The stand-in manager below holds a real `vllm.utils.cache.LRUCache` (the registry vLLM uses) and records
what the patched method does; the real engine path (slots and the CPU cache churning under traffic, every
answer equal to its answer alone) is tests/e2e/test_scale_tiers.py's.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from vllm.lora.request import LoRARequest
from vllm.lora.worker_manager import LRUCacheWorkerLoRAManager
from vllm.utils.cache import LRUCache

from serving.vllm_plugin import adapter_lookup


class Manager:
    """What `add_adapter` touches of vLLM's `LRUCacheLoRAModelManager`."""

    def __init__(self, ids):
        self._registered_adapters = LRUCache(len(ids) + 1)
        for i in ids:
            self._registered_adapters[i] = f"lora{i}"
        self.activated: list[int] = []

    def get_adapter(self, adapter_id):
        return self._registered_adapters.get(adapter_id)

    def activate_adapter(self, adapter_id):
        self.activated.append(adapter_id)
        return True

    def list_adapters(self):
        raise AssertionError("the whole registry was copied for a registered adapter")


@pytest.fixture
def worker(monkeypatch):
    stock_calls: list[int] = []
    monkeypatch.setattr(LRUCacheWorkerLoRAManager, "add_adapter",
                        lambda self, req: stock_calls.append(req.lora_int_id) or True)
    monkeypatch.setattr(LRUCacheWorkerLoRAManager, "_loraplex_lookup", False, raising=False)
    assert adapter_lookup.install() and not adapter_lookup.install()  # idempotent
    assert adapter_lookup.installed()
    w = object.__new__(LRUCacheWorkerLoRAManager)
    w._adapter_manager = Manager(range(1, 1001))
    w.stock_calls = stock_calls
    return w


def test_a_registered_adapter_is_touched_and_activated_without_a_copy(worker):
    registry = worker._adapter_manager._registered_adapters
    assert next(iter(registry.order)) == 1  # least recently used first
    assert worker.add_adapter(LoRARequest("a1", 1, "/x")) is True
    assert worker._adapter_manager.activated == [1]
    assert list(registry.order)[-1] == 1, "the adapter became the most recently used, as the stock method does"
    assert worker.stock_calls == []


def test_a_load_goes_through_the_stock_method(worker):
    assert worker.add_adapter(LoRARequest("new", 5000, "/x")) is True
    assert worker.add_adapter(LoRARequest("again", 7, "/x", load_inplace=True)) is True
    assert worker.stock_calls == [5000, 7]
    assert worker._adapter_manager.activated == []
