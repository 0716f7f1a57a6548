"""`python -m serving`: run the gateway with settings from the environment."""

from __future__ import annotations

import uvicorn

from serving import logs
from serving.app import create_app
from serving.settings import ServingSettings


def main() -> None:
    settings = ServingSettings()
    logs.configure()
    uvicorn.run(create_app(), host=settings.gateway_host, port=settings.gateway_port,
                log_level="warning", timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
