"""More adapters than every residency tier holds, under concurrent traffic, on the real engine and SeaweedFS.

60 adapters (3 tenants x 20 names, each the bytes of one of the three demo adapters) against a gateway whose
tiers hold fewer: the engine batches 4 (the session engine's --max-loras), the gateway keeps at most 5
adapters' bytes registered in the engine (the byte budget binds before its count of 6), and its disk tier
holds 16 adapters' bytes; 4 requests at once reach the engine (the rest queue and prefetch). Two adapters are
pinned (one by its prod alias, one by version). Every concurrent answer must equal the same request served
alone, the pinned adapters must never be evicted nor loaded again, and the pins must be
what a restarted gateway reads back from the registry.
"""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from common.peft_format import ADAPTER_FILES
from registry.pins import PinRegistry
from registry.store import ObjectStore
from serving.residency import engine_lora_name
from tests.e2e.helpers import complete_concurrently, delta, new_tenant, running_gateway, scrape, upload
from tests.waiting import wait_until
from training.demo import DEMO_WORDS, demo_prompt
from training.tasks import answer

TASKS = {"reverse": "reverse", "shout": "upper", "caesar": "caesar"}
SOURCES = list(TASKS)
NAMES = [f"ad{i:02d}" for i in range(20)]
MAX_TOKENS = 24


def _adapter_bytes(demo) -> int:
    return max(sum((demo.adapter_dirs[s] / f).stat().st_size for f in ADAPTER_FILES) for s in SOURCES)


@pytest.fixture(scope="module")
def tiered(engine, seaweed, demo, tmp_path_factory):
    size = _adapter_bytes(demo) + 64  # slack for the file system's view of the same bytes
    yield from running_gateway(engine, seaweed, demo, tmp_path_factory, "cache-tiers", max_cpu_loras=6,
                               engine_adapter_max_bytes=5 * size, cache_max_bytes=16 * size, max_inflight=4,
                               noop_probe=False)


def _body(model: str, word: str) -> dict:
    return {"model": model, "prompt": demo_prompt(word), "max_tokens": MAX_TOKENS, "temperature": 0}


def _src(tenant_index: int, name_index: int) -> str:
    return SOURCES[(tenant_index + name_index) % 3]


def test_sixty_adapters_over_small_tiers_answer_as_alone_and_pins_stay(tiered, engine, demo):
    st = tiered
    with httpx.Client(base_url=engine.engine_url, timeout=60) as eng:  # what earlier gateways left registered
        for m in eng.get("/v1/models").json()["data"]:
            if m["id"].startswith("lpx:"):
                eng.post("/v1/unload_lora_adapter", json={"lora_name": m["id"]})
    tenants = [new_tenant(st, prefix="tier") for _ in range(3)]
    versions = {}
    for t, (_tenant, key) in enumerate(tenants):
        for n, name in enumerate(NAMES):
            versions[(t, n)] = upload(st, key, name, demo.adapter_dirs[_src(t, n)])["version"]
    names, after = [], None  # the listing by page: 20 adapters in pages of 8
    with st.client(tenants[2][1]) as c:
        while True:
            page = c.get("/v1/adapters", params={"limit": 8, **({"after": after} if after else {})}).json()
            names += [a["name"] for a in page["data"]]
            if not page["has_more"]:
                break
            after = page["next"]
    assert names == NAMES
    # pins: tenant 0's ad00 by its prod alias, tenant 1's ad01 by version
    with st.client(tenants[0][1]) as c:
        assert c.put("/v1/adapters/ad00/aliases/prod", json={"version": versions[(0, 0)]}).status_code == 200
    with st.admin() as c:
        r0 = c.put(f"/admin/pins/{tenants[0][0]}/ad00/prod")
        r1 = c.put(f"/admin/pins/{tenants[1][0]}/ad01/{versions[(1, 1)]}")
        assert r0.status_code == 200 and r1.status_code == 200, (r0.text, r1.text)
        assert r0.json()["resident"] and r0.json()["version"] == versions[(0, 0)]
        bad = c.put(f"/admin/pins/{tenants[0][0]}/nosuch/prod")
        assert bad.status_code == 404, bad.text
    pinned = [(0, 0), (1, 1)]
    pinned_names = {engine_lora_name(tenants[t][0], NAMES[n], versions[(t, n)]) for t, n in pinned}
    assert pinned_names <= set(st.gateway.residency.resident)

    words = DEMO_WORDS[:2]
    solo = {}  # (source, word) -> the answer served alone (same bytes, same answer, whatever the name)
    for src in SOURCES:
        t, n = next((t, n) for (t, n) in versions if _src(t, n) == src)
        for word in words:
            with st.client(tenants[t][1]) as c:
                r = c.post("/v1/completions", json=_body(NAMES[n], word))
            assert r.status_code == 200, r.text
            solo[(src, word)] = r.json()["choices"][0]["text"]
            assert solo[(src, word)].strip().startswith(answer(TASKS[src], word)), (src, word, solo[(src, word)])

    rng = random.Random(7)
    jobs = [(t, n, w) for (t, n) in versions for w in words]  # every adapter, every word
    jobs += [(t, n, rng.choice(words)) for t, n in pinned for _ in range(10)]  # the pinned ones are busy too
    rng.shuffle(jobs)
    before = scrape(st)
    downloads_before = st.gateway.cache.stats["downloads"]
    out = asyncio.run(complete_concurrently(st, [(tenants[t][1], _body(NAMES[n], w)) for t, n, w in jobs]))
    after = scrape(st)
    for (t, n, w), text in zip(jobs, out):
        assert text == solo[(_src(t, n), w)], (tenants[t][0], NAMES[n], w, text)

    # every tier was overrun: engine loads and evictions, disk evictions and downloads again
    loads = sum(delta(before, after, "loraplex_adapter_loads_total", tenant=t, result="ok") for t, _ in tenants)
    evictions = sum(delta(before, after, "loraplex_adapter_evictions_total", tenant=t) for t, _ in tenants)
    assert loads >= 40 and evictions >= 30, (loads, evictions)
    assert st.gateway.cache.stats["evictions"] >= 30
    assert st.gateway.cache.stats["downloads"] - downloads_before >= 40
    # the pinned adapters: never evicted, never loaded again
    for t, n in pinned:
        labels = {"tenant": tenants[t][0], "adapter": NAMES[n]}
        assert delta(before, after, "loraplex_adapter_loads_total", **labels) == 0, labels
        assert delta(before, after, "loraplex_adapter_evictions_total", **labels) == 0, labels
    assert pinned_names <= set(st.gateway.residency.resident)
    # idle again: within the byte budget (only requests in flight may exceed it), the gauges say what is held
    res, budget = st.gateway.residency, st.gateway.settings.engine_adapter_max_bytes
    wait_until(lambda: res.usage().bytes <= budget and res.usage().count <= 6, timeout=30,
               what="the engine tier back within its budgets once idle")
    assert after[("loraplex_tier_adapters", frozenset({("tier", "pinned")}))] == 2
    assert st.gateway.cache.total_bytes() <= st.gateway.settings.cache_max_bytes
    assert delta(before, after, "loraplex_cold_start_seconds_count", stage="download") >= 40

    # a restarted gateway reads the same pins from the registry
    pins = PinRegistry(ObjectStore(st.gateway.settings)).list()
    assert {(p.tenant, p.name, p.ref) for p in pins} == {
        (tenants[0][0], "ad00", "prod"), (tenants[1][0], "ad01", versions[(1, 1)])}

    # the prod pin follows its alias: the new version is loaded at the move, the old one released
    new = upload(st, tenants[0][1], "ad00", demo.adapter_dirs[_src(0, 1)])["version"]
    with st.client(tenants[0][1]) as c:
        moved = c.put("/v1/adapters/ad00/aliases/prod", json={"version": new, "expected_version": versions[(0, 0)]})
        assert moved.status_code == 200, moved.text
    new_name = engine_lora_name(tenants[0][0], "ad00", new)
    assert new_name in st.gateway.residency.resident and new_name in st.gateway.tiers.pinned
    assert engine_lora_name(tenants[0][0], "ad00", versions[(0, 0)]) not in st.gateway.tiers.pinned
    with st.admin() as c:
        listed = c.get("/admin/pins", params={"tenant": tenants[0][0]}).json()["data"]
        assert [(p["name"], p["ref"], p["version"]) for p in listed] == [("ad00", "prod", new)]
        assert c.delete(f"/admin/pins/{tenants[0][0]}/ad00/prod").status_code == 204
        assert c.delete(f"/admin/pins/{tenants[1][0]}/ad01/{versions[(1, 1)]}").status_code == 204
    assert not st.gateway.tiers.pinned


def test_upload_with_warm_is_resident_before_its_first_request(tiered, demo):
    st = tiered
    tenant, key = new_tenant(st, prefix="warm")
    with st.client(key) as c:
        files = [("files", (f, (demo.adapter_dirs["shout"] / f).read_bytes())) for f in ADAPTER_FILES]
        r = c.post("/v1/adapters/hot/versions", params={"warm": "true"}, files=files)
    assert r.status_code == 201, r.text
    name = engine_lora_name(tenant, "hot", r.json()["version"])
    wait_until(lambda: name in st.gateway.residency.resident, timeout=60, what="the warmed adapter to be loaded")
