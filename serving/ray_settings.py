"""Settings of the Ray Serve mode (environment variables prefixed LORAPLEX_RAY_).

The gateway and engine settings stay in ServingSettings / RegistrySettings (LORAPLEX_*); these only
say how the Ray application is laid out: how many engine replicas, how many adapters each holds,
how requests are routed to them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Passed to every replica through Ray's runtime_env, so replicas on other nodes see the same config.
FORWARDED_ENV_PREFIXES = ("LORAPLEX_", "AWS_", "VLLM_")


class RaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAPLEX_RAY_", extra="ignore")

    address: str | None = Field(None, description="Ray cluster to deploy to (e.g. ray://head:10001 or auto); "
                                                   "unset: start a local single-node cluster.")
    app_name: str = Field("loraplex", description="Name of the Serve application.")
    num_cpus: int | None = Field(None, description="Logical CPUs of a local cluster (default: Ray's count).")
    engine_replicas: int = Field(2, ge=1, description="Engine replicas; each owns one vLLM engine.")
    engine_replica_cpus: float = Field(1.0, ge=0, description="Ray CPUs per engine replica; Ray also sets the "
                                                              "replica's OMP_NUM_THREADS to it, which the engine's "
                                                              "CPU threads follow.")
    engine_replica_gpus: float = Field(0.0, ge=0, description="Ray GPUs per engine replica (1 on CUDA nodes).")
    adapters_per_replica: int | None = Field(None, ge=1, description="Adapters a replica keeps loaded (its "
                                             "multiplexing LRU); default and maximum: LORAPLEX_MAX_CPU_LORAS.")
    routing: Literal["affinity", "random"] = Field(
        "affinity", description="affinity: the adapter is the request's multiplexed model id, so Ray routes it "
                                "to a replica that holds it; random: no model id, any replica (loads on demand).")
    replica_max_ongoing: int = Field(64, ge=1, description="Requests one engine replica takes at once (vLLM "
                                                            "batches them); more wait in Ray's router.")
    ingress_replicas: int = Field(1, ge=1, description="Gateway (ingress) replicas.")
    ingress_max_ongoing: int = Field(512, ge=1, description="Requests one ingress replica takes at once.")
    engine_start_timeout_s: float = Field(600.0, description="How long a replica waits for its engine to answer.")
    health_check_period_s: float = Field(2.0, description="How often Ray checks each engine replica.")
    health_check_timeout_s: float = Field(10.0, description="A health check slower than this fails.")
    unload_drain_timeout_s: float = Field(30.0, description="On eviction, how long to wait for the evicted "
                                                            "adapter's running requests before unloading it.")
    retry_window_s: float = Field(20.0, description="How long the gateway retries a request whose replica's "
                                                    "engine is down before any work started (until Ray "
                                                    "replaces that replica); in-flight requests are not retried.")
    routing_headers: bool = Field(False, description="Add x-loraplex-replica/-resident/-loads headers to inference "
                                                     "responses (benchmarks, tests, debugging).")
    log_dir: Path = Field(Path("var/log"), description="Where each replica writes its engine's log.")
    http_host: str = Field("127.0.0.1", description="Address Ray Serve's HTTP proxy binds to.")

    def capacity(self, max_cpu_loras: int) -> int:
        """Adapters per replica: never more than the engine keeps registered (--max-cpu-loras), so an adapter
        Ray counts as resident is always one the engine holds."""
        if self.adapters_per_replica is None:
            return max_cpu_loras
        if self.adapters_per_replica > max_cpu_loras:
            raise ValueError(f"LORAPLEX_RAY_ADAPTERS_PER_REPLICA={self.adapters_per_replica} exceeds "
                             f"LORAPLEX_MAX_CPU_LORAS={max_cpu_loras}: lower it, or raise the engine's "
                             "--max-cpu-loras (LORAPLEX_MAX_CPU_LORAS)")
        return self.adapters_per_replica
