"""Grouped LoRA shrink and expand on the CPU, on vLLM's stacked weights.

Shapes follow vLLM: lora_a `[slots, 1, rank, in]`, lora_b `[slots, 1, out, rank]` (the `1` is
optional), one stacked tensor per output slice (q/k/v, gate/up). Only rows with an adapter are
computed and written: a row without one (index -1) keeps exactly the value it had.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from serving.vllm_plugin import rows_kernel, tiled
from serving.vllm_plugin.plan import LoraPlan
from serving.vllm_plugin.weights import StackedWeights, as_slots


def lora_linear(y: torch.Tensor, x: torch.Tensor, weights: StackedWeights, lora_a: Sequence[torch.Tensor],
                lora_b: Sequence[torch.Tensor], output_slices: Sequence[int], plan: LoraPlan,
                scale: float = 1.0, offset: int = 0) -> None:
    """`y[row, slice i] += (x[row] @ A_i[slot].T * scale) @ B_i[slot].T`, in place.

    Args:
        y: `[rows, out]` output of the base layer, changed in place.
        x: `[rows, in]` input of the layer.
        weights: the layer's cache of derived weights (fused lora_a, per-slot views).
        lora_a: one stacked lora_a per slice (all slices are shrunk by one product, see `StackedWeights`).
        lora_b: one stacked lora_b per slice.
        output_slices: width of each slice in `y`; slices sit side by side from `offset`.
        plan: the batch's grouping (see `make_plan`): picks the kernel.
        scale: multiplies the shrink (vLLM passes 1.0: it folds the scaling into B).
        offset: first column of the first slice.
    """
    if plan.kernel_slots is not None and _row_kernel(y, x, weights, lora_a, lora_b, output_slices, plan, scale,
                                                     offset):
        return
    if plan.passes is not None:
        for part in plan.passes:
            lora_linear(y, x, weights, lora_a, lora_b, output_slices, part, scale, offset)
        return
    if plan.tiles is not None:
        h = tiled.shrink(x, weights.fused(lora_a), plan.tiles, scale)
        tiled.expand(y, h, lora_b, output_slices, plan.tiles, offset)
        return
    a_slots = weights.shrink_slots(lora_a)
    b_slots = weights.expand_slots(lora_b, output_slices, y.dtype)
    if plan.rows is not None:
        h = shrink(x, a_slots, plan, scale)
        expand(y, h, b_slots, output_slices, plan, offset)
        return
    # In place: each run is a plain row range of x and y (the whole of them for a single adapter).
    width = sum(output_slices)
    if offset or y.shape[1] != width:
        y = y[:, offset:offset + width]
    rows = x.shape[0]
    for s in plan.segments:
        if s.start == 0 and s.end >= rows:
            dense_lora(y, x, a_slots[s.slot], b_slots[s.slot], output_slices, scale)
        else:
            dense_lora(y[s.start:s.end], x[s.start:s.end], a_slots[s.slot], b_slots[s.slot], output_slices, scale)


def _row_kernel(y: torch.Tensor, x: torch.Tensor, weights: StackedWeights, lora_a: Sequence[torch.Tensor],
                lora_b: Sequence[torch.Tensor], output_slices: Sequence[int], plan: LoraPlan, scale: float,
                offset: int) -> bool:
    """`lora_linear` by the compiled row kernel; False (nothing done) when the layer's dtypes are not one the
    kernel computes in (e.g. float32 logits over bfloat16 weights): the sorted plan's products then run."""
    module = rows_kernel.get()
    dtype = y.dtype
    if module is None or dtype not in rows_kernel.DTYPES or x.dtype != dtype or any(
            t.dtype != dtype for t in (*lora_a, *lora_b)) or y.stride(1) != 1:
        return False
    rows_kernel.RUNS["lora_rows"] += 1
    offsets = [offset + sum(output_slices[:i]) for i in range(len(output_slices))]
    module.lora_rows(y, x if x.stride(1) == 1 else x.contiguous(), plan.rows, plan.kernel_slots, weights.ranks(lora_a),
                     [as_slots(a) for a in lora_a], weights.transposed(lora_b, output_slices), offsets, scale)
    return True


def dense_lora(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: Sequence[torch.Tensor],
               output_slices: Sequence[int], scale: float = 1.0) -> None:
    """`y[:, slice i] += (x @ a * scale)[:, rank block i] @ b[i]` for every row: one adapter's rows.

    The fewest tensor operations the product allows (on a 2-core host each costs several µs, as
    much as a small product): one shrink, one split of each side, one `addmm_` per slice.

    Args:
        y: `[rows, sum(output_slices)]`, changed in place (a view of the layer's output).
        x: `[rows, in]`.
        a: `[in, slices * rank]` float32 (one slot of `StackedWeights.shrink_slots`).
        b: per slice `[rank, width]` in y's dtype (one slot of `StackedWeights.expand_slots`).
        output_slices: width of each slice in `y`.
        scale: multiplies the shrink.
    """
    h = torch.mm(x if x.dtype == torch.float32 else x.to(torch.float32), a)
    if scale != 1.0:
        h.mul_(scale)
    if h.dtype != y.dtype:
        h = h.to(y.dtype)
    if len(b) == 1:
        ys, hs = (y,), (h,)
    else:
        ys, hs = y.split(output_slices, 1), h.split(h.shape[1] // len(b), 1)
    for y_i, h_i, b_i in zip(ys, hs, b):
        if b_i.shape[1] < y_i.shape[1]:  # adapter narrower than the slice: its last columns get nothing
            y_i = y_i[:, :b_i.shape[1]]
        y_i.addmm_(h_i, b_i)


def pack_rows(x: torch.Tensor, plan: LoraPlan) -> torch.Tensor:
    """The rows of `x` that have an adapter, in plan order (`[packed_rows, cols]`)."""
    if plan.rows is not None:
        return x.index_select(0, plan.rows)
    if len(plan.segments) == 1:
        seg = plan.segments[0]
        return x[seg.start:seg.end]
    return torch.cat([x[s.start:s.end] for s in plan.segments])


def unpack_rows(dst: torch.Tensor, packed: torch.Tensor, plan: LoraPlan) -> None:
    """Write packed rows back to their rows of `dst` (rows without an adapter are not touched)."""
    dst = dst[:, :packed.shape[1]]
    if plan.rows is not None:
        dst.index_copy_(0, plan.rows, packed.to(dst.dtype))
        return
    pos = 0
    for s in plan.segments:
        n = s.end - s.start
        dst[s.start:s.end] = packed[pos:pos + n]
        pos += n


def shrink(x: torch.Tensor, a_slots: Sequence[torch.Tensor], plan: LoraPlan, scale: float = 1.0) -> torch.Tensor:
    """`(x[row] @ A[slot].T) * scale` for the rows with an adapter, packed, in float32.

    Args:
        x: `[rows, in]`.
        a_slots: per slot, `[in, slices * rank]` float32 (`StackedWeights.shrink_slots`).
        plan: the batch's grouping.
        scale: multiplies the result.

    Returns:
        `[packed_rows, slices * rank]`: row k is the k-th row of `pack_rows(x, plan)`.
    """
    src = x if plan.rows is None else x.index_select(0, plan.rows)
    if src.dtype != torch.float32:
        src = src.to(torch.float32)
    h = torch.empty((plan.packed_rows, a_slots[0].shape[1]), dtype=torch.float32, device=x.device)
    pos = 0
    for s in plan.segments:
        n = s.end - s.start
        torch.mm(src[s.start:s.end], a_slots[s.slot], out=h[pos:pos + n])
        pos += n
    if scale != 1.0:
        h.mul_(scale)
    return h


def expand(y: torch.Tensor, h: torch.Tensor, b_slots: Sequence[Sequence[torch.Tensor]],
           output_slices: Sequence[int], plan: LoraPlan, offset: int = 0) -> None:
    """`y[row, slice i] += h[packed row, rank block i] @ B_i[slot].T`, in place.

    Args:
        y: `[rows, out]`, changed in place.
        h: `[packed_rows, slices * rank]` (as `shrink` returns it).
        b_slots: per slot, per slice, `[rank, width]` in y's dtype (`StackedWeights.expand_slots`);
            a width below the slice's (adapter padded differently) leaves the last columns alone.
        output_slices: width of each slice in `y`, side by side from `offset`.
        plan: the batch's grouping.
        offset: first column of the first slice.
    """
    width = sum(output_slices)
    cols = y[:, offset:offset + width]
    if h.dtype != y.dtype:
        h = h.to(y.dtype)
    # In-place runs are added straight into their rows of y; sorted rows go through one scatter.
    dst = cols if plan.rows is None else torch.zeros((plan.packed_rows, width), dtype=y.dtype, device=y.device)
    rank = h.shape[1] // len(output_slices)
    starts = [sum(output_slices[:i]) for i in range(len(output_slices))]
    h_blocks = [h[:, i * rank:(i + 1) * rank] for i in range(len(output_slices))]
    pos = 0
    for s in plan.segments:
        n = s.end - s.start
        rows = slice(s.start, s.end) if plan.rows is None else slice(pos, pos + n)
        for w, h_block, c0 in zip(b_slots[s.slot], h_blocks, starts):
            dst[rows, c0:c0 + w.shape[1]].addmm_(h_block[pos:pos + n], w)
        pos += n
    if plan.rows is not None:
        cols.index_add_(0, plan.rows, dst)
