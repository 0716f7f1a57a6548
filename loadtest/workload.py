"""The load-test workload, without locust: who the tenants are, how popular, what they send, what it measured.

Shared by `loadtest/locustfile.py` (which runs it) and `loadtest/hotswap/` (which reads its samples),
so both agree on one definition of every number. Settings come from environment variables, because
locust runs the locustfile in its own process:

    LORAPLEX_LOADTEST_TENANTS   JSON {tenant: {"api_key": KEY, "model": MODEL}} (or stack.json's
                                {"api_key", "adapters": [...]}); popularity rank = order. Default: the
                                tenants of LORAPLEX_LOADTEST_STACK (var/stack.json).
    LORAPLEX_LOADTEST_RATE      offered requests/s over all tenants (Poisson), default 2
    LORAPLEX_LOADTEST_ZIPF      Zipf exponent of tenant popularity, default 1.0; 0 = uniform
    LORAPLEX_LOADTEST_PROMPT_TOKENS / _MAX_TOKENS   prompt length (~tokens) / answer length, 32 / 32
    LORAPLEX_LOADTEST_IGNORE_EOS  1 (default): every answer is exactly MAX_TOKENS long
    LORAPLEX_LOADTEST_SAMPLES   JSONL file that receives one line per request (for the benchmark)
    LORAPLEX_LOADTEST_MAX_OUTSTANDING  open requests before new arrivals are dropped, default 512
    LORAPLEX_LOADTEST_DRAIN_S   how long the end of the run waits for open requests, default 60
"""

from __future__ import annotations

import json
import os
import random
import string
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.report import ms, percentile


class WorkloadError(ValueError):
    """A load-test setting is wrong; the message says which and how to fix it."""


@dataclass(frozen=True)
class TenantSpec:
    name: str
    api_key: str
    model: str


@dataclass(frozen=True)
class Workload:
    tenants: tuple[TenantSpec, ...]
    rate: float = 2.0
    zipf: float = 1.0
    prompt_tokens: int = 32
    max_tokens: int = 32
    ignore_eos: bool = True
    samples: Path | None = None
    max_outstanding: int = 512
    drain_s: float = 60.0
    seed: int = 0
    weights: tuple[float, ...] = field(init=False)

    def __post_init__(self):
        if not self.tenants:
            raise WorkloadError("no tenants to load: set LORAPLEX_LOADTEST_TENANTS or run `make up` (var/stack.json)")
        if self.rate <= 0:
            raise WorkloadError(f"LORAPLEX_LOADTEST_RATE must be > 0 requests/s, not {self.rate}")
        if self.prompt_tokens < 1 or self.max_tokens < 1:
            raise WorkloadError("LORAPLEX_LOADTEST_PROMPT_TOKENS and _MAX_TOKENS must be at least 1")
        object.__setattr__(self, "weights", tuple(zipf_weights(len(self.tenants), self.zipf)))

    def tenant_rates(self) -> list[float]:
        """Requests/s of each tenant: the offered rate split by popularity."""
        return [self.rate * w for w in self.weights]

    def body(self, tenant: TenantSpec, rng: random.Random) -> dict:
        """One streamed completion request of `tenant` (usage in the last event gives the token count)."""
        body = {"model": tenant.model, "prompt": make_prompt(self.prompt_tokens, rng), "max_tokens": self.max_tokens,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        if self.ignore_eos:
            body["ignore_eos"] = True
        return body


def zipf_weights(n: int, exponent: float) -> list[float]:
    """Share of traffic of the tenant at each popularity rank: 1/rank^s, normalised (s=0: uniform)."""
    if n < 1:
        raise WorkloadError("the workload needs at least one tenant")
    if exponent < 0:
        raise WorkloadError(f"LORAPLEX_LOADTEST_ZIPF must be >= 0 (0 = uniform), not {exponent}")
    raw = [1.0 / (rank ** exponent) for rank in range(1, n + 1)]
    total = sum(raw)
    return [w / total for w in raw]


def make_prompt(tokens: int, rng: random.Random) -> str:
    """About `tokens` tokens of random lowercase words (the demo tokenizer is byte-level: 1 char ~ 1 token)."""
    words, length = [], 0
    while length < tokens:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:tokens]


def parse_tenants(raw: dict | list) -> tuple[TenantSpec, ...]:
    """Tenants from {name: {"api_key", "model" | "adapters"}} or [{"name", "api_key", "model"}], in order."""
    items = raw.items() if isinstance(raw, dict) else ((t.get("name"), t) for t in raw)
    out = []
    for name, spec in items:
        if not isinstance(spec, dict) or not spec.get("api_key"):
            raise WorkloadError(f"tenant {name!r} has no api_key: give {{\"{name}\": {{\"api_key\": KEY, "
                                "\"model\": MODEL}}")
        model = spec.get("model") or (spec.get("adapters") or [None])[0]
        if not model:
            raise WorkloadError(f"tenant {name!r} has neither a model nor adapters: add \"model\"")
        out.append(TenantSpec(str(name), spec["api_key"], model))
    return tuple(out)


def from_env(env: dict | None = None) -> tuple[Workload, str | None]:
    """The workload the environment describes, and the gateway URL of the stack file (None if not read)."""
    env = os.environ if env is None else env
    get = lambda name, default: env.get(f"LORAPLEX_LOADTEST_{name}", default)  # noqa: E731
    url = None
    if get("TENANTS", ""):
        try:
            raw = json.loads(get("TENANTS", ""))
        except ValueError as e:
            raise WorkloadError(f"LORAPLEX_LOADTEST_TENANTS is not valid JSON ({e})") from None
    else:
        stack_file = Path(get("STACK", "var/stack.json"))
        if not stack_file.exists():
            raise WorkloadError(f"{stack_file} does not exist: start the stack (`make demo` or `make up`) or set "
                                "LORAPLEX_LOADTEST_TENANTS")
        info = json.loads(stack_file.read_text())
        raw, url = info.get("tenants") or {}, info.get("gateway_url")
        if not raw:
            raise WorkloadError(f"{stack_file} lists no tenants: run `make demo` (it registers the demo tenants)")
    try:
        workload = Workload(
            tenants=parse_tenants(raw), rate=float(get("RATE", "2")), zipf=float(get("ZIPF", "1.0")),
            prompt_tokens=int(get("PROMPT_TOKENS", "32")), max_tokens=int(get("MAX_TOKENS", "32")),
            ignore_eos=get("IGNORE_EOS", "1") not in ("0", "false", "no"),
            samples=Path(get("SAMPLES", "")) if get("SAMPLES", "") else None,
            max_outstanding=int(get("MAX_OUTSTANDING", "512")), drain_s=float(get("DRAIN_S", "60")),
            seed=int(get("SEED", "0")))
    except ValueError as e:
        if isinstance(e, WorkloadError):
            raise
        raise WorkloadError(f"a LORAPLEX_LOADTEST_* setting is not a number: {e}") from None
    return workload, url


def to_env(workload: Workload) -> dict[str, str]:
    """The environment that makes a locust process run `workload` (inverse of `from_env`)."""
    env = {
        "LORAPLEX_LOADTEST_TENANTS": json.dumps({t.name: {"api_key": t.api_key, "model": t.model}
                                                 for t in workload.tenants}),
        "LORAPLEX_LOADTEST_RATE": str(workload.rate), "LORAPLEX_LOADTEST_ZIPF": str(workload.zipf),
        "LORAPLEX_LOADTEST_PROMPT_TOKENS": str(workload.prompt_tokens),
        "LORAPLEX_LOADTEST_MAX_TOKENS": str(workload.max_tokens),
        "LORAPLEX_LOADTEST_IGNORE_EOS": "1" if workload.ignore_eos else "0",
        "LORAPLEX_LOADTEST_MAX_OUTSTANDING": str(workload.max_outstanding),
        "LORAPLEX_LOADTEST_DRAIN_S": str(workload.drain_s), "LORAPLEX_LOADTEST_SEED": str(workload.seed),
    }
    if workload.samples is not None:
        env["LORAPLEX_LOADTEST_SAMPLES"] = str(workload.samples)
    return env


# ---- what a run measured -------------------------------------------------------------------------

def read_samples(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(samples: list[dict]) -> dict:
    """Throughput and latency of one run from its samples.

    A sample is {"tenant", "sent", "ttft", "latency", "tokens", "status"} (seconds; "sent" on the
    wall clock). Throughput is over the span from the first arrival to the last completion, so a
    stack that falls behind is charged for the time it takes to catch up. Only status 200 with at
    least one token counts as served; dropped and failed requests lower `served_pct`.
    """
    ok = [s for s in samples if s["status"] == 200 and s.get("tokens", 0) > 0]
    out = {"sent": len(samples), "ok": len(ok),
           "served_pct": round(100 * len(ok) / len(samples), 1) if samples else 0.0,
           "req_per_s": 0.0, "tok_per_s": 0.0, "ttft_p50_ms": None, "ttft_p95_ms": None, "ttft_p99_ms": None,
           "latency_p50_ms": None, "latency_p95_ms": None, "latency_p99_ms": None}
    if not ok:
        return out
    start = min(s["sent"] for s in samples)
    end = max(s["sent"] + s["latency"] for s in ok)
    span = max(end - start, 1e-6)
    ttfts = [s["ttft"] for s in ok if s.get("ttft") is not None]
    lat = [s["latency"] for s in ok]
    out.update(req_per_s=round(len(ok) / span, 3), tok_per_s=round(sum(s["tokens"] for s in ok) / span, 1),
               span_s=round(span, 2))
    for q in (50, 95, 99):
        out[f"ttft_p{q}_ms"] = ms(percentile(ttfts, q))
        out[f"latency_p{q}_ms"] = ms(percentile(lat, q))
    return out
