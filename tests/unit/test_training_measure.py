"""What a training run measures: parameter counts with 4-bit weights, peak memory in all, step time alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.memwatch import MemoryWatch
from training.model_loading import count_params, param_count
from training.steptime import StepTimer

pytestmark = pytest.mark.unit


class Params4bit(nn.Parameter):
    """Stands in for bitsandbytes.nn.Params4bit: two 4-bit weights packed per byte, numel() is bytes."""


def _qlora_like() -> nn.Module:
    # A 6x4 linear quantized to 4 bits (24 weights in 12 uint8 bytes) and a trainable rank-2 pair.
    model = nn.Module()
    model.base = Params4bit(torch.zeros(12, 1, dtype=torch.uint8), requires_grad=False)
    model.lora_a = nn.Parameter(torch.zeros(2, 4))
    model.lora_b = nn.Parameter(torch.zeros(6, 2))
    model.norm = nn.Parameter(torch.ones(4), requires_grad=False)
    return model


def test_4bit_weights_count_one_by_one():
    model = _qlora_like()
    assert param_count(model.base) == 24 and param_count(model.norm) == 4
    assert count_params(model) == (8 + 12, 24 + 8 + 12 + 4)


def test_4bit_count_follows_the_storage_dtype():
    # bnb_4bit_quant_storage=torch.bfloat16 packs four 4-bit weights per 2-byte element
    assert param_count(Params4bit(torch.zeros(3, 1, dtype=torch.bfloat16), requires_grad=False)) == 12


def test_ordinary_models_count_as_before():
    model = nn.Linear(4, 3)
    model.bias.requires_grad_(False)
    assert count_params(model) == (12, 15)


def test_memory_watch_reports_the_total_peak_too():
    # 64 MB: above glibc's largest mmap threshold (32 MiB), so fresh pages whatever the test session freed
    # before (a 20 MB block could reuse resident heap pages and leave the RSS where it was)
    with MemoryWatch(interval=0.005) as watch:
        block = bytearray(64_000_000)
        block[::4096] = b"x" * len(block[::4096])  # touch the pages so they are resident
    assert watch.total_peak_mb >= watch.peak_mb > 0
    assert watch.total_peak_mb > 20  # the process's own resident set is in it


def test_step_timer_takes_the_median_without_the_first_step(monkeypatch):
    clock = iter([0.0, 5.0, 10.0, 10.2, 20.0, 20.1, 30.0, 30.3])  # steps of 5 (warm-up), 0.2, 0.1, 0.3 s
    monkeypatch.setattr("training.steptime.time.perf_counter", lambda: next(clock))
    timer = StepTimer()
    for _ in range(4):
        timer.on_step_begin(None, None, None)
        timer.on_step_end(None, None, None)
    assert timer.seconds == pytest.approx([5.0, 0.2, 0.1, 0.3])
    assert timer.median_s == pytest.approx(0.2)


def test_step_timer_with_one_step_or_none():
    timer = StepTimer()
    assert timer.median_s is None
    timer.on_step_end(None, None, None)  # an end without a begin (resumed mid-step) is ignored
    assert timer.seconds == []
    timer.on_step_begin(None, None, None)
    timer.on_step_end(None, None, None)
    assert timer.median_s is not None and timer.median_s >= 0
