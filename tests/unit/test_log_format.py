"""The gateway's JSON log lines (serving/logs.py JsonFormatter): one JSON object per line, whatever a field holds."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from serving.logs import JsonFormatter, request_id


def _record(msg: str, fields: dict | None = None, exc_info=None) -> logging.LogRecord:
    record = logging.LogRecord("loraplex.access", logging.INFO, __file__, 1, msg, (), exc_info)
    if fields is not None:
        record.fields = fields
    return record


def test_a_line_is_one_json_object_with_the_request_id_and_the_fields():
    token = request_id.set("abc123")
    try:
        line = JsonFormatter().format(_record("request", {"method": "POST", "status": 200, "ms": 1.5,
                                                          "tenant": "acme \"quoted\"\nnewline"}))
    finally:
        request_id.reset(token)
    assert "\n" not in line
    assert '"msg": "request"' in line  # json.dumps's spacing: what operators' greps and tests/e2e/test_shutdown.py read
    out = json.loads(line)
    assert out["request_id"] == "abc123" and out["level"] == "info" and out["msg"] == "request"
    assert out["status"] == 200 and out["ms"] == 1.5 and out["tenant"] == "acme \"quoted\"\nnewline"


def test_a_field_json_cannot_hold_is_written_as_text_and_an_exception_is_kept():
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed", {"path": Path("/tmp/x")}, exc_info=sys.exc_info())
    out = json.loads(JsonFormatter().format(record))
    assert out["path"] == "/tmp/x"
    assert "ValueError: boom" in out["exc"]
