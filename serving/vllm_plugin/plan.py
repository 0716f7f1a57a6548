"""Which rows of a batch use which adapter slot: computed once per LoRA mapping, used by every LoRA layer.

vLLM hands the CPU path one slot index per token (-1: no adapter). The stock ops turn that into a
per-token copy of the adapter weights. Here the rows are grouped by slot instead, once per mapping
(vLLM only remaps when the batch's adapters change), so the layers compute on plain views of the
stacked weights:

- "loop": one matrix product per run of rows on one adapter, in place on row views (long runs:
  prefill chunks, a single adapter), or per adapter after sorting the rows;
- "tiles": rows sorted and laid out slot-major as `[slots, size]` tiles for one batched product per
  layer, whatever the number of adapters (short interleaved runs: decode steps of many adapters).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Runs at least this long (on average) are looped over in place: big products are efficient, and
# sorting would only add a gather and a scatter.
LOOP_MIN_AVG_ROWS = 48
# Tiles pad every slot of the range to the longest run; give up on them beyond this much padding.
TILES_MAX_WASTE = 2.0


@dataclass(frozen=True)
class Segment:
    """A run of rows that share one adapter slot.

    Args:
        slot: index into the stacked LoRA weights.
        start: first row: in the input itself for an in-place plan, else in `LoraPlan.rows`.
        end: one past the last row (same coordinates as `start`).
    """

    slot: int
    start: int
    end: int


@dataclass(frozen=True)
class Tiles:
    """The batched layout: slots `lo..hi-1`, each with `size` row positions (short runs padded).

    Args:
        lo: first slot of the range.
        hi: one past the last slot.
        size: positions per slot (the longest run).
        rows: `[(hi - lo) * size]` input row of each position (padding points at row 0).
        pads: positions that are padding (their inputs are zeroed, so they add exactly 0), or None.
    """

    lo: int
    hi: int
    size: int
    rows: torch.Tensor
    pads: torch.Tensor | None


@dataclass(frozen=True)
class LoraPlan:
    """The grouping of one batch's rows by adapter slot.

    Args:
        num_rows: rows the indices covered.
        segments: the runs of rows with an adapter (in row order), or one per slot when sorted.
        rows: None when the segments are runs of the input itself (row views, no copies); else the
            row numbers sorted by slot (adapter rows only), for one gather before and one scatter after.
        tiles: the batched layout when it is the cheaper kernel, else None (use the loop).

    Attributes:
        slots: the adapter slots this batch uses.
        packed_rows: rows that have an adapter.
    """

    num_rows: int
    segments: tuple[Segment, ...]
    rows: torch.Tensor | None
    tiles: Tiles | None = None
    # Derived once here, not per call: every LoRA layer of the step reads them.
    slots: frozenset[int] = field(init=False, repr=False)
    packed_rows: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "slots", frozenset(s.slot for s in self.segments))
        object.__setattr__(self, "packed_rows", sum(s.end - s.start for s in self.segments))

    @property
    def empty(self) -> bool:
        """True when no row has an adapter: the LoRA layers have nothing to add."""
        return not self.segments


def _runs(indices: torch.Tensor) -> list[tuple[int, int]]:
    """(slot, length) of each run of equal values in `indices` (one host transfer)."""
    values, counts = torch.unique_consecutive(indices, return_counts=True)
    return list(zip(values.tolist(), counts.tolist()))


def _segments(runs: list[tuple[int, int]], shift: int = 0) -> tuple[Segment, ...]:
    """Segments for runs laid end to end from row `-shift`, skipping runs without an adapter."""
    segments, start = [], -shift
    for slot, count in runs:
        if slot >= 0:
            segments.append(Segment(slot, start, start + count))
        start += count
    return tuple(segments)


def make_plan(indices: torch.Tensor) -> LoraPlan:
    """Group the rows of a batch by adapter slot and choose the kernel.

    Args:
        indices: one slot index per row (int64); -1 means the row has no adapter.

    Returns:
        Long runs (prefill, a single adapter): the loop over the runs in place, no copies.
        Short interleaved runs (decode steps of several adapters): rows sorted by slot (stable), as
        tiles when the padding stays small, else looped over one segment per slot.
    """
    indices = indices.to("cpu", torch.long)
    runs = _runs(indices) if indices.numel() else []
    in_place = _segments(runs)
    if not in_place:
        return LoraPlan(indices.numel(), (), None)
    if len(in_place) <= 2 or sum(s.end - s.start for s in in_place) >= LOOP_MIN_AVG_ROWS * len(in_place):
        return LoraPlan(indices.numel(), in_place, None)
    order = torch.argsort(indices, stable=True)
    unassigned = int((indices < 0).sum())
    plan = LoraPlan(indices.numel(), _segments(_runs(indices[order]), unassigned), order[unassigned:])
    tiles = _tiles(plan)
    return plan if tiles is None else LoraPlan(plan.num_rows, plan.segments, plan.rows, tiles)


def _tiles(plan: LoraPlan) -> Tiles | None:
    """The batched layout of a sorted plan (one segment per slot), unless it would pad too much."""
    segs = plan.segments
    if len(segs) < 2:
        return None
    lo, hi = segs[0].slot, segs[-1].slot + 1
    size = max(s.end - s.start for s in segs)
    if (hi - lo) * size > TILES_MAX_WASTE * plan.packed_rows:
        return None
    rows = torch.zeros((hi - lo) * size, dtype=torch.long)
    real = torch.zeros((hi - lo) * size, dtype=torch.bool)
    for s in segs:
        base = (s.slot - lo) * size
        rows[base:base + s.end - s.start] = plan.rows[s.start:s.end]
        real[base:base + s.end - s.start] = True
    pads = torch.nonzero(~real).flatten()
    return Tiles(lo, hi, size, rows, pads if pads.numel() else None)
