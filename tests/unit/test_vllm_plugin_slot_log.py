"""The slots vLLM writes when it activates an adapter, and the cached weight forms updated for those slots only."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from serving.vllm_plugin import plan as plan_mod
from serving.vllm_plugin.slot_log import LOG, SlotLog
from tests.unit.test_vllm_plugin_lora_ops import reference, stacked, wrapper_for


def test_the_log_says_which_slots_were_written_or_that_it_forgot():
    log = SlotLog(keep=3)
    assert log.since(0) == set()
    log.note(4)
    log.note(2)
    assert log.since(0) == {4, 2} and log.since(1) == {2} and log.since(2) == set()
    log.note(4)
    log.note(7)  # the first write is forgotten
    assert log.since(1) == {2, 4, 7}
    assert log.since(0) is None  # what came after write 0 is not all remembered: the caller rebuilds


@pytest.mark.parametrize("kernel", ["loop", "tiles", "rows"])
def test_a_noted_activation_updates_its_slot_in_place(kernel, monkeypatch):
    """The activation of another adapter into slot 1 (of a higher rank than the one before) and of an adapter
    without weights in this layer into slot 2 is noted; the layer's cached forms (ranks and transposed lora_b
    included) are updated, not rebuilt, and the output is exact for every slot."""
    monkeypatch.setattr(plan_mod, "KERNEL_MAX_RUN", 10**9 if kernel == "rows" else 0)
    if kernel == "tiles":
        monkeypatch.setattr(plan_mod, "LOOP_MIN_AVG_ROWS", 10**9)
        monkeypatch.setattr(plan_mod, "TILES_MAX_WASTE", 10**9)
    gen = torch.Generator().manual_seed(11)
    indices = [0, 1, 2, 1, 0, 2]
    slices = (8, 8, 4)  # three slices: the fused shrink is a copy of its own
    a, b = stacked(slices, 4, 8, gen)
    for a_i in a:
        a_i[1, :, 1:] = 0  # slot 1 starts with an adapter of rank 1
    wrapper = wrapper_for(indices)
    x = torch.randn(len(indices), 8, generator=gen)
    wrapper.add_lora_linear(torch.zeros(len(indices), 20), x, a, b, 1.0, slices)
    [entry] = [e for e in wrapper._weights._entries.values() if e.tensors[0] is a[0]]
    b_entries = [e for e in wrapper._weights._entries.values() if e.tensors[0] is b[0]]
    fused, transposed = entry.fused, dict(b_entries[0].transposed) if b_entries else {}
    assert (kernel == "rows") == bool(transposed) and (kernel != "rows" or entry.ranks.tolist()[:3] == [4, 1, 4])
    for a_i, b_i in zip(a, b):  # what vLLM's set_lora / reset_lora do, then the noted activations
        a_i[1].copy_(torch.randn(a_i[1].shape, generator=gen))
        b_i[1].copy_(torch.randn(b_i[1].shape, generator=gen))
        a_i[2].zero_()
        b_i[2].zero_()
    LOG.note(1)
    LOG.note(2)
    y = torch.zeros(len(indices), 20)
    wrapper.add_lora_linear(y, x, a, b, 1.0, slices)
    torch.testing.assert_close(y.double(), reference(torch.zeros(len(indices), 20), x, a, b, 1.0, slices, indices),
                               rtol=1e-4, atol=1e-4)
    assert torch.count_nonzero(y[[2, 5]]) == 0  # slot 2 holds no weights for this layer now
    [after] = [e for e in wrapper._weights._entries.values() if e.tensors[0] is a[0]]
    assert after is entry and after.fused is fused, "rebuilt over all slots instead of updated"
    assert all(b_entries[0].transposed[k] is v for k, v in transposed.items())
    assert kernel != "rows" or entry.ranks.tolist()[:3] == [4, 4, 0]
    assert 2 not in after.nonzero and {0, 1} <= after.nonzero
