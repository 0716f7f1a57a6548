"""The CPU punica wrapper with loraplex's grouped ops: every LoRA layer of a CPU engine calls these methods.

Subclassing vLLM's `PunicaWrapperCPU` keeps its metadata (and anything not overridden here); the
overrides replace its per-token weight gathers (`bgmv_*`/`sgmv_*`) with `ops.shrink`/`ops.expand`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from serving.vllm_plugin import ops
from serving.vllm_plugin.plan import LoraPlan, make_plan

# Calls per process, read by tests and the benchmark to prove the ops ran inside the engine's worker.
CALLS: Counter[str] = Counter()


class LoraplexPunicaWrapperCPU(PunicaWrapperCPU):
    """`PunicaWrapperCPU` whose shrink/expand group rows by adapter (see `serving.vllm_plugin.plan`)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._token_plan: LoraPlan | None = None
        self._sampler_plan: LoraPlan | None = None
        CALLS["wrappers"] += 1

    def update_metadata(self, *args: Any, **kwargs: Any) -> None:
        super().update_metadata(*args, **kwargs)
        # Plans are built lazily: a step whose layers never call LoRA ops pays nothing.
        self._token_plan = self._sampler_plan = None

    @property
    def token_plan(self) -> LoraPlan:
        """The grouping of this step's tokens (vLLM's `token_lora_indices`)."""
        if self._token_plan is None:
            self._token_plan = make_plan(self.token_lora_indices)
            CALLS["plans"] += 1
        return self._token_plan

    @property
    def sampler_plan(self) -> LoraPlan:
        """The grouping of this step's sampled rows (vLLM's `sampler_indices`, for LoRA on lm_head)."""
        if self._sampler_plan is None:
            self._sampler_plan = make_plan(self.sampler_indices)
        return self._sampler_plan

    def add_shrink(self, y, x, lora_a_stacked, scale, **kwargs: Any) -> None:
        """`y[i][row] = (x[row] @ A_i[slot].T) * scale` for rows with an adapter (others untouched)."""
        x = x.view(-1, x.shape[-1])
        plan = self.token_plan
        if plan.empty:
            return
        CALLS["shrink"] += 1
        outs = ops.shrink(x, lora_a_stacked, plan, scale, dtype=y[0].dtype)
        for i, out in enumerate(outs):
            _unpack_into(y[i].view(-1, y[i].shape[-1]), out, plan)

    def add_expand(self, y, x, lora_b_stacked, output_slices, offset_start=0, add_inputs=True,
                   **kwargs: Any) -> None:
        """`y[row, slice i] += x[i][row] @ B_i[slot].T` for rows with an adapter."""
        y2 = y.view(-1, y.shape[-1])
        plan = self.token_plan
        if plan.empty:
            if not add_inputs:
                y2[:, offset_start:offset_start + sum(output_slices)].zero_()
            return
        CALLS["expand"] += 1
        h = [ops.pack_rows(x[i].view(-1, x[i].shape[-1]), plan) for i in range(len(lora_b_stacked))]
        ops.expand(y2, h, lora_b_stacked, output_slices, plan, offset_start, add_inputs)

    def add_lora_embedding(self, y, x, lora_b_stacked, add_inputs=True, **kwargs: Any) -> None:
        """Expand of the embedding layer's LoRA (its shrink is a lookup done by vLLM)."""
        self.add_expand(y, (x,), (lora_b_stacked,), (y.shape[-1],), 0, add_inputs)

    def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *,
                        buffer=None, **kwargs: Any) -> None:
        """`y += (x @ A[slot].T * scale) @ B[slot].T` per slice, for rows with an adapter."""
        plan = self.token_plan
        if plan.empty:
            return
        CALLS["linear"] += 1
        x = x.view(-1, x.shape[-1])
        # vLLM keeps this intermediate in float32 whatever the model dtype (as its Triton op does).
        h = ops.shrink(x, lora_a_stacked, plan, scale, dtype=torch.float32)
        ops.expand(y.view(-1, y.shape[-1]), h, lora_b_stacked, output_slices, plan)

    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *, buffer=None,
                        **kwargs: Any) -> None:
        """LoRA on lm_head: grouped by the sampled rows' adapters."""
        plan = self.sampler_plan
        if plan.empty:
            return
        CALLS["logits"] += 1
        y2 = y.view(-1, y.shape[-1])
        h = ops.shrink(x.view(-1, x.shape[-1]), (lora_a_stacked,), plan, scale, dtype=torch.float32)
        # The stacked lm_head B may be narrower than the (padded) logits: add the common width only.
        width = min(y2.shape[-1], ops.as_slots(lora_b_stacked).shape[1])
        ops.expand(y2, h, (lora_b_stacked,), (width,), plan)


def _unpack_into(dst: torch.Tensor, packed: torch.Tensor, plan: LoraPlan) -> None:
    """Write packed rows back to their places in `dst` (rows without an adapter stay as they were)."""
    dst = dst[:, :packed.shape[1]]
    if plan.rows is not None:
        dst.index_copy_(0, plan.rows, packed.to(dst.dtype))
        return
    for s in plan.segments:
        dst[s.start:s.end] = packed[s.packed:s.packed + (s.end - s.start)]
