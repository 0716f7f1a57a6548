"""Checkpoint retention: best k by validation loss plus the newest n."""

from __future__ import annotations

import pytest

from training.checkpoints import eval_losses, select_kept

pytestmark = pytest.mark.unit


def test_keeps_best_and_newest():
    losses = {10: 3.0, 20: 1.0, 30: 2.0, 40: 1.5, 50: 2.5}
    assert select_kept([10, 20, 30, 40, 50], losses, keep_best=2, keep_last=1) == {20, 40, 50}
    assert select_kept([10, 20, 30, 40, 50], losses, keep_best=1, keep_last=2) == {20, 40, 50}
    assert select_kept([10, 20, 30], losses, keep_best=0, keep_last=1) == {30}


def test_ties_go_to_the_earlier_step_and_unscored_steps_only_count_as_newest():
    assert select_kept([10, 20, 30], {10: 1.0, 20: 1.0}, keep_best=1, keep_last=1) == {10, 30}


def test_losses_from_log_history():
    history = [{"loss": 4.0, "step": 5}, {"eval_loss": 3.0, "step": 10}, {"eval_loss": 2.0, "step": 20}]
    assert eval_losses(history) == {10: 3.0, 20: 2.0}
