"""Prometheus series of the gateway. Label values are bounded: tenants are registered names, models are kinds."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("loraplex_requests_total", "Inference requests by tenant, model kind and status.",
                   ["tenant", "kind", "status"])
LATENCY = Histogram("loraplex_request_seconds", "Inference latency (to the last byte).", ["tenant"],
                    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
ADAPTER_CACHE = Counter("loraplex_adapter_residency_total", "Engine residency lookups.", ["result"])
ADAPTER_LOAD_SECONDS = Histogram("loraplex_adapter_load_seconds", "Time to load an adapter into the engine.")
ADAPTER_EVICTIONS = Counter("loraplex_adapter_evictions_total", "Adapters unloaded from the engine (LRU).")
UPLOADS = Counter("loraplex_adapter_uploads_total", "Adapter uploads by result.", ["result"])
STALE_SERVED = Counter("loraplex_stale_registry_reads_total",
                       "Registry reads answered from the last good value while S3 was unavailable.", ["what"])
REJECTED = Counter("loraplex_rejected_total", "Requests refused by admission (429 quota, 503 overload).",
                   ["tenant", "status"])
