"""The LoRA ops' thread count: at most `limit` OpenMP threads, whatever the engine's worker runs with.

The LoRA products are small (64 rows x hidden @ hidden x rank): split over several threads, each
product costs a fork and a barrier that take longer than the work, while the base layers' large products
do gain from the threads. Measured per decode step on the bench model (2-core host, 64 rows, rank 16): one
adapter's LoRA work took 1.0 ms on one thread and 1.4-2.6 ms on two, while the base step went from 18.6 to
10.7-13 ms. So the plugin runs its ops on one thread and gives the worker its count back after each call.

vLLM's CPU worker replaces `torch.set_num_threads` with a no-op once it has bound its threads; the C
function it wraps (`torch._C.set_num_threads`) is what is called here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_set_threads = torch._C.set_num_threads
_LIMIT = {"threads": 1}


def set_limit(threads: int) -> None:
    """Run the LoRA ops on at most `threads` threads (0: as many as the worker has)."""
    _LIMIT["threads"] = max(0, int(threads))


def limit() -> int:
    return _LIMIT["threads"]


@contextlib.contextmanager
def limited() -> Iterator[None]:
    """Within the block, at most the limit's threads (nothing changes when the worker has no more)."""
    cap, current = _LIMIT["threads"], torch.get_num_threads()
    if cap <= 0 or current <= cap:
        yield
        return
    _set_threads(cap)
    try:
        yield
    finally:
        _set_threads(current)
