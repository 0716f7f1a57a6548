"""Separate-model mode: a tenant routed to its own engine serving a merged model, beside shared-base tenants."""

from __future__ import annotations

import pytest

from common.procs import free_port, stop_group
from serving.engine import start_engine, wait_engine_ready
from tests.e2e.helpers import complete, start_gateway, upload
from tests.helpers.hf_reference import load_merged
from training.demo import DEMO_WORDS, demo_prompt
from training.tasks import answer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def merged_engine(demo, engine, tmp_path_factory):
    """A second engine serving base+reverse merged (PEFT merge) as a plain model named 'rev-merged'."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("merged")
    load_merged(demo.base_dir, demo.adapter_dirs["reverse"]).save_pretrained(out)
    AutoTokenizer.from_pretrained(demo.base_dir).save_pretrained(out)
    port = free_port()
    settings = engine.model_copy(update={"base_model": out, "base_name": "rev-merged",
                                         "engine_url": f"http://127.0.0.1:{port}"})
    proc = start_engine(settings, port, out / "engine.log")
    try:
        wait_engine_ready(settings.engine_url, 420, proc)
    except Exception:
        stop_group(proc.pid)
        pytest.fail((out / "engine.log").read_text()[-3000:])
    yield settings.engine_url
    stop_group(proc.pid)


def test_dedicated_tenant_is_routed_to_its_own_engine(engine, merged_engine, seaweed, demo, tmp_path):
    shared = engine.model_copy(update={"dedicated_engines": {"solo": {"model": "rev-merged", "url": merged_engine}}})
    st = start_gateway(shared, seaweed.endpoint, demo.base_dir, tmp_path / "cache")
    try:
        with st.admin() as admin:
            solo = admin.post("/admin/tenants", json={"name": "solo"}).json()["api_key"]
            other = admin.post("/admin/tenants", json={"name": "other"}).json()["api_key"]
        upload(st, other, "shout", demo.adapter_dirs["shout"])
        for word in DEMO_WORDS[:3]:
            assert complete(st, solo, "rev-merged", demo_prompt(word)).strip() == answer("reverse", word)
            assert complete(st, other, "shout", demo_prompt(word)).strip() == answer("upper", word)
            assert complete(st, solo, "base", demo_prompt(word)).strip() == answer("echo", word)
        with st.client(other) as c:  # another tenant cannot reach the dedicated model
            r = c.post("/v1/completions", json={"model": "rev-merged", "prompt": "x", "max_tokens": 1})
            assert r.status_code == 404
        with st.client(solo) as c:
            assert "rev-merged" in {m["id"] for m in c.get("/v1/models").json()["data"]}
    finally:
        st.close()
