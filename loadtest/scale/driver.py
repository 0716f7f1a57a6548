"""The scale benchmark's traffic: streamed completions to adapters drawn by Zipf popularity, either closed loop
(a fixed number in flight: the saturated throughput) or open loop (Poisson arrivals at a set rate), and the
answers of single requests sent alone (the reference every sampled answer is compared with)."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from dataclasses import dataclass

import httpx

from loadtest.report import percentile
from loadtest.workload import zipf_weights


@dataclass(frozen=True)
class Target:
    """One adapter as a tenant calls it."""

    tenant: str
    key: str
    model: str
    rank: int
    size_bytes: int
    weights: str = ""  # which random weight set it carries (several adapters share one beyond the pool)


@dataclass
class Sample:
    target: Target
    prompt: int
    ok: bool
    ttft_s: float | None
    latency_s: float
    tokens: int
    text: str
    error: str | None = None


class Traffic:
    """Requests against the gateway at `url`: adapters `targets` by Zipf(`zipf`) popularity over their order."""

    def __init__(self, url: str, targets: list[Target], prompts: list[str], max_tokens: int, zipf: float,
                 seed: int = 0):
        self.url, self.targets, self.prompts, self.max_tokens = url, targets, prompts, max_tokens
        self.weights = zipf_weights(len(targets), zipf)
        # summed once: `choices` with plain weights sums all of them on every pick, O(adapters) of the load
        # generator's CPU per request on the host it measures (the same picks either way)
        self._cum = list(itertools.accumulate(self.weights))
        self.rng = random.Random(seed)

    def pick(self) -> tuple[Target, int]:
        target = self.rng.choices(self.targets, cum_weights=self._cum)[0]
        return target, self.rng.randrange(len(self.prompts))

    async def closed_loop(self, concurrency: int, duration_s: float) -> tuple[list[Sample], float]:
        """`concurrency` requests always in flight for `duration_s`; returns the samples and the span."""
        samples: list[Sample] = []
        started = time.monotonic()
        async with _client() as http:
            async def worker():
                while time.monotonic() - started < duration_s:
                    samples.append(await self.one(http, *self.pick()))
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.monotonic() - started

    async def each_once(self, concurrency: int) -> list[Sample]:
        """One request to every target, `concurrency` in flight (a warm-up that leaves no name unseen)."""
        todo = list(self.targets)
        samples: list[Sample] = []
        async with _client() as http:
            async def worker():
                while todo:
                    target = todo.pop()
                    samples.append(await self.one(http, target, self.rng.randrange(len(self.prompts))))
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples

    async def open_loop(self, rate: float, duration_s: float) -> tuple[list[Sample], float]:
        """Poisson arrivals at `rate` per second for `duration_s` (then the stragglers finish)."""
        started = time.monotonic()
        tasks = []
        async with _client() as http:
            at = 0.0
            while True:
                at += self.rng.expovariate(rate)
                if at >= duration_s:
                    break
                await asyncio.sleep(max(0.0, started + at - time.monotonic()))
                tasks.append(asyncio.ensure_future(self.one(http, *self.pick())))
            samples = list(await asyncio.gather(*tasks))
        return samples, time.monotonic() - started

    def body(self, target: Target, prompt: int) -> dict:
        """The greedy completion every sample and reference asks for (an answer of exactly `max_tokens`)."""
        return {"model": target.model, "prompt": self.prompts[prompt], "max_tokens": self.max_tokens,
                "temperature": 0, "ignore_eos": True}

    async def one(self, http: httpx.AsyncClient, target: Target, prompt: int) -> Sample:
        body = {**self.body(target, prompt), "stream": True, "stream_options": {"include_usage": True}}
        started = time.monotonic()
        ttft, tokens, parts = None, 0, []
        try:
            async with http.stream("POST", f"{self.url}/v1/completions", json=body,
                                   headers={"Authorization": f"Bearer {target.key}"}) as r:
                if r.status_code != 200:
                    await r.aread()
                    return Sample(target, prompt, False, None, time.monotonic() - started, 0, "",
                                  f"HTTP {r.status_code}: {r.text[:200]}")
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("error"):
                        return Sample(target, prompt, False, ttft, time.monotonic() - started, tokens, "",
                                      str(chunk["error"])[:200])
                    for choice in chunk.get("choices") or ():
                        if ttft is None:
                            ttft = time.monotonic() - started
                        parts.append(choice.get("text", ""))
                    if chunk.get("usage"):
                        tokens = chunk["usage"].get("completion_tokens") or 0
        except httpx.HTTPError as e:
            return Sample(target, prompt, False, ttft, time.monotonic() - started, tokens, "", type(e).__name__)
        return Sample(target, prompt, True, ttft, time.monotonic() - started, tokens, "".join(parts))

    async def reference(self, target: Target, prompt: int) -> dict:
        """The request alone, not streamed, with each token's top-2 logprobs: vLLM's completions `logprobs`
        object (tokens, text_offset, top_logprobs) plus the answer's `text`."""
        body = {**self.body(target, prompt), "logprobs": 2}
        async with _client() as http:
            r = await http.post(f"{self.url}/v1/completions", json=body,
                                headers={"Authorization": f"Bearer {target.key}"})
        r.raise_for_status()
        choice = r.json()["choices"][0]
        return {"text": choice["text"], **(choice.get("logprobs") or {})}

    async def alone(self, target: Target, prompt: int) -> Sample:
        """The request sent with nothing else of this driver in flight."""
        async with _client() as http:
            return await self.one(http, target, prompt)


def divergence_gap(reference: dict, got: str) -> float | None:
    """Where `got` first differs from the reference answer: the reference's top-2 logprob gap at that token
    (small: a near-tie that another batch's rounding may flip; large: a different model answered). None when
    the texts are equal or the reference carries no logprobs there."""
    text = reference["text"]
    if got == text:
        return None
    common = 0
    while common < min(len(got), len(text)) and got[common] == text[common]:
        common += 1
    offsets, tops = reference.get("text_offset") or [], reference.get("top_logprobs") or []
    start = offsets[0] if offsets else 0
    at = max((i for i, o in enumerate(offsets) if o - start <= common), default=None)
    if at is None or at >= len(tops) or not tops[at] or len(tops[at]) < 2:
        return None
    best = sorted(tops[at].values(), reverse=True)
    return best[0] - best[1]


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256))


def summarize(samples: list[Sample], span_s: float) -> dict:
    """Throughput and latency of one row's samples."""
    ok = [s for s in samples if s.ok]
    ttfts = [s.ttft_s for s in ok if s.ttft_s is not None]
    return {"sent": len(samples), "ok": len(ok), "req_per_s": round(len(ok) / span_s, 2) if span_s else None,
            "tok_per_s": round(sum(s.tokens for s in ok) / span_s, 1) if span_s else None,
            "ttft_p50_ms": _ms(percentile(ttfts, 50)), "ttft_p99_ms": _ms(percentile(ttfts, 99)),
            "latency_p99_ms": _ms(percentile([s.latency_s for s in ok], 99)),
            "errors": sorted({s.error for s in samples if s.error})[:3]}


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)
