"""`loraplex bench routing`: adapter-affinity routing vs no affinity on Ray Serve, under Zipf traffic.

A local Ray cluster with N engine replicas (each its own vLLM engine on the demo model, each keeping at
most `capacity` adapters), many adapters (the demo adapters published under many names: distinct
adapter ids, same weights, so every answer is still checkable), and one Zipf-distributed request
sequence replayed in each mode:

- affinity: the adapter id is the request's multiplexed model id, so Ray prefers a replica that holds it
  (what the gateway does by default);
- no_affinity: no model id, Ray's default routing (power of two choices by queue length); the replica
  loads whatever adapter it is sent.

Requests go through the gateway's own routing code (serving/transport/ray.py `RayTransport.call`) straight to the
engine deployment's handle; auth and registry resolution are left out because they do not route.
Measured per mode after a warm-up: adapter loads (replica counters), loads per 1,000 requests, the share of
requests whose replica already held the adapter, evictions, throughput and latency; every answer is
checked against the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from loadtest.harness import RunningGateway, ensure_bucket, running_s3
from loadtest.report import percentile
from loadtest.routing_report import markdown, plot

MODES = ("affinity", "no_affinity")
ROUTING_OF = {"affinity": "affinity", "no_affinity": "random"}


@dataclass
class RoutingSpec:
    replicas: int = 2
    adapters: int = 24
    capacity: int = 4  # adapters per replica
    requests: int = 400  # measured, per mode
    warmup: int = 100  # per mode, not measured
    concurrency: int = 4
    zipf_s: float = 1.0
    max_tokens: int = 8
    seed: int = 0


def zipf_sequence(n_items: int, n: int, s: float, seed: int) -> list[int]:
    """`n` draws of item indices with P(rank k) ∝ 1/k^s; which item gets which rank is shuffled by `seed`."""
    rng = random.Random(seed)
    ranks = list(range(n_items))
    rng.shuffle(ranks)
    weights = [1 / (k + 1) ** s for k in range(n_items)]
    return [ranks[k] for k in rng.choices(range(n_items), weights=weights, k=n)]


def lru_model(seq: list[int], mode: str, capacity: int, replicas: int, seed: int = 0) -> tuple[float, float]:
    """What ideal routing would give on `seq`: (share of requests finding the adapter resident, loads per 1k).

    Each replica an LRU of `capacity`; affinity sends a request to a replica holding its adapter, else to a
    random one; no_affinity always to a random one. Sequential and instantly informed, unlike the real
    thing (concurrent requests, adapter lists pushed every 0.1 s): the gap to the measured row is that cost.
    """
    rng = random.Random(seed)
    caches: list[dict[int, None]] = [{} for _ in range(replicas)]
    hits = 0
    for item in seq:
        holder = next((c for c in caches if item in c), None) if mode == "affinity" else None
        cache = holder if holder is not None else rng.choice(caches)
        if item in cache:
            hits += 1
            del cache[item]  # re-insert: most recently used last
        elif len(cache) >= capacity:
            del cache[next(iter(cache))]
        cache[item] = None
    n = len(seq)
    return round(hits / n, 3), round(1000 * (n - hits) / n, 1)


def summarize(mode: str, results: list[dict], before: dict, after: dict, wall_s: float) -> dict:
    """One row of the report from per-request results and the replicas' counters before/after."""
    loads = sum(after[r]["loads"] - before.get(r, {"loads": 0})["loads"] for r in after)
    evictions = sum(after[r]["evictions"] - before.get(r, {"evictions": 0})["evictions"] for r in after)
    n = len(results)
    lat = [r["latency_s"] for r in results]
    per_replica: dict[str, int] = {}
    for r in results:
        per_replica[r["replica"]] = per_replica.get(r["replica"], 0) + 1
    return {
        "mode": mode, "requests": n, "adapter_loads": loads, "loads_per_1k": round(1000 * loads / n, 1),
        "resident_share": round(sum(r["resident"] for r in results) / n, 3), "evictions": evictions,
        "wrong_answers": sum(not r["correct"] for r in results),
        "req_per_s": round(n / wall_s, 2), "latency_p50_ms": round(1000 * percentile(lat, 50), 1),
        "latency_p99_ms": round(1000 * percentile(lat, 99), 1),
        "per_replica_requests": per_replica, "replicas_changed": sorted(set(before) ^ set(after)),
    }


async def _drive(transport, jobs: list[dict], concurrency: int, max_tokens: int) -> tuple[list[dict], float]:
    from training.demo import demo_prompt
    from training.tasks import answer

    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    results: list[dict] = []

    async def worker():
        while not queue.empty():
            job = queue.get_nowait()
            body = {"model": job["lora"], "prompt": demo_prompt(job["word"]), "max_tokens": max_tokens,
                    "temperature": 0}
            t0 = time.monotonic()
            out = await transport.call("/v1/completions", body, job["lora"], stream=False)
            text = out["body"]["choices"][0]["text"] if out.get("status") == 200 else ""
            results.append({"replica": out.get("replica"), "resident": bool(out.get("resident")),
                            "latency_s": time.monotonic() - t0,
                            "correct": text.strip() == answer(job["task"], job["word"])})

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, time.monotonic() - t0


def run_routing(out: Path, spec: RoutingSpec | None = None, console: Console | None = None,
                var_dir: Path = Path("var")) -> dict:
    """Stand up S3 + Ray Serve, publish the adapters, replay the traffic per mode; write JSON, PNG, md."""
    from common.procs import free_port
    from serving import ray_app
    from serving.ray_settings import RaySettings
    from serving.residency import engine_lora_name
    from serving.settings import ServingSettings
    from serving.transport.ray import RayTransport
    from training.demo import DEMO_TENANTS, DEMO_WORDS, build_demo

    spec = spec or RoutingSpec()
    console = console or Console(stderr=True)
    out.mkdir(parents=True, exist_ok=True)
    demo = build_demo(var_dir, console=console)
    saved = dict(os.environ)
    (out / "log").mkdir(parents=True, exist_ok=True)
    stack = contextlib.ExitStack()  # SeaweedFS, stopped after Ray
    weed = stack.enter_context(running_s3(out / "s3", log_path=out / "log" / "seaweed.log", key_prefix="lpxbench"))
    try:
        bucket, admin = "routing-" + secrets.token_hex(3), "admin-" + secrets.token_hex(8)
        ensure_bucket(weed.endpoint, bucket)
        os.environ.update(LORAPLEX_S3_ENDPOINT=weed.endpoint, LORAPLEX_S3_BUCKET=bucket,
                          LORAPLEX_BASE_MODEL=str(demo.base_dir.resolve()), LORAPLEX_ADMIN_KEY=admin,
                          LORAPLEX_CACHE_DIR=str((out / "cache").resolve()), LORAPLEX_GATEWAY_PORT=str(free_port()),
                          LORAPLEX_ADMIN_PORT=str(free_port()),
                          LORAPLEX_MAX_LORAS=str(min(4, spec.capacity)),
                          LORAPLEX_MAX_CPU_LORAS=str(max(spec.capacity, 4)))
        rs = RaySettings(engine_replicas=spec.replicas, adapters_per_replica=spec.capacity,
                         num_cpus=spec.replicas + 2, log_dir=(out / "log").resolve())
        import logging

        import ray

        ray.init(num_cpus=rs.num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 runtime_env={"env_vars": ray_app.forwarded_env()})  # replicas' logs stay in Ray's log dir
        console.print(f"starting Ray Serve: {spec.replicas} engine replicas, {spec.capacity} adapters each …")
        t0 = time.monotonic()
        url = ray_app.deploy(rs, ServingSettings())
        console.print(f"up in {time.monotonic() - t0:.0f}s; publishing {spec.adapters} adapters …")
        gw = RunningGateway(url, admin, admin_url=ray_app.admin_url(ServingSettings()))  # the ingress' operator plane
        adapters = _publish(gw, demo, DEMO_TENANTS, spec.adapters)
        loras = [dict(a, lora=engine_lora_name(a["tenant"], a["name"], a["version"])) for a in adapters]
        order = zipf_sequence(len(loras), spec.warmup + spec.requests, spec.zipf_s, spec.seed)
        words = random.Random(spec.seed + 1).choices(DEMO_WORDS, k=len(order))
        jobs = [{**loras[i], "word": w} for i, w in zip(order, words)]
        rows = []
        for mode in MODES:
            transport = RayTransport(ray_app.engine_handle(rs), rs.model_copy(update={"routing": ROUTING_OF[mode]}))
            console.print(f"[bold]{mode}[/]: {spec.warmup} warm-up + {spec.requests} measured requests, "
                          f"concurrency {spec.concurrency} …")
            asyncio.run(_drive(transport, jobs[:spec.warmup], spec.concurrency, spec.max_tokens))
            time.sleep(1)  # the replicas' adapter lists reach the router
            before = ray_app.replica_infos(rs)
            results, wall = asyncio.run(_drive(transport, jobs[spec.warmup:], spec.concurrency, spec.max_tokens))
            after = ray_app.replica_infos(rs)
            row = summarize(mode, results, before, after, wall)
            row["held_after"] = {r: i["resident"] for r, i in after.items()}
            row["model_resident_share"], row["model_loads_per_1k"] = lru_model(
                order, mode, spec.capacity, spec.replicas, spec.seed)
            rows.append(row)
            console.print(f"  loads/1k {row['loads_per_1k']}, resident {row['resident_share']:.0%}, "
                          f"{row['req_per_s']} req/s, p99 {row['latency_p99_ms']} ms, wrong {row['wrong_answers']}")
    finally:
        try:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
        except Exception:
            pass
        stack.close()
        os.environ.clear()
        os.environ.update(saved)
    report = {"spec": asdict(spec), "rows": rows,
              "machine": {"cpus": os.cpu_count(), "note": "engines share the host's cores"},
              "modes": {"affinity": "adapter id as Ray Serve multiplexed model id",
                        "no_affinity": "no model id: Ray Serve's default power-of-two-choices routing; "
                                       "the replica loads the adapter on demand"}}
    (out / "routing.json").write_text(json.dumps(report, indent=2))
    (out / "routing.md").write_text(markdown(report) + "\n")
    plot(report, out / "routing.png")
    return report


def _publish(gw: RunningGateway, demo, tenants, n: int) -> list[dict]:
    """`n` adapters: the demo adapters under numbered names, spread over the demo tenants."""
    keys = {spec["tenant"]: gw.add_tenant(spec["tenant"]) for spec in tenants}
    out = []
    for i in range(n):
        spec = tenants[i % len(tenants)]
        name = f"{spec['adapter']}-{i:03d}"
        version = gw.publish(keys[spec["tenant"]], name, demo.adapter_dirs[spec["adapter"]])["version"]
        out.append({"tenant": spec["tenant"], "name": name, "version": version, "task": spec["task"]})
    return out
