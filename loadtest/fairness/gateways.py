"""A gateway per admission mode (through the stack harness), and the time requests waited for admission.

The waits are the gateway's own metric, `loraplex_admission_wait_seconds` (a histogram per tenant and
adapter), read from the metric in this process: the gateways run here, one slice at a time,
so the difference of two readings around a slice is that slice's waits.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from loadtest.harness import RunningGateway, start_gateway
from serving.metrics import ADMISSION_WAIT, FAIR_CAPACITY, FAIR_HELD

Buckets = dict[float, float]  # a histogram's cumulative counts by upper bound


class BenchGateway:
    """A gateway in this process whose admission can be reset between slices.

    `tenants`: (tenant, key, model) in the order they were created (the first one floods).
    """

    def __init__(self, running: RunningGateway):
        self.running, self.url = running, running.url
        self.tenants: list[tuple[str, str, str]] = []
        self.reset()

    @property
    def admission(self):
        return self.running.gateway.admission

    def add_tenants(self, specs: list[dict], adapter_dirs: dict[str, Path]) -> None:
        """Create the tenants of `specs` (training.demo.DEMO_TENANTS' shape) with their adapters."""
        for name, entry in self.running.add_tenants(specs, adapter_dirs).items():
            self.tenants.append((name, entry["key"], entry["adapter"]))

    def reset(self) -> None:
        """A fresh admission (no counters, no tenant history) so that every slice starts from the same state;
        what it learned about the engine (the slowdown guard's light-load speed and ceiling, the measured
        capacity) carries on as in a running gateway.

        With the gateway's `gc_freeze` on, what this process holds now is also set aside from the garbage
        collector as the gateway's start-up heap is (`freeze_startup_heap`): the gateway runs in the
        benchmark's process, and each full collection of its heap otherwise also walked the benchmark's own
        results of the earlier slices (thousands of samples), a stall of the gateway's event loop that a
        gateway process of its own does not have."""
        from serving.admission import Admission
        from serving.heap import freeze_startup_heap

        gw = self.running.gateway
        if gw.settings.gc_freeze:
            freeze_startup_heap()
        admission = Admission.from_settings(gw.settings)
        previous = getattr(gw, "admission", None)
        if previous is not None:  # what the slowdown guard learned is about the engine, not the tenants: a
            admission.guard = previous.guard  # long-running gateway keeps it, so the flood slices do too
            admission.queue.capacity = previous.queue.capacity
        gw.admission = admission

    def close(self) -> None:
        self.running.close()


def admission_waits() -> dict[str, Buckets]:
    """Cumulative admission-wait bucket counts per tenant (adapters summed), as /metrics shows them now."""
    out: dict[str, Buckets] = defaultdict(lambda: defaultdict(float))
    for metric in ADMISSION_WAIT.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                out[sample.labels["tenant"]][float(sample.labels["le"])] += sample.value
    return {tenant: dict(b) for tenant, b in out.items()}


def held_counts() -> dict[str, float]:
    """Requests fair admission held back while a slot was free, per tenant, as /metrics shows them now."""
    return {s.labels["tenant"]: s.value for m in FAIR_HELD.collect() for s in m.samples if s.name.endswith("_total")}


def fair_capacity() -> float:
    """Tokens per second fair admission measures now (0: not measured)."""
    return FAIR_CAPACITY.collect()[0].samples[0].value


def waits_between(before: dict[str, Buckets], after: dict[str, Buckets]) -> dict[str, Buckets]:
    """The bucket counts added from `before` to `after` (the waits of what ran in between)."""
    return {t: {le: n - before.get(t, {}).get(le, 0.0) for le, n in b.items()} for t, b in after.items()}


def bench_gateway(engine, s3: str, base: Path, tmp: Path, admission: dict, inflight: int,
                  max_queue: int = 4096, gc_freeze: bool = True) -> BenchGateway:
    """A gateway over `engine` (ServingSettings) with the mode's `admission` settings, on a fresh bucket."""
    settings = engine.model_copy(update={**admission, "max_inflight": inflight, "max_queue": max_queue,
                                         "gc_freeze": gc_freeze})
    return BenchGateway(start_gateway(settings, s3, base, tmp / "cache", bucket_prefix="bench"))
