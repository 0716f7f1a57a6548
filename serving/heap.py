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

import bisect
import gc
import threading
import time

from prometheus_client import REGISTRY
from prometheus_client.core import HistogramMetricFamily

BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class GcPauses:
    """Running totals of collections in this process, by generation: count, seconds, histogram.

    The callback runs inside a collection, which any allocation of any thread may start, so it takes no
    lock: a prometheus_client metric's lock is not reentrant, and a scrape copying that metric's children
    under it can start a collection on the same thread (a deadlock). /metrics reads these plain numbers
    through `collect` instead (a scrape may see one collection half counted)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.buckets = [[0] * len(BUCKETS) for _ in range(3)]  # per generation: collections at most that long
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
        i = bisect.bisect_left(BUCKETS, took)
        if i < len(BUCKETS):
            self.buckets[gen][i] += 1

    def snapshot(self) -> dict:
        return {"count": list(self.count), "seconds": list(self.seconds)}

    def collect(self):
        """prometheus_client's custom-collector interface: `loraplex_gc_pause_seconds{generation}`."""
        family = HistogramMetricFamily(
            "loraplex_gc_pause_seconds", "Garbage collections of the gateway process by generation (2: full), "
            "each a stall of its event loop: every relayed stream pauses meanwhile.", labels=["generation"])
        for gen in range(3):
            running, cumulative = 0, []
            for bound, n in zip(BUCKETS, list(self.buckets[gen])):
                running += n
                cumulative.append((repr(bound), running))
            cumulative.append(("+Inf", self.count[gen]))
            family.add_metric([str(gen)], cumulative, self.seconds[gen])
        yield family


PAUSES = GcPauses()
_lock = threading.Lock()


def watch_gc() -> GcPauses:
    """Time every collection of this process from now on, exported on /metrics (once per process;
    in-process gateways share it)."""
    with _lock:
        if PAUSES not in gc.callbacks:
            gc.callbacks.append(PAUSES)
            REGISTRY.register(PAUSES)
    return PAUSES


def freeze_startup_heap() -> int:
    """Collect, then exempt everything alive now from later collections; returns the objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
