"""Prometheus metrics, on the operator plane only: the series name every tenant and adapter with traffic."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.deps import require_metrics_reader

router = APIRouter(dependencies=[Depends(require_metrics_reader)])


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
