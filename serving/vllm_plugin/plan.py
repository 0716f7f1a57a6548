"""Which rows of a batch use which adapter slot: computed once per LoRA mapping, used by every LoRA layer.

vLLM hands the CPU path one slot index per token (-1: no adapter). The stock ops turn that into a
per-token copy of the adapter weights. Here the rows are grouped by slot instead, once per mapping
(vLLM only remaps when the batch's adapters change), so the layers compute on plain views of the
stacked weights:

- "loop": one matrix product per run of rows on one adapter, in place on row views (long runs:
  prefill chunks, a single adapter), or per adapter after sorting the rows;
- "tiles": rows sorted and laid out slot-major as `[slots, size]` tiles for one batched product per
  layer, whatever the number of adapters (short interleaved runs: decode steps of many adapters);
- "kernel": one compiled call per layer computing row by row at each adapter's real rank (lora_rows.cpp), for
  the short runs when the caller has it (decode steps, a request alone included): products of a row or two are
  memory-bound on weights padded to the engine's largest rank, the kernel reads no padding.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import torch

# Runs at least this long (on average) are looped over in place: big products are efficient, and
# sorting would only add a gather and a scatter.
LOOP_MIN_AVG_ROWS = 48
# Tiles pad every slot of the range to the longest run; give up on them beyond this much padding.
TILES_MAX_WASTE = 2.0
# Two passes (`_two_passes`) while the slot range is at most this many times the batch's adapters.
TWO_PASS_MAX_SPREAD = 2.0
# Runs of up to this many rows of one adapter go to the row kernel, longer ones to a product in place. At the op
# level the kernel beat the batched products up to 32 rows per adapter (runs of one row) in float32 and bfloat16;
# one adapter's 16 rows in one run took 0.68 ms against 0.59 ms for the product in float32 (docs/benchmarks.md).
KERNEL_MAX_RUN = 8


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
        passes: for the products of a layer (not for a lone shrink or expand, which use `segments`), plans of
            disjoint parts of the rows to compute in turn instead, or None.
        kernel_slots: for the products of a layer by the row kernel, the slot of each row of `rows`, or None.

    Attributes:
        slots: the adapter slots this batch uses.
        packed_rows: rows that have an adapter.
    """

    num_rows: int
    segments: tuple[Segment, ...]
    rows: torch.Tensor | None
    tiles: Tiles | None = None
    # Or: plans of disjoint parts of the rows, computed one after the other (`_two_passes`).
    passes: tuple[LoraPlan, ...] | None = None
    kernel_slots: torch.Tensor | None = None
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


def make_plan(indices: torch.Tensor, row_kernel: bool = False) -> LoraPlan:
    """Group the rows of a batch by adapter slot and choose the kernel.

    Args:
        indices: one slot index per row (int64); -1 means the row has no adapter.
        row_kernel: whether the caller can run the row kernel (`_with_row_kernel`).

    Returns:
        With `row_kernel`, runs of up to KERNEL_MAX_RUN rows go to the row kernel (`_with_row_kernel`). Else:
        long runs (prefill, a single adapter): the loop over the runs in place, no copies.
        Short interleaved runs (decode steps of several adapters): rows sorted by slot (stable), as
        tiles when the padding stays small, else in two passes (`_two_passes`) when many adapters have a
        row or two, else looped over one segment per slot.
    """
    indices = indices.to("cpu", torch.long)
    runs = _runs(indices) if indices.numel() else []
    in_place = _segments(runs)
    if not in_place:
        return LoraPlan(indices.numel(), (), None)
    if row_kernel and any(s.end - s.start <= KERNEL_MAX_RUN for s in in_place):
        return _with_row_kernel(indices, in_place)
    if len(in_place) <= 2 or sum(s.end - s.start for s in in_place) >= LOOP_MIN_AVG_ROWS * len(in_place):
        return LoraPlan(indices.numel(), in_place, None)
    plan = _sorted(indices)
    tiles = _tiles(plan)
    if tiles is not None:
        return replace(plan, tiles=tiles)
    passes = _two_passes(plan)
    return plan if passes is None else replace(plan, passes=passes)


def _sorted(indices: torch.Tensor) -> LoraPlan:
    """The rows with an adapter sorted by slot (stable), one segment per slot."""
    order = torch.argsort(indices, stable=True)
    unassigned = int((indices < 0).sum())
    return LoraPlan(indices.numel(), _segments(_runs(indices[order]), unassigned), order[unassigned:])


def _with_row_kernel(indices: torch.Tensor, in_place: tuple[Segment, ...]) -> LoraPlan:
    """Runs of up to KERNEL_MAX_RUN rows by the row kernel, longer runs (prefill chunks, one adapter's whole
    batch) by one product each, in place, in a pass of their own. A row's computation then depends on its run
    only: a decode row takes the kernel alone and in any batch, a prefill chunk its product."""
    long = tuple(s for s in in_place if s.end - s.start > KERNEL_MAX_RUN)
    short = indices.clone()
    for s in long:
        short[s.start:s.end] = -1
    kernel = _sorted(short)
    kernel = replace(kernel, kernel_slots=short[kernel.rows].contiguous())
    if not long:
        return kernel
    return replace(_sorted(indices), passes=(LoraPlan(indices.numel(), long, None), kernel))


def _two_passes(plan: LoraPlan) -> tuple[LoraPlan, ...] | None:
    """Many adapters with a row or two and a few popular ones with more (a decode step over a thousand
    adapters): one tile size for all would pad too much, and a loop costs products per adapter. Instead,
    tiles of one row per adapter (the first of each), then the popular adapters' other rows as a plan of
    their own (tiles again, or the loop over those few adapters)."""
    segs = plan.segments
    lo, hi = segs[0].slot, segs[-1].slot + 1
    if len(segs) < 3 or hi - lo > TWO_PASS_MAX_SPREAD * len(segs):
        return None
    first = LoraPlan(plan.num_rows, tuple(Segment(s.slot, i, i + 1) for i, s in enumerate(segs)),
                     plan.rows[[s.start for s in segs]])
    first = replace(first, tiles=_tiles(first, TWO_PASS_MAX_SPREAD))
    extra = [s for s in segs if s.end - s.start > 1]
    if not extra:
        return (first,)
    ends = list(itertools.accumulate(s.end - s.start - 1 for s in extra))
    rest = LoraPlan(plan.num_rows, tuple(Segment(s.slot, e - (s.end - s.start - 1), e) for s, e in zip(extra, ends)),
                    torch.cat([plan.rows[s.start + 1:s.end] for s in extra]))
    return first, replace(rest, tiles=_tiles(rest))


def _tiles(plan: LoraPlan, max_waste: float | None = None) -> Tiles | None:
    """The batched layout of a sorted plan (one segment per slot), unless it would pad more than `max_waste`
    (None: TILES_MAX_WASTE, read at the call: tests set it) times its rows."""
    segs = plan.segments
    if len(segs) < 2:
        return None
    lo, hi = segs[0].slot, segs[-1].slot + 1
    size = max(s.end - s.start for s in segs)
    if (hi - lo) * size > (TILES_MAX_WASTE if max_waste is None else max_waste) * plan.packed_rows:
        return None
    rows = torch.zeros((hi - lo) * size, dtype=torch.long)
    real = torch.zeros((hi - lo) * size, dtype=torch.bool)
    for s in segs:
        base = (s.slot - lo) * size
        rows[base:base + s.end - s.start] = plan.rows[s.start:s.end]
        real[base:base + s.end - s.start] = True
    pads = torch.nonzero(~real).flatten()
    return Tiles(lo, hi, size, rows, pads if pads.numel() else None)
