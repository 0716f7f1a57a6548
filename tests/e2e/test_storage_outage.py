"""S3 goes down: adapters already known keep serving; cold ones fail fast with 503 and Retry-After."""

from __future__ import annotations

import os
import secrets
import time

import httpx

from loadtest.harness import start_s3
from tests.e2e.helpers import complete, start_gateway, upload
from training.demo import DEMO_WORDS, demo_prompt
from training.tasks import answer


def test_known_adapters_survive_an_s3_outage(engine, demo, tmp_path, seaweed):
    # a private SeaweedFS (same credentials as the session's), so stopping it harms no other test
    own = start_s3(tmp_path / "s3", access_key=os.environ["AWS_ACCESS_KEY_ID"],
                   secret_key=os.environ["AWS_SECRET_ACCESS_KEY"])
    st = start_gateway(engine, own.endpoint, demo.base_dir, tmp_path / "cache")
    try:
        with st.admin() as admin:
            key = admin.post("/admin/tenants", json={"name": "outage"}).json()["api_key"]
        upload(st, key, "warm", demo.adapter_dirs["reverse"])
        upload(st, key, "cold", demo.adapter_dirs["shout"])
        word = DEMO_WORDS[0]
        assert complete(st, key, "warm", demo_prompt(word)).strip() == answer("reverse", word)
        own.stop()

        assert complete(st, key, "warm", demo_prompt(word)).strip() == answer("reverse", word)
        with st.client(key) as c:
            started = time.monotonic()
            r = c.post("/v1/completions", json={"model": "cold", "prompt": "x", "max_tokens": 1})
            assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
            # refused connections and botocore's short backoff: ~0.2 s; a hang on timeouts would take longer
            assert time.monotonic() - started < 5, "a cold request must fail fast"
            assert r.json()["error"]["code"] == "storage_unavailable"
        with httpx.Client(base_url=st.url, headers={"Authorization": "Bearer lpx_" + secrets.token_urlsafe(32)}) as c:
            assert c.get("/v1/models").status_code == 503  # an unknown key cannot be checked: never let in
        assert httpx.get(f"{st.url}/ready", timeout=30).status_code == 503
        assert httpx.get(f"{st.url}/health").status_code == 200
    finally:
        st.close()
        own.stop()
