"""A small in-gateway time series of the gateway's own metrics, for the console's charts.

Every `every_s` seconds a daemon thread reads the Prometheus counters and histograms of serving/metrics.py
(summed over tenants and adapters) and keeps the last `keep` readings. The charts are differences of
neighbouring readings, so no Prometheus server is needed for the embedded stack. The metrics are
process-wide: gateways sharing a process (tests, benchmarks) share these series.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from serving import metrics

OK_OUTCOMES = frozenset({"ok", "disconnected"})  # a client that left is not the gateway's error


@dataclass(frozen=True)
class Reading:
    """Cumulative totals at one moment."""

    at: float
    requests: float = 0.0
    errors: float = 0.0
    refused: float = 0.0
    tokens: float = 0.0
    ttft: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count (+inf included)


def _samples(metric, suffix: str):
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith(suffix):
                yield s


def read_metrics(at: float | None = None) -> Reading:
    """The totals of the gateway's metrics now."""
    requests = errors = 0.0
    for s in _samples(metrics.REQUESTS, "_total"):
        requests += s.value
        if s.labels.get("status") not in OK_OUTCOMES:
            errors += s.value
    ttft: dict[float, float] = {}
    for s in _samples(metrics.TTFT, "_bucket"):
        le = float(s.labels["le"])
        ttft[le] = ttft.get(le, 0.0) + s.value
    return Reading(at=time.time() if at is None else at, requests=requests, errors=errors,
                   refused=sum(s.value for s in _samples(metrics.REJECTED, "_total")),
                   tokens=sum(s.value for s in _samples(metrics.COMPLETION_TOKENS, "_total")), ttft=ttft)


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float | None:
    """The q-quantile of the observations between two readings of a histogram, interpolated within its bucket
    as Prometheus' histogram_quantile does; None if nothing was observed."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank, lower, below = q * counts[-1], 0.0, 0.0
    for bound, cum in zip(bounds, counts):
        if cum >= rank:
            if bound == float("inf"):
                return lower  # beyond the largest bucket: its bound is all that is known
            return lower + (bound - lower) * ((rank - below) / (cum - below) if cum > below else 1.0)
        lower, below = bound, cum
    return lower


class MetricsSampler:
    """Readings every `every_s` seconds, the last `keep` of them (15 minutes by default)."""

    def __init__(self, every_s: float = 5.0, keep: int = 180, quantile_window_s: float = 30.0):
        self.every_s, self.quantile_window_s = every_s, quantile_window_s
        self.readings: deque[Reading] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sampling in a daemon thread (once per sampler)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="console-sampler", daemon=True)
                self._thread.start()

    def sample(self, at: float | None = None) -> Reading:
        reading = read_metrics(at)
        with self._lock:
            self.readings.append(reading)
        return reading

    def series(self) -> dict[str, list[tuple[float, float | None]]]:
        """Per interval between readings: requests/s, tokens/s, errors/s, refused/s, and TTFT p50/p99 in ms
        over the last `quantile_window_s` (None where no stream started)."""
        with self._lock:
            rs = list(self.readings)
        out: dict[str, list] = {k: [] for k in ("requests", "tokens", "errors", "refused", "ttft_p50", "ttft_p99")}
        back = max(1, round(self.quantile_window_s / self.every_s))
        for i in range(1, len(rs)):
            a, b = rs[i - 1], rs[i]
            dt = max(b.at - a.at, 1e-9)
            for key in ("requests", "tokens", "errors", "refused"):
                out[key].append((b.at, (getattr(b, key) - getattr(a, key)) / dt))
            w = rs[max(0, i - back)]
            for key, q in (("ttft_p50", 0.5), ("ttft_p99", 0.99)):
                v = quantile(q, w.ttft, b.ttft)
                out[key].append((b.at, None if v is None else v * 1000))
        return out

    def _run(self) -> None:
        while True:
            self.sample()
            time.sleep(self.every_s)


SAMPLER = MetricsSampler()  # one per process, as the metrics it reads


def tenant_totals() -> dict[str, dict[str, float]]:
    """Per tenant since the gateway started: requests, errors and generated tokens (the counters' totals)."""
    out: dict[str, dict[str, float]] = {}
    for s in _samples(metrics.REQUESTS, "_total"):
        row = out.setdefault(s.labels["tenant"], {"requests": 0.0, "errors": 0.0, "tokens": 0.0})
        row["requests"] += s.value
        if s.labels.get("status") not in OK_OUTCOMES:
            row["errors"] += s.value
    for s in _samples(metrics.COMPLETION_TOKENS, "_total"):
        out.setdefault(s.labels["tenant"], {"requests": 0.0, "errors": 0.0, "tokens": 0.0})["tokens"] += s.value
    return out
