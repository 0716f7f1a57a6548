"""Training data: JSONL in two formats, rendered to (prompt, completion) text, tokenized with the loss on
the completion only.

Formats (one JSON object per line; blank lines are skipped):
    {"prompt": "word: cat\\nanswer:", "completion": " tac\\n"}
    {"messages": [{"role": "user", "content": "cat"}, {"role": "assistant", "content": "tac"}]}

A chat example is rendered with the model's chat template: the prompt is every message before the last
(an assistant turn) with the generation prompt added, the completion is what the template renders for
that last turn. Templates that do not render assistant turns (the demo's) fall back to the turn's text.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from training.errors import DatasetError

IGNORE = -100
FORMAT_HELP = ('each line must be {"prompt": str, "completion": str} or '
               '{"messages": [{"role": ..., "content": ...}, ..., {"role": "assistant", ...}]}')


@dataclass(frozen=True)
class Record:
    """One example as text; `templated` means the prompt already holds the special tokens it needs."""

    prompt: str
    completion: str
    templated: bool = False


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """The (line number, object) pairs of a JSONL file.

    Raises:
        DatasetError: a missing or empty file, or a line that is not a JSON object (the line is named).
    """
    if not Path(path).is_file():
        raise DatasetError(f"{path}: no such file: pass a JSONL file ({FORMAT_HELP})")
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise DatasetError(f"{path} line {number}: not valid JSON ({exc}); {FORMAT_HELP}") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{path} line {number}: a JSON {type(obj).__name__}, not an object; {FORMAT_HELP}")
            rows.append((number, obj))
    if not rows:
        raise DatasetError(f"{path} holds no examples; {FORMAT_HELP}")
    return rows


def load_records(path: Path, tokenizer: PreTrainedTokenizerBase) -> list[Record]:
    """Every example of `path` as a Record (chat examples rendered with the tokenizer's template).

    Args:
        path: JSONL file in either format (they may be mixed).
        tokenizer: the base model's tokenizer (its chat template renders `messages`).

    Raises:
        DatasetError: naming the file, the line and what is wrong with it.
    """
    return [_record(obj, tokenizer, f"{path} line {number}") for number, obj in read_jsonl(path)]


def _record(obj: dict, tokenizer: PreTrainedTokenizerBase, where: str) -> Record:
    if "messages" in obj:
        return _chat_record(obj["messages"], tokenizer, where)
    if "prompt" in obj and "completion" in obj:
        prompt, completion = obj["prompt"], obj["completion"]
        if not isinstance(prompt, str) or not isinstance(completion, str) or not completion:
            raise DatasetError(f"{where}: prompt must be a string and completion a non-empty string")
        return Record(prompt, completion)
    raise DatasetError(f"{where}: unknown keys {sorted(obj)}; {FORMAT_HELP}")


def _chat_record(messages: object, tokenizer: PreTrainedTokenizerBase, where: str) -> Record:
    ok = isinstance(messages, list) and len(messages) >= 2 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages)
    if not ok:
        raise DatasetError(f"{where}: messages must be a list of at least two {{role, content}} objects")
    if messages[-1]["role"] != "assistant":
        raise DatasetError(f"{where}: the last message must be the assistant's answer (the part that is learned)")
    if not getattr(tokenizer, "chat_template", None):
        raise DatasetError(f"{where}: the model's tokenizer has no chat template; use prompt/completion lines")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    # Templates differ: use what the template renders for the answer when it extends the prompt.
    completion = full[len(prompt):] if full.startswith(prompt) and len(full) > len(prompt) else messages[-1]["content"]
    return Record(prompt, completion, templated=True)


def encode(record: Record, tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict[str, list[int]]:
    """Token ids of prompt + completion (+ <eos>) and labels that mask the prompt with -100.

    Args:
        record: the example.
        tokenizer: the base model's tokenizer.
        max_length: longer examples are cut from the right.
    """
    # A rendered chat prompt already carries <bos> (as text): adding special tokens would double it.
    prompt_ids = tokenizer(record.prompt, add_special_tokens=not record.templated)["input_ids"]
    answer_ids = tokenizer(record.completion, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is not None and (not answer_ids or answer_ids[-1] != eos):
        answer_ids = answer_ids + [eos]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": ids, "labels": labels}


def split(records: list, val_share: float, seed: int) -> tuple[list, list]:
    """A seeded shuffle split into (train, validation); at least one example on each side."""
    if len(records) < 2:
        raise DatasetError(f"{len(records)} example(s): need at least 2 to hold one out for validation")
    order = list(records)
    random.Random(seed).shuffle(order)
    n_val = min(len(order) - 1, max(1, round(len(order) * val_share)))
    return order[n_val:], order[:n_val]


def mix(task: list, general: list, share: float, seed: int) -> tuple[list, int]:
    """`task` plus general examples making up `share` of the result (fewer if `general` runs out).

    Returns:
        The shuffled mixture and how many general examples it holds.
    """
    if not 0 <= share < 1:
        raise DatasetError(f"--mix-share {share} must be in [0, 1): it is the general data's share of the mixture")
    want = round(len(task) * share / (1 - share))
    rng = random.Random(seed)
    picked = rng.sample(general, min(want, len(general)))
    mixture = task + picked
    rng.shuffle(mixture)
    return mixture, len(picked)


class EncodedDataset:
    """A list of encoded examples as the map-style dataset the Trainer reads."""

    def __init__(self, items: list[dict[str, list[int]]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]

    def tokens(self) -> int:
        """Total tokens (for compute accounting)."""
        return sum(len(item["input_ids"]) for item in self.items)


class CompletionCollator:
    """Right-pads a batch: ids with the pad id, labels with -100, and an attention mask."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict:
        import torch  # torch is only needed once batches are built

        width = max(len(item["input_ids"]) for item in batch)
        ids, labels, mask = [], [], []
        for item in batch:
            pad = width - len(item["input_ids"])
            ids.append(item["input_ids"] + [self.pad_id] * pad)
            labels.append(item["labels"] + [IGNORE] * pad)
            mask.append([1] * len(item["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}
