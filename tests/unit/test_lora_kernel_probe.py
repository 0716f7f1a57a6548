"""The kernel probe compiles, computes what the plugin's ops compute, and times both."""

from __future__ import annotations

import pytest

from loadtest import lora_kernel_probe
from loadtest.engine_bench.config import ModelShape

pytestmark = pytest.mark.slow  # compiles a small C++ module (~40 s the first time on a machine)


def test_the_kernel_matches_the_plugin_on_mixed_ranks():
    shape = ModelShape(hidden=32, intermediate=48, layers=1)
    out = lora_kernel_probe.probe(adapters=5, rows=7, shape=shape, slot_rank=16, ranks=[2, 4, 16], steps=2)
    assert out["max_abs_diff"] < 1e-5
    assert out["plugin_ms"] > 0 and out["kernel_ms"] > 0


def test_a_wrong_rank_is_caught():
    """The comparison can fail: a kernel that stops short of an adapter's rank gives other outputs."""
    import torch

    kernel = lora_kernel_probe.compile_kernel()

    x = torch.randn(2, 8)
    a, b = torch.randn(1, 4, 8), torch.randn(1, 6, 4)
    full, short = torch.zeros(2, 6), torch.zeros(2, 6)
    slots = torch.zeros(2, dtype=torch.long)
    kernel.lora_rows(full, x, slots, torch.tensor([4]), [a], [b], [0])
    kernel.lora_rows(short, x, slots, torch.tensor([3]), [a], [b], [0])
    assert torch.allclose(full, x @ a[0].T @ b[0].T, atol=1e-5)
    assert not torch.allclose(short, full, atol=1e-3)
