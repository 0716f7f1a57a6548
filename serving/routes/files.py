"""A tenant's fine-tuning files, in OpenAI's shapes: upload (checked JSONL), list, retrieve, content, delete."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from starlette.datastructures import UploadFile

from common.errors import InvalidRequest
from registry.files import FileStore
from serving.deps import GatewayDep, TenantDep
from serving.upload_form import read_form

router = APIRouter(prefix="/v1/files")
FILE_LIMIT = ("LORAPLEX_MAX_FILE_BYTES", "split the file or sample fewer examples")


def file_store(gw) -> FileStore:
    """The tenant files of the gateway's bucket (a view over its store: nothing to keep)."""
    return FileStore(gw.store, gw.settings)


@router.post("")
async def upload_file(request: Request, tenant: TenantDep, gw: GatewayDep) -> dict:
    """multipart `file` (JSONL) and `purpose=fine-tune`; every line is checked before it is stored."""
    form = await read_form(request, gw.settings.max_file_bytes, *FILE_LIMIT, expected="a 'file' and purpose=fine-tune",
                           max_files=1, max_fields=4)
    try:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("send the JSONL as the multipart field 'file' (and purpose=fine-tune)", param="file")
        if not isinstance(purpose, str):
            raise InvalidRequest("the form field 'purpose' is missing: send purpose=fine-tune", param="purpose")
        data, filename = await upload.read(), upload.filename or "upload.jsonl"
    finally:
        await form.close()
    record = await asyncio.to_thread(file_store(gw).upload, tenant.name, filename, purpose, data)
    return record.public()


@router.get("")
async def list_files(tenant: TenantDep, gw: GatewayDep, purpose: str | None = None) -> dict:
    records = await asyncio.to_thread(file_store(gw).list, tenant.name)
    return {"object": "list", "data": [r.public() for r in records if purpose in (None, r.purpose)],
            "has_more": False}


@router.get("/{file_id}")
async def get_file(file_id: str, tenant: TenantDep, gw: GatewayDep) -> dict:
    return (await asyncio.to_thread(file_store(gw).get, tenant.name, file_id)).public()


@router.get("/{file_id}/content")
async def file_content(file_id: str, tenant: TenantDep, gw: GatewayDep) -> Response:
    data = await asyncio.to_thread(file_store(gw).content, tenant.name, file_id)
    return Response(data, media_type="application/jsonl")


@router.delete("/{file_id}")
async def delete_file(file_id: str, tenant: TenantDep, gw: GatewayDep) -> dict:
    await asyncio.to_thread(file_store(gw).delete, tenant.name, file_id)
    return {"id": file_id, "object": "file", "deleted": True}
