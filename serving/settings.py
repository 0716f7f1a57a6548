"""Settings of the gateway and of the engine it drives (environment variables prefixed LORAPLEX_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from serving.engine_settings import EngineSettings

MAX_STREAM_INTERVAL = 64  # tokens per streamed chunk (vLLM's stream_interval); also the request field's bound


class ServingSettings(EngineSettings):
    """The gateway's settings: the registry's (S3, caches, base model, upload limits; the gateway runs the
    registry in its own process), the engine's (serving/engine_settings.py) and the gateway's own, declared here."""

    gateway_host: str = Field("127.0.0.1", description="Address the gateway binds to.")
    gateway_port: int = Field(8000, description="Port of the tenants' API (OpenAI API, adapters, files, "
                              "/health, /ready; nothing of the operators').")
    admin_host: str = Field("127.0.0.1", description="Address of the operator plane (admin API, /metrics): "
                            "loopback unless operators reach it from elsewhere.")
    admin_port: int = Field(8001, ge=0, description="Port of the operator plane, never the tenants' port. "
                            "0: a free port, logged at start-up.")
    metrics_auth: Literal["key", "loopback"] = Field(
        "key", description="Who may read /metrics on the operator plane. key: the admin key as bearer; "
                           "loopback: also a caller on 127.0.0.1/::1 without a key (a scraper on the same "
                           "host); others still need the key.")
    admin_key: SecretStr | None = Field(None, description="Key that manages tenants; admin routes refuse all if unset.")
    engine_url: str = Field("http://127.0.0.1:8100", description="The vLLM server, on loopback only.")
    base_name: str = Field("base", description="Model id under which tenants reach the base model.")
    engine_managed: bool = Field(False, description="The gateway starts the engine and restarts it if it dies.")
    engine_log: Path | None = Field(None, description="Log file of a managed engine.")
    engine_pid_file: Path | None = Field(None, description="Where a managed engine's pid is written (for `down`).")
    engine_connect_timeout_s: float = Field(2.0, description="Connect timeout to the engine.")
    engine_timeout_s: float = Field(120.0, description="Timeout of one engine call (also between stream chunks).")
    engine_load_timeout_s: float = Field(60.0, description="Timeout of one adapter load into the engine.")
    ready_cache_s: float = Field(2.0, description="How long a /ready verdict is reused.")
    auth_cache_s: float = Field(5.0, ge=0, description="How long the gateway reuses an authenticated API key "
                                "before renewing it in the background (a key revoked through another replica "
                                "is refused within this plus one round trip).")
    resolve_cache_s: float = Field(2.0, ge=0, description="How long the gateway reuses a resolved model name "
                                   "(alias -> version) before asking the registry again; uploads and alias moves "
                                   "through this gateway take effect at once, through another replica within "
                                   "this time. 0: every request asks the registry.")
    stream_interval: int = Field(
        1, ge=1, le=MAX_STREAM_INTERVAL,
        description="Tokens per streamed chunk from the engine (vLLM's stream_interval; the first and last chunks "
                    "are sent at once). 1: a chunk per token; more: fewer, larger chunks and less CPU per stream in "
                    "the engine, the gateway and the client. A client may ask for more on a request, never fewer.")
    max_request_bytes: int = Field(1024 * 1024, gt=0, description="Largest body of one inference request; "
                                   "larger ones get 413 (counted while reading, chunked bodies included).")
    max_inflight: int = Field(32, description="Requests forwarded to the engine at once; the rest wait, fairly.")
    max_queue: int = Field(512, description="Requests allowed to wait; beyond it 503 with Retry-After.")
    fair_admission: bool = Field(True, description="Order waiting requests by tokens served per tenant (VTC); "
                                 "false: first come, first served.")
    fair_active_window_s: float = Field(5.0, description="Fair admission: a tenant counts as active this long after "
                                        "its last request; while a tenant overloads the engine, each active "
                                        "tenant keeps a free in-flight slot in reserve.")
    fair_share_cap: float = Field(1.0, ge=0, description="Fair admission: a tenant that overloads the engine (asking "
                                  "for at least twice the others' mean, and for more than the engine's measured "
                                  "capacity leaves after the others' demand) holds at most this multiple of its "
                                  "equal share of the in-flight window (1.0: max_inflight / active tenants; 0: no "
                                  "cap). Below capacity no tenant is capped: admission is work-conserving.")
    fair_slowdown_tolerance: float = Field(1.15, ge=0, description="Fair admission: while a tenant overloads the "
                                           "engine and its time per output token is above this multiple of its "
                                           "light-load value, that tenant's slots are halved (and regrown one by "
                                           "one once it is not), so that one tenant's flood does not slow the "
                                           "others' requests on an engine whose step time grows with its batch. "
                                           "0: off.")
    dedicated_engines: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description='Separate-model mode: tenant -> {"model": NAME, "url": ENGINE_URL}. That tenant\'s requests for '
                    'NAME go to its own engine (serving a merged or fully fine-tuned model) instead of an adapter on '
                    'the shared base. JSON in LORAPLEX_DEDICATED_ENGINES.')
    drain_timeout_s: float = Field(10.0, description="On SIGTERM: how long admitted requests may take to finish "
                                   "(new ones get 503) before the gateway exits anyway. Keep it below the "
                                   "stopper's kill timeout (`loraplex down`: 20 s).")
    gc_freeze: bool = Field(True, description="After start-up, exempt the objects alive then (modules, routes, "
                            "clients) from Python's garbage collector (gc.freeze, as vLLM's engine does): a full "
                            "collection then walks only what requests made, a shorter stall of the event loop.")
    metrics_adapters_per_tenant: int = Field(20, description="Adapter names per tenant that get their own "
                                             "metrics label; further names share the label 'other'.")
    metrics_tenants: int = Field(20, ge=1, description="Tenants that get metrics series of their own: the busiest "
                                 "by requests in the last window; the others share the tenant label '_other'.")
    metrics_tenant_window_s: float = Field(300.0, gt=0, description="How often the busiest tenants are chosen "
                                           "again (a tenant no longer among them loses its series).")

    @field_validator("fair_slowdown_tolerance")
    @classmethod
    def _tolerance(cls, v: float) -> float:
        if 0 < v < 1:
            raise ValueError("a slowdown tolerance is a multiple of the light-load speed: 0 (off) or at least 1, "
                             "e.g. 1.15 for 15% slower")
        return v
