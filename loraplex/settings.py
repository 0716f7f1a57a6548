"""Settings of the embedded stack (`loraplex up`): where its state lives and which ports it uses."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.settings import ServingSettings


class StackSettings(ServingSettings):
    """The settings of the gateway the stack starts (its port, the bucket, the base model, ...: the stack reads
    the same variables the gateway does) plus the stack's own, declared here.

    Without LORAPLEX_BASE_MODEL the stack serves the demo model, built if missing (`stack.base_model_dir`).
    """

    var_dir: Path = Field(Path("var"), description="Data, logs, pids, models and var/stack.json.")
    s3_port: int = Field(8333, description="Port of the embedded S3 (another free one if taken).")
    engine_port: int = Field(8100, description="Port of the vLLM engine on loopback (another free one if taken).")
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


class ClientSettings(BaseSettings):
    """Where the CLI's API calls go when var/stack.json does not say (a remote gateway, a tenant's own key)."""

    model_config = SettingsConfigDict(env_prefix="LORAPLEX_", extra="ignore")

    gateway_url: str | None = Field(None, description="The gateway the CLI calls (default: var/stack.json's).")
    admin_url: str | None = Field(None, description="The gateway's operator plane, where the CLI's admin commands "
                                  "go (default: var/stack.json's).")
    api_key: SecretStr | None = Field(None, description="The tenant key the CLI calls with.")

