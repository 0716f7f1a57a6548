"""A minimal run of the hot-swap benchmark harness (N=2, a few seconds of load): every mode yields a sane row.

The numbers mean nothing at this size; `make bench` produces the real ones. The hotswap mode reuses
the session engine; the harness starts the reload engine and two separate engines side by side.
"""

from __future__ import annotations

import json

import pytest

from loadtest.hotswap.bench import run_bench
from loadtest.hotswap.config import CONTRACT_KEYS, Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(demo, engine, seaweed, tmp_path_factory):
    out = tmp_path_factory.mktemp("hotswap")
    cfg = Settings(tenants=(2,), duration_s=3, rate=4.0, capacity=False, drain_s=60, prompt_tokens=16, max_tokens=8)
    rows = run_bench(out, cfg, s3_endpoint=seaweed.endpoint, hot_engine_url=engine.engine_url, base=demo.base_dir)
    return out, rows


def _row(rows, mode, variant="all_tenants"):
    found = [r for r in rows if r["mode"] == mode and r["variant"] == variant]
    assert len(found) == 1, f"expected one {mode}/{variant} row in {rows}"
    return found[0]


def test_every_mode_row_has_the_contract_keys(report):
    out, rows = report
    assert {r["mode"] for r in rows} == {"hotswap", "separate", "reload"}
    for r in rows:
        assert set(CONTRACT_KEYS) <= set(r), f"missing {set(CONTRACT_KEYS) - set(r)} in {r}"
        assert r["tenants"] == 2 and isinstance(r["fits"], bool)
    saved = json.loads((out / "hotswap.json").read_text())
    assert saved["rows"] == rows and saved["meta"]["offered_req_per_s"] == 4.0
    for name in ("hotswap.csv", "hotswap.md", "hotswap_throughput.png", "hotswap_ttft_p99.png", "hotswap_memory.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "locust" / "hotswap-2_stats.csv").exists()  # locust's own headless CSV


def _sane(r):
    assert r["fits"] and r["served_pct"] == 100.0, r
    assert r["req_per_s"] > 0 and r["tok_per_s"] >= r["req_per_s"] * 8 * 0.99, r  # 8 tokens per answer
    assert 0 < r["ttft_p50_ms"] <= r["ttft_p99_ms"] <= r["latency_p99_ms"], r
    assert r["engine_rss_mb"] > 200 and r["cold_start_s"] > 0 and r["storage_mb_per_tenant"] > 0, r


def test_hotswap_and_reload_rows_are_sane(report):
    _, rows = report
    hot, rel = _row(rows, "hotswap"), _row(rows, "reload")
    _sane(hot)
    _sane(rel)
    assert rel["switches"] >= 1  # both tenants were served by one engine: its weights changed
    assert hot["storage_mb_per_tenant"] < rel["storage_mb_per_tenant"]  # an adapter vs a merged model


def test_separate_rows_are_sane(report):
    _, rows = report
    sep = _row(rows, "separate")
    if sep["fits"]:
        _sane(sep)
        assert sep["engines"] == 2
    else:  # the host's memory was short: the projection says why
        assert sep["req_per_s"] is None and sep["engine_rss_mb"] > 0 and "budget" in sep["note"]
    equal = [r for r in rows if r["mode"] == "separate" and r["variant"] == "equal_memory"]
    for r in equal:  # as many engines as fit the hotswap engine's memory: fewer than the tenants
        assert r["engines"] < 2 and r["served_pct"] < 100 and r["req_per_s"] > 0, r
