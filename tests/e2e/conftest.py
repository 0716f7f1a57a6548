"""The whole stack for end-to-end tests: a real vLLM engine, the gateway over real HTTP, demo tenants."""

from __future__ import annotations

import pytest

from common.procs import free_port, stop_group
from serving.engine import start_engine, wait_engine_ready
from serving.settings import ServingSettings
from tests.e2e.helpers import start_gateway
from training.demo import DEMO_TENANTS


@pytest.fixture(scope="session")
def engine(demo, tmp_path_factory):
    """One vLLM engine (CPU, LoRA and runtime loading on) for the session."""
    port = free_port()
    settings = ServingSettings(base_model=demo.base_dir, engine_url=f"http://127.0.0.1:{port}",
                               max_loras=4, max_cpu_loras=8)
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    proc = start_engine(settings, port, log)
    try:
        wait_engine_ready(settings.engine_url, 420, proc)
    except Exception:
        stop_group(proc.pid)
        pytest.fail(f"the vLLM engine did not start:\n{log.read_text()[-4000:]}")
    yield settings
    stop_group(proc.pid)


@pytest.fixture(scope="session")
def stack(engine, seaweed, demo, tmp_path_factory):
    """The gateway on a free port in front of the session engine and S3, with the demo tenants published."""
    st = start_gateway(engine, seaweed.endpoint, demo.base_dir, tmp_path_factory.mktemp("cache"))
    st.add_tenants(DEMO_TENANTS, demo.adapter_dirs)
    yield st
    st.close()


