"""Typed domain errors.

Domain code raises these; the gateway has one handler that maps them to OpenAI-shaped error bodies
(`{"error": {"message", "type", "param", "code"}}`) using the class attributes below, never the text.
Every message a user can hit says what was wrong and how to fix it.
"""

from __future__ import annotations


def error_body(message: str, type_: str = "server_error", code: str = "internal_error",
               param: str | None = None) -> dict:
    """The OpenAI error object; every error loraplex answers (JSON or SSE) has this shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class LoraplexError(Exception):
    """Base of every error loraplex raises on purpose."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after

    def to_body(self) -> dict:
        return error_body(self.message, self.type, self.code, self.param)

    def headers(self) -> dict[str, str]:
        """HTTP headers of the error response."""
        return {"Retry-After": str(int(self.retry_after))} if self.retry_after else {}


class AuthenticationFailed(LoraplexError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class PermissionDenied(LoraplexError):
    status, type, code = 403, "permission_error", "forbidden"


class NotFound(LoraplexError):
    status, type, code = 404, "invalid_request_error", "not_found"


class ModelNotFound(NotFound):
    """An adapter that does not exist *or belongs to another tenant*: the two are indistinguishable."""

    code = "model_not_found"


class TenantNotFound(NotFound):
    code = "tenant_not_found"


class InvalidRequest(LoraplexError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class RequestTooLarge(LoraplexError):
    """A request body over the gateway's size limit (LORAPLEX_MAX_REQUEST_BYTES for inference,
    LORAPLEX_MAX_UPLOAD_BYTES / LORAPLEX_MAX_MODEL_UPLOAD_BYTES for uploads); the message names which."""

    status, type, code = 413, "invalid_request_error", "request_too_large"

    def headers(self) -> dict[str, str]:
        # The rest of the body is left unread: closing the connection ends the upload at once (kept open,
        # the server would have to read and discard it, forever for an endless chunked body).
        return {**super().headers(), "Connection": "close"}


class InvalidName(LoraplexError):
    status, type, code = 422, "invalid_request_error", "invalid_name"


class InvalidAdapter(LoraplexError):
    """An upload that failed the validation gate; `rule` names the rule that refused it."""

    status, type, code = 422, "invalid_request_error", "invalid_adapter"

    def __init__(self, rule: str, message: str, **kw):
        super().__init__(f"[{rule}] {message}", **kw)
        self.rule = rule


class Conflict(LoraplexError):
    status, type, code = 409, "invalid_request_error", "conflict"


class AliasConflict(Conflict):
    code = "alias_conflict"


class VersionInUse(Conflict):
    code = "version_in_use"


class BaseMismatch(Conflict):
    """A version validated against another base model than the one served now (LORAPLEX_BASE_MODEL changed)."""

    code = "base_mismatch"


class TenantExists(Conflict):
    code = "tenant_exists"


class TenantLimitExceeded(Conflict):
    """A new version would pass a per-tenant count limit (adapters per tenant, versions per adapter)."""

    code = "tenant_limit_exceeded"


class TenantStorageFull(LoraplexError):
    """A new version would pass the tenant's stored-bytes limit (LORAPLEX_MAX_TENANT_STORED_BYTES)."""

    status, type, code = 413, "invalid_request_error", "tenant_storage_full"


class QuotaExceeded(LoraplexError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class Overloaded(LoraplexError):
    status, type, code = 503, "server_error", "overloaded"


class StorageUnavailable(LoraplexError):
    """The object store did not answer (or answered with a server error)."""

    status, type, code = 503, "server_error", "storage_unavailable"


class IntegrityError(LoraplexError):
    """Bytes whose SHA-256 does not match the manifest: never handed to the engine."""

    status, type, code = 502, "server_error", "integrity_error"


class EngineUnavailable(LoraplexError):
    status, type, code = 503, "server_error", "engine_unavailable"


class EngineError(LoraplexError):
    status, type, code = 502, "server_error", "engine_error"
