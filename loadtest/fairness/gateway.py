"""A gateway per admission mode (through the stack harness), with the time each request waited for admission.

The waits are measured by wrapping `Admission.acquire` (`_timed`), in one place, until the gateway
exports an admission-wait metric the benchmark can read instead.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from loadtest.harness import RunningGateway, start_gateway


class BenchGateway:
    """A gateway in this process, with its admission instrumented (per-tenant waits, in seconds).

    `tenants`: (tenant, key, model) in the order they were created (the first one floods).
    """

    def __init__(self, running: RunningGateway):
        self.running, self.url = running, running.url
        self.tenants: list[tuple[str, str, str]] = []
        self.waits: dict[str, list[float]] = defaultdict(list)
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
        the slowdown guard (the engine's light-load speed, its ceiling) carries on as in a running gateway."""
        from serving.admission import Admission

        gw = self.running.gateway
        admission = Admission.from_settings(gw.settings)
        previous = getattr(gw, "admission", None)
        if previous is not None:  # what the slowdown guard learned is about the engine, not the tenants: a
            admission.guard = previous.guard  # long-running gateway keeps it, so the flood slices do too
        _timed(admission, self.waits)
        gw.admission = admission

    def close(self) -> None:
        self.running.close()


def _timed(admission, waits: dict[str, list[float]]) -> None:
    """Record in `waits[tenant]` how long each `admission.acquire` took (the request's admission wait)."""
    acquire = admission.acquire

    async def timed_acquire(tenant: str, est_tokens: int, *args):
        started = time.monotonic()
        await acquire(tenant, est_tokens, *args)
        waits[tenant].append(time.monotonic() - started)

    admission.acquire = timed_acquire


def bench_gateway(engine, s3: str, base: Path, tmp: Path, admission: dict, inflight: int,
                  max_queue: int = 4096, gc_freeze: bool = True) -> BenchGateway:
    """A gateway over `engine` (ServingSettings) with the mode's `admission` settings, on a fresh bucket."""
    settings = engine.model_copy(update={**admission, "max_inflight": inflight, "max_queue": max_queue,
                                         "gc_freeze": gc_freeze})
    return BenchGateway(start_gateway(settings, s3, base, tmp / "cache", bucket_prefix="bench"))
