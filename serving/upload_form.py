"""Reading a multipart upload (adapter and model versions) with its size limit enforced while the bytes arrive.

Starlette's `request.form()` reads the whole body before anyone can look at its size, and a check of
Content-Length alone lets a chunked upload through. Here the body stream is counted as the parser consumes
it: past the limit the parse stops with RequestTooLarge (413), the parts spooled so far are closed (their
temporary files deleted), and nothing reaches the registry.
"""

from __future__ import annotations

from contextlib import aclosing

from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from common.errors import InvalidRequest
from serving.request_body import limited_stream, too_large

# Multipart framing (boundaries, part headers) and the small form fields beside the files (metadata JSON
# objects of at most 64 KiB each): the body may exceed the files' limit by this much.
FORM_OVERHEAD = 1024 * 1024


async def read_form(request: Request, limit: int, setting: str, fix: str, *, expected: str, max_files: int,
                    max_fields: int) -> FormData:
    """The parsed multipart form of `request`; its files total at most `limit` bytes.

    File parts are spooled by Starlette (in memory up to 1 MiB each, then in a temporary file); the caller
    closes the form.

    Args:
        limit: most bytes of all file parts together; the body may carry FORM_OVERHEAD more.
        setting, fix: the setting that sets `limit` and what the uploader can do, for the 413's message.
        expected: what the upload should be, for the 400 of a malformed form.

    Raises:
        RequestTooLarge: over the limit (by Content-Length, while reading, or the files' total).
        InvalidRequest: malformed, or too many parts. (Another content type gives an empty form.)
    """
    content_type, _ = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data":
        return FormData()  # as Starlette does: the body is not read, the caller's checks name what is missing
    body_limit = limit + FORM_OVERHEAD
    try:
        async with aclosing(limited_stream(request, body_limit, setting, fix)) as stream:
            form = await MultiPartParser(request.headers, stream, max_files=max_files, max_fields=max_fields).parse()
    except MultiPartException as e:
        raise InvalidRequest(f"expected a multipart/form-data upload of {expected}: {e.message}") from None
    total = sum(v.size or 0 for _, v in form.multi_items() if isinstance(v, UploadFile))
    if total > limit:  # within the framing allowance, but the files themselves are over
        await form.close()
        raise too_large(limit, f"{total} bytes of files", setting, fix)
    return form
