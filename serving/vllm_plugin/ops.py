"""Grouped LoRA shrink and expand on the CPU: one matrix product per distinct adapter and slice.

Stacked weights are vLLM's: lora_a `[slots, 1, rank, in]` and lora_b `[slots, 1, out, rank]` (the
`1` is optional). Only rows with an adapter are computed and written; rows without one (index -1)
are left exactly as they were, so they contribute nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from serving.vllm_plugin.plan import LoraPlan


def as_slots(weights: torch.Tensor) -> torch.Tensor:
    """View stacked weights as `[slots, rows, cols]` (drops vLLM's singleton layer axis; no copy)."""
    return weights[:, 0] if weights.dim() == 4 else weights


def pack_rows(x: torch.Tensor, plan: LoraPlan) -> torch.Tensor:
    """The input rows that have an adapter, in plan order (a view when the plan is contiguous)."""
    if plan.rows is not None:
        return x.index_select(0, plan.rows)
    if len(plan.segments) == 1:
        seg = plan.segments[0]
        return x[seg.start:seg.end]
    return torch.cat([x[s.start:s.end] for s in plan.segments])


def shrink(x: torch.Tensor, lora_a: Sequence[torch.Tensor], plan: LoraPlan, scale: float,
           dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """`(x @ A[slot].T) * scale` for every slice, on the packed rows only.

    Args:
        x: `[rows, in]` activations.
        lora_a: one stacked lora_a tensor per output slice.
        plan: the batch's grouping (see `make_plan`).
        scale: multiplies the result (vLLM passes 1.0 for linear layers: scaling is folded into B).
        dtype: dtype of the results (vLLM keeps its LoRA buffers in float32).

    Returns:
        One `[packed_rows, rank]` tensor per slice.
    """
    xs = pack_rows(x, plan).to(dtype)
    outs = []
    for weights in lora_a:
        w = as_slots(weights)
        out = torch.empty((plan.packed_rows, w.shape[1]), dtype=dtype, device=x.device)
        for s in plan.segments:
            n = s.end - s.start
            torch.mm(xs[s.packed:s.packed + n], w[s.slot].to(dtype).t(), out=out[s.packed:s.packed + n])
        if scale != 1.0:
            out.mul_(scale)
        outs.append(out)
    return outs


def expand(y: torch.Tensor, h: Sequence[torch.Tensor], lora_b: Sequence[torch.Tensor],
           output_slices: Sequence[int], plan: LoraPlan, offset: int = 0, add_inputs: bool = True) -> None:
    """`y[row, cols of slice i] += h[i][packed row] @ B_i[slot].T`, in place, for rows with an adapter.

    Args:
        y: `[rows, out]` output, changed in place.
        h: per slice, `[packed_rows, rank]` (from `shrink`, or `pack_rows` of a full buffer).
        lora_b: one stacked lora_b tensor per slice.
        output_slices: width of each slice in `y`; slices sit side by side from `offset`.
        plan: the batch's grouping.
        offset: first column of the first slice.
        add_inputs: False overwrites the slice columns instead (rows without an adapter get 0).
    """
    width = sum(output_slices)
    cols = y[:, offset:offset + width]
    if not add_inputs:
        cols.zero_()
    if plan.rows is None:
        _expand_in_place(cols, h, lora_b, output_slices, plan)
        return
    delta = torch.empty((plan.packed_rows, width), dtype=y.dtype, device=y.device)
    _expand_into(delta, h, lora_b, output_slices, plan)
    cols.index_add_(0, plan.rows, delta)


def _slice_products(h, lora_b, output_slices, plan, dtype):
    """Yield (segment, column start, column end, product) for every slice of every segment."""
    col = 0
    for hi, weights, size in zip(h, lora_b, output_slices):
        w = as_slots(weights)
        for s in plan.segments:
            n = s.end - s.start
            # Adapters and model may pad differently (vLLM's expand keeps the common width too).
            b = w[s.slot, :size].to(dtype)
            yield s, col, col + b.shape[0], hi[s.packed:s.packed + n].to(dtype) @ b.t()
        col += size


def _expand_in_place(cols, h, lora_b, output_slices, plan) -> None:
    """Contiguous plan: add each segment's product straight into its rows of `y` (no scatter)."""
    for s, c0, c1, prod in _slice_products(h, lora_b, output_slices, plan, cols.dtype):
        cols[s.start:s.end, c0:c1] += prod


def _expand_into(delta, h, lora_b, output_slices, plan) -> None:
    """Sorted plan: write each segment's product into the packed `delta` (zero where B is narrower)."""
    if any(as_slots(w).shape[1] < size for w, size in zip(lora_b, output_slices)):
        delta.zero_()
    for s, c0, c1, prod in _slice_products(h, lora_b, output_slices, plan, delta.dtype):
        delta[s.packed:s.packed + (s.end - s.start), c0:c1] = prod
