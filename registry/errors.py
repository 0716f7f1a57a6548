"""Registry-internal errors.

These never reach the gateway's error handler: the registry catches them and raises the typed errors of
`common.errors` (ModelNotFound, AliasConflict, TenantExists, ...) with a message fit for the user.
"""

from __future__ import annotations

from common.errors import Conflict


class KeyMissing(LookupError):
    """The object store has no object under this key."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


class PreconditionFailed(Conflict):
    """A conditional write lost: If-None-Match found an object, or If-Match found another ETag.

    The caller turns it into the specific conflict (AliasConflict, TenantExists, ...).
    """

    code = "precondition_failed"
