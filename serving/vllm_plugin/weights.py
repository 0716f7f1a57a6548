"""Forms of vLLM's stacked LoRA weights that the ops reuse across steps, rebuilt when an adapter changes.

vLLM writes adapters into preallocated stacked tensors in place (`copy_` on load, zeroing on
removal); every in-place write bumps the tensor's version counter, so a cached form is valid exactly
as long as the versions it was built from are unchanged. When they changed, the slots vLLM wrote since
(slot_log.py) are updated in place; a write not accounted for rebuilds the form over all slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from serving.vllm_plugin.slot_log import LOG


def as_slots(weights: torch.Tensor) -> torch.Tensor:
    """View stacked weights as `[slots, rows, cols]` (drops vLLM's singleton axis; no copy)."""
    return weights[:, 0] if weights.dim() == 4 else weights


def _ranks(lora_a: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per slot, one past its last nonzero rank row over all slices: the adapter's real rank (vLLM pads a slot
    to the engine's largest rank with zeros), 0 for an empty slot."""
    ranks = None
    for w in lora_a:
        used = as_slots(w).abs().amax(dim=2) > 0  # [slots, rank]
        last = (used * torch.arange(1, used.shape[1] + 1)).amax(dim=1)
        ranks = last if ranks is None else torch.maximum(ranks, last)
    return ranks.to(torch.long).contiguous()


@dataclass
class _Entry:
    tensors: tuple[torch.Tensor, ...]
    versions: tuple[int, ...]
    gen: int  # slot writes noted when built (slot_log.LOG)
    fused: torch.Tensor | None = None
    fused_copy: bool = False  # `fused` has storage of its own (several slices, or another dtype)
    nonzero: frozenset[int] | None = None
    ranks: torch.Tensor | None = None  # int64 [slots] (`_ranks`)
    transposed: dict = field(default_factory=dict)  # output_slices -> per slice `[slots, rank, width]` copies
    views: dict = field(default_factory=dict)

    def update(self, slots: set[int], versions: tuple[int, ...]) -> None:
        """Bring the forms up to date after vLLM wrote `slots` (and nothing else)."""
        for slot in slots:
            if self.fused is not None and self.fused_copy:
                parts = [as_slots(w)[slot] for w in self.tensors]
                self.fused[slot].copy_(parts[0] if len(parts) == 1 else torch.cat(parts, dim=0))
            if self.nonzero is not None:
                written = any(bool(as_slots(w)[slot].abs().amax() > 0) for w in self.tensors)
                self.nonzero = self.nonzero | {slot} if written else self.nonzero - {slot}
            if self.ranks is not None:
                self.ranks[slot] = _ranks([w[slot:slot + 1] for w in self.tensors])[0]
            for slices, copies in self.transposed.items():
                for copy, w, size in zip(copies, self.tensors, slices):
                    copy[slot].copy_(as_slots(w)[slot, :size].t())
        # Views of `fused` or of vLLM's tensors follow by themselves; converted copies are made again when used.
        dtype = self.tensors[0].dtype
        for key in [k for k in self.views if isinstance(k, tuple) and k[2] != dtype]:
            del self.views[key]
        self.versions, self.gen = versions, LOG.gen


class StackedWeights:
    """Per-layer cache of derived weights, keyed by the identity and version of vLLM's tensors."""

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}

    def _entry(self, stacked: Sequence[torch.Tensor]) -> _Entry:
        tensors = tuple(stacked)
        versions = tuple(t._version for t in tensors)
        entry = self._entries.get(id(tensors[0]))
        if entry is not None and entry.tensors[0] is tensors[0] and entry.versions != versions:
            slots = LOG.since(entry.gen)
            if slots:  # else written by something else than a noted activation: rebuilt below
                entry.update(slots, versions)
        if entry is None or entry.tensors[0] is not tensors[0] or entry.versions != versions:
            entry = _Entry(tensors, versions, LOG.gen)
            self._entries[id(tensors[0])] = entry
        return entry

    def fused(self, lora_a: Sequence[torch.Tensor]) -> torch.Tensor:
        """All slices' lora_a side by side, `[slots, slices * rank, in]` in float32.

        One product per adapter then computes every slice's shrink (q, k and v at once); float32 is
        the dtype of vLLM's LoRA intermediate, so no per-step cast is needed.
        """
        entry = self._entry(lora_a)
        if entry.fused is None:
            parts = [as_slots(w) for w in entry.tensors]
            fused = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            entry.fused = fused.to(torch.float32)
            entry.fused_copy = len(parts) > 1 or fused.dtype != torch.float32
        return entry.fused

    def nonzero_slots(self, stacked: Sequence[torch.Tensor]) -> frozenset[int]:
        """Slots with any nonzero weight (an adapter that does not target this layer leaves zeros)."""
        entry = self._entry(stacked)
        if entry.nonzero is None:
            slots = set()
            for w in entry.tensors:
                flat = as_slots(w).flatten(1)
                slots.update(torch.nonzero(flat.abs().amax(dim=1) > 0).flatten().tolist())
            entry.nonzero = frozenset(slots)
        return entry.nonzero

    def ranks(self, lora_a: Sequence[torch.Tensor]) -> torch.Tensor:
        """Each slot's real rank (int64 `[slots]`): the row kernel reads no padding."""
        entry = self._entry(lora_a)
        if entry.ranks is None:
            entry.ranks = _ranks(entry.tensors)
        return entry.ranks

    def transposed(self, lora_b: Sequence[torch.Tensor], output_slices: Sequence[int]) -> list[torch.Tensor]:
        """Per slice, lora_b as `[slots, rank, width]` (contiguous copies, cut to the slice width, the weights'
        dtype): the row kernel adds rank rows of it to an output row, reading memory in order."""
        entry = self._entry(lora_b)
        key = tuple(output_slices)
        if key not in entry.transposed:
            entry.transposed[key] = [as_slots(w)[:, :size].transpose(1, 2).contiguous()
                                     for w, size in zip(entry.tensors, output_slices)]
        return entry.transposed[key]

    def shrink_slots(self, lora_a: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per slot, the fused lora_a transposed for `x @ w` (`[in, slices * rank]` views, no copies)."""
        entry = self._entry(lora_a)
        if "shrink" not in entry.views:
            fused = self.fused(lora_a)
            entry.views["shrink"] = [fused[slot].t() for slot in range(fused.shape[0])]
        return entry.views["shrink"]

    def expand_slots(self, lora_b: Sequence[torch.Tensor], output_slices: Sequence[int],
                     dtype: torch.dtype) -> list[tuple[torch.Tensor, ...]]:
        """Per slot, each slice's lora_b transposed for `h @ w`, cut to the slice width, in `dtype`.

        Views when the dtype matches; a converted copy (made once per adapter load) when it does not.
        """
        entry = self._entry(lora_b)
        key = ("expand", tuple(output_slices), dtype)
        if key not in entry.views:
            parts = [as_slots(w)[:, :size].to(dtype) for w, size in zip(entry.tensors, output_slices)]
            entry.views[key] = [tuple(p[slot].t() for p in parts) for slot in range(parts[0].shape[0])]
        return entry.views[key]

