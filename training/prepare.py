"""Assemble the train and validation sets of a run: read, split, mix general data in, tokenize."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from training.config import TrainJob
from training.data import EncodedDataset, Record, encode, load_records, mix, split
from training.errors import DatasetError
from training.staged_build import file_sha256


@dataclass
class PreparedData:
    """Tokenized splits and what train.json records about them."""

    train: EncodedDataset
    val: EncodedDataset
    info: dict


def _format(records: list[Record]) -> str:
    chat = sum(r.templated for r in records)
    return "chat" if chat == len(records) else "prompt_completion" if chat == 0 else "mixed"


def _encode_all(records: list[Record], tokenizer: PreTrainedTokenizerBase, max_length: int) -> tuple[list, int]:
    # An example cut so short that no completion token is left teaches nothing: drop and count it.
    items = [encode(r, tokenizer, max_length) for r in records]
    kept = [item for item in items if any(label != -100 for label in item["labels"])]
    return kept, len(items) - len(kept)


def prepare_data(job: TrainJob, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    """Read `job.data` (and the optional validation and general files) into tokenized splits.

    Args:
        job: the run; uses data, val_data, mix_general and train.{val_share, mix_share, max_length, seed}.
        tokenizer: the base model's tokenizer.

    Raises:
        DatasetError: unreadable files, or nothing left to train on after truncation.
    """
    s = job.train
    records = load_records(job.data, tokenizer)
    if job.val_data is not None:
        train, val = records, load_records(job.val_data, tokenizer)
    else:
        train, val = split(records, s.val_share, s.seed)
    info: dict = {"path": str(job.data), "sha256": file_sha256(Path(job.data)), "format": _format(records),
                  "examples": len(records)}
    if job.val_data is not None:
        info.update(val_path=str(job.val_data), val_sha256=file_sha256(Path(job.val_data)))
    if job.mix_general is not None:
        general = load_records(job.mix_general, tokenizer)
        train, n_general = mix(train, general, s.mix_share, s.seed)
        info.update(general_path=str(job.mix_general), general_sha256=file_sha256(Path(job.mix_general)),
                    general_examples=n_general, mix_share=round(n_general / len(train), 4))
    train_items, dropped_train = _encode_all(train, tokenizer, s.max_length)
    val_items, dropped_val = _encode_all(val, tokenizer, s.max_length)
    if not train_items or not val_items:
        raise DatasetError(f"{job.data}: no example keeps a completion token within --max-length {s.max_length}: "
                           "raise --max-length or shorten the prompts")
    train_set, val_set = EncodedDataset(train_items), EncodedDataset(val_items)
    info.update(train_examples=len(train_items), val_examples=len(val_items),
                dropped_truncated=dropped_train + dropped_val, train_tokens=train_set.tokens())
    return PreparedData(train=train_set, val=val_set, info=info)
