"""Time of one optimizer step alone: forward, backward and the optimizer update of every micro-batch.

`timings.step_s` of a run (train time / steps) also holds the evaluations, checkpoint saves and the final
best-checkpoint reload that fall inside `trainer.train()`; on a short run on a GPU they weigh heavily
(measured on an H100: 0.269 s/step by that division for a LoRA step whose median was 0.113 s). The median
of the timed steps is the number to compare methods by.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import TrainerCallback


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # CUDA work is asynchronous: wait for it before reading the clock


class StepTimer(TrainerCallback):
    """Trainer callback recording the wall time of each optimizer step (step begin to step end).

    Example:
        >>> timer = StepTimer()
        >>> timer.median_s is None
        True
    """

    def __init__(self):
        self.seconds: list[float] = []
        self._began: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        _sync()
        self._began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._began is not None:
            _sync()
            self.seconds.append(time.perf_counter() - self._began)
            self._began = None

    @property
    def median_s(self) -> float | None:
        """Median step time in seconds (the first step, with its one-off warm-up, is left out when
        there are more), None before any step."""
        timed = self.seconds[1:] if len(self.seconds) > 1 else self.seconds
        return round(statistics.median(timed), 5) if timed else None
