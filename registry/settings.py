"""Settings of the registry: where the object store is, where the local cache lives, what is accepted.

The bottom of the settings: the gateway's ServingSettings extend this class (and the stack's StackSettings
extend those), so each LORAPLEX_* variable is declared once, by the lowest layer that reads it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3
MIB = 1024**2


def default_disk_cache_bytes() -> int:
    """A quarter of the free disk where the caches live (the working directory's file system), between
    256 MiB and 64 GiB: room for thousands of adapters without crowding out the rest of the host."""
    try:
        free = shutil.disk_usage(".").free
    except OSError:
        return 2 * GIB
    return max(256 * MIB, min(free // 4, 64 * GIB))


def default_engine_adapter_bytes() -> int:
    """1/32 of the host's physical memory: the engine's CPU-side adapter cache beside its weights and KV cache."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 32
    except (ValueError, OSError):
        return 512 * MIB


class RegistrySettings(BaseSettings):
    """Registry configuration, read from `LORAPLEX_*` environment variables.

    AWS credentials are not here: boto3 reads them from its default chain (`AWS_ACCESS_KEY_ID`,
    `AWS_SECRET_ACCESS_KEY`, profiles, ...), so they never sit in a settings dump.
    """

    model_config = SettingsConfigDict(env_prefix="LORAPLEX_", extra="ignore")

    s3_endpoint: str = Field("http://127.0.0.1:8333", description="S3 endpoint URL (SeaweedFS by default).")
    s3_bucket: str = Field("loraplex", min_length=3, description="The one bucket holding tenants and adapters.")
    s3_region: str = Field("us-east-1", description="Region sent with signed requests.")
    s3_connect_timeout_s: float = Field(2.0, gt=0, description="TCP connect timeout per attempt.")
    s3_read_timeout_s: float = Field(10.0, gt=0, description="Socket read timeout per attempt.")
    s3_max_attempts: int = Field(3, ge=1, description="Attempts per call, boto3 'standard' retry mode.")
    cache_dir: Path = Field(Path("var/cache/adapters"), description="Local directory of verified adapter files.")
    cache_max_bytes: int = Field(default_factory=default_disk_cache_bytes, gt=0, description="Bytes the local "
                                 "adapter cache (the disk tier) may hold (segmented LRU). Default: a quarter of the "
                                 "free disk at start, between 256 MiB and 64 GiB.")
    # The residency tiers' budgets together (engine, disk), read by the gateway; docs/residency.md.
    engine_adapter_max_bytes: int = Field(default_factory=default_engine_adapter_bytes, gt=0,
                                          description="Bytes of adapters the engine may hold registered (its "
                                          "CPU-side cache), besides the max_cpu_loras count: adapters of different "
                                          "ranks share it by their real size. Default: 1/32 of the host's memory.")
    pins_refresh_s: float = Field(30.0, gt=0, description="How often a gateway re-reads the operators' adapter "
                                  "pins from the registry (pins and alias moves through that gateway apply at once).")
    base_model: Path | None = Field(None, description="Local Hugging Face model directory the engine serves; "
                                    "enables base-dependent validation of uploads.")
    max_lora_rank: int = Field(16, ge=1, description="Largest LoRA rank accepted (the engine's --max-lora-rank).")
    max_upload_bytes: int = Field(256 * MIB, gt=0, description="Largest total size of one adapter version (the "
                                  "gateway refuses a larger upload before reading it all).")
    noop_probe: bool = Field(True, description="Run each upload on the served base with and without the adapter "
                             "and refuse it if the output barely moves (a silent no-op); needs base_model.")
    noop_probe_min_change: float = Field(1e-5, gt=0, description="Smallest relative change of the probe's logits "
                                         "(||adapted - base|| / ||base||) an adapter must cause; fp32 round-off is "
                                         "about 1e-7, a trained adapter 1e-2 and more.")
    noop_probe_max_base_bytes: int = Field(4 * GIB, gt=0, description="Skip the probe (with a warning) for a base "
                                           "whose fp32 weights exceed this, or half the host's available memory.")
    model_cache_dir: Path = Field(Path("var/cache/models"), description="Local directory of verified full/merged "
                                  "model artifacts fetched from the registry's models/.")
    model_cache_max_bytes: int = Field(20 * GIB, gt=0, description="Bytes the local model cache may hold (LRU).")
    max_model_upload_bytes: int = Field(16 * GIB, gt=0, description="Largest total size of one full/merged model "
                                        "version (the gateway holds one file at a time in memory).")
    # Per-tenant storage limits, checked when a new version is published (0: unlimited); docs/registry.md.
    max_adapters_per_tenant: int = Field(100, ge=0, description="Adapters (names with a version) one tenant may "
                                         "hold; its full/merged models are counted separately against the same "
                                         "limit. A new name over it is refused with 409. 0: unlimited.")
    max_versions_per_adapter: int = Field(50, ge=0, description="Versions one adapter (or model) may hold; a new "
                                          "version over it is refused with 409. 0: unlimited.")
    max_tenant_stored_bytes: int = Field(64 * GIB, ge=0, description="Bytes of all versions (adapters and models) "
                                         "one tenant may store; a new version that would pass it is refused with "
                                         "413. 0: unlimited.")
    # Fine-tuning jobs (docs/fine-tuning.md): read by the gateway (files, job creation) and the job workers.
    max_file_bytes: int = Field(64 * MIB, gt=0, description="Largest training or validation file a tenant may "
                                "upload to /v1/files (413 beyond it).")
    max_active_jobs_per_tenant: int = Field(2, ge=0, description="Fine-tuning jobs one tenant may have queued or "
                                            "running at once; another gets 429 naming the limit. 0: unlimited.")
    job_lease_s: float = Field(30.0, gt=0, description="How long a worker's claim on a job lasts unless renewed "
                               "(renewed every third of it); a job whose lease ran out is resumed by another "
                               "worker from its last checkpoint.")
    job_max_attempts: int = Field(3, ge=1, description="Workers a job may lose (lease expired) before it fails "
                                  "with an error instead of being resumed again.")
    job_learning_rate: float = Field(2e-4, gt=0, description="The learning rate a job's learning_rate_multiplier "
                                     "scales (LoRA's customary 2e-4; the tiny demo base learns at ~25x).")
    job_work_dir: Path = Field(Path("var/jobs"), description="A job worker's scratch directory (data, checkpoints "
                               "of the running job; deleted when the job ends).")
    job_poll_s: float = Field(2.0, gt=0, description="How often an idle job worker looks for a queued job.")
