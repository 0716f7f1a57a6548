"""What the host did during a condition: the engine's own latency (vLLM's /metrics), CPU seconds of the
gateway, the engine and the host, the gateway's garbage collections, and the slowdown guard's state."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import httpx

from loadtest.report import percentile


def engine_totals(engine_url: str) -> dict[str, float]:
    """The engine's own request latency and TTFT histograms (sum and count), from vLLM's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    want = {"vllm:e2e_request_latency_seconds": "e2e", "vllm:time_to_first_token_seconds": "ttft"}
    out: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(httpx.get(f"{engine_url}/metrics", timeout=30).text):
        for s in family.samples:
            for name, key in want.items():
                if s.name in (f"{name}_sum", f"{name}_count"):
                    out[f"{key}_{s.name.rsplit('_', 1)[1]}"] += s.value
    return out


def engine_means(before: dict, after: dict) -> dict:
    def mean(key):
        n = after[f"{key}_count"] - before[f"{key}_count"]
        return round((after[f"{key}_sum"] - before[f"{key}_sum"]) / n * 1000, 1) if n else None
    return {"engine_latency_mean_ms": mean("e2e"), "engine_ttft_mean_ms": mean("ttft")}


def cpu_seconds(engine_pid: int) -> dict[str, float]:
    """CPU seconds so far of this process (the gateway's threads) and of the engine's processes, the host's
    busy and total CPU seconds: per condition, where the work of a flood goes on a host everyone shares; and
    the gateway process's garbage collections (full ones, and seconds in all: the event loop stalls)."""
    import psutil

    from loadtest.hotswap.engines import process_cpu_s, tree_cpu_s
    from serving.heap import PAUSES

    engine = tree_cpu_s(engine_pid)
    host = psutil.cpu_times()
    pauses = PAUSES.snapshot()
    return {"gateway": process_cpu_s(psutil.Process()), "engine": engine,
            "host_busy": sum(host) - host.idle - getattr(host, "iowait", 0.0), "host_total": sum(host),
            "gc_full": pauses["count"][2], "gc_s": sum(pauses["seconds"])}


def cpu_cores(spent: dict, wall_s: float, client_cpu: dict) -> dict:
    """Mean cores used while the tenants sent: gateway, engine, load generator (its sending and reading, the
    flooder's backlog's answers after the arrivals included), and the host busy."""
    def cores(v):
        return round(v / wall_s, 2) if wall_s else None
    return {"gateway_cores": cores(spent.get("gateway", 0.0)), "engine_cores": cores(spent.get("engine", 0.0)),
            "clients_cores": cores(sum(client_cpu.values())),
            "host_busy_pct": (round(100 * spent["host_busy"] / spent["host_total"], 1)
                              if spent.get("host_total") else None),
            "gateway_gc_full": int(spent.get("gc_full", 0)), "gateway_gc_ms": round(1000 * spent.get("gc_s", 0.0))}


class GuardWatch:
    """While a slice's arrivals last: samples the slowdown guard (its measured slowdown and the heavy ceiling),
    and at their end calls `at_end` (what the host spent while every tenant was sending, not in the drain)."""

    def __init__(self, guard, seconds: float, every_s: float = 0.25, at_end=None):
        self.guard, self.seconds, self.every_s, self.at_end = guard, seconds, every_s, at_end
        self.seen: list[tuple[float, float]] = []
        self.ended = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self._stop.wait(min(self.every_s, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                break
            if self.guard.tolerance:
                self.seen.append((self.guard.slowdown, self.guard.ceiling))
        if self.at_end is not None:
            self.ended = self.at_end()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def guard_stats(seen: list[tuple[float, float]]) -> dict:
    """Median slowdown the guard measured and median heavy ceiling (slots; below 1: duty cycle) in a phase."""
    if not seen:
        return {"guard_slowdown_p50": None, "guard_ceiling_p50": None}
    return {"guard_slowdown_p50": round(percentile([s for s, _ in seen], 50), 2),
            "guard_ceiling_p50": round(percentile([c for _, c in seen], 50), 3)}
