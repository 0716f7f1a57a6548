"""Fine-tuning jobs of every tenant (registry/jobs.py, which the tenants' /v1/fine_tuning API writes), and one
job with its events and its loss curve (the workers' `metrics` events)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from fastapi import APIRouter, Request

from common.errors import LoraplexError
from registry.jobs import JobStore
from serving.console.charts import line_chart
from serving.console.web import PREFIX, SessionDep, render
from serving.deps import GatewayDep

router = APIRouter(prefix=PREFIX, include_in_schema=False)  # pages, not API
PER_TENANT = 20  # the newest jobs of each tenant on the list
MAX_EVENTS = 2000  # events read for one job's page (a metrics event per logged step)


def when(seconds: int | None) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M") if seconds else ""


def all_jobs(gw) -> list:
    store = JobStore(gw.store, gw.settings)
    jobs = [j for t in gw.tenants.list() for j in store.list(t.name, limit=PER_TENANT)[0]]
    return sorted(jobs, key=lambda j: j.created_at, reverse=True)


def job_events(gw, tenant: str, job_id: str) -> tuple:
    store = JobStore(gw.store, gw.settings)
    job = store.get(tenant, job_id)
    events, after, more = [], None, True
    while more and len(events) < MAX_EVENTS:
        page, more = store.events(tenant, job_id, after=after, limit=100)
        if not page:
            break
        events.extend(page)
        after = page[-1]["id"]
    return job, events


@router.get("/jobs")
async def jobs(request: Request, session: SessionDep, gw: GatewayDep):
    return render(request, "jobs.html", session, jobs=await asyncio.to_thread(all_jobs, gw), when=when)


@router.get("/jobs/{tenant}/{job_id}")
async def job(tenant: str, job_id: str, request: Request, session: SessionDep, gw: GatewayDep):
    try:
        record, events = await asyncio.to_thread(job_events, gw, tenant, job_id)
    except LoraplexError as e:
        return render(request, "message.html", session, e.status, error=e.message)
    steps = sorted((e["data"]["step"], e["data"]["train_loss"]) for e in events
                   if e.get("type") == "metrics" and "train_loss" in e.get("data", {}))
    loss = line_chart([(float(s), v) for s, v in steps], "Training loss by step", "", x_label="step") if steps else None
    return render(request, "job.html", session, job=record, events=events[:200], loss=loss, when=when)
