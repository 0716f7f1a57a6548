"""Compose several LoRA adapters of one base into a new adapter with PEFT's `add_weighted_adapter`.

Methods (PEFT's names):
- `linear`: weighted sums of the A's and of the B's (equal ranks only). Cheap, but B·A then holds cross
  terms between adapters, so it is an approximation of Σ wᵢ·ΔWᵢ.
- `ties`: TIES-merging (trim each adapter to its `density` largest entries, elect a sign per entry,
  average the agreeing ones), applied to A and B separately; equal ranks only.
- `cat`: concatenates the A's and B's: exactly Σ wᵢ·ΔWᵢ, with rank Σ rᵢ (mind the engine's max rank).
- `svd`: exactly Σ wᵢ·ΔWᵢ, truncated by SVD back to `svd_rank` (default: the largest input rank);
  `ties_svd` is TIES on the full ΔW's followed by the same truncation. Any ranks.

Example:
    >>> compose("var/models/demo-base", [("a/reverse", 0.7), ("a/shout", 0.3)], "a/mix")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from common.adapter_health import adapter_health
from common.peft_format import CONFIG_FILE
from training.adapter_dirs import resolve_adapter_dir, save_peft_adapter
from training.errors import IncompatibleAdapters

EQUAL_RANK_METHODS = ("linear", "ties")
METHODS = ("linear", "ties", "cat", "svd", "ties_svd")
DENSITY_METHODS = ("ties", "ties_svd")


def _ranks(adapter_dirs: list[Path]) -> list[int]:
    return [int(json.loads((d / CONFIG_FILE).read_text())["r"]) for d in adapter_dirs]


def check_composable(adapter_dirs: list[Path], weights: list[float], method: str, density: float | None) -> None:
    """Refuse a composition PEFT would reject (or silently get wrong), saying what to do instead.

    Raises:
        IncompatibleAdapters: fewer than two adapters, unknown method, unequal ranks for linear/ties,
            a density outside (0, 1].
    """
    if method not in METHODS:
        raise IncompatibleAdapters(f"method {method!r} is unknown: use one of {', '.join(METHODS)}")
    if len(adapter_dirs) < 2 or len(adapter_dirs) != len(weights):
        raise IncompatibleAdapters("compose needs two or more adapters, each with a weight (DIR:WEIGHT)")
    ranks = _ranks(adapter_dirs)
    if method in EQUAL_RANK_METHODS and len(set(ranks)) > 1:
        raise IncompatibleAdapters(
            f"method {method!r} combines the A and B matrices entry by entry, so every adapter needs the same "
            f"rank, but the ranks are {ranks}: use --method svd (exact sum truncated to the largest rank), "
            f"--method cat (exact, rank {sum(ranks)}), or retrain the adapters with one rank")
    if method in DENSITY_METHODS and not (density is not None and 0 < density <= 1):
        raise IncompatibleAdapters(f"method {method!r} needs a density in (0, 1] (the share of entries kept)")


def compose(base_dir: str | Path, adapters: list[tuple[str | Path, float]], out_dir: str | Path,
            method: str = "linear", density: float | None = 0.5, svd_rank: int | None = None) -> dict:
    """Write a new adapter combining `adapters` with their weights into `out_dir` (exactly the two files).

    Args:
        base_dir: the base model every adapter was trained on.
        adapters: (adapter directory, weight) pairs; weights may be negative (subtract a behaviour).
        out_dir: destination adapter directory.
        method: linear, ties, cat, svd or ties_svd (see the module doc).
        density: share of entries TIES keeps (ties, ties_svd only).
        svd_rank: rank of an svd/ties_svd result (default: the largest input rank).

    Returns:
        `{"out_dir", "method", "rank", "adapters", "weights", "density", "health"}`.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dirs = [resolve_adapter_dir(Path(d)) for d, _ in adapters]
    weights = [float(w) for _, w in adapters]
    check_composable(dirs, weights, method, density)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    names = [f"input{i}" for i in range(len(dirs))]
    model = PeftModel.from_pretrained(base, str(dirs[0]), adapter_name=names[0])
    for name, directory in zip(names[1:], dirs[1:]):
        model.load_adapter(str(directory), adapter_name=name)
    model.add_weighted_adapter(names, weights, "composed", combination_type=method, svd_rank=svd_rank,
                               density=density if method in DENSITY_METHODS else None)
    rank = model.peft_config["composed"].r
    # PEFT bakes each input's scaling into the new A/B and means scale 1 (alpha = r); with rsLoRA copied
    # from the first input the scale would become sqrt(r), so it is switched off explicitly.
    save_peft_adapter(model, Path(out_dir), base_name=Path(base_dir).name, adapter_name="composed",
                      config_updates={"lora_alpha": rank, "use_rslora": False, "lora_dropout": 0.0},
                      base_dir=Path(base_dir))
    return {"out_dir": str(out_dir), "method": method, "rank": rank, "adapters": [str(d) for d in dirs],
            "weights": weights, "density": density if method in DENSITY_METHODS else None,
            "health": adapter_health(Path(out_dir))}
