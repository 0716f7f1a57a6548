"""The audit log's event model, key layout and filters (registry/audit.py) on an in-memory store, and the
gateway's recording helper (serving/audit_trail.py): refusals recorded with their code, a failed audit write
logged and counted, never raised."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from common.errors import AliasConflict, InvalidAdapter, InvalidRequest, StorageUnavailable
from registry.audit import (
    AUDIT_PREFIX,
    AuditAction,
    AuditEvent,
    AuditLog,
    AuditQuery,
    _day_prefixes,
    event_key,
    key_matches,
    parse_key,
    parse_time,
)
from registry.errors import KeyMissing, PreconditionFailed


class MemoryStore:
    """The ObjectStore calls the audit log makes, with S3's If-None-Match semantics."""

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.fail = False

    def put(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
        if self.fail:
            raise StorageUnavailable("S3 down")
        if if_none_match and key in self.objects:
            raise PreconditionFailed(key)
        self.objects[key] = data
        return '"etag"'

    def get(self, key: str) -> tuple[bytes, str]:
        if key not in self.objects:
            raise KeyMissing(key)
        return self.objects[key], '"etag"'

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))


def _record(audit: AuditLog, action=AuditAction.ADAPTER_UPLOAD, tenant="acme", **kw) -> AuditEvent:
    return audit.record(actor=kw.pop("actor", tenant), tenant=tenant, action=action, request_id="rid",
                        outcome=kw.pop("outcome", "ok"), **kw)


def test_event_model_refuses_unknown_fields_and_actions():
    audit = AuditLog(MemoryStore())
    event = audit.new_event(actor="admin", tenant="acme", action=AuditAction.TENANT_CREATE, request_id="r1",
                            outcome="ok", detail={"quotas": {"rpm": 5}})
    assert event.time.endswith("Z") and event.id.startswith(event.time[:4])
    raw = json.loads(event.model_dump_json())
    assert set(raw) == {"id", "time", "actor", "tenant", "action", "target", "detail", "request_id", "outcome"}
    with pytest.raises(ValidationError):
        AuditEvent.model_validate({**raw, "api_key": "lpx_x"})
    with pytest.raises(ValidationError):
        AuditEvent.model_validate({**raw, "action": "tenant.steal"})


def test_key_layout_round_trips_and_sorts_by_time():
    audit = AuditLog(MemoryStore())
    events = [audit.new_event(actor="acme", tenant="acme", action=a, request_id="r", outcome="ok")
              for a in (AuditAction.ADAPTER_UPLOAD, AuditAction.ADAPTER_ALIAS, AuditAction.MODEL_DELETE)]
    keys = [event_key(e) for e in events]
    assert keys == sorted(keys) and len(set(keys)) == 3  # ids strictly increase within a process
    i = events[0].id
    assert keys[0] == f"audit/{i[:4]}/{i[4:6]}/{i[6:8]}/{i}.adapter.upload.acme.json"
    assert parse_key(keys[1]) == (events[1].id, "adapter.alias", "acme")
    bad = audit.new_event(actor="admin", tenant="../Évil", action=AuditAction.TENANT_CREATE, request_id="r",
                          outcome="invalid_name")
    assert event_key(bad).endswith(".tenant.create.-.json")  # an invalid name never reaches a key
    assert parse_key("audit/2025/01/01/junk.json") is None


def test_events_are_never_overwritten():
    store = MemoryStore()
    audit = AuditLog(store)
    event = _record(audit)
    before = dict(store.objects)
    with pytest.raises(PreconditionFailed):
        audit.append(event.model_copy(update={"outcome": "forged"}))
    assert store.objects == before


def test_query_filters_newest_first_and_pages():
    audit = AuditLog(MemoryStore())
    made = [_record(audit, AuditAction.ADAPTER_UPLOAD, "acme"), _record(audit, AuditAction.ADAPTER_ALIAS, "acme"),
            _record(audit, AuditAction.ADAPTER_UPLOAD, "other"), _record(audit, AuditAction.TENANT_ROTATE_KEY,
                                                                          "acme", actor="admin")]
    events, cursor = audit.query(AuditQuery())
    assert [e.id for e in events] == [e.id for e in reversed(made)] and cursor is None
    assert [e.tenant for e in audit.query(AuditQuery(tenant="other"))[0]] == ["other"]
    assert [e.id for e in audit.query(AuditQuery(action=AuditAction.ADAPTER_UPLOAD))[0]] == [made[2].id, made[0].id]
    page, cursor = audit.query(AuditQuery(tenant="acme", limit=2))
    assert [e.id for e in page] == [made[3].id, made[1].id] and cursor == made[1].id
    page, cursor = audit.query(AuditQuery(tenant="acme", limit=2, before=cursor))
    assert [e.id for e in page] == [made[0].id] and cursor is None
    now = datetime.now(UTC)
    assert len(audit.query(AuditQuery(since=now - timedelta(minutes=1)))[0]) == 4
    assert audit.query(AuditQuery(until=now - timedelta(minutes=1)))[0] == []
    assert audit.query(AuditQuery(since=now + timedelta(minutes=1)))[0] == []


def test_key_matches_uses_the_key_alone():
    key = "audit/2025/03/04/20250304T101112000001Z-0a0b0c0d.adapter.alias.acme.json"
    at = datetime(2025, 3, 4, 10, 11, 12, 1, tzinfo=UTC)
    assert key_matches(key, AuditQuery(tenant="acme", action=AuditAction.ADAPTER_ALIAS, since=at))
    assert not key_matches(key, AuditQuery(until=at))  # until is exclusive
    assert not key_matches(key, AuditQuery(tenant="acm"))
    assert not key_matches(key, AuditQuery(action=AuditAction.ADAPTER_UPLOAD))
    assert not key_matches(key, AuditQuery(before="20250304T101112000001Z-0a0b0c0d"))


def test_day_prefixes_walk_back_to_since_or_list_everything():
    until = datetime(2025, 3, 4, 12, tzinfo=UTC)
    assert _day_prefixes(AuditQuery(since=until - timedelta(days=2), until=until)) == [
        "audit/2025/03/04/", "audit/2025/03/03/", "audit/2025/03/02/"]
    assert _day_prefixes(AuditQuery(until=until)) == [AUDIT_PREFIX]
    assert _day_prefixes(AuditQuery(since=until - timedelta(days=5000), until=until)) == [AUDIT_PREFIX]
    assert _day_prefixes(AuditQuery(since=until + timedelta(days=1), until=until)) == []


def test_parse_time():
    assert parse_time("2025-01-31", "since") == datetime(2025, 1, 31, tzinfo=UTC)
    assert parse_time("2025-01-31T12:00:00Z", "since") == datetime(2025, 1, 31, 12, tzinfo=UTC)
    assert parse_time("2025-01-31T14:00:00+02:00", "since") == datetime(2025, 1, 31, 12, tzinfo=UTC)
    assert parse_time(None, "since") is None
    with pytest.raises(InvalidRequest, match="since"):
        parse_time("yesterday", "since")


def test_long_or_nested_detail_is_bounded():
    event = AuditLog(MemoryStore()).new_event(actor="a", tenant="t", action=AuditAction.ADAPTER_UPLOAD,
                                              request_id="r", outcome="ok", target="x" * 5000,
                                              detail={"k": "v" * 5000, "deep": {"a": {"b": {"c": {"d": 1}}}}})
    assert len(event.target) == 200 and len(event.detail["k"]) == 200
    assert isinstance(event.detail["deep"]["a"]["b"], str)


# --- the gateway's recording helper ---------------------------------------------------------------------

def _gateway(store: MemoryStore):
    return SimpleNamespace(store=store)


def test_audited_records_ok_and_refusals_with_their_code():
    from serving.audit_trail import audited

    store = MemoryStore()
    gw = _gateway(store)

    async def run():
        async with audited(gw, AuditAction.ADAPTER_ALIAS, actor="acme", tenant="acme", target="a@prod") as d:
            d["before"], d["after"] = None, "v1"
        with pytest.raises(AliasConflict):
            async with audited(gw, AuditAction.ADAPTER_ALIAS, actor="acme", tenant="acme", target="a@prod"):
                raise AliasConflict("moved")
        with pytest.raises(InvalidAdapter):
            async with audited(gw, AuditAction.ADAPTER_UPLOAD, actor="acme", tenant="acme", target="a"):
                raise InvalidAdapter("rank", "too big")

    asyncio.run(run())
    events, _ = AuditLog(store).query(AuditQuery())
    assert [(e.action, e.outcome) for e in events] == [
        (AuditAction.ADAPTER_UPLOAD, "invalid_adapter"), (AuditAction.ADAPTER_ALIAS, "alias_conflict"),
        (AuditAction.ADAPTER_ALIAS, "ok")]
    assert events[0].detail == {"rule": "rank"} and events[2].detail == {"before": None, "after": "v1"}


def test_a_failed_audit_write_is_logged_and_counted_never_raised(caplog):
    from serving import metrics
    from serving.audit_trail import audited

    store = MemoryStore()
    store.fail = True
    counter = metrics.AUDIT_WRITE_FAILURES.labels("tenant.delete")
    before = counter._value.get()

    async def run():
        async with audited(_gateway(store), AuditAction.TENANT_DELETE, actor="admin", tenant="acme"):
            pass  # the write succeeded

    with caplog.at_level("ERROR", logger="serving.audit_trail"):
        asyncio.run(run())  # no exception: the caller's success stands
    assert counter._value.get() == before + 1
    logged = [r for r in caplog.records if r.getMessage() == "audit event not stored"]
    assert logged and logged[0].fields["audit_event"]["action"] == "tenant.delete"
