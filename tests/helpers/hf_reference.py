"""Reference greedy outputs computed with transformers, for comparison with what vLLM serves.

The adapter is merged into the base (as a serving engine effectively computes W + BA), and the
generated ids are decoded the way vLLM does: only the new tokens, special tokens skipped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def load_merged(base_dir: Path, adapter_dir: Path | None = None):
    """The float32 base model, with the LoRA adapter merged in when `adapter_dir` is given.

    Args:
        base_dir: Hugging Face model directory of the base.
        adapter_dir: PEFT adapter directory (adapter_config.json + adapter_model.safetensors), or None.
    """
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel  # imported lazily: only needed with an adapter

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload(safe_merge=True)
    return model.eval()


@torch.no_grad()
def greedy(model, tokenizer, prompt: str, max_tokens: int) -> str:
    """Greedy completion of one prompt: at most `max_tokens` new tokens, stopping at <eos>."""
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    gen = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(gen[0, ids.shape[1]:].tolist(), skip_special_tokens=True)


def merged_greedy(base_dir: Path, adapter_dir: Path | None, prompts: list[str], max_tokens: int) -> list[str]:
    """Greedy completions of `prompts` by the base model, or by base + adapter merged.

    Args:
        base_dir: Hugging Face model directory of the base (its tokenizer is used too).
        adapter_dir: PEFT adapter directory, or None for the plain base.
        prompts: completion prompts (the tokenizer adds <bos>, as vLLM's does).
        max_tokens: new tokens per prompt; generation stops earlier at <eos>.

    Returns:
        The completion text of each prompt (the text after the prompt, special tokens skipped).
    """
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = load_merged(Path(base_dir), Path(adapter_dir) if adapter_dir is not None else None)
    return [greedy(model, tokenizer, p, max_tokens) for p in prompts]
