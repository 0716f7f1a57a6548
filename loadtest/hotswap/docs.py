"""The hot-swap section of docs/benchmarks.md: what was compared, how, the numbers, the anchors, the caveats."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.hotswap.report import markdown
from loadtest.report import copy_images, markers, replace_section, wrap

DOC_START, DOC_END = markers("hotswap")


def update_docs(section: str, path: Path) -> None:
    """Put `section` between the hotswap markers of `path`, leaving every other section as it is."""
    replace_section(path, "hotswap", section)


def docs_section(rows: list[dict], meta: dict, out: Path) -> str:
    """The docs/benchmarks.md section: what was compared, how, the numbers, the anchors, the caveats.

    Its plots are linked as img/hotswap_*.png next to the docs file (the CLI copies them there).
    """
    return wrap("\n".join([
        "## Hot-swap vs separate models",
        "",
        "`make bench` (= `loraplex bench hotswap --tenants 2,4,8 --out var/bench/hotswap --docs docs/benchmarks.md`, "
        "loadtest/hotswap/) stands up, one after another and behind the same gateway code, for N tenants:",
        "",
        "- **hotswap** — one vLLM engine with the base model; each tenant's LoRA adapter is uploaded to the "
        "registry and loaded on its first request (the product's normal path, with loraplex's CPU LoRA plugin).",
        "- **separate** — one engine per tenant serving that tenant's *merged* model (PEFT `merge_and_unload` of "
        "the same adapter), routed by the gateway's separate-model mode. When N engines do not fit the memory "
        "budget the row says *fits: no* with the projected memory, and an **equal-memory** row runs as many "
        "separate engines as fit in the memory the hotswap engine used, for the most popular tenants (the "
        "others' requests fail: *served %*). That is the headline comparison.",
        "- **reload** — one engine that loads the requested tenant's merged model on demand. What \"reload\" "
        "means here: a benchmark-side proxy (loadtest/reload_proxy.py) stops admitting, lets the open requests "
        "finish, swaps the weights *in place* (vLLM's `reload_weights` from the merged model's directory, then "
        "`reset_prefix_cache`) and serves the waiting requests of that tenant, oldest first. No process "
        "restart: this is the cheapest on-demand model switch vLLM offers. A restart per switch would cost "
        "the engine start time (`engine_start_s` in hotswap.json) instead.",
        "",
        "Workload (loadtest/locustfile.py, the same for every row): each locust user is a tenant with its own "
        "key; open-loop Poisson arrivals, tenant popularity Zipf; every answer streamed; TTFT measured at the "
        "client from the first streamed token. *req/s* and *tok/s* are what was served (status 200) over the "
        "span from the first arrival to the last answer, so a mode that falls behind pays for catching up; "
        "*capacity* is the same from a burst of requests at once (saturated throughput). *engine RSS* is "
        "summed over each engine's process tree (psutil; `engine_pss_mb` in the JSON counts shared pages "
        "once). *cold start* is the median first-request latency (1 token) of a tenant whose adapter or model "
        "is not in the engine (hotswap: S3 download + verify + adapter load; separate: first request after "
        "the engine is up; reload: a weight swap). *storage* is the adapter's two files vs the merged model "
        "directory.",
        "",
        markdown(rows, meta).rstrip(),
        "",
        "Reading the numbers (true of any run on such a host):",
        "",
        "- Everything shares the same few cores: locust, the gateway, the reload proxy and every engine. N "
        "separate engines split those cores, each running small batches and its own scheduler loop, so they "
        "fall behind at loads one engine carries; a starved engine's API server can miss the gateway's 2 s "
        "connect timeout, which the tenant sees as a 503. On a GPU host each dedicated engine needs its own GPU "
        "memory instead (S-LoRA's setting).",
        f"- Memory: a vLLM CPU engine's ~3 GB RSS is the runtime (API server, engine core and worker processes, "
        f"torch) plus its KV cache; the weights are {meta['base_model_mb']:.1f} MiB. So the memory of one hotswap "
        "engine buys one separate engine whatever N, and the hotswap engine hardly grows with N (an adapter "
        "is a fraction of a MiB). With a 7B model each merged copy adds ~14 GB of bf16 weights and the gap "
        "widens.",
        "- reload is cheap here because swapping weights this small takes well under a second "
        "(`reload_s_mean` in the JSON); what it shows is the cost of switching itself: other tenants' "
        "requests wait until the engine drains (higher TTFT p50 than hotswap). Reading a 7B model's weights "
        "takes seconds per switch.",
        "- Equal-memory rows serve only the most popular tenants (Zipf), so their TTFT and latency cover a "
        "lighter load: compare their served % and req/s, not their latency.",
        "- One run, no repetitions, other jobs on the host (the load average above): differences under ~20% "
        "are within noise. `arrived/s` is the run's Poisson draw at the offered rate (the same draw for every "
        "mode at one N).",
        "",
        "![throughput vs N](img/hotswap_throughput.png) ![p99 TTFT vs N](img/hotswap_ttft_p99.png) "
        "![memory vs N](img/hotswap_memory.png)",
        "",
        f"The run's files: `{out}/hotswap.json` (every key, per-tenant counts), `hotswap.csv`, the PNGs, and per "
        f"row locust's CSVs and the raw per-request samples under `{out}/locust/`.",
        "",
        "Anchors: the S-LoRA paper (Sheng et al., *S-LoRA: Serving Thousands of Concurrent LoRA Adapters*, "
        "MLSys 2024, arXiv:2311.03285; abstract: \"up to 4 times\" the throughput of vLLM with naive LoRA serving) "
        "served 5 adapters on one GPU at about **4x** the throughput of packed separate merged models, and kept "
        "**7.61 req/s at 2,000 adapters**, where merged models no longer fit. Those are 7B-class models on a "
        "GPU, where weights dominate memory; here a "
        "tiny model on a few CPU cores, where each engine's memory is mostly the vLLM runtime and its KV cache "
        "— the same shape of result (one engine serves every tenant in the memory of one dedicated engine), "
        "not the same numbers.",
    ])) + "\n"


def publish_docs(out: Path, docs: Path) -> None:
    """Write the section of `out`'s run into `docs` (between the hotswap markers) and copy its plots to img/."""
    report = json.loads((out / "hotswap.json").read_text())
    copy_images(sorted(out.glob("hotswap_*.png")), docs)
    update_docs(docs_section(report["rows"], report["meta"], out), docs)
