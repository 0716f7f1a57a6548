"""loadtest/hotswap/run.py: the offered rate is calibrated once and its burst reused (locust faked)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from rich.console import Console

from loadtest.harness import RunningGateway
from loadtest.hotswap import run as run_module
from loadtest.hotswap.config import Settings
from loadtest.hotswap.run import Run
from loadtest.workload import TenantSpec

pytestmark = pytest.mark.unit


def test_the_calibration_burst_is_also_the_first_rows_capacity(tmp_path: Path, monkeypatch):
    runs = []

    def fake_locust(url, workload, duration_s, prefix):  # two answers within one second: 2 req/s
        runs.append(prefix.name)
        return [{"tenant": "a", "sent": 0.0, "status": 200, "ttft": 0.1, "latency": 1.0, "tokens": 8}] * 2

    monkeypatch.setattr(run_module, "run_locust", fake_locust)
    run = Run(Settings(tenants=(2,), load=0.5), tmp_path, None, "", Console(quiet=True), "t")
    shutil.rmtree(run.work)
    gw = RunningGateway("http://127.0.0.1:1", "admin", tenants={"a": TenantSpec("a", "k", "m")})
    result = run.measure(gw, "hotswap-2", run.calibrate(gw))
    assert runs == ["calibration", "hotswap-2"]  # no second burst for the row that was just calibrated
    assert run.rate == 1.0 and result["capacity_req_per_s"] == 2.0 and result["offered_req_per_s"] == 1.0
    run.measure(gw, "hotswap-4")
    assert runs[2:] == ["hotswap-4-burst", "hotswap-4"]
