"""`loraplex bench scale`: one engine, adapters of a hundred tenants, from 8 to 1,000 of them.

Random adapters of mixed ranks (8/16/64 in turn) spread over tenants (10 each), Zipf popularity over adapters
(s = 0.8 and 1.2). For each adapter count and exponent two rows: saturated (a fixed number of streamed requests
always in flight: the throughput at capacity) and open-loop Poisson arrivals at `load` x the smallest count's
saturated throughput (the latency below capacity). Per row: req/s, tok/s, TTFT p50/p99, engine loads and
evictions per 1,000 requests, where each request found its adapter (engine, disk, S3: from /metrics), gateway
and engine RSS, and sampled answers compared with the same request sent alone. After each count's rows, never
used adapters are timed cold (S3 download, verify, engine load, first token) against their bound: adapter
bytes / measured S3 bandwidth + warm TTFT. A rank-heterogeneity pair (8 adapters of rank 8, then 4 of rank 8
and 4 of rank 64) closes the run. report.py writes scale.json/.csv/.md and the plots.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from loadtest.harness import running_s3
from loadtest.scale.config import MIB, ScaleConfig, ScaleError
from loadtest.scale.driver import Target, Traffic, divergence_gap, summarize
from loadtest.scale.stack import (
    Process,
    delta,
    s3_bandwidth,
    scrape,
    start_engine,
    start_gateway,
    upload_all,
    wait_warm,
)
from loadtest.workload import make_prompt


def adapter_pool(base: Path, build: Path, cfg: ScaleConfig) -> dict[int, list[Path]]:
    """`cfg.pool` random adapters per rank on `base` (cached in `build`)."""
    from loadtest.engine_bench.artifacts import build_adapters

    return {r: build_adapters(base, build / "adapters", r, cfg.pool, seed=1000 * r) for r in cfg.ranks}


def plan(cfg: ScaleConfig, pool: dict[int, list[Path]]) -> list[tuple[str, str, Path, int]]:
    """(tenant, name, directory, rank) of every adapter: the main set, the cold probes, the rank pair."""
    out, ranks = [], cfg.ranks
    for i in range(max(cfg.adapters)):
        rank = ranks[i % len(ranks)]
        out.append((f"s{i // cfg.per_tenant:03d}", f"a{i % cfg.per_tenant}", pool[rank][(i // len(ranks)) % cfg.pool],
                    rank))
    for j in range(cfg.cold_probes * len(cfg.adapters)):
        rank = ranks[j % len(ranks)]
        out.append(("cold", f"c{j}", pool[rank][j % cfg.pool], rank))
    low, high = min(ranks), max(ranks)
    for i in range(8):
        out.append(("het", f"low{i}", pool[low][i % cfg.pool], low))
        rank = low if i < 4 else high
        out.append(("het", f"mix{i}", pool[rank][(i + 4) % cfg.pool], rank))
    return out


class ScaleRun:
    def __init__(self, cfg: ScaleConfig, gw, gateway: Process, engine: Process, targets: list[Target],
                 bandwidth: float, console):
        self.cfg, self.gw, self.gateway, self.engine, self.console = cfg, gw, gateway, engine, console
        n = max(cfg.adapters)
        main = targets[:n]
        random.Random(42).shuffle(main)  # popularity spread over tenants, the same order for every count
        self.main = main
        self.cold = [t for t in targets if t.tenant == "cold"]
        self.het = {"low": [t for t in targets if t.model.startswith("low")],
                    "mix": [t for t in targets if t.model.startswith("mix")]}
        self.bandwidth = bandwidth
        rng = random.Random(3)
        self.prompts = [make_prompt(cfg.prompt_tokens, rng) for _ in range(cfg.prompts)]
        self.rows: list[dict] = []
        self.baseline: dict[float, float] = {}  # zipf -> saturated req/s at the smallest count
        self.references: dict[int, dict[str, str]] = {}  # prompt -> weight set -> its answer alone
        self.pairs: dict[float, list[float]] = {}  # zipf -> paired rounds' throughput ratios

    def traffic(self, targets: list[Target], zipf: float, seed: int) -> Traffic:
        return Traffic(self.gw.url, targets, self.prompts, self.cfg.max_tokens, zipf, seed)

    def row(self, targets: list[Target], zipf: float, load: str, variant: str = "mixed ranks") -> dict:
        cfg = self.cfg
        traffic = self.traffic(targets, zipf, seed=len(self.rows))
        before = scrape(self.gw)
        cpu_before = self.gateway.cpu_s(), self.engine.cpu_s()
        if load == "saturated":
            samples, span = asyncio.run(traffic.closed_loop(cfg.concurrency, cfg.duration_s))
        else:
            rate = cfg.load * self.baseline[zipf]
            samples, span = asyncio.run(traffic.open_loop(rate, cfg.duration_s))
        cpu = self.gateway.cpu_s() - cpu_before[0], self.engine.cpu_s() - cpu_before[1]
        after = scrape(self.gw)
        row = {"adapters": len(targets), "zipf": zipf, "load": load, "variant": variant, **summarize(samples, span)}
        # CPU per request: on a small host the gateway's is taken from the engine's
        row["gateway_cpu_ms_per_req"], row["engine_cpu_ms_per_req"] = (
            round(1000 * c / max(1, row["sent"]), 2) for c in cpu)
        row.update(self._tiers(before, after, row["sent"]))
        row.update(self._check_solo(traffic, samples))
        row["gateway_rss_mb"], row["engine_rss_mb"] = self.gateway.rss_mb(), self.engine.rss_mb()
        self.rows.append(row)
        self.console.print(f"  N={row['adapters']:<5} zipf={zipf:<4} {load:10} {variant:12} req/s={row['req_per_s']} "
                           f"tok/s={row['tok_per_s']} TTFT p50/p99={row['ttft_p50_ms']}/{row['ttft_p99_ms']} ms "
                           f"loads/1k={row['loads_per_1k']} engine-resident={row['resident_share']['engine']} "
                           f"wrong={row['wrong_answers']}/{row['solo_checked']} near-tie={row['near_tie_flips']} "
                           f"misrouted={row['misrouted']} cpu ms/req gateway={row['gateway_cpu_ms_per_req']} "
                           f"engine={row['engine_cpu_ms_per_req']}")
        return row

    def _tiers(self, before: dict, after: dict, sent: int) -> dict:
        hits = delta(before, after, "loraplex_adapter_residency_total", result="hit")
        misses = delta(before, after, "loraplex_adapter_residency_total", result="miss")
        downloads = delta(before, after, "loraplex_cold_start_seconds_count", stage="download")
        loads = delta(before, after, "loraplex_adapter_loads_total", result="ok")
        evictions = delta(before, after, "loraplex_adapter_evictions_total")
        asked = max(1.0, hits + misses)
        s3 = min(downloads, misses)
        return {"loads_per_1k": round(1000 * loads / max(1, sent), 1),
                "evictions_per_1k": round(1000 * evictions / max(1, sent), 1),
                "resident_share": {"engine": round(hits / asked, 3), "disk": round((misses - s3) / asked, 3),
                                   "s3": round(s3 / asked, 3)},
                "engine_tier_bytes": after.get(("loraplex_tier_bytes", frozenset({("tier", "engine")}))),
                "disk_tier_bytes": after.get(("loraplex_tier_bytes", frozenset({("tier", "disk")})))}

    def _check_solo(self, traffic: Traffic, samples) -> dict:
        """Answers of up to `solo_checks` distinct (adapter, prompt) pairs against the same request alone.

        A differing answer is a near-tie flip when, in the answer alone, the first differing token's top-2
        logprobs were within `tie_tolerance` (a batch's other summation order may pick the runner-up); any
        other difference is a wrong answer. `misrouted` counts differing answers that are exactly another weight
        set's (or the base's) answer alone: served with the wrong adapter."""
        seen, out = {}, {"wrong_answers": 0, "answers_differ": 0, "near_tie_flips": 0, "misrouted": 0}
        for s in samples:
            if s.ok:
                seen.setdefault((s.target, s.prompt), s.text)
        picked = random.Random(len(self.rows)).sample(sorted(seen, key=lambda k: (k[0].tenant, k[0].model, k[1])),
                                                       min(self.cfg.solo_checks, len(seen)))
        for target, prompt in picked:
            got = seen[(target, prompt)]
            alone = asyncio.run(traffic.reference(target, prompt))
            if alone["text"] == got:
                continue
            out["answers_differ"] += 1
            gap = divergence_gap(alone, got)
            others = {w: text for w, text in self._references(traffic, prompt).items() if w != target.weights}
            hit = next((w for w, text in others.items() if text == got and text != alone["text"]), None)
            out["misrouted"] += hit is not None
            tie = hit is None and gap is not None and gap < self.cfg.tie_tolerance
            out["near_tie_flips" if tie else "wrong_answers"] += 1
            same = len(os.path.commonprefix([alone["text"], got]))
            self.console.print(f"  [{'yellow' if tie else 'red'}]answer differs[/] {target.tenant}/{target.model} "
                               f"prompt {prompt}: equal for {same} of {len(got)} characters, top-2 gap there "
                               f"{gap if gap is None else f'{gap:.2g}'}" + (f", it is {hit}'s answer" if hit else ""))
        out["solo_checked"] = len(picked)
        return out

    def _references(self, traffic: Traffic, prompt: int) -> dict[str, str]:
        """Each weight set's (and the base's) answer to `prompt` alone, asked once per run."""
        if prompt not in self.references:
            reps = {t.weights: t for t in self.main}
            refs = {w: asyncio.run(traffic.alone(t, prompt)).text for w, t in sorted(reps.items())}
            base = Target(self.main[0].tenant, self.main[0].key, "base", 0, 0, "base")
            refs["base"] = asyncio.run(traffic.alone(base, prompt)).text
            self.references[prompt] = refs
        return self.references[prompt]

    def paired_ratios(self, zipf: float) -> list[float]:
        """Token throughput of the largest count over the smallest's, saturated, in `pair_rounds` rounds of
        `pair_s` each, in the order small-large, large-small, ... (a drifting host weighs on both alike)."""
        cfg = self.cfg
        small, large = self.main[:min(cfg.adapters)], self.main[:max(cfg.adapters)]
        ratios = []
        for i in range(cfg.pair_rounds):
            tok = {}
            for targets in ((small, large) if i % 2 == 0 else (large, small)):
                traffic = self.traffic(targets, zipf, seed=20_000 + 2 * i + (targets is large))
                samples, span = asyncio.run(traffic.closed_loop(cfg.concurrency, cfg.pair_s))
                tok[len(targets)] = summarize(samples, span)["tok_per_s"]
            ratios.append(round(tok[len(large)] / tok[len(small)], 3) if tok[len(small)] else 0.0)
        self.console.print(f"  paired rounds zipf={zipf}: {len(large)} vs {len(small)} adapters, saturated token "
                           f"throughput ratios {ratios}")
        return ratios

    def cold_starts(self, count: int) -> dict:
        """Never-used adapters, one at a time on the idle stack: cold TTFT, warm TTFT, the bound, the stages."""
        probes = self.cold[: self.cfg.cold_probes]
        self.cold = self.cold[self.cfg.cold_probes:]
        traffic = self.traffic(probes, 0.0, seed=0)
        before = scrape(self.gw)
        cold, warm, bounds = [], [], []
        for t in probes:
            c = asyncio.run(traffic.alone(t, 0))
            w = asyncio.run(traffic.alone(t, 0))
            if not (c.ok and w.ok):
                raise ScaleError(f"a cold-start probe failed: {c.error or w.error}")
            cold.append(c.ttft_s)
            warm.append(w.ttft_s)
            bounds.append(t.size_bytes / self.bandwidth + w.ttft_s)
        after = scrape(self.gw)
        stages = {}
        for stage in ("resolve", "download", "verify", "engine_load", "first_token"):
            n = delta(before, after, "loraplex_cold_start_seconds_count", stage=stage)
            s = delta(before, after, "loraplex_cold_start_seconds_sum", stage=stage)
            stages[stage] = round(1000 * s / n, 2) if n else None
        out = {"cold_first_token_s": round(statistics.median(cold), 4),
               "cold_bound_s": round(statistics.median(bounds), 4), "warm_ttft_s": round(statistics.median(warm), 4),
               "cold_stages_ms": stages,
               "cold_adapter_bytes": int(statistics.median(t.size_bytes for t in probes))}
        out["cold_vs_bound"] = round(out["cold_first_token_s"] / out["cold_bound_s"], 2)
        self.console.print(f"  cold start at N={count}: {out}")
        return out

    def run(self) -> None:
        cfg = self.cfg
        for count in sorted(cfg.adapters):
            targets = self.main[:count]
            first = len(self.rows)
            if cfg.warmup_s > 0:
                warm = self.traffic(targets, min(cfg.zipfs), seed=10_000 + count)
                failed = [s for s in asyncio.run(warm.each_once(cfg.concurrency)) if not s.ok]
                if failed:
                    raise ScaleError(f"{len(failed)} warm-up requests failed, e.g. {failed[0].error}")
                asyncio.run(warm.closed_loop(cfg.concurrency, cfg.warmup_s))
            for zipf in cfg.zipfs:
                sat = self.row(targets, zipf, "saturated")
                if zipf not in self.baseline:
                    self.baseline[zipf] = sat["req_per_s"] or 1.0
                self.row(targets, zipf, f"{cfg.load:.0%}")
            cold = self.cold_starts(count)
            for row in self.rows[first:]:
                row.update(cold)
        if len(cfg.adapters) > 1 and cfg.pair_rounds > 0:
            self.pairs = {zipf: self.paired_ratios(zipf) for zipf in cfg.zipfs}
        low = self.row(self.het["low"], 0.0, "saturated", variant=f"rank {min(cfg.ranks)}")
        mix = self.row(self.het["mix"], 0.0, "saturated", variant=f"ranks {min(cfg.ranks)}+{max(cfg.ranks)}")
        mix["tok_ratio_to_uniform_rank"] = round(mix["tok_per_s"] / low["tok_per_s"], 3) if low["tok_per_s"] else None


def run_scale(out: Path, cfg: ScaleConfig, *, var_dir: Path = Path("var"), console=None) -> dict:
    """Build the adapters, start S3, the engine and the gateway, run every row; write the report into `out`."""
    from rich.console import Console
    from rich.progress import Progress

    from loadtest.scale.report import write_report
    from training.demo import build_demo

    console = console or Console()
    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with console.status("building the demo base and the random adapters"):
        base = build_demo(var_dir).base_dir
        pool = adapter_pool(base, out / "build", cfg)
    items = plan(cfg, pool)
    main_tenants = {tenant for tenant, *_ in items[: max(cfg.adapters)]}  # not the cold probes' nor the rank pair's
    disk_bytes = cfg.disk_adapters * max(sum(f.stat().st_size for f in d.iterdir()) for d in pool[max(cfg.ranks)])
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lpx-scale-")))
        s3 = stack.enter_context(running_s3(work / "s3", log_path=log_dir / "seaweed.log", key_prefix="scale"))
        bandwidth = s3_bandwidth(s3.endpoint)
        engine = start_engine(base, cfg, log_dir)
        stack.callback(engine.stop)
        from serving.engine import wait_engine_ready

        with console.status("starting the engine"):
            wait_engine_ready(engine.url, 600, engine.proc)
        gateway, gw = start_gateway(base, engine, s3.endpoint, cfg, disk_bytes, work, log_dir)
        stack.callback(gateway.stop)
        with Progress(console=console) as bar:
            task = bar.add_task(f"uploading {len(items)} adapters", total=len(items))
            targets = upload_all(gw, items, progress=lambda: bar.advance(task),
                                 warm=lambda tenant: cfg.warm_uploads and tenant in main_tenants)
        if cfg.warm_uploads:
            with console.status("loading the warm uploads into the engine"):
                console.print(f"engine tier holds {wait_warm(gw):.0f} adapters after the warm uploads")
        run = ScaleRun(cfg, gw, gateway, engine, targets, bandwidth, console)
        run.run()
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "wall_s": round(time.time() - started, 1), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0],
            "s3_bandwidth_mib_s": round(bandwidth / MIB, 1), "tenants": len({t.tenant for t in run.main}),
            "distinct_weight_sets": cfg.pool * len(cfg.ranks), "disk_tier_bytes": disk_bytes,
            "paired_throughput_ratios": {str(z): r for z, r in run.pairs.items()},
            "config": {**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "batch_slots": cfg.batch_slots}}
    return write_report(out, run.rows, meta)
