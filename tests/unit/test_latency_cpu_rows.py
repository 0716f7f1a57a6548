"""The latency benchmark's CPU rows (loadtest/latency/run.py): measured in rounds, every other one in the reverse
order, so that no row is always the first measured; each row merged from its rounds."""

from __future__ import annotations

import pytest

from loadtest.latency import run


def _result(cpu_ms: float, requests: int, stream: bool = False) -> dict:
    return {"stream": stream, "tokens": 16, "stream_interval": 1, "requests": requests, "ok": requests - 1,
            "wall_s": 2.0, "raw_cpu_ms_per_request": cpu_ms + 0.1, "idle_cpu_ms_per_s": 4.0,
            "cpu_ms_per_request": cpu_ms}


def test_a_row_merges_its_rounds_by_their_requests():
    row = run.merge_rounds([_result(1.0, 100), _result(2.0, 300)])
    assert row["cpu_ms_per_request"] == pytest.approx(1.75)
    assert row["raw_cpu_ms_per_request"] == pytest.approx(1.85)
    assert (row["requests"], row["ok"], row["wall_s"]) == (400, 398, 4.0)
    assert row["rounds_cpu_ms"] == [1.0, 2.0] and row["idle_cpu_ms_per_s"] == 4.0


def test_rows_are_measured_in_alternating_order_and_each_gets_its_own_rounds(monkeypatch):
    calls = []

    def measure(proc, key, model, tokens, stream, stream_interval=None, count=200):
        calls.append((model, stream, count))
        return _result(len(calls), count, stream)

    monkeypatch.setattr(run.hop, "cpu_per_request", measure)
    rows = run._cpu_rows("proc", "key", {"adapter": "rev", "base": "base"}, 200, rounds=2)
    cells = [("rev", False, 100), ("rev", True, 50), ("base", False, 100), ("base", True, 50)]
    assert calls == cells + cells[::-1]  # the first measured in round 1 is the last in round 2
    assert [(r["model"], r["stream"]) for r in rows] == [("adapter", False), ("adapter", True), ("base", False),
                                                         ("base", True)]
    assert [r["rounds_cpu_ms"] for r in rows] == [[1, 8], [2, 7], [3, 6], [4, 5]]
    assert [r["requests"] for r in rows] == [200, 100, 200, 100]
