"""The console's time series: rates and TTFT quantiles from readings of the gateway's real metrics."""

from __future__ import annotations

import pytest

from serving import metrics
from serving.console.charts import bar_chart, line_chart
from serving.console.sampler import MetricsSampler, quantile, tenant_totals

pytestmark = pytest.mark.unit
INF = float("inf")


def test_quantile_interpolates_within_the_bucket_of_the_interval():
    before = {0.1: 10, 0.5: 10, 1.0: 10, INF: 10}
    after = {0.1: 10, 0.5: 20, 1.0: 30, INF: 30}  # 10 new in (0.1, 0.5], 10 in (0.5, 1]
    assert quantile(0.5, before, after) == pytest.approx(0.5)
    assert quantile(0.25, before, after) == pytest.approx(0.3)
    assert quantile(0.99, before, after) == pytest.approx(0.5 + 0.5 * 0.98)
    assert quantile(0.5, after, after) is None  # nothing observed in between
    assert quantile(0.5, {}, {1.0: 0, INF: 4}) == 1.0  # all beyond the largest bound: that bound


def test_series_are_rates_between_readings():
    sampler = MetricsSampler(every_s=5, quantile_window_s=10)
    sampler.sample(at=1000.0)
    metrics.REQUESTS.labels("sampler-t", "base", "ok").inc(10)
    metrics.REQUESTS.labels("sampler-t", "base", "error").inc(5)
    metrics.COMPLETION_TOKENS.labels("sampler-t", "base").inc(100)
    for seconds in (0.02, 0.02, 0.3, 3.0):
        metrics.TTFT.labels("sampler-t", "base").observe(seconds)
    sampler.sample(at=1005.0)
    s = sampler.series()
    assert s["requests"] == [(1005.0, 3.0)] and s["errors"] == [(1005.0, 1.0)] and s["tokens"] == [(1005.0, 20.0)]
    assert 10 < s["ttft_p50"][0][1] <= 25  # ms: half the streams started within 25 ms
    assert 2000 < s["ttft_p99"][0][1] <= 5000
    sampler.sample(at=1010.0)
    assert sampler.series()["requests"][-1] == (1010.0, 0.0)
    totals = tenant_totals()["sampler-t"]
    assert totals == {"requests": 15.0, "errors": 5.0, "tokens": 100.0}


def test_charts_are_inline_svg_with_the_latest_value():
    svg = line_chart([(1.0, 2.0), (2.0, None), (3.0, 4.5)], "Requests", "req/s")
    assert "<svg" in svg and "4.5 req/s" in svg and "<script" not in svg
    assert "no data yet" in line_chart([], "TTFT", "ms")
    assert "&lt;b&gt;" in bar_chart([("<b>", 3.0)], "x", limit=8)  # labels escaped
