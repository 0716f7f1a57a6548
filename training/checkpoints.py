"""Checkpoint retention: keep the best k by validation loss plus the newest n, delete the rest.

The Trainer's own `save_total_limit` keeps only the newest checkpoints (and the single best); this
callback replaces it so that several good checkpoints survive next to the ones needed to resume.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import TrainerCallback

PREFIX = "checkpoint-"


def list_checkpoints(directory: Path) -> dict[int, Path]:
    """Checkpoint directories under `directory` by global step."""
    found = {}
    for path in Path(directory).glob(f"{PREFIX}*"):
        step = path.name[len(PREFIX):]
        if path.is_dir() and step.isdigit():
            found[int(step)] = path
    return found


def select_kept(steps: list[int], losses: dict[int, float], keep_best: int, keep_last: int) -> set[int]:
    """The steps to keep: the `keep_best` lowest validation losses and the `keep_last` newest.

    Args:
        steps: steps that have a checkpoint.
        losses: validation loss by step (steps without one only count as "newest").
        keep_best: how many of the best to keep (ties go to the earlier step, as in the Trainer).
        keep_last: how many of the newest to keep.
    """
    newest = sorted(steps)[-keep_last:] if keep_last > 0 else []
    ranked = sorted((losses[s], s) for s in steps if s in losses)
    return set(newest) | {s for _, s in ranked[:max(0, keep_best)]}


def eval_losses(log_history: list[dict]) -> dict[int, float]:
    """Validation loss by step from a Trainer's log history."""
    return {entry["step"]: entry["eval_loss"] for entry in log_history if "eval_loss" in entry}


class CheckpointPruner(TrainerCallback):
    """After every save, delete checkpoints that are neither among the best k nor the newest n.

    Args:
        keep_best: checkpoints kept by lowest validation loss (at least 1: the Trainer reloads the best).
        keep_last: newest checkpoints kept (at least 1: --resume continues from the newest).
    """

    def __init__(self, keep_best: int = 1, keep_last: int = 1):
        self.keep_best = max(1, keep_best)
        self.keep_last = max(1, keep_last)

    def on_save(self, args, state, control, **kwargs):
        found = list_checkpoints(Path(args.output_dir))
        kept = select_kept(list(found), eval_losses(state.log_history), self.keep_best, self.keep_last)
        best = Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None
        for step, path in found.items():
            if step not in kept and path.name != best:
                shutil.rmtree(path, ignore_errors=True)
        return control
