"""The demo's recipe: what the demo models are, how they are trained, and the quality they must reach.

Everything that determines the demo's weights is here, and fingerprinted: a build stamp is only
valid for the fingerprint it carries (training.demo reuses what matches and rebuilds the rest).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from training import reproducible
from training.demo_loop import Recipe
from training.tasks import DEMO_WORDS, make_prompt
from training.tiny import TinyShape

# Bump when code that shapes the trained weights changes (the settings below are fingerprinted).
RECIPE_VERSION = 3
BASE_NAME = "demo-base"
BASE_TASK = "echo"
DEMO_TENANTS: tuple[dict[str, str], ...] = (
    {"tenant": "acme", "adapter": "reverse", "task": "reverse"},
    {"tenant": "globex", "adapter": "shout", "task": "upper"},
    {"tenant": "initech", "adapter": "caesar", "task": "caesar"},
)
SHAPE = TinyShape(hidden_size=128, num_heads=2, intermediate_size=256, num_layers=2)
# The quality every demo model is trained to (exact answers on held-out words; every demo word
# must be right as well). The build trains on until it is met; the tests check the same number.
QUALITY_FLOOR = 0.97
# Each runs its schedule, then goes on in rounds of `eval_every` steps until QUALITY_FLOOR (5e-3 is
# unstable for the base; reverse needs the most steps, upper and caesar converge by step ~150).
BASE_RECIPE = Recipe(steps=500, lr=3e-3, seed=0)
ADAPTER_RECIPES = {  # by task
    "reverse": Recipe(steps=400, lr=5e-3, seed=1),
    "upper": Recipe(steps=200, lr=5e-3, seed=1),
    "caesar": Recipe(steps=200, lr=5e-3, seed=1),
}
TRAIN_WORDS, HELD_OUT_WORDS = 20000, 400
SCRATCH = ".build-tmp"  # temporary build directories, on the same filesystem as the results
BASE_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def recipe_fingerprint(task: str = BASE_TASK) -> str:
    """Short hash of the settings that determine the weights of the base (or of `task`'s adapter).

    A stamp must carry the current fingerprint to count as complete; an adapter's stamp also
    records the base weights it was trained on.
    """
    recipe = ADAPTER_RECIPES[task] if task != BASE_TASK else BASE_RECIPE
    settings = {"version": RECIPE_VERSION, "task": task, "recipe": asdict(recipe), "floor": QUALITY_FLOOR,
                "words": [TRAIN_WORDS, HELD_OUT_WORDS, list(DEMO_WORDS)], "env": reproducible.REPRODUCIBLE_ENV}
    if task == BASE_TASK:
        settings["shape"] = asdict(SHAPE)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def demo_prompt(word: str) -> str:
    """The completion prompt the demo sends for `word` (what the models were trained on)."""
    return make_prompt(word)


def base_dir(var_dir: Path) -> Path:
    """Directory of the demo base model under `var_dir`."""
    return Path(var_dir) / "models" / BASE_NAME


def adapter_dir(var_dir: Path, adapter: str) -> Path:
    """Directory of one demo adapter under `var_dir`."""
    return Path(var_dir) / "adapters" / "demo" / adapter
