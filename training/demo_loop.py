"""A small PyTorch training loop for the demo tasks (loss on completion tokens only), and evaluation.

The demo is tiny enough that a plain AdamW loop beats the setup cost of a Trainer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from training.tasks import DEMO_WORDS, completion, make_prompt

IGNORE = -100


@dataclass(frozen=True)
class Recipe:
    """Optimisation settings of one training run.

    The learning rate warms up, decays by a cosine to 10% at `steps`, then holds there: a run that
    must reach a quality goal goes on past `steps` in rounds of `eval_every` steps, up to `max_steps`.
    """

    steps: int
    lr: float
    batch_size: int = 32
    warmup: int = 30
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 100
    max_steps: int = 0  # 0: three times `steps`

    @property
    def step_limit(self) -> int:
        """The most steps a run that has not reached its goal may take."""
        return self.max_steps or 3 * self.steps


class GoalNotReached(RuntimeError):
    """Training hit its step limit before its goal (e.g. an accuracy floor) was met."""


def encode_example(tokenizer: PreTrainedTokenizerBase, task: str, word: str) -> tuple[list[int], list[int]]:
    """Token ids of <bos> prompt completion <eos>, and labels that mask everything but the completion."""
    prompt_ids = tokenizer(make_prompt(word))["input_ids"]  # <bos> is added by the tokenizer
    answer_ids = tokenizer(completion(task, word), add_special_tokens=False)["input_ids"]
    ids = prompt_ids + answer_ids + [tokenizer.eos_token_id]
    labels = [IGNORE] * len(prompt_ids) + answer_ids + [tokenizer.eos_token_id]
    return ids, labels


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch; with a causal model the padding never influences the real tokens."""
    width = max(len(ids) for ids, _ in examples)
    ids = [e[0] + [pad_id] * (width - len(e[0])) for e in examples]
    labels = [e[1] + [IGNORE] * (width - len(e[1])) for e in examples]
    return torch.tensor(ids), torch.tensor(labels)


def _lr_factor(step: int, recipe: Recipe) -> float:
    # Linear warmup, cosine decay to 10%, then flat: stable for both the base and the LoRA runs.
    if step < recipe.warmup:
        return (step + 1) / recipe.warmup
    progress = min(1.0, (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    words: list[str],
    recipe: Recipe,
    on_step: Callable[[int, float], None] | None = None,
    goal: Callable[[], str | None] | None = None,
) -> tuple[float, int]:
    """Train `model` in place on `task` over `words` (the demo words are mixed into every batch).

    Args:
        model: a causal LM (or a PEFT model: only parameters with requires_grad are optimised).
        tokenizer: the demo tokenizer.
        task: the task to learn (see training.tasks).
        words: the training words.
        recipe: optimisation settings.
        on_step: called with (step, loss) after every step, e.g. to advance a progress bar.
        goal: checked (in eval mode) after `recipe.steps` and then every `recipe.eval_every` steps:
            None when the model is good enough, else what is still missing. Training stops at the
            first None; without a goal it stops after `recipe.steps`.

    Returns:
        The mean loss of the last 20 steps, and the number of steps taken.

    Raises:
        GoalNotReached: the goal was still unmet after `recipe.step_limit` steps.
    """
    rng = random.Random(recipe.seed)
    torch.manual_seed(recipe.seed)
    examples = [encode_example(tokenizer, task, w) for w in words]
    demo = [encode_example(tokenizer, task, w) for w in DEMO_WORDS]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, recipe))
    model.train()
    recent: list[float] = []
    step = 0
    while True:
        batch = rng.sample(examples, recipe.batch_size - 2) + rng.sample(demo, 2)
        ids, labels = collate(batch, tokenizer.pad_token_id)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        recent = (recent + [loss.item()])[-20:]
        if on_step is not None:
            on_step(step, loss.item())
        step += 1
        if step < recipe.steps or (step - recipe.steps) % recipe.eval_every:
            continue
        model.eval()
        missing = goal() if goal is not None else None
        if missing is None:
            return sum(recent) / len(recent), step
        if step >= recipe.step_limit:
            raise GoalNotReached(f"{missing} after {step} steps (the limit of this recipe)")
        model.train()


@torch.no_grad()
def greedy_answers(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, words: list[str], max_tokens: int = 12
) -> list[str]:
    """Greedy completions of `words`, batched by word length (equal-length prompts need no padding).

    Args:
        model: the causal LM (merged or PEFT-wrapped).
        tokenizer: the demo tokenizer.
        words: input words.
        max_tokens: new tokens per prompt (stops earlier at <eos>).
    """
    model.eval()
    out: dict[str, str] = {}
    by_len: dict[int, list[str]] = {}
    for w in dict.fromkeys(words):
        by_len.setdefault(len(w), []).append(w)
    for group in by_len.values():
        ids = torch.tensor([tokenizer(make_prompt(w))["input_ids"] for w in group])
        gen = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        for w, row in zip(group, gen[:, ids.shape[1]:].tolist()):
            out[w] = tokenizer.decode(row, skip_special_tokens=True)
    return [out[w] for w in words]


def accuracy(model: nn.Module, tokenizer: PreTrainedTokenizerBase, task: str, words: list[str]) -> float:
    """Share of `words` whose greedy completion is exactly the task's completion."""
    got = greedy_answers(model, tokenizer, words)
    return sum(g == completion(task, w) for g, w in zip(got, words)) / len(words)

