"""Liveness and readiness (a real generate and S3), served on both planes (tenants' and operators')."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from serving.deps import GatewayDep

router = APIRouter()


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
async def ready(gw: GatewayDep) -> Response:
    if gw.admission.closed:  # draining for shutdown: load balancers must stop sending traffic here
        return JSONResponse({"status": "draining", "detail": "the gateway is shutting down"}, status_code=503,
                            headers={"Retry-After": "5"})
    ok, detail = await gw.readiness()
    return JSONResponse({"status": "ready" if ok else "not_ready", **detail}, status_code=200 if ok else 503,
                        headers=None if ok else {"Retry-After": "5"})
