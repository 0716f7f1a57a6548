"""Tenants and their API keys.

Objects: `tenants/<name>.json` (the record, holding the SHA-256 of the one live key) and
`keys/<sha256-of-key>.json` (an index from a key's hash to its tenant). A key authenticates only if
both agree, so rewriting the record (rotate) or deleting it (delete) revokes the old key at once,
even if the index object is left behind.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
import threading
import time

from pydantic import BaseModel, Field

from common.errors import AuthenticationFailed, Conflict, TenantExists, TenantNotFound
from common.names import check_name
from registry.errors import KeyMissing, PreconditionFailed
from registry.layout import MODELS, key_index_key, tenant_key, tenant_prefix
from registry.manifest import utc_now
from registry.store import ObjectStore

KEY_PREFIX = "lpx_"
MAX_KEY_CHARS = 256
BAD_KEY = "invalid API key: check the Authorization header, or ask the admin for a new key (key rotation)"


class Tenant(BaseModel):
    """A tenant as the API shows it."""

    name: str
    quotas: dict = Field(default_factory=dict)
    created_at: str


class _TenantRecord(Tenant):
    key_sha256: str


def hash_key(api_key: str) -> str:
    """SHA-256 hex of an API key.

    A fast unsalted hash is enough here: keys are 32 random bytes (256 bits), so neither guessing nor
    precomputed tables can find a preimage; slow password hashes exist for low-entropy human secrets.
    """
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> str:
    """A fresh key: `lpx_` + 32 random bytes, URL-safe base64."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


class TenantRegistry:
    """Create, list, authenticate, rotate and delete tenants.

    Args:
        store: the registry bucket.
        auth_cache_ttl_s: how long a successful authentication is remembered in this process. Rotate and
            delete clear it here at once; another process may accept a revoked key for up to this long.
    """

    def __init__(self, store: ObjectStore, *, auth_cache_ttl_s: float = 5.0):
        self.store = store
        self.auth_cache_ttl_s = auth_cache_ttl_s
        self._auth_cache: dict[str, tuple[Tenant, float]] = {}  # key hash -> (tenant, expiry)
        self._generation = 0  # bumped by every revocation: a lookup that raced one is not cached
        self._lock = threading.Lock()

    def create(self, name: str, quotas: dict | None = None) -> tuple[Tenant, str]:
        """Create a tenant and return it with its API key (the only time the key is shown).

        Args:
            name: tenant name (see common.names).
            quotas: free-form limits, stored with the tenant.

        Raises:
            TenantExists: a tenant of this name exists (conditional create: one of N racing callers wins).
        """
        check_name(name, "tenant")
        api_key = new_api_key()
        record = _TenantRecord(name=name, quotas=quotas or {}, created_at=utc_now(), key_sha256=hash_key(api_key))
        try:
            self.store.put(tenant_key(name), _dump(record), if_none_match=True)
        except PreconditionFailed:
            raise TenantExists(f"tenant {name!r} exists: pick another name or delete it first", param="name") from None
        # Only the winner gets here, before any key for it exists: clear what a crashed delete left behind.
        _purge_adapters(self.store, name)
        self.store.put(key_index_key(record.key_sha256), json.dumps({"tenant": name}).encode())
        return Tenant(**record.model_dump(exclude={"key_sha256"})), api_key

    def list(self, limit: int | None = None, after: str | None = None) -> list[Tenant]:
        """Every tenant, sorted by name; a page of at most `limit` with names after `after` (only those read)."""
        names = [k.removeprefix("tenants/").removesuffix(".json") for k in self.store.list("tenants/")]
        tenants = []
        for name in names:
            if after is not None and name <= after:
                continue
            if limit is not None and len(tenants) >= limit:
                break
            try:
                tenants.append(self.get(name))
            except TenantNotFound:  # deleted while we listed
                continue
        return tenants

    def get(self, name: str) -> Tenant:
        """The tenant called `name`; TenantNotFound if none."""
        record, _ = self._record(name)
        return Tenant(**record.model_dump(exclude={"key_sha256"}))

    def authenticate(self, api_key: str) -> Tenant:
        """Return the tenant whose live key is `api_key`; AuthenticationFailed otherwise. Never logs the key."""
        if not isinstance(api_key, str) or not api_key.startswith(KEY_PREFIX) or len(api_key) > MAX_KEY_CHARS:
            raise AuthenticationFailed(BAD_KEY)
        digest = hash_key(api_key)
        cached = self._auth_cache.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        generation = self._generation
        try:
            index = json.loads(self.store.get(key_index_key(digest))[0])
            record, _ = self._record(index["tenant"])
        except (KeyMissing, TenantNotFound):
            raise AuthenticationFailed(BAD_KEY) from None
        if not hmac.compare_digest(record.key_sha256, digest):  # a rotated-away key
            raise AuthenticationFailed(BAD_KEY)
        tenant = Tenant(**record.model_dump(exclude={"key_sha256"}))
        with self._lock:
            if generation == self._generation:
                self._auth_cache[digest] = (tenant, time.monotonic() + self.auth_cache_ttl_s)
        return tenant

    def set_quotas(self, name: str, changes: dict, attempts: int = 16) -> Tenant:
        """Change some of `name`'s quotas (a key mapped to None loses its limit; keys not named keep theirs) and
        return the tenant as stored.

        A compare-and-swap on the record (If-Match: the ETag read): a racing quota change is merged in on a
        fresh read, never lost; a racing rotation or delete wins over it.

        Raises:
            TenantNotFound: no such tenant (or it was deleted meanwhile).
            Conflict: the record kept changing under `attempts` tries; retry.
        """
        for attempt in range(attempts):
            if attempt:  # each round of racers has one winner: back off a little, with jitter, and re-read
                time.sleep(random.uniform(0, 0.01 * min(2 ** attempt, 32)))
            record, etag = self._record(name)
            quotas = {**record.quotas, **changes}
            updated = record.model_copy(update={"quotas": {k: v for k, v in quotas.items() if v is not None}})
            try:
                self.store.put(tenant_key(name), _dump(updated), if_match=etag)
            except (PreconditionFailed, KeyMissing):  # changed or deleted meanwhile: read again
                continue
            self._forget(name)  # this process's cached authentications carry the old quotas
            return Tenant(**updated.model_dump(exclude={"key_sha256"}))
        raise Conflict(f"tenant {name!r} kept changing while its quotas were set: retry")

    def rotate_key(self, name: str) -> str:
        """Issue a new key for `name` and revoke the old one at once; return the new key.

        Raises:
            TenantNotFound: no such tenant.
            Conflict: another rotation or delete changed the tenant meanwhile; retry.
        """
        record, etag = self._record(name)
        api_key = new_api_key()
        updated = record.model_copy(update={"key_sha256": hash_key(api_key)})
        self.store.put(key_index_key(updated.key_sha256), json.dumps({"tenant": name}).encode())
        try:
            self.store.put(tenant_key(name), _dump(updated), if_match=etag)
        except PreconditionFailed:
            self.store.delete(key_index_key(updated.key_sha256))
            raise Conflict(f"tenant {name!r} changed during key rotation: retry the rotation") from None
        self._forget(name)
        self.store.delete(key_index_key(record.key_sha256))
        return api_key

    def delete(self, name: str) -> None:
        """Delete a tenant: its key fails at once, then its adapters and models are removed (manifests first).

        Raises:
            TenantNotFound: no such tenant.
        """
        record, _ = self._record(name)
        self.store.delete(tenant_key(name))  # from here on its key fails: the index alone proves nothing
        self._forget(name)
        self.store.delete(key_index_key(record.key_sha256))
        _purge_adapters(self.store, name)

    def _record(self, name: str) -> tuple[_TenantRecord, str]:
        check_name(name, "tenant")
        try:
            raw, etag = self.store.get(tenant_key(name))
        except KeyMissing:
            raise TenantNotFound(f"tenant {name!r} not found: list tenants with GET /admin/tenants") from None
        return _TenantRecord.model_validate_json(raw), etag

    def _forget(self, name: str) -> None:
        with self._lock:
            self._generation += 1
            for digest in [d for d, (t, _) in self._auth_cache.items() if t.name == name]:
                del self._auth_cache[digest]


def _dump(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


def _purge_adapters(store: ObjectStore, tenant: str) -> None:
    """Remove every adapter and model object of `tenant`: manifests first, so versions vanish before files."""
    keys = store.list(tenant_prefix(tenant)) + store.list(tenant_prefix(tenant, MODELS))
    for key in sorted(keys, key=lambda k: not k.endswith("/manifest.json")):
        store.delete(key)
