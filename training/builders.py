"""Build steps of the demo: train and save the base model, train and save one adapter.

Each step writes into a directory it is given and returns the metrics that go into its stamp.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from transformers import AutoTokenizer, LlamaForCausalLM

from training.demo_loop import Recipe, accuracy, train
from training.lora import save_adapter, wrap
from training.tasks import DEMO_WORDS, mix_case, random_words
from training.tiny import TinyShape, create_model, save_base
from training.tokenizer import build_tokenizer

OnStep = Callable[[int, float], None]


def word_pools(train_size: int, held_out_size: int) -> tuple[list[str], list[str]]:
    """Training words and held-out words (disjoint, neither containing a demo word).

    Args:
        train_size: number of training words (seed 0).
        held_out_size: number of evaluation words (seed 1).
    """
    demo = set(DEMO_WORDS)
    words = random_words(train_size, seed=0, exclude=demo)
    held_out = random_words(held_out_size, seed=1, exclude=demo | set(words))
    return words, held_out


def evaluate(model, tokenizer, task: str, held_out: list[str]) -> dict[str, float]:
    """Exact-answer accuracy of greedy decoding on held-out words and on the demo words."""
    return {
        "held_out_accuracy": round(accuracy(model, tokenizer, task, held_out), 4),
        "demo_accuracy": round(accuracy(model, tokenizer, task, list(DEMO_WORDS)), 4),
    }


def shortfall(metrics: dict[str, float], floor: float) -> str | None:
    """What keeps `metrics` below the demo's quality goal (None when it is met).

    The goal: held-out accuracy at least `floor`, and every demo word right (the demo shows them).
    """
    if metrics["held_out_accuracy"] < floor:
        return f"held-out accuracy {metrics['held_out_accuracy']:.1%} < {floor:.0%}"
    if metrics["demo_accuracy"] < 1.0:
        return f"demo words {metrics['demo_accuracy']:.0%} right, not all"
    return None


def _train_to_goal(model, tokenizer, task: str, words, held_out, recipe: Recipe, floor: float, on_step) -> dict:
    # Trains until the goal is met (not for a step count that is enough on one machine), then
    # returns the metrics of the model as it is saved.
    metrics: dict[str, float] = {}

    def goal() -> str | None:
        metrics.update(evaluate(model, tokenizer, task, held_out))
        return shortfall(metrics, floor)

    started = time.monotonic()
    loss, steps = train(model, tokenizer, task, words, recipe, on_step, goal)
    return {**metrics, "steps": steps, "final_loss": round(loss, 5),
            "train_seconds": round(time.monotonic() - started, 1)}


def build_base(
    out_dir: Path, shape: TinyShape, recipe: Recipe, words: list[str], held_out: list[str], floor: float,
    on_step: OnStep | None = None,
) -> dict:
    """Train the base model on `echo` and save it with its tokenizer into `out_dir`.

    Args:
        out_dir: empty directory that receives the Hugging Face model.
        shape: model dimensions.
        recipe: optimisation settings.
        words: lowercase training words (some are upper-cased here so the base knows capitals).
        held_out: evaluation words.
        floor: the held-out accuracy to reach (see `shortfall`).
        on_step: progress callback, called with (step, loss).

    Returns:
        Metrics: accuracies, steps taken, final loss, training seconds.

    Raises:
        GoalNotReached: the floor was not reached within the recipe's step limit.
    """
    tokenizer = build_tokenizer()
    model = create_model(tokenizer, seed=recipe.seed, shape=shape)
    metrics = _train_to_goal(model, tokenizer, "echo", mix_case(words, recipe.seed), held_out, recipe, floor, on_step)
    save_base(model, tokenizer, out_dir)
    return metrics


def build_adapter(
    base_dir: Path, out_dir: Path, task: str, recipe: Recipe, words: list[str], held_out: list[str], floor: float,
    on_step: OnStep | None = None,
) -> dict:
    """Train a LoRA adapter for `task` on the saved base in `base_dir` and save it into `out_dir`.

    Args:
        base_dir: the finished base model directory (the adapter is trained on exactly this).
        out_dir: empty directory that receives adapter_config.json and adapter_model.safetensors.
        task: the adapter's task (see training.tasks).
        recipe: optimisation settings.
        words: training words.
        held_out: evaluation words.
        floor: the held-out accuracy to reach (see `shortfall`).
        on_step: progress callback, called with (step, loss).

    Returns:
        Metrics: accuracies, steps taken, final loss, training seconds.

    Raises:
        GoalNotReached: the floor was not reached within the recipe's step limit.
    """
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = wrap(LlamaForCausalLM.from_pretrained(str(base_dir)))
    metrics = _train_to_goal(model, tokenizer, task, words, held_out, recipe, floor, on_step)
    save_adapter(model, out_dir)
    return metrics
