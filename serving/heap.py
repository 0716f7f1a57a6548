"""The gateway's Python heap and its cyclic garbage collector: stalls of the event loop, measured and reduced.

A full (oldest generation) collection walks every tracked object the process holds and stops the event
loop meanwhile: every stream the gateway relays pauses. Its cost grows with the heap: ~30-60 ms for the
gateway's own ~85k objects on this project's 2-core host, ~400 ms in a process that has imported torch
(the benchmarks, which run the gateway in-process). A flood makes full collections frequent: each waiting
request's objects survive the young collections, and CPython runs a full one once the objects promoted
since the last exceed a quarter of the long-lived ones.

`freeze_startup_heap` does what vLLM's engine core does after its start-up (`freeze_gc_heap`): collect,
then move everything alive into the permanent generation (`gc.freeze`), which later collections skip.
What start-up built (modules, settings, routes, clients) lives as long as the process; objects made by
requests are collected as before. `GcPauses` times every collection (`gc.callbacks`) for
`loraplex_gc_pause_seconds` and for the benchmarks.
"""

from __future__ import annotations

import gc
import threading
import time

from serving import metrics


class GcPauses:
    """Running totals of collections in this process, by generation: count, seconds, longest."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._started: float | None = None

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is None:
            return
        took, self._started = time.perf_counter() - self._started, None
        gen = min(int(info.get("generation", 2)), 2)
        self.count[gen] += 1
        self.seconds[gen] += took
        self.longest[gen] = max(self.longest[gen], took)
        metrics.GC_PAUSE.labels(str(gen)).observe(took)

    def snapshot(self) -> dict:
        return {"count": list(self.count), "seconds": list(self.seconds), "longest": list(self.longest)}


PAUSES = GcPauses()
_lock = threading.Lock()


def watch_gc() -> GcPauses:
    """Time every collection of this process from now on (once per process; in-process gateways share it)."""
    with _lock:
        if PAUSES not in gc.callbacks:
            gc.callbacks.append(PAUSES)
    return PAUSES


def freeze_startup_heap() -> int:
    """Collect, then exempt everything alive now from later collections; returns the objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
