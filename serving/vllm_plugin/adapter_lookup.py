"""Find an engine's registered adapter in O(1), not by copying its whole CPU cache on every step.

Before each step vLLM's worker calls `LRUCacheWorkerLoRAManager.add_adapter` once per adapter of the
batch, and the stock method asks `id not in self.list_adapters()`: three copies of the registry of
adapters held in host memory (`dict(cache)`, a `UserDict`, a `set`). With `--max-cpu-loras 1024` full,
that is ~50,000 Python-level copies per decode step of 16 adapters, and it was the throughput gap between
8 and 1,000 adapters (profiled: a third of a step's time at 256 registered adapters). The patched method
keeps the stock one for a load (an adapter not registered, or `load_inplace`) and does the stock "already
loaded" branch itself with one membership test: touch the adapter in the LRU, activate it in a slot.
"""

from __future__ import annotations

from typing import Any


def install() -> bool:
    """Patch `LRUCacheWorkerLoRAManager.add_adapter` in this process (idempotent). True when patched now."""
    from vllm.lora.worker_manager import LRUCacheWorkerLoRAManager
    from vllm.utils.gpu_sync_debug import gpu_sync_allowed

    cls = LRUCacheWorkerLoRAManager
    if getattr(cls, "_loraplex_lookup", False):
        return False
    stock_add = cls.add_adapter

    def add_adapter(self, lora_request: Any) -> bool:
        manager = self._adapter_manager
        # `in` on vLLM's LRUCache is a dict lookup and leaves the order alone, as `list_adapters` does.
        if lora_request.load_inplace or lora_request.lora_int_id not in manager._registered_adapters:
            return stock_add(self, lora_request)
        with gpu_sync_allowed():
            loaded = manager.get_adapter(lora_request.lora_int_id) is not None  # touches it in the LRU
            manager.activate_adapter(lora_request.lora_int_id)
        return loaded

    cls.add_adapter = add_adapter
    cls._loraplex_lookup = True
    return True


def installed() -> bool:
    """True when this process's vLLM finds registered adapters with the patched lookup."""
    from vllm.lora.worker_manager import LRUCacheWorkerLoRAManager

    return bool(getattr(LRUCacheWorkerLoRAManager, "_loraplex_lookup", False))
