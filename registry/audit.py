"""The audit log: one immutable S3 object per write attempt, under `audit/<yyyy>/<mm>/<dd>/`.

Each event is written with `If-None-Match: *`, so no event is ever overwritten, and nothing here updates or
deletes one. Object names sort by time and carry the action and the tenant, so a query filters on the
listing alone and reads only the events it returns:

    audit/<yyyy>/<mm>/<dd>/<id>.<action>.<tenant>.json     id = <yyyymmddTHHMMSSffffffZ>-<8 hex>

An event holds who (actor), on what (tenant, target), what (action, detail), when, the request id and the
outcome: never an API key, a key hash, a prompt or an uploaded body. The gateway records events
(serving/audit_trail.py); this module stores and queries them.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from common.errors import InvalidRequest
from common.names import NAME_RE
from registry.errors import KeyMissing, PreconditionFailed
from registry.store import ObjectStore

AUDIT_PREFIX = "audit/"
ID_TIME = "%Y%m%dT%H%M%S%fZ"  # 22 characters; sorts as text in time order
NO_TENANT = "-"  # the key's tenant part when the name acted on is not a valid name (a refused create)
MAX_LIMIT = 1000
MAX_DAYS_WALKED = 400  # a `since` further back than this lists the whole prefix instead, once
_MAX_TEXT = 200  # names, targets and detail strings are cut to this: an event stays small


class AuditAction(StrEnum):
    """Every kind of write the gateway audits."""

    TENANT_CREATE = "tenant.create"
    TENANT_ROTATE_KEY = "tenant.rotate_key"
    TENANT_DELETE = "tenant.delete"
    TENANT_SET_QUOTAS = "tenant.set_quotas"
    ADAPTER_UPLOAD = "adapter.upload"
    ADAPTER_ALIAS = "adapter.alias"
    ADAPTER_DELETE = "adapter.delete"
    MODEL_UPLOAD = "model.upload"
    MODEL_ALIAS = "model.alias"
    MODEL_DELETE = "model.delete"


class AuditEvent(BaseModel):
    """One write attempt and how it ended."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="time-sortable id; also the cursor of a paginated query")
    time: str = Field(description="ISO-8601 UTC, microseconds")
    actor: str = Field(description="the authenticated tenant's name, or 'admin'")
    tenant: str = Field(description="the tenant whose namespace was acted on")
    action: AuditAction
    target: str | None = Field(None, description="NAME, NAME@ALIAS or NAME@VERSION")
    detail: dict = Field(default_factory=dict, description="e.g. alias before/after, version, digest, sizes")
    request_id: str
    outcome: str = Field(description="'ok', or the error code the caller got")


@dataclass(frozen=True)
class AuditQuery:
    """Filters of `AuditLog.query`: newest first; `since` inclusive, `until` and `before` (a cursor: an event
    id) exclusive."""

    tenant: str | None = None
    action: AuditAction | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: str | None = None
    limit: int = 100


def parse_time(value: str | None, what: str) -> datetime | None:
    """An ISO-8601 date or time (naive means UTC); InvalidRequest naming the parameter otherwise."""
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise InvalidRequest(f"{what}={value!r} is not an ISO-8601 time: use e.g. 2025-01-31 or "
                             "2025-01-31T12:00:00Z", param=what) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _clip(value, depth: int = 0):
    """`value` with strings cut to _MAX_TEXT and nesting bounded (detail comes from our routes, but names in
    it came from clients)."""
    if isinstance(value, str):
        return value[:_MAX_TEXT]
    if isinstance(value, dict) and depth < 3:
        return {str(k)[:_MAX_TEXT]: _clip(v, depth + 1) for k, v in list(value.items())[:64]}
    if isinstance(value, list | tuple) and depth < 3:
        return [_clip(v, depth + 1) for v in list(value)[:64]]
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[:_MAX_TEXT]


class _Clock:
    """Event ids strictly increasing within a process, so events of one gateway keep their order even within
    one microsecond. Across gateways the order is their clocks'."""

    def __init__(self):
        self._last = datetime.min.replace(tzinfo=UTC)
        self._lock = threading.Lock()

    def next(self) -> datetime:
        with self._lock:
            now = datetime.now(UTC)
            self._last = now if now > self._last else self._last + timedelta(microseconds=1)
            return self._last


_CLOCK = _Clock()


def event_key(event: AuditEvent) -> str:
    """The object key of `event` (its tenant part is NO_TENANT when the name is not a valid one)."""
    at = datetime.strptime(event.id[:22], ID_TIME)
    tenant = event.tenant if NAME_RE.fullmatch(event.tenant) else NO_TENANT
    return f"{AUDIT_PREFIX}{at:%Y/%m/%d}/{event.id}.{event.action.value}.{tenant}.json"


def parse_key(key: str) -> tuple[str, str, str] | None:
    """(id, action, tenant) of an event key; None for anything else under the prefix."""
    parts = key.rsplit("/", 1)[-1].removesuffix(".json").split(".")
    if len(parts) != 4 or len(parts[0]) != 31:
        return None
    return parts[0], f"{parts[1]}.{parts[2]}", parts[3]


def key_matches(key: str, q: AuditQuery) -> bool:
    """Whether the event at `key` passes `q`'s filters (all of them are in the key)."""
    parsed = parse_key(key)
    if parsed is None:
        return False
    event_id, action, tenant = parsed
    stamp = event_id[:22]
    return ((q.tenant is None or tenant == q.tenant) and (q.action is None or action == q.action.value)
            and (q.since is None or stamp >= q.since.strftime(ID_TIME))
            and (q.until is None or stamp < q.until.strftime(ID_TIME))
            and (q.before is None or event_id < q.before))


def _day_prefixes(q: AuditQuery) -> list[str]:
    """Prefixes to list, newest first: one per day from the upper bound back to `since` when that is a bounded
    walk, else the whole audit prefix."""
    upper = q.until or datetime.now(UTC) + timedelta(days=1)  # a skewed clock elsewhere may write "tomorrow"
    if q.before and len(q.before) >= 22:
        try:
            upper = min(upper, datetime.strptime(q.before[:22], ID_TIME).replace(tzinfo=UTC))
        except ValueError:
            pass
    if q.since is None or q.since > upper or (upper - q.since).days > MAX_DAYS_WALKED:
        return [AUDIT_PREFIX] if q.since is None or q.since <= upper else []
    day, last = upper.date(), q.since.date()
    prefixes = []
    while day >= last:
        prefixes.append(f"{AUDIT_PREFIX}{day:%Y/%m/%d}/")
        day -= timedelta(days=1)
    return prefixes


class AuditLog:
    """Append and query audit events in the registry bucket.

    Args:
        store: the registry bucket.
    """

    def __init__(self, store: ObjectStore):
        self.store = store

    def new_event(self, *, actor: str, tenant: str, action: AuditAction, request_id: str, outcome: str,
                  target: str | None = None, detail: dict | None = None) -> AuditEvent:
        """An event stamped now, with a fresh id (nothing is written)."""
        at = _CLOCK.next()
        return AuditEvent(id=f"{at.strftime(ID_TIME)}-{secrets.token_hex(4)}",
                          time=at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
                          actor=actor[:_MAX_TEXT], tenant=tenant[:_MAX_TEXT], action=action,
                          target=target[:_MAX_TEXT] if target is not None else None,
                          detail=_clip(detail or {}), request_id=request_id[:64], outcome=outcome[:64])

    def append(self, event: AuditEvent) -> str:
        """Write `event` as a new object (create-only) and return its key.

        Raises:
            PreconditionFailed: an object already exists under its key (never overwritten).
            StorageUnavailable: the store did not take it.
        """
        key = event_key(event)
        self.store.put(key, event.model_dump_json().encode(), if_none_match=True)
        return key

    def record(self, **fields) -> AuditEvent:
        """`new_event(**fields)` appended; a (vanishingly unlikely) id collision gets a fresh id."""
        for _ in range(3):
            event = self.new_event(**fields)
            try:
                self.append(event)
                return event
            except PreconditionFailed:
                continue
        raise PreconditionFailed("three audit ids in a row collided: check the gateway's clock")

    def query(self, q: AuditQuery) -> tuple[list[AuditEvent], str | None]:
        """Events passing `q`, newest first, at most `q.limit`; and the cursor for the next page (the last
        event's id as `before`), None when there is no more."""
        limit = max(1, min(q.limit, MAX_LIMIT))
        events: list[AuditEvent] = []
        for prefix in _day_prefixes(q):
            for key in sorted((k for k in self.store.list(prefix) if key_matches(k, q)), reverse=True):
                if len(events) == limit:
                    return events, events[-1].id
                try:
                    raw, _ = self.store.get(key)
                except KeyMissing:  # removed by an operator's retention job while we listed
                    continue
                events.append(AuditEvent.model_validate(json.loads(raw)))
        return events, None
