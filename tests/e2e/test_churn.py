"""Adapter churn: more adapters in use than the engine's slots, loads and evictions while requests run.

The session engine batches at most 4 adapters (--max-loras 4); the gateways here keep even fewer
registered (max_cpu_loras 3, or 1), so serving 8 adapters at once forces loads and LRU evictions
mid-traffic. Every answer must equal the same request served alone.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.e2e.helpers import complete_concurrently, delta, new_tenant, running_gateway, scrape, start_gateway, upload
from training.demo import DEMO_WORDS, demo_prompt
from training.tasks import answer

TASKS = {"reverse": "reverse", "shout": "upper", "caesar": "caesar"}  # demo adapter dir -> its task
# (tenant slot, adapter name, demo adapter dir): the same bytes under several tenants are distinct engine adapters
ADAPTERS = [(0, "a", "reverse"), (0, "b", "shout"), (0, "c", "caesar"), (1, "a", "shout"), (1, "b", "caesar"),
            (1, "c", "reverse"), (2, "x", "caesar"), (2, "y", "reverse")]
MAX_TOKENS = 32


@pytest.fixture(scope="module")
def churn_gateway(engine, seaweed, demo, tmp_path_factory):
    yield from running_gateway(engine, seaweed, demo, tmp_path_factory, "cache-churn", max_cpu_loras=3, max_inflight=6)


def _body(model: str, word: str, **kw) -> dict:
    return {"model": model, "prompt": demo_prompt(word), "max_tokens": MAX_TOKENS, "temperature": 0, **kw}


def _complete(st, key: str, body: dict) -> str:
    with st.client(key) as c:
        r = c.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_more_adapters_than_slots_all_answers_equal_solo(churn_gateway, demo):
    st = churn_gateway
    tenants = [new_tenant(st, prefix="churn") for _ in range(3)]
    for slot, name, src in ADAPTERS:
        upload(st, tenants[slot][1], name, demo.adapter_dirs[src])
    words = DEMO_WORDS[:3]
    jobs, expected_task = [], []
    for word in words:
        for slot, name, src in ADAPTERS:
            jobs.append((tenants[slot][1], _body(name, word)))
            expected_task.append((TASKS[src], word))
        # a base request among them, kept long (ignore_eos): batches mix base and several adapters
        jobs.append((tenants[0][1], _body("base", word, ignore_eos=True, max_tokens=96)))
        expected_task.append(("echo", word))
    solo = [_complete(st, key, body) for key, body in jobs]  # one at a time: the reference
    for out, (task, word) in zip(solo, expected_task):
        assert out.strip().startswith(answer(task, word)), (task, word, out)  # routed to the right weights
    before = scrape(st)
    mixed = asyncio.run(complete_concurrently(st, jobs[::-1]))[::-1]  # another order than the solo pass
    after = scrape(st)
    for i, (out, ref) in enumerate(zip(mixed, solo)):
        assert out == ref, (jobs[i][1]["model"], expected_task[i], out, ref)
    # churn really happened: adapters were evicted and loaded again while traffic ran
    evictions = sum(delta(before, after, "loraplex_adapter_evictions_total", tenant=t) for t, _ in tenants)
    loads = sum(delta(before, after, "loraplex_adapter_loads_total", tenant=t, result="ok") for t, _ in tenants)
    assert evictions >= 1 and loads >= 1, (evictions, loads)
    assert len(st.gateway.residency.resident) <= 3 + 6  # over the bound only by adapters with requests in flight


def test_alias_move_mid_flight_old_requests_finish_on_old_version(engine, seaweed, demo, tmp_path):
    """`prod` moves while a stream runs: it ends on the version it started with; new requests get the new one.

    The gateway keeps a single adapter registered, so loading the new version must not evict the old one
    while its request is still running."""
    st = start_gateway(engine.model_copy(update={"max_cpu_loras": 1}), seaweed.endpoint, demo.base_dir,
                               tmp_path / "cache")
    try:
        tenant, key = new_tenant(st, prefix="alias")
        v1 = upload(st, key, "flip", demo.adapter_dirs["reverse"])["version"]
        v2 = upload(st, key, "flip", demo.adapter_dirs["shout"])["version"]
        with st.client(key) as c:
            first = {"version": v1, "expected_version": None}
            assert c.put("/v1/adapters/flip/aliases/prod", json=first).status_code == 200
        word = DEMO_WORDS[1]
        long = _body("flip", word, max_tokens=200, ignore_eos=True)
        solo_v1 = _complete(st, key, {**long, "model": f"flip@{v1}"})
        assert solo_v1.strip().startswith(answer("reverse", word))
        for attempt in range(5):  # a fast host may finish the stream before v2 loads: no overlap, try again
            if attempt:
                with st.client(key) as c:
                    assert c.put("/v1/adapters/flip/aliases/prod",
                                 json={"version": v1, "expected_version": v2}).status_code == 200
            with st.client(key) as c, c.stream("POST", "/v1/completions", json={**long, "stream": True}) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                first = next(line for line in lines if line.startswith("data:"))
                moved = c.put("/v1/adapters/flip/aliases/prod", json={"version": v2, "expected_version": v1})
                assert moved.status_code == 200, moved.text
                started = time.monotonic()
                new = _complete(st, key, _body("flip", word, max_tokens=16))
                assert new.strip() == answer("upper", word)  # the alias move took effect at once for new requests
                overlapped = st.gateway.admission.running[tenant] > 0  # the stream still holds its slot
                prefix = f"lpx:{tenant}:"
                residency = st.gateway.residency
                resident = {n.rsplit(":", 1)[1] for n in residency.resident if n.startswith(prefix)}
                loaded = {n.rsplit(":", 1)[1] for n in residency.loaded_at if n.startswith(prefix)}
                events = [json.loads(first[5:])] + [json.loads(line[5:]) for line in lines
                                                     if line.startswith("data:") and line.strip() != "data: [DONE]"]
            assert time.monotonic() - started < 60
            streamed = "".join(e["choices"][0]["text"] for e in events if e.get("choices"))
            assert streamed == solo_v1  # every token of the in-flight request came from v1
            assert events[-1]["choices"][0]["finish_reason"] == "length"
            if overlapped:
                # capacity 1, yet v2 was loaded beside v1 and v1 stayed registered: it could not be evicted
                # for v2 while the stream ran on it (once v2's request ended, the tier shrinks back to its
                # capacity by unloading v2, the one not in use)
                assert v1 in resident and v2 in loaded, (resident, loaded)
                break
        else:
            pytest.fail("the stream always ended before the new version loaded: the overlap was never tested")
    finally:
        st.close()
