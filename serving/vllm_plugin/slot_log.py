"""Which adapter slots vLLM wrote lately: the weight forms cached per layer (weights.py) update those slots only.

vLLM writes an adapter into every LoRA layer's stacked tensors when it moves it into a batch slot
(`LoRAModelManager.activate_adapter`: `set_lora`/`reset_lora` of each module at that slot). With more adapters
than slots that happens on most steps, and rebuilding every layer's cached forms over all slots each time
was 6-7% of the worker's time at 1,000 adapters (py-spy). The patched method notes the slot it filled; a cache
that sees its tensors changed asks which slots were written since it was built. A write it cannot account
for (none noted, or too long ago to be remembered) means a full rebuild, as before.
"""

from __future__ import annotations

from collections import deque


class SlotLog:
    """Slot writes numbered in order (`gen`), the last `keep` of them remembered."""

    def __init__(self, keep: int = 4096):
        self.gen = 0
        self._writes: deque[tuple[int, int]] = deque(maxlen=keep)  # (gen, slot)

    def note(self, slot: int) -> None:
        self.gen += 1
        self._writes.append((self.gen, slot))

    def since(self, gen: int) -> set[int] | None:
        """Slots written after write number `gen`; None when some of those writes are no longer remembered."""
        if gen >= self.gen:
            return set()
        if not self._writes or self._writes[0][0] > gen + 1:
            return None
        slots = set()
        for g, slot in reversed(self._writes):
            if g <= gen:
                break
            slots.add(slot)
        return slots


LOG = SlotLog()  # per process: vLLM's worker holds one LoRA manager (several share it harmlessly: a superset)


def install() -> bool:
    """Patch `LoRAModelManager.activate_adapter` to note the slot it fills (idempotent). True when patched now."""
    from vllm.lora.model_manager import LoRAModelManager

    cls = LoRAModelManager
    if getattr(cls, "_loraplex_slot_log", False):
        return False
    stock_activate = cls.activate_adapter

    def activate_adapter(self, lora_id: int) -> bool:
        if lora_id in self._active_adapters:
            return stock_activate(self, lora_id)  # in a slot already (every step of its requests): nothing written
        try:
            return stock_activate(self, lora_id)
        finally:  # noted even if it failed half way: the writes it made are there
            if lora_id in self.lora_index_to_id:
                LOG.note(self.lora_index_to_id.index(lora_id))

    cls.activate_adapter = activate_adapter
    cls._loraplex_slot_log = True
    return True
