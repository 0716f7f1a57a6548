"""The batched kernel: one `bmm` per product for all adapters of a step, on views of the stacked weights.

Rows are laid out slot-major (`Tiles`): tile `g` holds the rows of slot `lo + g`, padded to the
longest run with zero rows. The weights of slots `lo..hi-1` are then a plain slice of the stacked
tensor, so no adapter weight is ever copied, and the number of operations does not grow with the
number of adapters (decode steps of 8 or 64 adapters cost the same handful of calls as one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from serving.vllm_plugin.plan import Tiles
from serving.vllm_plugin.weights import as_slots


def shrink(x: torch.Tensor, fused_a: torch.Tensor, tiles: Tiles, scale: float = 1.0) -> torch.Tensor:
    """`(x @ A[slot].T) * scale` per tile, in float32.

    Args:
        x: `[rows, in]` input of the layer.
        fused_a: `[slots, slices * rank, in]` float32.
        tiles: the batch's tile layout.
        scale: multiplies the result.

    Returns:
        `[hi - lo, size, slices * rank]`; padding positions hold exact zeros.
    """
    xs = x.index_select(0, tiles.rows).to(torch.float32)
    if tiles.pads is not None:
        xs.index_fill_(0, tiles.pads, 0.0)
    xs = xs.view(tiles.hi - tiles.lo, tiles.size, x.shape[1])
    h = torch.bmm(xs, fused_a[tiles.lo:tiles.hi].transpose(1, 2))
    if scale != 1.0:
        h.mul_(scale)
    return h


def expand(y: torch.Tensor, h: torch.Tensor, lora_b: Sequence[torch.Tensor], output_slices: Sequence[int],
           tiles: Tiles, offset: int = 0) -> None:
    """`y[row, slice i] += h[tile row, rank block i] @ B_i[slot].T`, in place (one scatter in all).

    Args:
        y: `[rows, out]`, changed in place.
        h: `[hi - lo, size, slices * rank]` from `shrink` (zeros at padding, so padding adds 0).
        lora_b: one stacked lora_b per slice.
        output_slices: width of each slice in `y`, side by side from `offset`.
        tiles: the batch's tile layout.
        offset: first column of the first slice.
    """
    groups = tiles.hi - tiles.lo
    h = h.to(y.dtype)
    rank = h.shape[2] // len(lora_b)
    # One fresh product per slice, then one scatter: a bmm into a strided slice of a shared buffer
    # would make torch fall back to one product per adapter.
    parts = []
    for i, (weights, size) in enumerate(zip(lora_b, output_slices)):
        w = as_slots(weights)[tiles.lo:tiles.hi, :size].to(y.dtype)
        part = torch.bmm(h[:, :, i * rank:(i + 1) * rank], w.transpose(1, 2))
        if w.shape[1] < size:  # adapter narrower than the slice: its last columns get nothing
            part = torch.nn.functional.pad(part, (0, size - w.shape[1]))
        parts.append(part)
    delta = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    width = delta.shape[2]
    y[:, offset:offset + width].index_add_(0, tiles.rows, delta.view(groups * tiles.size, width))
