"""The plugin's LoRA ops run on its own thread count, and the worker gets its count back after each call."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from serving.vllm_plugin import threads, wrapper


@pytest.fixture
def two_threads():
    before, limit = torch.get_num_threads(), threads.limit()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
    threads.set_limit(limit)


def test_the_ops_run_on_one_thread_and_the_worker_keeps_its_own(two_threads, monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # as vLLM's CPU worker leaves it
    plain = wrapper.LoraplexPunicaWrapperCPU.__new__(wrapper.LoraplexPunicaWrapperCPU)
    monkeypatch.setattr(wrapper.lora_ops, "lora_linear", lambda *a, **k: seen.append(torch.get_num_threads()))
    monkeypatch.setattr(wrapper.LoraplexPunicaWrapperCPU, "_applies", lambda self, plan, stacked: True)
    plain._token_plan, plain._weights = object(), None
    x = torch.zeros(4, 8)
    plain.add_lora_linear(x, x, (None,), (None,), 1.0, (8,))
    assert seen == [1] and torch.get_num_threads() == 2
    threads.set_limit(0)  # LORAPLEX_VLLM_LORA_THREADS=0: the worker's count
    plain.add_lora_linear(x, x, (None,), (None,), 1.0, (8,))
    assert seen == [1, 2] and torch.get_num_threads() == 2


def test_the_count_comes_back_when_an_op_fails(two_threads):
    with pytest.raises(RuntimeError), threads.limited():
        assert torch.get_num_threads() == 1
        raise RuntimeError("op failed")
    assert torch.get_num_threads() == 2
