"""A tenant's fine-tuning jobs, in OpenAI's shapes. The gateway only writes and reads job records in the
registry; workers (training/jobs/, `loraplex worker`) claim and train them."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from common.errors import InvalidRequest
from common.names import check_name
from registry.files import FileStore, InvalidFile, check_jsonl
from registry.job_spec import (
    FAILED,
    QUEUED,
    JobRecord,
    method_hyperparameters,
    new_id,
    resolve_hyperparameters,
    resolve_lora,
)
from registry.jobs import JOB_PREFIX, JobStore
from serving.deps import GatewayDep, TenantDep

router = APIRouter(prefix="/v1/fine_tuning/jobs")
MAX_SUFFIX = 40
Limit = Annotated[int, Query(ge=1, le=100)]


class JobCreate(BaseModel):
    """POST /v1/fine_tuning/jobs: OpenAI's body, plus loraplex's `lora` ({r, alpha, target_modules})."""

    model_config = ConfigDict(extra="forbid")

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    method: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] | None = Field(None, description="Deprecated: use method.supervised.")
    integrations: list | None = None
    lora: dict[str, Any] | None = Field(None, description="loraplex: the adapter's r, alpha, target_modules.")


def _stores(gw) -> tuple[JobStore, FileStore]:
    return JobStore(gw.store, gw.settings), FileStore(gw.store, gw.settings)


def _new_job(body: JobCreate, tenant: str, gw, files: FileStore) -> JobRecord:
    if body.model != gw.settings.base_name:
        raise InvalidRequest(f"model {body.model[:80]!r} cannot be fine-tuned here: use the served base, "
                             f"{gw.settings.base_name!r}", param="model")
    training = files.get(tenant, body.training_file)  # 404 for another tenant's file
    if body.validation_file:
        files.get(tenant, body.validation_file)
    if body.suffix is not None:
        check_name(body.suffix, "suffix")
        if len(body.suffix) > MAX_SUFFIX:
            raise InvalidRequest(f"suffix must be at most {MAX_SUFFIX} characters", param="suffix")
    if body.integrations:
        raise InvalidRequest("integrations are not supported: leave them out", param="integrations")
    asked = method_hyperparameters(body.method, body.hyperparameters)
    hyperparameters = resolve_hyperparameters(asked, training.examples)
    return JobRecord(
        id=new_id(JOB_PREFIX), tenant=tenant, model=body.model, created_at=int(time.time()),
        training_file=body.training_file, validation_file=body.validation_file, suffix=body.suffix,
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31), organization_id=tenant,
        metadata=body.metadata, hyperparameters=hyperparameters,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        lora=resolve_lora(body.lora, gw.settings.max_lora_rank))


def _create(body: JobCreate, tenant: str, gw) -> JobRecord:
    jobs, files = _stores(gw)
    job = jobs.create(_new_job(body, tenant, gw, files))
    jobs.add_event(job, f"Validating training file: {job.training_file}"
                   + (f" and validation file: {job.validation_file}" if job.validation_file else ""))
    try:  # checked at upload already; again here, so a job never trains on a file that changed rules since
        for file_id in filter(None, (job.training_file, job.validation_file)):
            check_jsonl(files.content(tenant, file_id))
    except InvalidFile as e:
        error = {"code": e.code, "message": e.message, "param": "training_file"}
        failed = jobs.update(tenant, job.id, lambda j: j.model_copy(update={
            "status": FAILED, "finished_at": int(time.time()), "error": error}))
        jobs.add_event(failed, f"File validation failed: {error['message']}", level="error")
        return failed
    queued = jobs.update(tenant, job.id, lambda j: j.model_copy(update={"status": QUEUED}))
    jobs.add_event(queued, "Files validated, moving job to queued state")
    return queued


@router.post("")
async def create_job(body: JobCreate, tenant: TenantDep, gw: GatewayDep) -> dict:
    return (await asyncio.to_thread(_create, body, tenant.name, gw)).public()


@router.get("")
async def list_jobs(tenant: TenantDep, gw: GatewayDep, after: str | None = None, limit: Limit = 20) -> dict:
    jobs, more = await asyncio.to_thread(_stores(gw)[0].list, tenant.name, after, limit)
    return {"object": "list", "data": [j.public() for j in jobs], "has_more": more}


@router.get("/{job_id}")
async def get_job(job_id: str, tenant: TenantDep, gw: GatewayDep) -> dict:
    return (await asyncio.to_thread(_stores(gw)[0].get, tenant.name, job_id)).public()


@router.post("/{job_id}/cancel")
async def cancel_job(job_id: str, tenant: TenantDep, gw: GatewayDep) -> dict:
    return (await asyncio.to_thread(_stores(gw)[0].cancel, tenant.name, job_id)).public()


@router.get("/{job_id}/events")
async def job_events(job_id: str, tenant: TenantDep, gw: GatewayDep, after: str | None = None,
                     limit: Limit = 20) -> dict:
    events, more = await asyncio.to_thread(_stores(gw)[0].events, tenant.name, job_id, after, limit)
    return {"object": "list", "data": events, "has_more": more}


@router.get("/{job_id}/checkpoints")
async def job_checkpoints(job_id: str, tenant: TenantDep, gw: GatewayDep, after: str | None = None,
                          limit: Limit = 10) -> dict:
    found, more = await asyncio.to_thread(_stores(gw)[0].checkpoints, tenant.name, job_id, after, limit)
    return {"object": "list", "data": found, "has_more": more,
            "first_id": found[0]["id"] if found else None, "last_id": found[-1]["id"] if found else None}
