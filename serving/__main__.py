"""`python -m serving`: run the gateway with settings from the environment."""

from __future__ import annotations

import logging

import uvicorn

from serving.app import create_app
from serving.settings import ServingSettings


def main() -> None:
    settings = ServingSettings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(), host=settings.gateway_host, port=settings.gateway_port,
                log_level="warning", timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
