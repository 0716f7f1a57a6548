"""What one scale run does: adapter counts, popularity, load, request shape, the tiers' budgets."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


class ScaleError(RuntimeError):
    """The benchmark could not run (a stack part did not start, a request failed in set-up)."""


@dataclass(frozen=True)
class ScaleConfig:
    """Args of `loraplex bench scale` (defaults: the issue's workload at a size a 2-core host runs in minutes)."""

    adapters: tuple[int, ...] = (8, 100, 1000)  # adapter counts, one set of rows each (the smallest: the baseline)
    zipfs: tuple[float, ...] = (0.8, 1.2)  # Zipf exponents of adapter popularity
    per_tenant: int = 10  # adapters per tenant: 1,000 adapters = 100 tenants x 10
    ranks: tuple[int, ...] = (8, 16, 64)  # the adapters' ranks, in turn
    pool: int = 8  # distinct random weight sets per rank (adapters beyond reuse them under other names)
    duration_s: float = 20.0  # seconds of traffic per row
    load: float = 0.6  # the unsaturated rows' rate: this share of the smallest count's saturated throughput
    concurrency: int = 16  # requests kept in flight in the saturated rows (closed loop)
    prompt_tokens: int = 24
    max_tokens: int = 16  # answer length (exact: ignore_eos)
    prompts: int = 4  # distinct prompts (solo references are taken per adapter and prompt)
    solo_checks: int = 16  # answers per row compared with the same request sent alone
    cold_probes: int = 6  # never-used adapters timed cold (and warm) after each count's rows: the median of a few
    # (one probe is ~25 ms on an idle stack; three gave medians 2-3 ms apart between runs)
    max_loras: int = 0  # the engine's batch slots; 0: the admission window (every admitted request's adapter
    # fits in one batch: with fewer slots than distinct adapters in flight, vLLM batches only `max_loras` of them)
    max_cpu_loras: int = 1024  # the engine tier's count bound (the engine's --max-cpu-loras): host memory holds a
    # thousand small adapters, as in S-LoRA's runs; its byte budget (1/32 of the host's memory) bounds it too
    warm_uploads: bool = True  # the main set is uploaded with `warm: true` (loaded into the engine tier as far as
    # its budgets go), as a platform deploys its adapters; the cold-start probes never are
    heavy_limits: bool = False  # fair admission's limits on heavy tenants (share cap, slowdown guard): off here, so
    # that the saturated rows measure the engine and its tiers, not pacing (the fairness benchmark measures that);
    # VTC order stays on
    warmup_s: float = 10.0  # unmeasured traffic before each count's rows (one request per adapter, then this long
    # at Zipf): they measure the steady state, every name resolved once, not the first minutes after a deploy (the
    # cold-start columns measure a first request's work one by one)
    pair_rounds: int = 6  # after the rows, saturated rounds of the smallest and the largest count in turn (ABBA):
    # the throughput target is their ratio's median; single rows minutes apart carry the host's drift (0.71-0.88x),
    # and rounds of one run spread 0.69-0.94x at Zipf 1.2 (which tail adapters a 10 s round draws): six rounds
    pair_s: float = 10.0  # seconds of each count in a round
    disk_adapters: int = 400  # the disk tier's budget, in adapters of the largest rank
    max_inflight: int = 16  # gateway admission window
    dtype: str = "float32"  # the engine's: answers compare with the same request alone with no bf16 rounding noise
    tie_tolerance: float = 5e-3  # a differing answer whose first differing token had a top-2 logprob gap below
    # this (in the answer alone) diverged at a near-tie, not by a wrong adapter (family tests use the same bound)

    @property
    def batch_slots(self) -> int:
        return self.max_loras or max(self.max_inflight, self.concurrency)

    def __post_init__(self):
        if not self.adapters or min(self.adapters) < 1:
            raise ValueError("--adapters needs positive counts, e.g. 8,100,1000")
        if not self.ranks or min(self.ranks) < 1:
            raise ValueError("--ranks needs positive ranks, e.g. 8,16,64")
        if any(z < 0 for z in self.zipfs):
            raise ValueError("--zipf exponents are >= 0 (0: uniform)")
        if not 0 < self.load <= 1:
            raise ValueError("--load is a share of capacity in (0, 1], e.g. 0.6")
