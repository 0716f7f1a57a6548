"""Tenant files for fine-tuning (`/v1/files`): JSONL training data, checked at upload, stored in the bucket.

Layout (docs/fine-tuning.md): `files/<tenant>/<file_id>.json` (the record, written last: a file exists exactly
when its record does) and `files/<tenant>/<file_id>.data` (the bytes). Every lookup is scoped to the caller's
tenant prefix, so another tenant's file id is simply not found.

Accepted lines (one JSON object per line, blank lines skipped; the formats may be mixed):
    {"prompt": "word: cat\\nanswer:", "completion": " CAT\\n"}
    {"messages": [{"role": "user", "content": "cat"}, {"role": "assistant", "content": "CAT"}]}
"""

from __future__ import annotations

import json
import secrets
import time

from pydantic import BaseModel

from common.errors import InvalidRequest, NotFound, RequestTooLarge
from common.names import check_name
from registry.errors import KeyMissing
from registry.settings import RegistrySettings
from registry.store import ObjectStore

PURPOSES = ("fine-tune",)
ROLES = ("system", "user", "assistant")
MIN_EXAMPLES = 2  # one is held out for validation when no validation file is given
FORMAT_HELP = ('each line must be one JSON object: {"prompt": "...", "completion": "..."} or {"messages": '
               '[{"role": "user", "content": "..."}, ..., {"role": "assistant", "content": "..."}]}')
FILE_ID_PREFIX = "file-"


class FileNotFound(NotFound):
    """A file id that does not exist *or belongs to another tenant*: the two are indistinguishable."""

    code = "file_not_found"


class InvalidFile(InvalidRequest):
    """An uploaded file that is not valid training data; the message names the line and the fix."""

    code = "invalid_file"


class FileRecord(BaseModel):
    """OpenAI's file object (plus the checked format and example count) as stored in the record."""

    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    status_details: str | None = None
    examples: int = 0
    format: str = "prompt_completion"

    def public(self) -> dict:
        return self.model_dump()


def _line_error(number: int, problem: str) -> InvalidFile:
    return InvalidFile(f"line {number}: {problem}; {FORMAT_HELP}", param="file")


def check_example(obj: object, number: int) -> str:
    """The format of one parsed line ("chat" or "prompt_completion"); InvalidFile naming the line otherwise."""
    if not isinstance(obj, dict):
        raise _line_error(number, f"a JSON {type(obj).__name__}, not an object")
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or len(messages) < 2:
            raise _line_error(number, "'messages' must be a list of at least two messages (a prompt and the answer)")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise _line_error(number, f"messages[{i}] must be {{\"role\": one of {', '.join(ROLES)}, "
                                          "\"content\": a string}")
        if messages[-1]["role"] != "assistant" or not messages[-1]["content"]:
            raise _line_error(number, "the last message must be the assistant's non-empty answer (what is learned)")
        return "chat"
    if "prompt" in obj or "completion" in obj:
        if not isinstance(obj.get("prompt"), str):
            raise _line_error(number, "'prompt' must be a string")
        if not isinstance(obj.get("completion"), str) or not obj["completion"]:
            raise _line_error(number, "'completion' must be a non-empty string (what is learned)")
        return "prompt_completion"
    raise _line_error(number, f"unknown keys {sorted(obj)[:5]}")


def check_jsonl(data: bytes) -> tuple[int, str]:
    """(examples, format) of JSONL training data; InvalidFile naming the first bad line and the fix.

    `format` is "chat", "prompt_completion" or "mixed".
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise _line_error(line, f"not UTF-8 (byte {e.start}): save the file as UTF-8") from None
    formats: set[str] = set()
    count = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise _line_error(number, f"not valid JSON ({e}); one object per line, no trailing commas") from None
        formats.add(check_example(obj, number))
        count += 1
    if count < MIN_EXAMPLES:
        raise InvalidFile(f"the file holds {count} example(s): at least {MIN_EXAMPLES} are needed (one is held out "
                          f"for validation); {FORMAT_HELP}", param="file")
    return count, formats.pop() if len(formats) == 1 else "mixed"


def new_file_id() -> str:
    return FILE_ID_PREFIX + secrets.token_hex(12)


def _check_file_id(file_id: str) -> str:
    body = file_id[len(FILE_ID_PREFIX):] if isinstance(file_id, str) else ""
    if not file_id.startswith(FILE_ID_PREFIX) or len(body) != 24 or not all(c in "0123456789abcdef" for c in body):
        raise FileNotFound(f"file {str(file_id)[:60]!r} not found: list your files with GET /v1/files", param="file_id")
    return file_id


class FileStore:
    """A tenant's fine-tuning files in the registry bucket.

    Args:
        store: the registry bucket.
        settings: the size limit (LORAPLEX_MAX_FILE_BYTES).
    """

    def __init__(self, store: ObjectStore, settings: RegistrySettings):
        self.store = store
        self.settings = settings

    @staticmethod
    def record_key(tenant: str, file_id: str) -> str:
        return f"files/{tenant}/{file_id}.json"

    @staticmethod
    def data_key(tenant: str, file_id: str) -> str:
        return f"files/{tenant}/{file_id}.data"

    def upload(self, tenant: str, filename: str, purpose: str, data: bytes) -> FileRecord:
        """Check and store one file; the record is written last.

        Raises:
            InvalidRequest: a purpose other than fine-tune. InvalidFile: bad JSONL (the line is named).
            RequestTooLarge: over LORAPLEX_MAX_FILE_BYTES.
        """
        check_name(tenant, "tenant")
        if purpose not in PURPOSES:
            raise InvalidRequest(f"purpose {str(purpose)[:40]!r} is not supported: use purpose=fine-tune",
                                 param="purpose")
        if len(data) > self.settings.max_file_bytes:
            raise RequestTooLarge(f"the file has {len(data)} bytes, over the limit of {self.settings.max_file_bytes} "
                                  "(LORAPLEX_MAX_FILE_BYTES): split it or sample fewer examples")
        examples, fmt = check_jsonl(data)
        record = FileRecord(id=new_file_id(), bytes=len(data), created_at=int(time.time()),
                            filename=(filename or "upload.jsonl")[:200], purpose=purpose, examples=examples,
                            format=fmt)
        self.store.put(self.data_key(tenant, record.id), data, if_none_match=True)
        self.store.put(self.record_key(tenant, record.id), record.model_dump_json().encode(), if_none_match=True)
        return record

    def get(self, tenant: str, file_id: str) -> FileRecord:
        """The record of `tenant`'s file; FileNotFound if it has none of that id."""
        check_name(tenant, "tenant")
        _check_file_id(file_id)
        try:
            raw, _ = self.store.get(self.record_key(tenant, file_id))
        except KeyMissing:
            raise FileNotFound(f"file {file_id!r} not found: list your files with GET /v1/files",
                               param="file_id") from None
        return FileRecord.model_validate_json(raw)

    def content(self, tenant: str, file_id: str) -> bytes:
        """The bytes of `tenant`'s file."""
        self.get(tenant, file_id)
        try:
            return self.store.get(self.data_key(tenant, file_id))[0]
        except KeyMissing:  # deleted meanwhile
            raise FileNotFound(f"file {file_id!r} was deleted", param="file_id") from None

    def list(self, tenant: str) -> list[FileRecord]:
        """Every file of `tenant`, newest first."""
        check_name(tenant, "tenant")
        records = []
        for key in self.store.list(f"files/{tenant}/"):
            if key.endswith(".json"):
                try:
                    records.append(FileRecord.model_validate_json(self.store.get(key)[0]))
                except KeyMissing:  # deleted while we listed
                    continue
        return sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)

    def delete(self, tenant: str, file_id: str) -> None:
        """Delete the record first (the file is gone at once), then the bytes."""
        self.get(tenant, file_id)
        self.store.delete(self.record_key(tenant, file_id))
        self.store.delete(self.data_key(tenant, file_id))
