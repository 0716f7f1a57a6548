"""The console's login session and CSRF tokens.

The session is a cookie signed with a key derived from the admin key (itsdangerous, timestamped): a gateway
restart keeps operators logged in, and a new admin key logs every session out. The cookie is HttpOnly,
SameSite=Strict, and expires after `MAX_AGE_S`; logout revokes its session id in this process.

Each form carries a CSRF token bound to the session id (an HMAC), checked on every POST: SameSite=Strict
already keeps other sites' forms from sending the cookie, the token also covers same-site pages and old
browsers.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from registry.tenants import KEY_PREFIX

COOKIE = "lpx_console"
MAX_AGE_S = 8 * 3600  # a working day; then the login form again
TENANT_KEY_REFUSED = ("that is a tenant's API key: the console is for operators and needs the admin key "
                      "(LORAPLEX_ADMIN_KEY, `admin_key` in var/stack.json)")
BAD_KEY = "wrong admin key: use LORAPLEX_ADMIN_KEY (`admin_key` in var/stack.json)"
NO_ADMIN_KEY = "the console is off: this gateway has no admin key (set LORAPLEX_ADMIN_KEY and restart it)"


@dataclass(frozen=True)
class Session:
    """A logged-in operator: the session id and the CSRF token its forms carry."""

    sid: str
    csrf: str


class ConsoleSessions:
    """Issue, read and revoke console sessions for one admin key."""

    def __init__(self, admin_key: str | None):
        self.admin_key = admin_key
        self._revoked: set[str] = set()
        secret = admin_key or secrets.token_urlsafe(32)  # no admin key: nothing can log in anyway
        self._serializer = URLSafeTimedSerializer(secret, salt="loraplex-console-session")
        self._csrf_key = hmac.new(secret.encode(), b"loraplex-console-csrf", hashlib.sha256).digest()

    def login(self, key: str) -> tuple[str | None, str | None]:
        """(cookie value, None) for the admin key; (None, why not) for anything else."""
        if self.admin_key is None:
            return None, NO_ADMIN_KEY
        key = key.strip()
        if hmac.compare_digest(key.encode(), self.admin_key.encode()):
            return self._serializer.dumps({"sid": secrets.token_urlsafe(16)}), None
        if key.startswith(KEY_PREFIX) and not key.startswith("lpx_admin_"):  # `loraplex up` makes lpx_admin_...
            return None, TENANT_KEY_REFUSED
        return None, BAD_KEY

    def read(self, cookie: str | None) -> Session | None:
        """The session of a cookie that is signed, unexpired and not logged out; else None."""
        if not cookie or self.admin_key is None:
            return None
        try:
            sid = self._serializer.loads(cookie, max_age=MAX_AGE_S)["sid"]
        except (BadSignature, KeyError, TypeError):
            return None
        if sid in self._revoked:
            return None
        return Session(sid=sid, csrf=self._csrf(sid))

    def logout(self, session: Session) -> None:
        self._revoked.add(session.sid)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(token.encode(), session.csrf.encode())

    def _csrf(self, sid: str) -> str:
        return hmac.new(self._csrf_key, sid.encode(), hashlib.sha256).hexdigest()
