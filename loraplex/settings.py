"""Settings of the embedded stack (`loraplex up`): where its state lives and which ports it uses."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAPLEX_", extra="ignore")

    var_dir: Path = Field(Path("var"), description="Data, logs, pids, models and var/stack.json.")
    gateway_port: int = Field(8000, description="Port of the gateway (the only public one).")
    s3_port: int = Field(8333, description="Port of the embedded S3 (another free one if taken).")
    engine_port: int = Field(8100, description="Port of the vLLM engine on loopback (another free one if taken).")
    s3_bucket: str = Field("loraplex", description="Bucket of the registry.")
    base_model: Path | None = Field(None, description="Served base model dir; default: the demo model, built if missing.")
    ready_timeout_s: float = Field(420.0, description="How long `up` waits for /ready.")

    @property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    @property
    def stack_file(self) -> Path:
        return self.var_dir / "stack.json"

    @property
    def secrets_file(self) -> Path:
        return self.var_dir / "secrets.json"
