"""The operators' plane: the admin API (/admin/*), /metrics, /health and /ready, and the console (/console), on its
own listener (LORAPLEX_ADMIN_HOST:LORAPLEX_ADMIN_PORT, loopback by default), never on the tenants' port."""

from __future__ import annotations

from fastapi import FastAPI

from serving import console
from serving.gateway import Gateway
from serving.http_app import new_app
from serving.routes import admin, metrics, ops


def create_operator_app(gateway: Gateway) -> FastAPI:
    """The operator app over `gateway`, which the tenants' app (serving/app.py) starts and stops: this one
    has no lifespan of its own."""
    app = new_app("loraplex operator API", (m.router for m in (ops, admin, metrics)))
    app.state.gateway = gateway
    console.mount(app)
    return app
