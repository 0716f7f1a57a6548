"""What the model-family tests build on each zoo base: adapters trained through the CLI, a merged model, a
composition, adapters the gate must refuse, and transformers/PEFT reference answers.

Everything is tiny (a few optimizer steps on a ~1 M-parameter base): the tests check that each path works
and computes what transformers/PEFT compute on that architecture, not what the model learned.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer
from typer.testing import CliRunner

from common.peft_format import CONFIG_FILE, WEIGHTS_FILE
from tests.helpers.hf_reference import load_merged, merged_greedy
from training.tasks import dataset, make_prompt
from training.zoo import FAMILIES

PROMPTS = [make_prompt(w) for w in ("hello", "cards", "serve")]
MAX_TOKENS = 12
# A served token may differ from transformers' greedy pick only where the two best logits are this close.
# The largest gap seen across the five families was 1.5e-3 (Phi-3, a rank-16 composed adapter on the fused
# qkv_proj, where batching also flipped that tie; that run's engine was in bf16, the CPU's auto dtype here);
# an adapter ignored or misrouted is off by far more.
TIE_GAP = 5e-3
RANK = 8


def cli() -> typer.Typer:
    """The product CLI (`loraplex ...`)."""
    from loraplex.cli import app

    return app


def run_cli(*args: str) -> str:
    """Run `loraplex ARGS` in this process; its stdout, or a failure showing its output."""
    result = CliRunner().invoke(cli(), [str(a) for a in args])
    assert result.exit_code == 0, f"loraplex {' '.join(map(str, args))}:\n{result.output[-3000:]}"
    return result.stdout


def train_data(path: Path) -> Path:
    """A small JSONL of the demo's reverse task (prompt/completion)."""
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in dataset("reverse", 48, 3)))
    return path


def train_lora(base: Path, data: Path, out: Path, targets: str) -> Path:
    """`loraplex train lora` for a few steps; returns the adapter directory."""
    run_cli("train", "lora", "--base", base, "--data", data, "--out", out, "-r", RANK, "--lr", "2e-2",
            "--max-steps", "4", "--eval-steps", "4", "--batch-size", "8", "--dropout", "0", "--patience", "0",
            "--target-modules", targets, "--no-progress", "--threads", "1", "--json")
    return out / "adapter"


def attention_targets(family: str) -> str:
    return ",".join(FAMILIES[family].attention_targets)


def as_trained_elsewhere(adapter: Path, out: Path) -> Path:
    """A copy of `adapter` as a user brings one from elsewhere: bf16 weights, no base fingerprint."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text((adapter / CONFIG_FILE).read_text())
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(adapter / WEIGHTS_FILE)).items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    return out


def peft_adapter(base: Path, out: Path, **lora) -> Path:
    """A randomly initialised PEFT adapter (lora_B non-zero) saved with PEFT itself: what a user brings."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM", **lora)
    get_peft_model(model, config).save_pretrained(str(out), save_embedding_layers=False)
    return out


def reference(base: Path, adapter: Path | None) -> list[str]:
    """transformers/PEFT greedy answers to PROMPTS (adapter merged in, fp32)."""
    return merged_greedy(base, adapter, PROMPTS, MAX_TOKENS)


@torch.no_grad()
def greedy_gaps(base: Path, adapter: Path | None, served: list[list[int]], prompts: list[str] = PROMPTS
                ) -> list[float]:
    """For each prompt, how far the served tokens stray from transformers/PEFT's greedy choice: the largest
    (best logit - logit of the served token) over the answer, teacher-forced on the served tokens.

    0 means every served token is the reference's argmax. Random weights leave near-ties that fp32 kernels
    break differently (vLLM's and transformers' attention, LoRA applied unmerged vs merged), so a served
    answer may leave the reference's path where the two best logits are within rounding of each other.

    Args:
        served: the token ids of each served answer.
        prompts: the prompt of each answer.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = load_merged(base, adapter)
    gaps = []
    for prompt, answer in zip(prompts, served, strict=True):
        prompt_ids = tokenizer(prompt)["input_ids"]
        logits = model(input_ids=torch.tensor([prompt_ids + answer])).logits[0].float()
        steps = logits[len(prompt_ids) - 1: len(prompt_ids) - 1 + len(answer)]
        chosen = steps.gather(1, torch.tensor(answer).unsqueeze(1)).squeeze(1)
        gaps.append(float((steps.max(dim=1).values - chosen).max()) if answer else 0.0)
    return gaps
