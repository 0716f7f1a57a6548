"""The CPU punica wrapper with loraplex's grouped ops: every LoRA layer of a CPU engine calls these methods.

Subclassing vLLM's `PunicaWrapperCPU` keeps its metadata (and anything not overridden here); the
overrides replace its per-token weight gathers (`bgmv_*`/`sgmv_*`) with `serving.vllm_plugin.lora_ops`.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

from serving.vllm_plugin import lora_ops, rows_kernel, threads
from serving.vllm_plugin.plan import LoraPlan, make_plan
from serving.vllm_plugin.weights import StackedWeights, as_slots

# Calls per process: tests and the benchmark read them to prove the ops ran inside the engine's worker.
CALLS: Counter[str] = Counter()
# The benchmark flips this inside one engine to time vLLM's stock ops against the plugin's.
_PLUGIN_OPS = {"on": True}


def set_plugin_ops(on: bool) -> None:
    """Route this process's LoRA calls to the plugin's ops (True) or to vLLM's stock ops (False)."""
    _PLUGIN_OPS["on"] = on


def _or_stock(method: Callable) -> Callable:
    """Run `method` (on the plugin's thread count), or the stock `PunicaWrapperCPU` method of the same name while
    stock ops are selected."""
    stock = getattr(PunicaWrapperCPU, method.__name__)

    @functools.wraps(method)
    def dispatch(self, *args: Any, **kwargs: Any):
        if not _PLUGIN_OPS["on"]:
            return stock(self, *args, **kwargs)
        with threads.limited():  # small products: one thread is faster than a team (threads.py)
            return method(self, *args, **kwargs)

    return dispatch


def _rows(t: torch.Tensor) -> torch.Tensor:
    # A 2-D tensor is passed as is: a view is a tensor operation, and the layers call this per step.
    return t if t.dim() == 2 else t.view(-1, t.shape[-1])


class LoraplexPunicaWrapperCPU(PunicaWrapperCPU):
    """`PunicaWrapperCPU` whose shrink/expand group rows by adapter (see `serving.vllm_plugin.plan`)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._token_plan: LoraPlan | None = None
        self._sampler_plan: LoraPlan | None = None
        self._weights = StackedWeights()
        # Loaded (built if missing) now, at engine start, never inside a step.
        self._row_kernel = rows_kernel.get() is not None
        CALLS["wrappers"] += 1

    def update_metadata(self, *args: Any, **kwargs: Any) -> None:
        super().update_metadata(*args, **kwargs)
        # Built lazily: a step whose layers call no LoRA op pays nothing for them.
        self._token_plan = self._sampler_plan = None

    @property
    def token_plan(self) -> LoraPlan:
        """The grouping of this step's tokens (vLLM's `token_lora_indices`)."""
        if self._token_plan is None:
            self._token_plan = make_plan(self.token_lora_indices, self._row_kernel)
            CALLS["plans"] += 1
        return self._token_plan

    @property
    def sampler_plan(self) -> LoraPlan:
        """The grouping of this step's sampled rows (vLLM's `sampler_indices`, for LoRA on lm_head)."""
        if self._sampler_plan is None:
            self._sampler_plan = make_plan(self.sampler_indices, self._row_kernel)
        return self._sampler_plan

    def _applies(self, plan: LoraPlan, stacked) -> bool:
        """False when no adapter of the batch has weights in this layer (all-zero slots add nothing)."""
        return not plan.empty and not plan.slots.isdisjoint(self._weights.nonzero_slots(stacked))

    @_or_stock
    def add_shrink(self, y, x, lora_a_stacked, scale, **kwargs: Any) -> None:
        """`y[i][row] = (x[row] @ A_i[slot].T) * scale` for rows with an adapter (others untouched)."""
        plan = self.token_plan
        if plan.empty:
            return
        CALLS["shrink"] += 1
        h = lora_ops.shrink(_rows(x), self._weights.shrink_slots(lora_a_stacked), plan, scale)
        rank = h.shape[1] // len(lora_a_stacked)
        for i in range(len(lora_a_stacked)):
            lora_ops.unpack_rows(_rows(y[i]), h[:, i * rank:(i + 1) * rank], plan)

    @_or_stock
    def add_expand(self, y, x, lora_b_stacked, output_slices, offset_start=0, add_inputs=True,
                   **kwargs: Any) -> None:
        """`y[row, slice i] += x[i][row] @ B_i[slot].T` for rows with an adapter."""
        y2, plan = _rows(y), self.token_plan
        if not add_inputs:
            # Overwrite semantics: rows without an adapter get 0.
            y2[:, offset_start:offset_start + sum(output_slices)].zero_()
        if not self._applies(plan, lora_b_stacked):
            return
        CALLS["expand"] += 1
        h = torch.cat([lora_ops.pack_rows(_rows(x[i]), plan) for i in range(len(lora_b_stacked))], dim=1)
        b_slots = self._weights.expand_slots(lora_b_stacked, output_slices, y2.dtype)
        lora_ops.expand(y2, h, b_slots, output_slices, plan, offset_start)

    @_or_stock
    def add_lora_embedding(self, y, x, lora_b_stacked, add_inputs=True, **kwargs: Any) -> None:
        """Expand of the embedding layer's LoRA (its shrink is a lookup vLLM already did)."""
        width = min(y.shape[-1], as_slots(lora_b_stacked).shape[1])
        self.add_expand(y, (x,), (lora_b_stacked,), (width,), 0, add_inputs)

    @_or_stock
    def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *,
                        buffer=None, **kwargs: Any) -> None:
        """`y += (x @ A[slot].T * scale) @ B[slot].T` per slice, for rows with an adapter."""
        plan = self.token_plan
        if not self._applies(plan, lora_a_stacked):
            return
        CALLS["linear"] += 1
        lora_ops.lora_linear(_rows(y), _rows(x), self._weights, lora_a_stacked, lora_b_stacked, output_slices,
                             plan, scale)

    @_or_stock
    def add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *, buffer=None,
                        **kwargs: Any) -> None:
        """LoRA on lm_head, grouped by the sampled rows' adapters (skipped when no adapter has one)."""
        plan = self.sampler_plan
        if not self._applies(plan, (lora_a_stacked,)):
            return
        CALLS["logits"] += 1
        y2 = _rows(y)
        # The stacked lm_head B may be narrower than the padded logits: add the common width only.
        width = min(y2.shape[-1], as_slots(lora_b_stacked).shape[1])
        lora_ops.lora_linear(y2, _rows(x), self._weights, (lora_a_stacked,), (lora_b_stacked,), (width,), plan, scale)
