"""`loraplex train recommend`: pick full fine-tuning, LoRA or QLoRA for a workload, with reasons.

The rules are data: DECISIONS are tried in order and the first that holds picks the method; every NOTE
that holds adds its reason. Each reason is a sentence a person can check against the numbers shown.

Example:
    >>> recommend(Workload(params_b=7, gpu_count=1, gpu_mem_gb=16, examples=10000))["method"]
    'qlora'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from training.memory import adapter_mb, gpu_hours, memory_gb, trainable_pct

OBJECTIVES = ("instruction", "domain", "task")
LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HEADROOM = 0.9  # plan for 90% of GPU memory: fragmentation and spikes take the rest
SERVED_MAX_RANK = 16  # the engine's default --max-lora-rank
# Rank by objective: a narrow task needs few directions, new domain knowledge needs more.
BASE_RANK = {"task": 8, "instruction": 16, "domain": 32}


@dataclass(frozen=True)
class Workload:
    """What the user wants to train, on what (see `loraplex train recommend --help`)."""

    params_b: float
    gpu_count: int = 1
    gpu_mem_gb: float = 24
    examples: int = 10000
    objective: str = "instruction"
    variants: int = 1
    budget_usd: float | None = None
    accuracy_critical: bool = False
    seq_len: int = 2048
    micro_batch: int = 1
    tokens_per_example: int = 512
    epochs: float = 3
    gpu_tflops: float = 312  # A100-class dense bf16 peak
    mfu: float = 0.35
    gpu_hour_usd: float = 2.5


@dataclass(frozen=True)
class Rule:
    """One rule: when `when(facts)` holds, `method` (if any) is chosen and `reason` is given."""

    name: str
    when: Callable[[dict], bool]
    method: str | None  # None for a note, which only adds its reason
    reason: str


DECISIONS = (
    Rule("many-variants", lambda f: f["variants"] > 1 and f["fits"]["lora"], "lora",
         "{variants} variants: adapters (~{adapter_mb:g} MB each) share one served base and hot-swap per "
         "request; {variants} full copies would need {variants} x {weights_gb:g} GB of weights to serve"),
    Rule("accuracy-critical",
         lambda f: f["accuracy_critical"] and f["fits"]["full"] and f["affordable"]["full"], "full",
         "accuracy-critical and full fine-tuning fits ({mem_full:g} GB <= {available_gb:g} GB){budget_note}: it "
         "recovers the last few % that LoRA (typically 95-99% of full quality) can leave"),
    Rule("big-domain-shift", lambda f: f["objective"] == "domain" and f["examples"] >= 100_000
         and f["fits"]["full"] and f["affordable"]["full"], "full",
         "domain adaptation on {examples} examples adds much new knowledge, which a low-rank update holds "
         "less well, and full fine-tuning fits ({mem_full:g} GB)"),
    Rule("lora-fits", lambda f: f["fits"]["lora"], "lora",
         "LoRA fits ({mem_lora:g} GB <= {available_gb:g} GB): ~{pct:g}% of the weights train, adapters of "
         "~{adapter_mb:g} MB, and the frozen base forgets less"),
    Rule("qlora-fits", lambda f: f["fits"]["qlora"], "qlora",
         "LoRA needs {mem_lora:g} GB > {available_gb:g} GB available; QLoRA's 4-bit base (~0.55 B/param) fits in "
         "{mem_qlora:g} GB, at ~30% slower steps and a small quality cost (needs CUDA + bitsandbytes)"),
    Rule("nothing-fits", lambda f: True, "qlora",
         "nothing fits: even QLoRA needs {mem_qlora:g} GB > {available_gb:g} GB: add GPUs (--gpu-count), use larger "
         "ones, or shorten --seq-len"),
)

NOTES = (
    Rule("full-too-big", lambda f: not f["fits"]["full"], None,
         "full fine-tuning needs {mem_full:g} GB (16 B/param for weights, gradients and AdamW states, plus "
         "activations) > {available_gb:g} GB"),
    Rule("budget", lambda f: f["budget_usd"] is not None and not f["affordable"]["full"], None,
         "full fine-tuning costs ~${cost_full:g} (~{hours_full:g} GPU-hours) > the ${budget_usd:g} budget"),
    Rule("few-examples", lambda f: f["examples"] < 2000, None,
         "only {examples} examples: keep the rank low and watch validation loss (early stopping is on)"),
    Rule("rank-above-served", lambda f: f["method"] != "full" and f["rank"] > SERVED_MAX_RANK, None,
         "rank {rank} is above the engine's default --max-lora-rank {served_max}: start it with "
         "--max-lora-rank {rank} or train with r={served_max}"),
    Rule("targets", lambda f: f["method"] != "full", None,
         "all linear layers (attention and MLP): adapting attention alone loses quality; the names are "
         "Llama's, `--target-modules all-linear` finds them in other architectures"),
)


def choose_rank(w: Workload) -> int:
    """LoRA rank from the objective, doubled for large data or accuracy-critical work, halved for little data."""
    rank = BASE_RANK[w.objective]
    if w.examples >= 100_000 or w.accuracy_critical:
        rank *= 2
    if w.examples < 2000:
        rank //= 2
    return max(4, min(64, rank))


def _facts(w: Workload, rank: int) -> dict:
    mem = memory_gb(w.params_b, rank, w.seq_len, w.micro_batch)
    available = round(w.gpu_count * w.gpu_mem_gb * HEADROOM, 1)
    hours = gpu_hours(w.params_b, w.examples * w.tokens_per_example * w.epochs, w.gpu_count, w.gpu_tflops, w.mfu)
    cost = {m: round(h * w.gpu_hour_usd, 2) for m, h in hours.items()}
    affordable = {m: w.budget_usd is None or c <= w.budget_usd for m, c in cost.items()}
    budget_note = f" and within the ${w.budget_usd:g} budget (~${cost['full']:g})" if w.budget_usd else ""
    return {**asdict(w), "rank": rank, "memory": mem, "available_gb": available, "affordable": affordable,
            "fits": {m: v <= available for m, v in mem.items()}, "cost": cost, "hours": hours,
            "mem_full": mem["full"], "mem_lora": mem["lora"], "mem_qlora": mem["qlora"],
            "cost_full": cost["full"], "hours_full": hours["full"], "budget_note": budget_note,
            "weights_gb": round(w.params_b * 2, 1), "adapter_mb": adapter_mb(w.params_b, rank),
            "pct": trainable_pct(w.params_b, rank), "served_max": SERVED_MAX_RANK}


def recommend(w: Workload) -> dict:
    """The recommended method, rank, target modules, memory estimates and the reasons.

    Args:
        w: the workload.

    Returns:
        `{"method", "rank", "target_modules", "memory_gb": {full, lora, qlora}, "reasons", "fits",
        "available_gb", "gpu_hours", "cost_usd", "rules"}`.

    Raises:
        ValueError: an unknown objective or non-positive sizes.
    """
    if w.objective not in OBJECTIVES:
        raise ValueError(f"objective {w.objective!r}: use one of {', '.join(OBJECTIVES)}")
    if w.params_b <= 0 or w.gpu_count < 1 or w.gpu_mem_gb <= 0 or w.examples < 1 or w.variants < 1:
        raise ValueError("--params-b, --gpu-mem-gb, --examples, --gpu-count and --variants must be positive")
    facts = _facts(w, choose_rank(w))
    decision = next(rule for rule in DECISIONS if rule.when(facts))
    facts["method"] = decision.method
    notes = [rule for rule in NOTES if rule.when(facts)]
    full = decision.method == "full"
    return {
        "method": decision.method, "rank": None if full else facts["rank"],
        "target_modules": [] if full else list(LLAMA_LINEAR), "memory_gb": facts["memory"],
        "reasons": [r.reason.format(**facts) for r in (decision, *notes)],
        "rules": [r.name for r in (decision, *notes)], "fits": facts["fits"], "available_gb": facts["available_gb"],
        "gpu_hours": facts["hours"], "cost_usd": facts["cost"],
    }
