"""The scale benchmark's report: targets from rows, files written (pure logic; the run itself is `make bench-scale`)."""

from __future__ import annotations

import json

import pytest

from loadtest.scale.bench import plan
from loadtest.scale.config import ScaleConfig
from loadtest.scale.report import targets, write_report

pytestmark = pytest.mark.unit


def _row(n, zipf, load, tok, rss=(500.0, 3000.0), wrong=0, cold=0.3, bound=0.2):
    return {"adapters": n, "zipf": zipf, "load": load, "variant": "mixed ranks", "req_per_s": tok / 16,
            "tok_per_s": tok, "ttft_p50_ms": 50.0, "ttft_p99_ms": 200.0, "loads_per_1k": 10.0,
            "evictions_per_1k": 9.0, "resident_share": {"engine": 0.9, "disk": 0.05, "s3": 0.05},
            "wrong_answers": wrong, "solo_checked": 16, "gateway_rss_mb": rss[0], "engine_rss_mb": rss[1],
            "cold_first_token_s": cold, "cold_bound_s": bound, "cold_vs_bound": round(cold / bound, 2),
            "cold_stages_ms": {"download": 5.0, "verify": 0.1, "engine_load": 30.0, "first_token": 100.0}}


def test_targets_compare_the_largest_count_with_the_smallest_and_rss_from_100():
    rows = [_row(8, 0.8, "saturated", 400), _row(8, 0.8, "60%", 240),
            _row(100, 0.8, "saturated", 380, rss=(500, 3000)), _row(100, 0.8, "60%", 240, rss=(510, 3000)),
            _row(1000, 0.8, "saturated", 300, rss=(600, 3000), wrong=1), _row(1000, 0.8, "60%", 240, cold=0.9)]
    t = targets(rows)
    assert t["throughput_ratio_zipf_0.8"] == {"value": 0.75, "target": ">= 0.80", "met": False, "rows": 0.75}
    assert t["wrong_answers"]["value"] == 1 and not t["wrong_answers"]["met"]
    assert t["cold_first_token_vs_bound"]["value"] == 4.5 and not t["cold_first_token_vs_bound"]["met"]
    assert t["gateway_rss_growth_100_to_1000"]["value"] == pytest.approx(0.176, abs=1e-3)
    assert t["engine_rss_growth_100_to_1000"]["met"]


def test_the_throughput_target_is_the_median_of_the_paired_rounds_when_there_are_some():
    rows = [_row(8, 0.8, "saturated", 400), _row(1000, 0.8, "saturated", 300)]
    t = targets(rows, {"0.8": [0.78, 0.83, 0.81, 0.86]})["throughput_ratio_zipf_0.8"]
    assert t["value"] == 0.82 and t["met"] and t["rows"] == 0.75 and t["paired_rounds"] == [0.78, 0.83, 0.81, 0.86]
    assert targets(rows, {"1.2": [0.9]})["throughput_ratio_zipf_0.8"]["value"] == 0.75  # no rounds for this zipf


def test_report_files(tmp_path):
    rows = [_row(8, 1.2, "saturated", 400), _row(8, 1.2, "60%", 240), _row(1000, 1.2, "saturated", 390),
            _row(1000, 1.2, "60%", 240)]
    report = write_report(tmp_path, rows, {"tenants": 100, "distinct_weight_sets": 24, "disk_tier_bytes": 2**26,
                                           "s3_bandwidth_mib_s": 300.0, "started": "now", "wall_s": 1.0, "cpus": 2,
                                           "config": {"per_tenant": 10, "ranks": (8, 16, 64), "concurrency": 16,
                                                      "load": 0.6, "duration_s": 20, "max_tokens": 16,
                                                      "max_loras": 8, "max_cpu_loras": 32}})
    saved = json.loads((tmp_path / "scale.json").read_text())
    assert saved["meta"]["targets"]["throughput_ratio_zipf_1.2"]["met"] is True
    keys = {"adapters", "zipf", "req_per_s", "tok_per_s", "ttft_p50_ms", "ttft_p99_ms", "loads_per_1k",
            "resident_share", "wrong_answers", "cold_first_token_s", "cold_bound_s"}
    assert all(keys <= set(r) for r in saved["rows"]) and report["rows"] == saved["rows"]
    for name in ("scale.csv", "scale.md", "scale_throughput_ttft.png", "scale_cold_start.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_plan_spreads_adapters_over_tenants_with_ranks_in_turn(tmp_path):
    cfg = ScaleConfig(adapters=(8, 1000), per_tenant=10, pool=2)
    pool = {r: [tmp_path / f"r{r}-{i}" for i in range(2)] for r in cfg.ranks}
    items = plan(cfg, pool)
    main = [i for i in items if i[0].startswith("s")]
    assert len(main) == 1000 and len({t for t, *_ in main}) == 100
    assert [r for *_, r in main[:6]] == [8, 16, 64, 8, 16, 64]
    assert len([i for i in items if i[0] == "cold"]) == cfg.cold_probes * 2
    het = [i for i in items if i[0] == "het"]
    assert sorted(r for _t, n, _d, r in het if n.startswith("mix")) == [8] * 4 + [64] * 4


def test_counter_deltas_survive_dropped_and_restarted_series():
    """The gateway removes the series of tenants no longer among the busiest: the run's deltas must not go
    negative (a row once showed -4.7 loads per 1,000 requests)."""
    from loadtest.scale.stack import delta

    def key(tenant):
        return ("loraplex_adapter_loads_total", frozenset({("tenant", tenant), ("result", "ok")}))
    before = {key("a"): 10.0, key("b"): 7.0, key("c"): 5.0}
    after = {key("a"): 12.0, key("c"): 2.0, key("_other"): 3.0}  # b dropped; c dropped then counted again
    assert delta(before, after, "loraplex_adapter_loads_total", result="ok") == 2 + 2 + 3
