"""Back off, instead of spinning, while a CPU engine's processes wait on each other.

vLLM's engine core and its worker talk through shared-memory message queues. A reader that read a
message in the last second spins on the queue with `sched_yield()` (vLLM's `SpinCondition`), so while
the worker runs a forward pass the engine core burns a core waiting for the answer. On a GPU host that
core is idle anyway; on a CPU host it is the core the worker, the API server and the gateway need
(measured on 2 cores: the engine core at 40-60% of a core doing nothing useful).

The patched wait keeps vLLM's logic (busy window, then the zmq notification) and only replaces the
yield with a sleep that grows with the time since the last read: `idle / 20`, capped. A message that
arrives is seen at most 5% (or the cap) later than with the spin; the wait costs a few hundred wake-ups
per second instead of a core. Setting the busy window itself to 0 is not safe: the readers then rely on
a conflated zmq notification that can be dropped (requests hung when tried).
"""

from __future__ import annotations

import time

BACKOFF_FRACTION = 0.05  # sleep idle/20: a message is seen at most 5% later than with a spin


def backoff_s(idle_s: float, cap_s: float) -> float:
    """How long a reader that last read `idle_s` ago sleeps before it looks at the queue again."""
    return min(cap_s, max(0.0, idle_s) * BACKOFF_FRACTION)


def install(cap_s: float) -> bool:
    """Patch vLLM's `SpinCondition.wait` in this process (idempotent). Returns True when patched now."""
    from vllm.distributed.device_communicators import shm_broadcast

    cls = shm_broadcast.SpinCondition
    if getattr(cls, "_loraplex_backoff", None) is not None:
        return False
    stock_wait = cls.wait

    def wait(self, timeout_ms: int | None = None) -> None:
        if self.is_reader:
            idle = time.monotonic() - self.last_read
            if idle <= self.busy_loop_s:
                # Same branch as vLLM's (busy window), a sleep in place of sched_yield.
                time.sleep(backoff_s(idle, cap_s))
                return
        stock_wait(self, timeout_ms)

    cls.wait = wait
    cls._loraplex_backoff = cap_s
    return True


def installed_cap_s() -> float | None:
    """The cap this process's patch uses, or None when vLLM's stock spin is in place."""
    from vllm.distributed.device_communicators import shm_broadcast

    return getattr(shm_broadcast.SpinCondition, "_loraplex_backoff", None)
