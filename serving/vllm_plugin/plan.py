"""Which rows of a batch use which adapter slot: computed once per engine step, used by every LoRA layer.

vLLM hands the CPU path one slot index per token (-1: no adapter). The stock ops turn that into a
per-token copy of the adapter weights. Here the rows are grouped by slot instead, once per step, so
each layer runs one matrix product per distinct adapter on plain views of the stacked weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Segment:
    """A run of rows that share one adapter slot.

    Args:
        slot: index into the stacked LoRA weights.
        start: first row of the run: in the input itself for a contiguous plan, else in `LoraPlan.rows`.
        end: one past the last row (same coordinates as `start`).
        packed: where the run starts in the packed buffer that holds only rows with an adapter.
    """

    slot: int
    start: int
    end: int
    packed: int


@dataclass(frozen=True)
class LoraPlan:
    """The grouping of one batch's rows by adapter slot.

    Args:
        num_rows: rows the indices covered (rows beyond it get no adapter).
        segments: one per run of equal slots, rows without an adapter left out.
        rows: None when each slot's rows already form one contiguous run (views, no copies);
            else the row numbers sorted by slot, for one gather before and one scatter after.
        packed_rows: how many rows have an adapter.
    """

    num_rows: int
    segments: tuple[Segment, ...]
    rows: torch.Tensor | None
    packed_rows: int

    @property
    def empty(self) -> bool:
        """True when no row has an adapter: the LoRA layers have nothing to add."""
        return not self.segments


def _runs(indices: torch.Tensor) -> tuple[list[int], list[int]]:
    """Slots and lengths of the runs of equal values in `indices` (one host transfer)."""
    values, counts = torch.unique_consecutive(indices, return_counts=True)
    return values.tolist(), counts.tolist()


def _segments(slots: list[int], counts: list[int]) -> tuple[Segment, ...]:
    """Segments for runs laid end to end, skipping the runs without an adapter (slot < 0)."""
    segments, start, packed = [], 0, 0
    for slot, count in zip(slots, counts):
        if slot >= 0:
            segments.append(Segment(slot, start, start + count, packed))
            packed += count
        start += count
    return tuple(segments)


def make_plan(indices: torch.Tensor) -> LoraPlan:
    """Group the rows of a batch by adapter slot.

    Args:
        indices: one slot index per row (int64); -1 means the row has no adapter.

    Returns:
        A contiguous plan when each slot's rows form one run (common: one prompt's tokens, or a
        single adapter), else a plan that sorts the rows by slot with a stable sort.
    """
    num_rows = int(indices.numel())
    if num_rows == 0:
        return LoraPlan(0, (), None, 0)
    slots, counts = _runs(indices)
    used = [s for s in slots if s >= 0]
    if len(used) == len(set(used)):
        segments = _segments(slots, counts)
        return LoraPlan(num_rows, segments, None, sum(s.end - s.start for s in segments))
    # Interleaved slots (decode steps of requests on different adapters): sort once per step.
    order = torch.argsort(indices, stable=True)
    slots, counts = _runs(indices[order])
    segments = _segments(slots, counts)
    first = segments[0].start
    rows = order[first:]
    shifted = tuple(Segment(s.slot, s.start - first, s.end - first, s.packed) for s in segments)
    return LoraPlan(num_rows, shifted, rows, len(rows))
