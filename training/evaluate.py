"""Task scores by greedy generation, and the time it takes to switch between fine-tuned variants."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from training.data import Record


def _prompt_ids(record: Record, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return tokenizer(record.prompt, add_special_tokens=not record.templated)["input_ids"]


@torch.no_grad()
def greedy_completions(model, tokenizer: PreTrainedTokenizerBase, records: list[Record],
                       batch_size: int = 64) -> list[str]:
    """Greedy completion text of each record's prompt (special tokens skipped).

    Prompts are batched by token length, so no batch needs padding and every model (whatever its
    padding side) sees exactly the prompt it would see alone.

    Args:
        model: a causal LM or PEFT model.
        tokenizer: its tokenizer.
        records: examples; each generates up to its completion's length plus 4 tokens.
        batch_size: prompts per generate call.
    """
    model.eval()
    by_len: dict[int, list[int]] = {}
    encoded = [_prompt_ids(r, tokenizer) for r in records]
    for index, ids in enumerate(encoded):
        by_len.setdefault(len(ids), []).append(index)
    out: list[str] = [""] * len(records)
    for indices in by_len.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            ids = torch.tensor([encoded[i] for i in chunk], device=model.device)
            longest = max(len(tokenizer(records[i].completion, add_special_tokens=False)["input_ids"]) for i in chunk)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=longest + 4,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            for i, row in zip(chunk, gen[:, ids.shape[1]:].tolist()):
                out[i] = tokenizer.decode(row, skip_special_tokens=True)
    return out


def exact_match(model, tokenizer: PreTrainedTokenizerBase, records: list[Record]) -> float:
    """Share of records whose greedy completion equals the expected one (surrounding whitespace ignored)."""
    if not records:
        return float("nan")
    got = greedy_completions(model, tokenizer, records)
    return sum(g.strip() == r.completion.strip() for g, r in zip(got, records)) / len(records)


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def adapter_switch_seconds(peft_model, adapter_dir: Path, repeats: int = 3) -> float:
    """Median time to load another adapter into a live PEFT model and make it the active one.

    Args:
        peft_model: a PeftModel already holding its own adapter.
        adapter_dir: the adapter to switch to (loaded under a temporary name, then deleted again).
        repeats: measurements; the median is returned.
    """
    active = peft_model.active_adapter

    def switch():
        peft_model.load_adapter(str(adapter_dir), adapter_name="switch_probe")
        peft_model.set_adapter("switch_probe")
        peft_model.set_adapter(active)
        peft_model.delete_adapter("switch_probe")

    return _median_seconds(switch, repeats)


def model_switch_seconds(model_dir: Path, repeats: int = 3) -> float:
    """Median time to load another full model from disk (the alternative to switching adapters)."""
    return _median_seconds(lambda: AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32), repeats)
