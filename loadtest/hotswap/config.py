"""What a hot-swap benchmark run does (its settings), the keys its rows promise, and its error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIB = 2**20
CONTRACT_KEYS = ("mode", "tenants", "fits", "req_per_s", "tok_per_s", "ttft_p50_ms", "ttft_p99_ms", "latency_p99_ms",
                 "engine_rss_mb", "cold_start_s", "storage_mb_per_tenant")



class BenchError(RuntimeError):
    """The benchmark could not run; the message says what failed and where its log is."""


@dataclass(frozen=True)
class Settings:
    """What one benchmark run does.

    Args:
        tenants: values of N, ascending.
        modes: which of hotswap, separate, reload to run.
        duration_s: seconds of Poisson arrivals per row (then up to `drain_s` for open requests).
        rate: offered requests/s over all tenants; None = `load` x the hotswap capacity at the smallest N.
        load: the fraction of hotswap capacity offered when `rate` is None.
        zipf: Zipf exponent of tenant popularity (0 = uniform).
        prompt_tokens, max_tokens: request shape (answers are exactly max_tokens long: ignore_eos).
        rank: LoRA rank of the tenants' adapters (random weights; alpha = 2 x rank, all linear layers).
        model: "demo" (the tiny trained demo base) or "bench" (a random 13M-parameter Llama).
        memory_fraction: share of the host's available memory the separate engines may use.
        kv_cache_gb: VLLM_CPU_KVCACHE_SPACE of every engine (the same for all modes).
        capacity: also measure each row's saturated throughput (a burst of `burst` requests).
        max_inflight: the gateway's admission limit (the same for all modes).
    """

    tenants: tuple[int, ...] = (2, 4, 8)
    modes: tuple[str, ...] = ("hotswap", "separate", "reload")
    duration_s: float = 30.0
    rate: float | None = None
    load: float = 0.6
    zipf: float = 1.0
    prompt_tokens: int = 32
    max_tokens: int = 32
    rank: int = 16
    model: str = "demo"
    memory_fraction: float = 0.7
    kv_cache_gb: int = 1
    capacity: bool = True
    burst: int = 96
    drain_s: float = 60.0
    max_inflight: int = 64
    engine_timeout_s: float = 900.0

    def __post_init__(self):
        bad = set(self.modes) - {"hotswap", "separate", "reload"}
        if bad:
            raise ValueError(f"unknown mode(s) {sorted(bad)}: use hotswap, separate, reload")
        if not self.tenants or min(self.tenants) < 1:
            raise ValueError("--tenants needs positive numbers, e.g. 2,4,8")
        if self.model not in ("demo", "bench"):
            raise ValueError(f"--model {self.model!r}: use demo or bench")
        if self.rate is None and "hotswap" not in self.modes:
            raise ValueError("without the hotswap mode there is nothing to calibrate the rate on: give --rate")
        if self.prompt_tokens + self.max_tokens > 250:
            raise ValueError("prompt_tokens + max_tokens must stay under the engines' 256-token context")
