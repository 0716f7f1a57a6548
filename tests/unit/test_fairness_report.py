"""loadtest/fairness/: the fairness benchmark's arithmetic (pure logic: pooled rows, ratios, the flooder's
served rate), the admission waits it reads, and what a bench gateway's reset between slices does."""

import json

import pytest

from loadtest.fairness.report import summarise, write_report
from loadtest.traffic import Sample

WAITS = {0.05: 1.0, 0.1: 2.0, float("inf"): 2.0}  # b's admission-wait histogram: 0.0 s and 0.1 s


def _samples(tenant: str, latencies: list[float], sent_every: float = 0.5) -> list[Sample]:
    return [Sample(tenant, i * sent_every, 200, lat / 2, lat, 16) for i, lat in enumerate(latencies)]


def _rows(mode: str, phase: str, other_latency: float, flood_n: int) -> list[dict]:
    samples = (_samples("a", [1.0] * flood_n, sent_every=0.1) + _samples("b", [other_latency] * 10)
               + _samples("c", [other_latency * 2] * 10))
    engine = {"engine_latency_mean_ms": 500.0, "engine_ttft_mean_ms": 50.0, "loadavg_1m": 1.0}
    return summarise(samples, phase, mode, {"a"}, {"b": WAITS}, engine, seconds=20, window_s=10, windows=1)


def test_pooled_rows_ratios_and_served_rate(tmp_path):
    rows = (_rows("fifo", "baseline", 0.2, 5) + _rows("fifo", "flood", 0.6, 50)
            + _rows("fair", "baseline", 0.2, 5) + _rows("fair", "flood", 0.22, 50))
    pooled = [r for r in rows if r["pooled"]]
    assert len(pooled) == 4 and all(r["sent"] == 20 and not r["flooder"] for r in pooled)
    b = next(r for r in rows if r["tenant"] == "b" and r["phase"] == "baseline" and r["mode"] == "fifo")
    assert b["admission_wait_p99_ms"] == 99.0 and b["latency_p99_ms"] == 200.0  # interpolated in (0.05, 0.1]
    flooder = next(r for r in rows if r["flooder"] and r["phase"] == "flood" and r["mode"] == "fair")
    # 50 answers sent every 0.1 s taking 1 s: those done by t=10 s count, the drain's do not
    assert flooder["ok_per_s"] == round(sum(i * 0.1 + 1.0 <= 10 for i in range(50)) / 10, 2)
    result = write_report(tmp_path, rows, {"capacity_req_s": 1.0}, 10, 10, 4, 16, 1.0)
    assert result["p99_ratio_others_pooled"] == {"fifo": 3.0, "fair": 1.1}
    assert result["p99_ratio_flood_vs_baseline"]["fair"] == 1.1
    saved = json.loads((tmp_path / "fairness.json").read_text())
    assert saved["flooder_ok_per_s"]["fair"] == flooder["ok_per_s"]
    assert (tmp_path / "fairness.png").stat().st_size > 0
    assert "| fair | 1.1 |" in (tmp_path / "fairness.md").read_text()


def test_failed_requests_are_counted_with_their_reason():
    """A refusal, and a stream that began and then carried an error event, are not 'ok'; the row says why."""
    samples = _samples("b", [0.2] * 4) + [
        Sample("b", 3.0, 503, None, 0.01, 0, '{"error": {"message": "the server is full"}}'),
        Sample("b", 3.5, 200, 0.05, 0.3, 3, 'data: {"error": {"message": "engine crashed"}}')]
    engine = {"engine_latency_mean_ms": 1.0, "engine_ttft_mean_ms": 1.0, "loadavg_1m": 1.0}
    row = summarise(samples, "flood", "fair", set(), {}, engine, seconds=10, window_s=10, windows=1)[0]
    assert (row["sent"], row["ok"], row["rejected"]) == (6, 4, 1)
    assert row["errors"] == {'503: {"error": {"message": "the server is full"}}': 1,
                             '200: data: {"error": {"message": "engine crashed"}}': 1}


def test_admission_waits_are_read_from_the_gateways_histogram():
    from loadtest.fairness.gateways import admission_waits, waits_between
    from serving.metrics import ADMISSION_WAIT

    before = admission_waits()
    ADMISSION_WAIT.labels("fq-reader", "a").observe(0.003)
    ADMISSION_WAIT.labels("fq-reader", "b").observe(20.0)
    added = waits_between(before, admission_waits())["fq-reader"]
    assert added[0.0025] == 0 and added[0.005] == 1 and added[10.0] == 1 and added[30.0] == added[float("inf")] == 2


@pytest.mark.parametrize("gc_freeze", [True, False])
def test_each_slice_starts_with_the_benchmarks_own_heap_set_aside(gc_freeze):
    """The gateways run in the benchmark's process: with the gateway's gc_freeze on, a slice's fresh admission
    also moves what the process holds (earlier slices' samples) out of the collector's way, so the gateway's
    full collections walk its own requests only; with it off, nothing is frozen."""
    import gc
    from types import SimpleNamespace

    from loadtest.fairness.gateways import BenchGateway
    from serving.settings import ServingSettings

    gc.unfreeze()
    running = SimpleNamespace(url="http://gateway", gateway=SimpleNamespace(
        settings=ServingSettings(gc_freeze=gc_freeze)))
    try:
        samples = [{"ttft_s": i / 1000} for i in range(10_000)]  # a slice's results, tracked by the collector
        bench = BenchGateway(running)
        assert (gc.get_freeze_count() >= len(samples)) is gc_freeze
        first = bench.admission
        bench.reset()
        assert bench.admission is not first and bench.admission.queue.capacity is first.queue.capacity
    finally:
        gc.unfreeze()  # the rest of the test session keeps a normal heap
