"""Prometheus series of the gateway, per tenant and per adapter, with bounded label sets (serving/metric_labels.py:
the busiest tenants by name, the rest together; a bounded number of adapter names per tenant)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from serving.metric_labels import BASE, OTHER, OTHER_TENANTS, Labels

__all__ = ["BASE", "LABELS", "OTHER", "OTHER_TENANTS"]

LABELS = Labels()

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
# admission waits: fine at the low end (a free slot is granted at once), up to a flooded queue's minute
_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)

REQUESTS = Counter("loraplex_requests_total",
                   "Inference requests admitted to the engine, by tenant, adapter and outcome "
                   "(ok, error, disconnected, or the engine's HTTP status).", ["tenant", "adapter", "status"])
PROMPT_TOKENS = Counter("loraplex_prompt_tokens_total", "Prompt tokens, from the engine's usage.",
                        ["tenant", "adapter"])
COMPLETION_TOKENS = Counter("loraplex_completion_tokens_total", "Generated tokens, from the engine's usage.",
                            ["tenant", "adapter"])
LATENCY = Histogram("loraplex_request_seconds", "Inference latency from arrival to the last byte (queueing included).",
                    ["tenant", "adapter"], buckets=_LATENCY_BUCKETS)
TTFT = Histogram("loraplex_time_to_first_token_seconds",
                 "Streaming requests: arrival to the first generated text relayed "
                 "(queueing and adapter load included).",
                 ["tenant", "adapter"], buckets=_TTFT_BUCKETS)
ADAPTER_CACHE = Counter("loraplex_adapter_residency_total",
                        "Engine residency lookups: hit (already loaded) or miss (this request loads it).",
                        ["result", "tenant", "adapter"])
ADAPTER_LOADS = Counter("loraplex_adapter_loads_total", "Adapter loads into the engine, by result (ok, error).",
                        ["tenant", "adapter", "result"])
ADAPTER_LOAD_SECONDS = Histogram("loraplex_adapter_load_seconds",
                                 "Time to load an adapter into the engine (local cache to engine registration).",
                                 ["tenant", "adapter"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
ADAPTER_EVICTIONS = Counter("loraplex_adapter_evictions_total",
                            "Adapters unloaded from the engine to make room (least recently used first).",
                            ["tenant", "adapter"])
RESIDENT = Gauge("loraplex_resident_adapters", "Adapters registered in the engine by this gateway.")
UPLOADS = Counter("loraplex_adapter_uploads_total", "Adapter uploads by result.", ["result"])
STALE_SERVED = Counter("loraplex_stale_registry_reads_total",
                       "Registry reads answered from the last good value while S3 was unavailable.", ["what"])
REJECTED = Counter("loraplex_rejected_total",
                   "Requests refused before the engine: 429 quota, 503 overload (queue full) or draining (shutdown), "
                   "or 499 disconnected (the client left while queued).",
                   ["tenant", "adapter", "status", "reason"])
INFLIGHT = Gauge("loraplex_inflight_requests", "Requests forwarded to the engine now.")
QUEUED = Gauge("loraplex_queued_requests", "Requests waiting for admission now.")
ADMISSION_WAIT = Histogram("loraplex_admission_wait_seconds",
                           "Time a request waited for an engine slot, from asking admission to being granted one "
                           "(0 when one was free; refused and abandoned requests are not counted).",
                           ["tenant", "adapter"], buckets=_WAIT_BUCKETS)
ENGINE_SLOWDOWN = Gauge("loraplex_engine_slowdown",
                        "Engine seconds per output token now, as a multiple of its light-load value (fair admission).")
HEAVY_CEILING = Gauge("loraplex_fair_heavy_ceiling",
                      "Slots a tenant sending far more than the others may hold now (fair admission's slowdown guard).")
FAIR_CAPACITY = Gauge("loraplex_fair_capacity_tokens_per_second",
                      "The engine's capacity as fair admission measures it (tokens/s with the window full; 0 until "
                      "measured): a tenant is held back only when all tenants together ask for more.")
FAIR_HELD = Counter("loraplex_fair_held_total",
                    "Requests that found a free engine slot but waited: fair admission held their tenant back as "
                    "overloading (share cap, pacing or the slots kept for other tenants).", ["tenant"])
DRAINING = Gauge("loraplex_draining", "1 while the gateway drains before exiting (SIGTERM), else 0.")
AUDIT_WRITE_FAILURES = Counter("loraplex_audit_write_failures_total",
                               "Audit events the registry did not store (the write they describe stands; the event "
                               "is in the gateway's error log instead), by action.", ["action"])
TIER_ADAPTERS = Gauge("loraplex_tier_adapters",
                      "Adapters held per residency tier: engine_active (with requests in the engine now: in its batch "
                      "slots), engine (registered in the engine's CPU-side cache), disk (the local verified cache), "
                      "pinned (pinned by an operator).", ["tier"])
TIER_BYTES = Gauge("loraplex_tier_bytes", "Adapter bytes held per residency tier (see loraplex_tier_adapters).",
                   ["tier"])
TIER_BUDGET_BYTES = Gauge("loraplex_tier_budget_bytes", "Byte budget of each residency tier.", ["tier"])
COLD_START = Histogram("loraplex_cold_start_seconds",
                       "Stages of an adapter's cold start: resolve (a name new to this gateway read from the "
                       "registry), download (S3 to disk, hashed as it streams), verify (the digest check left "
                       "after the last byte), engine_load (registration in the engine), first_token (request "
                       "arrival to the first streamed token of a request that waited for a load).", ["stage"],
                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))

# every series labelled by tenant: a tenant no longer among the busiest loses its series here
_PER_TENANT = (REQUESTS, PROMPT_TOKENS, COMPLETION_TOKENS, LATENCY, TTFT, ADAPTER_CACHE, ADAPTER_LOADS,
               ADAPTER_LOAD_SECONDS, ADAPTER_EVICTIONS, REJECTED, ADMISSION_WAIT)


def _drop_series(tenants: set[str]) -> None:
    """Remove the series of `tenants` (and any left by a request that was labelled just before they were)."""
    named = LABELS.named()
    for metric in _PER_TENANT:
        names = metric._labelnames  # prometheus_client keeps no public accessor for them
        values = {tuple(s.labels[n] for n in names) for family in metric.collect() for s in family.samples}
        for labels in values:
            tenant = labels[names.index("tenant")]
            if tenant in tenants or (tenant not in named and tenant != OTHER_TENANTS):
                metric.remove(*labels)


LABELS.on_drop = _drop_series
