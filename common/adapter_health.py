"""Adapter health: the singular-value spectrum of each LoRA update ΔW = scale·B·A.

A LoRA module of rank r can move the base weights in at most r directions. How many it really uses
tells whether r was well chosen: an update that lives in 2 of 16 directions means a smaller rank would
do (a smaller, faster adapter); one that fills every direction may be rank-starved.

Per module we report
- `energy_rank`: the fewest singular values holding `energy` (99%) of the squared Frobenius norm;
- `effective_rank`: exp of the Shannon entropy of the normalised singular values (Roy & Vetterli 2007),
  a smooth count that is 1 for a rank-1 update and r for r equal singular values;
- `near_zero_share`: the share of the r singular values below `near_zero_rel` times the largest.

Pure math on the adapter's own tensors (no model needed), so both `loraplex train health` and the
registry at upload (registry/health.py) compute it here.

Example:
    >>> from common.adapter_health import adapter_health
    >>> adapter_health("out/adapter")["energy_rank"]["median"]  # doctest: +SKIP
    3.0
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import torch
from safetensors.torch import load_file

from common.peft_format import CONFIG_FILE, WEIGHTS_FILE, AdapterConfig, lora_pairs


def update_spectrum(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """Singular values (descending) of scale·B·A without forming the out×in product.

    With B = Qb·Rb and Aᵀ = Qa·Ra (thin QR), B·A = Qb·(Rb·Raᵀ)·Qaᵀ, so its singular values are those
    of the small r×r matrix Rb·Raᵀ: cheap even for 4096×11008 modules.

    Args:
        a: lora_A weight, shape [r, in].
        b: lora_B weight, shape [out, r].
        scale: alpha/r (or alpha/sqrt(r) with rsLoRA).
    """
    _, rb = torch.linalg.qr(b.double())
    _, ra = torch.linalg.qr(a.double().T)
    return torch.linalg.svdvals(rb @ ra.T) * abs(scale)


def spectrum_stats(s: torch.Tensor, energy: float = 0.99, near_zero_rel: float = 1e-3) -> dict:
    """Effective rank, energy rank, near-zero share and norm of one spectrum (see the module doc)."""
    top = float(s.max()) if s.numel() else 0.0
    if top == 0.0:
        return {"effective_rank": 0.0, "energy_rank": 0, "near_zero_share": 1.0, "norm": 0.0, "top_sv": 0.0}
    p = s / s.sum()
    p = p[p > 0]
    entropy = float(-(p * p.log()).sum())
    sq = s.pow(2)
    cumulative = torch.cumsum(sq, 0) / sq.sum()
    energy_rank = int((cumulative < energy - 1e-12).sum()) + 1
    return {
        "effective_rank": round(math.exp(entropy), 3),
        "energy_rank": min(energy_rank, s.numel()),
        "near_zero_share": round(float((s < near_zero_rel * top).double().mean()), 4),
        "norm": round(float(sq.sum().sqrt()), 6),
        "top_sv": round(top, 6),
    }


def _summary(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 3), "median": round(statistics.median(values), 3),
            "min": round(min(values), 3), "max": round(max(values), 3)}


def _notes(rank: int, energy_median: float, zero_modules: int, modules: int) -> list[str]:
    notes = []
    if zero_modules == modules:
        notes.append("every update is zero: the adapter is untrained and changes nothing")
    elif energy_median <= rank / 4 and rank >= 8:
        smaller = 2 ** math.ceil(math.log2(max(1.0, energy_median)))
        notes.append(f"updates use a median {energy_median:g} of r={rank} directions: r={smaller} would likely "
                     "do (a smaller adapter, same quality)")
    elif energy_median >= 0.9 * rank:
        notes.append(f"updates fill (nearly) all r={rank} directions: if quality falls short, try a higher rank")
    if 0 < zero_modules < modules:
        notes.append(f"{zero_modules} of {modules} modules have a zero update (not trained or not reached)")
    return notes


def adapter_health(adapter_dir: str | Path, energy: float = 0.99, near_zero_rel: float = 1e-3) -> dict:
    """Spectrum summary of every LoRA update in a PEFT adapter directory.

    Args:
        adapter_dir: directory with adapter_config.json and adapter_model.safetensors.
        energy: share of the squared norm that `energy_rank` must hold.
        near_zero_rel: singular values below this times the module's largest count as near zero.

    Returns:
        `{"rank", "modules", "effective_rank": {mean, median, min, max}, "energy_rank": {...},
        "near_zero_share", "utilization", "zero_modules", "notes": [...], "per_module": {...}}`.
    """
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    return tensors_health(config, load_file(str(adapter_dir / WEIGHTS_FILE)), energy, near_zero_rel)


def tensors_health(config: dict, tensors: dict[str, torch.Tensor], energy: float = 0.99,
                   near_zero_rel: float = 1e-3) -> dict:
    """`adapter_health` of an adapter already in memory: its parsed config and its LoRA tensors.

    The registry calls this at upload with the tensors of `safetensors.torch.load(bytes)`.
    """
    scales = AdapterConfig.from_dict(config)
    per_module = {}
    for module, keys in lora_pairs(tensors).items():
        a, b = tensors[keys["A"]].float(), tensors[keys["B"]].float()
        s = update_spectrum(a, b, scales.scale_for(module))
        per_module[module] = {"rank": a.shape[0], **spectrum_stats(s, energy, near_zero_rel)}
    if not per_module:
        return {"rank": config.get("r"), "modules": 0, "notes": ["no LoRA tensors found"], "per_module": {}}
    rank = int(config.get("r") or max(m["rank"] for m in per_module.values()))
    energy_ranks = [float(m["energy_rank"]) for m in per_module.values()]
    zero = sum(m["norm"] == 0.0 for m in per_module.values())
    return {
        "rank": rank, "modules": len(per_module), "energy": energy, "near_zero_rel": near_zero_rel,
        "effective_rank": _summary([m["effective_rank"] for m in per_module.values()]),
        "energy_rank": _summary(energy_ranks),
        "near_zero_share": round(statistics.fmean(m["near_zero_share"] for m in per_module.values()), 4),
        "utilization": round(statistics.fmean(energy_ranks) / rank, 4),
        "zero_modules": zero,
        "notes": _notes(rank, statistics.median(energy_ranks), zero, len(per_module)),
        "per_module": per_module,
    }
