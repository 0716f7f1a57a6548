"""One benchmark run: its state, the offered rate (calibrated once), each row's capacity burst and timed
Poisson run, and the three modes' rows (hotswap, reload, separate)."""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import httpx

from loadtest.harness import RunningGateway
from loadtest.hotswap.artifacts import Artifacts
from loadtest.hotswap.config import BenchError, Settings
from loadtest.hotswap.engines import Engine
from loadtest.hotswap.load import add_tenants, bench_gateway, run_locust, specs, timed_request, unload_own
from loadtest.workload import TenantSpec, Workload, summarize


class Run:
    """State of one benchmark run: artifacts, S3, engines, the rows so far."""

    def __init__(self, cfg: Settings, out: Path, art: Artifacts, s3_endpoint: str, console, tag: str):
        self.cfg, self.out, self.art, self.s3, self.console, self.tag = cfg, out, art, s3_endpoint, console, tag
        self.rows: list[dict] = []
        self.rate = cfg.rate
        self.work = Path(tempfile.mkdtemp(prefix="lpx-hotswap-"))
        self.log_dir = out / "logs"
        self.hot_rss: dict[int, float] = {}
        self.load_start = round(os.getloadavg()[0], 2)  # other work on the host distorts every number
        self.calibration: dict | None = None  # set by calibrate()
        self.budget_mb: float | None = None  # set by the separate rows, with:
        self.per_engine_mb: float | None = None

    # -- helpers
    def workload(self, tenants: list[TenantSpec], rate: float | None = None) -> Workload:
        return Workload(tenants=tuple(tenants), rate=rate or self.rate, zipf=self.cfg.zipf,
                        prompt_tokens=self.cfg.prompt_tokens, max_tokens=self.cfg.max_tokens,
                        drain_s=self.cfg.drain_s, max_outstanding=max(512, self.cfg.burst * 2))

    def names(self, n: int) -> list[str]:
        return [f"{self.tag}-t{i}" for i in range(n)]

    def burst(self, gw: RunningGateway, name: str) -> dict:
        """The summary of `burst` requests at once: the saturated throughput of what `gw` serves."""
        burst = self.workload(specs(gw), rate=float(self.cfg.burst))
        return summarize(run_locust(gw.url, burst, 1.0, self.out / "locust" / name))

    def measure(self, gw: RunningGateway, name: str, cap: dict | None = None) -> dict:
        """Capacity burst (optional; `cap`: one just measured), then the timed Poisson run; returns its summary."""
        extra = {}
        if self.cfg.capacity:
            cap = cap or self.burst(gw, f"{name}-burst")
            extra["capacity_req_per_s"] = cap["req_per_s"]
            extra["capacity_tok_per_s"] = cap["tok_per_s"]
        samples = run_locust(gw.url, self.workload(specs(gw)), self.cfg.duration_s, self.out / "locust" / name)
        result = summarize(samples)
        per_tenant = {}
        for t in specs(gw):
            mine = [s for s in samples if s["tenant"] == t.name]
            per_tenant[t.name] = {"sent": len(mine), "ok": sum(s["status"] == 200 for s in mine)}
        return {**result, **extra, "offered_req_per_s": round(self.rate, 3), "per_tenant": per_tenant,
                "arrived_req_per_s": round(len(samples) / self.cfg.duration_s, 3),  # this run's Poisson draw
                "errors": sorted({s["error"].split(":")[0] for s in samples if s.get("error")})[:5]}

    def row(self, mode: str, n: int, **kw) -> dict:
        row = {"mode": mode, "tenants": n, "fits": True, "req_per_s": None, "tok_per_s": None, "ttft_p50_ms": None,
               "ttft_p99_ms": None, "latency_p99_ms": None, "engine_rss_mb": None, "cold_start_s": None,
               "storage_mb_per_tenant": None, "variant": "all_tenants", "engines": None, "tenants_served": n}
        row.update(kw)
        self.rows.append(row)
        rps = row["req_per_s"]
        self.console.print(f"  [bold]{mode:8}[/] N={n:<2} {row['variant']:12} fits={row['fits']!s:5} "
                           f"req/s={rps if rps is not None else '-':<7} TTFT p99={row['ttft_p99_ms']} ms "
                           f"RSS={row['engine_rss_mb']} MiB cold={row['cold_start_s']} s")
        return row

    def calibrate(self, gw: RunningGateway) -> dict:
        """Set the offered rate for every row: `load` x the saturated throughput of hotswap at the smallest N.

        Returns the burst's summary.
        """
        cap = self.burst(gw, "calibration")
        if not cap["req_per_s"]:
            raise BenchError("calibration burst served nothing: see " + str(self.out / "locust"))
        rate = round(self.cfg.load * cap["req_per_s"], 2)
        self.console.print(f"calibration: hotswap capacity {cap['req_per_s']:.1f} req/s at N={len(gw.tenants)} → "
                           f"offered rate {rate} req/s (load {self.cfg.load}) for every row")
        self.calibration = {"capacity_req_per_s": cap["req_per_s"], "tenants": len(gw.tenants), "load": self.cfg.load}
        self.rate = rate
        return cap

    # -- (A) hotswap
    def hotswap(self, hot: Engine, n: int) -> None:
        gw = bench_gateway(self.s3, self.art.base, hot.url, self.work, self.cfg.rank, max(self.cfg.tenants),
                           self.cfg.max_inflight)
        names = self.names(n)
        try:
            add_tenants(gw, [f"{x}-hot" for x in names], ["adapter"] * n, self.art.adapters[:n])
            cold = [timed_request(gw, t, self.cfg.prompt_tokens) for t in specs(gw)]  # download + load
            warm = [timed_request(gw, t, self.cfg.prompt_tokens) for t in specs(gw)]
            cap = self.calibrate(gw) if self.rate is None else None  # its burst is this row's capacity too
            rss0, pss0 = hot.memory_mb()
            result = self.measure(gw, f"hotswap-{n}", cap)
            rss1, pss1 = hot.memory_mb()
        finally:
            gw.close()
            unload_own(hot.url, specs(gw))
        self.hot_rss[n] = max(rss0, rss1)
        self.row("hotswap", n, **metrics(result), engine_rss_mb=round(max(rss0, rss1), 1),
                 engine_pss_mb=round(max(pss0, pss1), 1), cold_start_s=median(cold), cold_start_max_s=largest(cold),
                 warm_request_s=median(warm), engines=1,
                 storage_mb_per_tenant=self.art.storage_mb(n, merged=False),
                 engine_start_s=rounded(hot.start_s))

    # -- (C) reload
    def reload(self, engine: Engine, proxy_url: str, n: int) -> None:
        names = self.names(n)
        dedicated = {f"{x}-rel": {"model": f"m{i}", "url": proxy_url} for i, x in enumerate(names)}
        gw = bench_gateway(self.s3, self.art.base, engine.url, self.work, self.cfg.rank, max(self.cfg.tenants),
                           self.cfg.max_inflight, dedicated)
        try:
            add_tenants(gw, list(dedicated), [f"m{i}" for i in range(n)], [None] * n)
            current = httpx.get(f"{proxy_url}/stats", timeout=10).json()["current"]
            order = sorted(specs(gw), key=lambda t: t.model == current)  # every cold probe is a real switch
            cold = [timed_request(gw, t, self.cfg.prompt_tokens) for t in order]
            warm = [timed_request(gw, order[-1], self.cfg.prompt_tokens)]
            before = httpx.get(f"{proxy_url}/stats", timeout=10).json()
            result = self.measure(gw, f"reload-{n}")
            after = httpx.get(f"{proxy_url}/stats", timeout=10).json()
            rss, pss = engine.memory_mb()
        finally:
            gw.close()
        switches = after["switches"] - before["switches"]
        self.row("reload", n, **metrics(result), engine_rss_mb=round(rss, 1), engine_pss_mb=round(pss, 1),
                 cold_start_s=median(cold), cold_start_max_s=largest(cold), warm_request_s=median(warm), engines=1,
                 storage_mb_per_tenant=self.art.storage_mb(n, merged=True),
                 switches=switches, reload_s_mean=round((after["reload_s"] - before["reload_s"]) / switches, 4)
                 if switches else None, engine_start_s=rounded(engine.start_s))

    # -- (B) separate
    def separate(self, engines: list[Engine], n: int, variant: str) -> None:
        """N tenants; the first len(engines) of them have their own engine (all of them unless equal memory)."""
        names = self.names(n)
        k = len(engines)
        dedicated = {f"{x}-sep": {"model": f"m{i}", "url": engines[i].url} for i, x in enumerate(names[:k])}
        gw = bench_gateway(self.s3, self.art.base, engines[0].url, self.work, self.cfg.rank, max(self.cfg.tenants),
                           self.cfg.max_inflight, dedicated)
        try:
            # tenants without an engine exist but have no model: their requests get 404 (not served)
            add_tenants(gw, [f"{x}-sep" for x in names], [f"m{i}" for i in range(n)], [None] * n)
            for e, t in zip(engines, specs(gw)):
                if e.cold_s is None:  # only an engine's very first request is cold
                    e.cold_s = timed_request(gw, t, self.cfg.prompt_tokens)
            warm = [timed_request(gw, t, self.cfg.prompt_tokens) for t in specs(gw)[:k]]
            mem0 = [e.memory_mb() for e in engines]
            result = self.measure(gw, f"separate-{variant}-{n}")
            mem1 = [e.memory_mb() for e in engines]
        finally:
            gw.close()
        rss = max(sum(m[0] for m in mem0), sum(m[0] for m in mem1))
        pss = max(sum(m[1] for m in mem0), sum(m[1] for m in mem1))
        cold = [e.cold_s for e in engines]
        self.row("separate", n, **metrics(result), engine_rss_mb=round(rss, 1), engine_pss_mb=round(pss, 1),
                 cold_start_s=median(cold), cold_start_max_s=largest(cold), warm_request_s=median(warm), engines=k,
                 tenants_served=k, variant=variant,
                 storage_mb_per_tenant=self.art.storage_mb(n, merged=True),
                 engine_start_s=median([e.start_s for e in engines]),
                 hotswap_rss_mb=self.hot_rss.get(n))


def metrics(result: dict) -> dict:
    keep = ("req_per_s", "tok_per_s", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "latency_p50_ms", "latency_p95_ms",
            "latency_p99_ms", "sent", "ok", "served_pct", "span_s", "offered_req_per_s", "arrived_req_per_s",
            "capacity_req_per_s",
            "capacity_tok_per_s", "per_tenant", "errors")
    return {k: result.get(k) for k in keep}


def rounded(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(v, nd)


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def largest(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(max(values), 3) if values else None
