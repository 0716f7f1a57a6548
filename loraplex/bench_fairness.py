"""`loraplex bench fairness`: does one tenant's flood move the other tenants' latency?

Stands up SeaweedFS, one vLLM engine and, per admission mode, a gateway in this process: `fifo`
(first come, first served), `fair-nocap` (VTC order and headroom, work-conserving) and `fair` (the
default: VTC, headroom and the per-tenant share cap). Three demo tenants send Poisson traffic (open
loop, each tenant from its own process, as separate clients would: the flooder's thousands of open requests
do not delay the others' client, and none shares the gateway's interpreter); then
tenant A floods at 10x its share. Each tenant's arrivals come from its own seeded generator, so the
other tenants send at the same moments with and without the flood. Reports the other tenants' p50/p99
latency and time to first token with and without the flood, per mode, as JSON, CSV, a PNG and a
markdown table. To tell admission from the rest, each row also has the time requests waited in the
gateway's admission queue, and each phase the engine's own mean request latency (from vLLM's /metrics).
"""

from __future__ import annotations

import asyncio
import csv
import json
import multiprocessing
import os
import platform
import secrets
import signal
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
from rich.console import Console

from common.peft_format import ADAPTER_FILES as FILES
from loadtest.traffic import TenantLoad, drive, percentile

# The traffic process re-imports this module (spawn): the heavy imports (torch via training, the
# gateway, vLLM helpers) are made inside the functions that need them.

console = Console()
# mode -> admission settings
MODES = {"fifo": {"fair_admission": False, "fair_share_cap": 0.0, "fair_slowdown_tolerance": 0.0},
         "fair-nocap": {"fair_admission": True, "fair_share_cap": 0.0, "fair_slowdown_tolerance": 0.0},
         "fair-noguard": {"fair_admission": True, "fair_share_cap": 1.0, "fair_slowdown_tolerance": 0.0},
         "fair": {"fair_admission": True, "fair_share_cap": 1.0, "fair_slowdown_tolerance": 1.15}}


def mode_settings(mode: str, share_cap: float = 1.0) -> dict:
    """Admission settings of a mode: one of MODES (the capped ones with `share_cap`), or `fair@X` (`fair` with
    slowdown tolerance X)."""
    if mode.startswith("fair@"):
        try:
            tolerance = float(mode[5:])
        except ValueError:
            raise ValueError(f"bad mode {mode!r}: fair@ takes a slowdown tolerance, e.g. fair@1.3") from None
        if 0 < tolerance < 1:
            raise ValueError(f"bad mode {mode!r}: a slowdown tolerance is 0 (off) or at least 1")
        return dict(MODES["fair"], fair_share_cap=share_cap, fair_slowdown_tolerance=tolerance)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose from {', '.join(MODES)} or fair@X")
    capped = MODES[mode]["fair_share_cap"] > 0
    return dict(MODES[mode], **({"fair_share_cap": share_cap} if capped else {}))


class _BenchGateway:
    """A gateway in this process, with its admission instrumented (per-tenant waits, in seconds)."""

    def __init__(self, url: str, admin: str, server, gw):
        self.url, self.admin, self.server, self.gw = url, admin, server, gw
        self.tenants: list[tuple[str, str, str]] = []
        self.waits: dict[str, list[float]] = defaultdict(list)
        self.reset()

    def reset(self) -> None:
        """A fresh admission (no counters, no tenant history) so that every slice starts from the same state;
        the slowdown guard (the engine's light-load speed, its ceiling) carries on as in a running gateway."""
        from serving.admission import Admission

        admission = Admission.from_settings(self.gw.settings)
        previous = getattr(self.gw, "admission", None)
        if previous is not None:  # what the slowdown guard learned is about the engine, not the tenants: a
            admission.guard = previous.guard  # long-running gateway keeps it, so the flood slices do too
        acquire, waits = admission.acquire, self.waits

        async def timed_acquire(tenant: str, est_tokens: int, *args):
            started = time.monotonic()
            await acquire(tenant, est_tokens, *args)
            waits[tenant].append(time.monotonic() - started)

        admission.acquire = timed_acquire
        self.gw.admission = admission


def _gateway(engine, s3: str, base: Path, tmp: Path, admission: dict, inflight: int,
             max_queue: int = 4096, gc_freeze: bool = True) -> _BenchGateway:
    from pydantic import SecretStr

    from common.procs import free_port
    from registry.settings import RegistrySettings
    from registry.store import ObjectStore
    from serving.app import create_app
    from serving.embedded import serve_in_thread
    from serving.gateway import Gateway

    reg = RegistrySettings(s3_endpoint=s3, s3_bucket="bench-" + secrets.token_hex(4), cache_dir=tmp / "cache",
                           base_model=base)
    ObjectStore(reg).ensure_bucket()
    admin, port = "admin-" + secrets.token_hex(8), free_port()
    settings = engine.model_copy(update={"admin_key": SecretStr(admin), "gateway_port": port, **admission,
                                         "max_inflight": inflight, "max_queue": max_queue,
                                         "gc_freeze": gc_freeze})
    gw = Gateway.from_settings(settings, reg)
    server = serve_in_thread(create_app(gw), port)
    return _BenchGateway(f"http://127.0.0.1:{port}", admin, server, gw)


def _tenants(url: str, admin: str, adapters: dict[str, Path]) -> list[tuple[str, str, str]]:
    """Create the demo tenants through the public API; returns (tenant, key, model)."""
    from training.demo import DEMO_TENANTS

    out = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for spec in DEMO_TENANTS:
            key = c.post("/admin/tenants", json={"name": spec["tenant"]},
                         headers={"Authorization": f"Bearer {admin}"}).json()["api_key"]
            files = [("files", (f, (adapters[spec["adapter"]] / f).read_bytes())) for f in FILES]
            r = c.post(f"/v1/adapters/{spec['adapter']}/versions", files=files, headers={"Authorization": f"Bearer {key}"})
            r.raise_for_status()
            out.append((spec["tenant"], key, spec["adapter"]))
    return out


def _prompts() -> list[str]:
    from training.demo import DEMO_WORDS, demo_prompt

    return [demo_prompt(w) for w in DEMO_WORDS]


def _drive_sync(url: str, loads: list[TenantLoad], duration_s: float, seed: int, start_at: float | None = None,
                nice: int = 0):
    """The samples, and the CPU seconds this client spent sending them and reading the answers (the load
    generator shares the host; its start-up is not counted). `nice`: this client's CPU priority (raised once
    per worker process: `os.nice` adds up)."""
    if nice and os.getpriority(os.PRIO_PROCESS, 0) < nice:
        os.nice(nice - os.getpriority(os.PRIO_PROCESS, 0))
    started = time.process_time()
    samples = asyncio.run(drive(url, loads, duration_s, seed, start_at))
    return samples, time.process_time() - started


def _warm(seconds: float) -> None:
    time.sleep(seconds)  # defined here: unpickling it imports this module in the worker


def _drive(url: str, loads: list[TenantLoad], duration_s: float, seed: int = 0,
           nice: dict[str, int] | None = None) -> tuple[list, dict[str, float]]:
    """The open-loop traffic: each tenant from its own child process (its own interpreter and event loop,
    like real clients), so that the flooder's client work, thousands of open requests, does not delay when
    the other tenants' clients send and read; the processes start sending at the same instant. `nice`:
    tenant -> CPU priority of its client process. Returns the samples and each tenant's client CPU seconds."""
    nice = nice or {}
    with multiprocessing.get_context("spawn").Pool(len(loads)) as pool:  # starts every worker now
        pool.map(_warm, [0.3] * len(loads), chunksize=1)  # each busy a while: one each, all imported
        start_at = time.monotonic() + 0.5
        parts = pool.starmap(_drive_sync, [(url, [load], duration_s, seed, start_at, nice.get(load.tenant, 0))
                                           for load in loads], chunksize=1)
        return [s for samples, _ in parts for s in samples], {load.tenant: cpu for load, (_, cpu) in zip(loads, parts)}


def _capacity(url: str, tenants, max_tokens: int) -> float:
    """Requests per second the stack completes with all tenants busy (closed loop, a few seconds)."""
    loads = [TenantLoad(t, k, m, rate=1000, prompts=_prompts(), max_tokens=max_tokens) for t, k, m in tenants]
    started = time.monotonic()
    samples = asyncio.run(drive(url, loads, duration_s=0.05))  # ~150 requests at once
    ok = [s for s in samples if s.status == 200]
    return len(ok) / (time.monotonic() - started)


def _engine_totals(engine_url: str) -> dict[str, float]:
    """The engine's own request latency and TTFT histograms (sum and count), from vLLM's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    want = {"vllm:e2e_request_latency_seconds": "e2e", "vllm:time_to_first_token_seconds": "ttft"}
    out: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(httpx.get(f"{engine_url}/metrics", timeout=30).text):
        for s in family.samples:
            for name, key in want.items():
                if s.name in (f"{name}_sum", f"{name}_count"):
                    out[f"{key}_{s.name.rsplit('_', 1)[1]}"] += s.value
    return out


def _engine_means(before: dict, after: dict) -> dict:
    def mean(key):
        n = after[f"{key}_count"] - before[f"{key}_count"]
        return round((after[f"{key}_sum"] - before[f"{key}_sum"]) / n * 1000, 1) if n else None
    return {"engine_latency_mean_ms": mean("e2e"), "engine_ttft_mean_ms": mean("ttft")}


def _cpu_seconds(engine_pid: int) -> dict[str, float]:
    """CPU seconds so far of this process (the gateway's threads) and of the engine's processes, the host's
    busy and total CPU seconds: per condition, where the work of a flood goes on a host everyone shares; and
    the gateway process's garbage collections (full ones, and seconds in all: the event loop stalls)."""
    import psutil

    from serving.heap import PAUSES

    def spent(p) -> float:
        t = p.cpu_times()
        return t.user + t.system

    engine = 0.0
    try:
        root = psutil.Process(engine_pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                engine += spent(p)
            except psutil.Error:
                pass  # exited meanwhile
    except psutil.Error:
        pass
    host = psutil.cpu_times()
    pauses = PAUSES.snapshot()
    return {"gateway": spent(psutil.Process()), "engine": engine,
            "host_busy": sum(host) - host.idle - getattr(host, "iowait", 0.0), "host_total": sum(host),
            "gc_full": pauses["count"][2], "gc_s": sum(pauses["seconds"])}


def _cpu_cores(spent: dict, wall_s: float, client_cpu: dict) -> dict:
    """Mean cores used while the tenants sent: gateway, engine, load generator (its sending and reading, the
    flooder's backlog's answers after the arrivals included), and the host busy."""
    def cores(v):
        return round(v / wall_s, 2) if wall_s else None
    return {"gateway_cores": cores(spent.get("gateway", 0.0)), "engine_cores": cores(spent.get("engine", 0.0)),
            "clients_cores": cores(sum(client_cpu.values())),
            "host_busy_pct": round(100 * spent["host_busy"] / spent["host_total"], 1) if spent.get("host_total") else None,
            "gateway_gc_full": int(spent.get("gc_full", 0)), "gateway_gc_ms": round(1000 * spent.get("gc_s", 0.0))}


def _answered(s) -> bool:
    """Answered in full: a 200 whose stream carried no error event."""
    return s.status == 200 and s.error is None


def _summarise(samples, phase: str, mode: str, skip: set[str], waits: dict, engine: dict,
               seconds: float, window_s: float, windows: int, client_cpu: dict | None = None) -> list[dict]:
    """One row per tenant, and one for the other tenants pooled (more samples: a steadier p99).

    `seconds`: the condition's wall time (arrivals, then the backlog's drain); `window_s`: one slice's
    arrival window. served/s counts the answers completed inside the arrival windows, while every
    tenant was sending (what a share cap costs the flooder), not during the drain.
    """
    groups = {t: ({t}, False) for t in sorted({s.tenant for s in samples})}
    groups["others (pooled)"] = ({s.tenant for s in samples} - skip, True)
    rows = []
    for name, (members, pooled) in groups.items():
        mine = [s for s in samples if s.tenant in members]
        ok = [s for s in mine if _answered(s)]
        failed = Counter(f"{s.status}: {s.error or ''}"[:160] for s in mine if not _answered(s))
        wait = [w for t in members for w in waits.get(t, [])]
        rows.append({"mode": mode, "phase": phase, "tenant": name, "flooder": name in skip, "pooled": pooled,
                     "sent": len(mine), "ok": len(ok), "rejected": sum(s.status in (429, 503) for s in mine),
                     # why requests were refused or failed (status: start of the body), the commonest first
                     "errors": dict(failed.most_common(5)),
                     "ok_per_s": round(sum(s.sent_at + s.latency_s <= window_s for s in ok) / (window_s * windows), 2),
                     "wall_s": round(seconds, 1),
                     "latency_p50_ms": _ms(percentile([s.latency_s for s in ok], 50)),
                     "latency_p99_ms": _ms(percentile([s.latency_s for s in ok], 99)),
                     "ttft_p99_ms": _ms(percentile([s.ttft_s for s in ok if s.ttft_s is not None], 99)),
                     "admission_wait_p50_ms": _ms(percentile(wait, 50)),
                     "admission_wait_p99_ms": _ms(percentile(wait, 99)),
                     "client_cpu_s": round(sum((client_cpu or {}).get(t, 0.0) for t in members), 1),
                     **engine})
    return rows


class _GuardWatch:
    """While a slice's arrivals last: samples the slowdown guard (its measured slowdown and the heavy ceiling),
    and at their end calls `at_end` (what the host spent while every tenant was sending, not in the drain)."""

    def __init__(self, guard, seconds: float, every_s: float = 0.25, at_end=None):
        self.guard, self.seconds, self.every_s, self.at_end = guard, seconds, every_s, at_end
        self.seen: list[tuple[float, float]] = []
        self.ended = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self._stop.wait(min(self.every_s, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                break
            if self.guard.tolerance:
                self.seen.append((self.guard.slowdown, self.guard.ceiling))
        if self.at_end is not None:
            self.ended = self.at_end()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _guard_stats(seen: list[tuple[float, float]]) -> dict:
    """Median slowdown the guard measured and median heavy ceiling (slots; below 1: duty cycle) in a phase."""
    if not seen:
        return {"guard_slowdown_p50": None, "guard_ceiling_p50": None}
    return {"guard_slowdown_p50": round(percentile([s for s, _ in seen], 50), 2),
            "guard_ceiling_p50": round(percentile([c for _, c in seen], 50), 3)}


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _ms(v):
    return None if v is None else round(v * 1000, 1)


def run_fairness(out: Path, duration_s: float = 30, flood_factor: float = 10, inflight: int = 4,
                 max_tokens: int = 16, var_dir: Path = Path("var"), slices: int = 3,
                 modes: tuple[str, ...] = tuple(MODES), share_cap: float = 1.0,
                 share_rps: float | None = None, max_queue: int = 4096, gc_freeze: bool = True,
                 flooder_nice: int = 19) -> dict:
    """Run every mode, baseline and flood; write fairness.json/.csv/.png/.md under `out`.

    The conditions (mode x baseline/flood) get `duration_s` of traffic each, cut into `slices` and run
    round-robin, so that a noisy host (other jobs on the same cores) disturbs all of them alike; every
    mode gets the same offered load (one calibration) and, within a slice, the same arrival times.

    `inflight` is the gateway's in-flight window: small, so that admission (not the engine's batch)
    decides who runs. Fair admission keeps a free slot for each other recently active tenant that is
    idle; while others are active, `fair-noguard` also caps a heavy tenant at `share_cap` x its equal share
    of the window, and `fair` adds the slowdown guard (a heavy tenant's slots shrink while the engine runs
    slower than at light load). The machine's load average is recorded per phase: on a shared host it explains much of the noise.
    `share_rps` pins each tenant's share instead of half the calibrated capacity: the calibration (a burst
    through a full window) varies by 2x between runs on a shared 2-core host, and near the knee of the
    open-loop latency curve a few percent more load doubles the baseline's latency. `max_queue` is the
    gateway's queue bound: large by default, so that every request is answered and counted. `gc_freeze`:
    the gateways' LORAPLEX_GC_FREEZE (this process imports torch: a full collection of its heap unfrozen
    takes ~400 ms). `flooder_nice`: the CPU priority of the flooding tenant's client process, in both
    phases. A flooder's client runs on its own machine; here it shares the server's cores, and at 40
    requests/s it took ~0.15 of a core from the engine and the gateway (nice 19: it gets what they leave).
    The other tenants' clients, which measure, keep the normal priority.
    """
    from common.procs import free_port, stop_group
    from registry.seaweed import SeaweedServer
    from serving.engine import start_engine, wait_engine_ready
    from serving.settings import ServingSettings
    from training.demo import build_demo

    out.mkdir(parents=True, exist_ok=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupted)  # `kill` cleans up the engine and SeaweedFS too
    demo = build_demo(var_dir)
    tmp = Path(tempfile.mkdtemp(prefix="lpx-fair-"))
    access, secret = "bench" + secrets.token_hex(4), secrets.token_urlsafe(20)
    os.environ.update(AWS_ACCESS_KEY_ID=access, AWS_SECRET_ACCESS_KEY=secret)
    s3 = SeaweedServer().start(tmp / "s3", access_key=access, secret_key=secret)
    port = free_port()
    engine = ServingSettings(base_model=demo.base_dir, engine_url=f"http://127.0.0.1:{port}")
    proc = start_engine(engine, port, tmp / "engine.log")
    rows, meta, gateways = [], {}, {}
    try:
        s3.wait_ready(60)
        console.print("starting the vLLM engine …")
        wait_engine_ready(engine.engine_url, 600, proc)
        for mode in modes:
            admission = mode_settings(mode, share_cap)
            bg = gateways[mode] = _gateway(engine, s3.endpoint, demo.base_dir, tmp / mode, admission, inflight,
                                               max_queue, gc_freeze)
            bg.tenants = _tenants(bg.url, bg.admin, demo.adapter_dirs)
        first = gateways[modes[0]]
        cap = _capacity(first.url, first.tenants, max_tokens)
        share = share_rps or 0.5 * cap / len(first.tenants)  # at their share: half busy (by the calibration)
        meta = {"capacity_req_s": round(cap, 2), "share_req_s": round(share, 2), "share_pinned": bool(share_rps),
                "slices": slices}
        console.print(f"capacity {cap:.1f} req/s; each tenant's share {share:.2f} req/s")
        acc: dict[tuple[str, str], dict] = {}
        for i in range(slices):
            for phase, factor in (("baseline", 1.0), ("flood", flood_factor)):
                for mode in modes[i % len(modes):] + modes[:i % len(modes)]:  # each mode goes first once
                    bg = gateways[mode]
                    bg.reset()
                    bg.waits.clear()  # nothing from the calibration or another slice
                    loads = [TenantLoad(t, k, m, rate=share * (factor if j == 0 else 1.0), prompts=_prompts(),
                                        max_tokens=max_tokens)
                             for j, (t, k, m) in enumerate(bg.tenants)]
                    console.print(f"slice {i + 1}/{slices}: {mode}, {phase}, {duration_s / slices:.0f}s …")
                    before, load_before = _engine_totals(engine.engine_url), os.getloadavg()[0]
                    cpu_before = _cpu_seconds(proc.pid)
                    started = time.monotonic()
                    with _GuardWatch(bg.gw.admission.guard, duration_s / slices,
                                     at_end=lambda: _cpu_seconds(proc.pid)) as watch:
                        samples, client_cpu = _drive(bg.url, loads, duration_s / slices, seed=i,
                                                     nice={bg.tenants[0][0]: flooder_nice})
                    a = acc.setdefault((mode, phase), {"samples": [], "waits": defaultdict(list), "load": 0.0,
                                                       "after": defaultdict(float), "wall": 0.0, "guard": [],
                                                       "client_cpu": defaultdict(float), "cpu": defaultdict(float)})
                    a["guard"] += watch.seen
                    for t, cpu in client_cpu.items():
                        a["client_cpu"][t] += cpu
                    a["wall"] += time.monotonic() - started  # arrivals, then the backlog drained
                    for key, v in (watch.ended or {}).items():  # the arrival window only
                        a["cpu"][key] += v - cpu_before[key]
                    a["cpu"]["wall"] += duration_s / slices
                    after = _engine_totals(engine.engine_url)
                    for key in after:  # engine histogram totals of this condition's slices only
                        a["after"][key] += after[key] - before.get(key, 0.0)
                    a["samples"] += samples
                    for t, w in bg.waits.items():
                        a["waits"][t] += w
                    bg.waits.clear()
                    a["load"] = max(a["load"], load_before, os.getloadavg()[0])
        for (mode, phase), a in acc.items():
            stats = _engine_means(defaultdict(float), a["after"])
            stats["loadavg_1m"] = round(a["load"], 1)
            stats.update(_guard_stats(a["guard"]))
            stats.update(_cpu_cores(a["cpu"], a["cpu"]["wall"], a["client_cpu"]))
            rows += _summarise(a["samples"], phase, mode, {gateways[mode].tenants[0][0]}, dict(a["waits"]), stats,
                               a["wall"], duration_s / slices, slices, dict(a["client_cpu"]))
        rows.sort(key=lambda r: (modes.index(r["mode"]), r["phase"] != "baseline", r["pooled"], r["tenant"]))
    finally:
        for bg in gateways.values():
            bg.server.should_exit = True
        stop_group(proc.pid)
        s3.stop()
    meta.update(max_queue=max_queue, gc_freeze=gc_freeze, flooder_nice=flooder_nice)
    return _report(out, rows, meta, duration_s, flood_factor, inflight, max_tokens, share_cap)


def _ratio(rows, mode: str, column: str = "latency_p99_ms", pooled: bool = False) -> float | None:
    """Flood / baseline of `column` for the other tenants: pooled, or the worst single tenant."""
    ratios = []
    for r in rows:
        if r["mode"] == mode and r["phase"] == "flood" and not r["flooder"] and r["pooled"] == pooled:
            base = next(b for b in rows if b["mode"] == mode and b["phase"] == "baseline" and b["tenant"] == r["tenant"])
            if r[column] and base[column]:
                ratios.append(r[column] / base[column])
    return round(max(ratios), 2) if ratios else None


def _flooder_rate(rows, mode: str) -> float | None:
    """Requests per second the flooder got served under the flood (what a share cap costs it)."""
    return next((r["ok_per_s"] for r in rows if r["mode"] == mode and r["phase"] == "flood" and r["flooder"]), None)


def _report(out: Path, rows, meta, duration_s, flood_factor, inflight, max_tokens, share_cap) -> dict:
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "settings": {"duration_s": duration_s, "flood_factor": flood_factor, "max_inflight": inflight,
                           "max_tokens": max_tokens, "share_cap": share_cap}, "calibration": meta, "rows": rows,
              "p99_ratio_others_pooled": {m: _ratio(rows, m, pooled=True) for m in modes},
              "p99_ratio_flood_vs_baseline": {m: _ratio(rows, m) for m in modes},
              "p50_ratio_others_pooled": {m: _ratio(rows, m, "latency_p50_ms", pooled=True) for m in modes},
              "flooder_ok_per_s": {m: _flooder_rate(rows, m) for m in modes}}
    (out / "fairness.json").write_text(json.dumps(result, indent=2))
    with open(out / "fairness.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _plot(out / "fairness.png", rows)
    (out / "fairness.md").write_text(_markdown(result))
    console.print(_markdown(result))
    return result


def _plot(path: Path, rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [r for r in rows if r["pooled"]]
    modes = list(dict.fromkeys(r["mode"] for r in others))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.38
    for j, phase in enumerate(("baseline", "flood")):
        vals = [next((r["latency_p99_ms"] or 0 for r in others if r["mode"] == m and r["phase"] == phase), 0)
                for m in modes]
        ax.bar([i + (j - 0.5) * width for i in range(len(modes))], vals, width, label=phase,
               color="#48c" if phase == "baseline" else "#c44")
    ax.set_xticks(range(len(modes)), modes)
    ax.set_ylabel("p99 latency of the other tenants (ms)")
    ax.set_title("One tenant floods at 10x its share: the others' p99 by admission mode")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _guard_cell(row) -> str:
    if row.get("guard_slowdown_p50") is None:
        return "–"
    return f"{row['guard_slowdown_p50']} / {row['guard_ceiling_p50']}"


def _cpu_cell(row) -> str:
    if row.get("gateway_cores") is None:
        return "– | –"
    return (f"{row['gateway_cores']} / {row['engine_cores']} / {row['clients_cores']} "
            f"({row['host_busy_pct']}%) | {row.get('gateway_gc_full')} / {row.get('gateway_gc_ms')}")


def _markdown(result) -> str:
    lines = [f"### Fairness under a flood ({result['date']}, {result['machine']})", "",
             f"Settings: {result['settings']}; calibration: {result['calibration']}.", "",
             "| mode | phase | tenant | sent | ok | 429/503 | served/s | p50 ms | p99 ms | TTFT p99 ms | admission wait "
             "p50 / p99 ms | engine mean latency ms (all tenants) | guard: slowdown / heavy ceiling (p50) "
             "| host load (1 min) | cores: gateway / engine / clients (host busy) | gateway GC: full collections "
             "/ ms in all |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        name = r["tenant"] + (" (flooder)" if r["flooder"] else "")
        name = f"**{name}**" if r["pooled"] else name
        lines.append(f"| {r['mode']} | {r['phase']} | {name} | {r['sent']} | {r['ok']} | {r['rejected']} | "
                     f"{r['ok_per_s']} | {r['latency_p50_ms']} | {r['latency_p99_ms']} | {r['ttft_p99_ms']} | "
                     f"{r['admission_wait_p50_ms']} / {r['admission_wait_p99_ms']} | {r['engine_latency_mean_ms']} | "
                     f"{_guard_cell(r)} | {r['loadavg_1m']} | {_cpu_cell(r)} |")
    pooled, worst = result["p99_ratio_others_pooled"], result["p99_ratio_flood_vs_baseline"]
    p50, rate = result["p50_ratio_others_pooled"], result["flooder_ok_per_s"]
    lines += ["", "| mode | others' p99 flood / baseline (pooled) | worst single tenant | others' p50 ratio "
                  "| flooder served/s |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {pooled[m]} | {worst[m]} | {p50[m]} | {rate[m]} |" for m in pooled]
    lines += ["", "Target: the other tenants' p99 under the flood ≤ 1.2× their p99 without it."]
    failures = [(r, e, n) for r in result["rows"] if not r["pooled"] for e, n in (r.get("errors") or {}).items()]
    if failures:
        lines += ["", "Requests not answered in full (status: start of the body or the client's error):", ""]
        lines += [f"- {r['mode']} / {r['phase']} / {r['tenant']}: {n}× `{e}`" for r, e, n in failures]
    return "\n".join(lines) + "\n"
