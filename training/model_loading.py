"""Load a base model for one training method: full (all weights), LoRA (bf16/fp32 base), QLoRA (4-bit base).

QLoRA needs CUDA and bitsandbytes; where either is missing it refuses with BackendUnavailable instead of
quietly training something else.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from training.config import LoraSettings
from training.errors import BackendUnavailable

LORA_METHODS = ("lora", "qlora")


def qlora_missing() -> list[str]:
    """What QLoRA needs and this machine lacks (empty when QLoRA can run)."""
    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install bitsandbytes)")
    return missing


def require_backend(method: str) -> None:
    """Raise BackendUnavailable when `method` cannot run here; the message names the alternative."""
    missing = qlora_missing() if method == "qlora" else []
    if missing:
        raise BackendUnavailable(
            f"QLoRA needs {' and '.join(missing)}: run `loraplex train lora` (same adapter format, "
            "base kept in bf16/fp32, ~4x the base memory) or run on a CUDA host with bitsandbytes installed")


def use_bf16() -> bool:
    """Mixed precision in bf16 where the GPU supports it; float32 everywhere else (CPU)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def load_base(base_dir: Path, method: str) -> PreTrainedModel:
    """The base model ready for `method` (LoRA layers are added separately by `add_lora`).

    Args:
        base_dir: local Hugging Face causal-LM directory.
        method: lora, qlora or full.
    """
    require_backend(method)
    kwargs: dict = {"dtype": torch.float32}
    if method == "lora" and use_bf16():
        kwargs["dtype"] = torch.bfloat16  # frozen base in bf16: 2 bytes/param, as the memory model assumes
    if method == "qlora":  # pragma: no cover - needs CUDA + bitsandbytes, untested on the CPU machines
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["dtype"] = torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), **kwargs)
    model.config.use_cache = False  # the KV cache is useless in training and clashes with checkpointing
    return model


def add_lora(model: PreTrainedModel, settings: LoraSettings, method: str, gradient_checkpointing: bool):
    """Wrap `model` with a fresh LoRA adapter; only the adapter is trainable.

    Args:
        model: from `load_base`.
        settings: rank, alpha, dropout, target modules, rsLoRA.
        method: lora or qlora (QLoRA first prepares the 4-bit model for k-bit training).
        gradient_checkpointing: passed to PEFT's k-bit preparation.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method == "qlora":  # pragma: no cover - CUDA only
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    targets = settings.target_modules
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.lora_alpha, lora_dropout=settings.dropout, use_rslora=settings.rslora,
        target_modules="all-linear" if list(targets) == ["all-linear"] else list(targets),
        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def param_count(param: torch.Tensor) -> int:
    """How many weights `param` holds: bitsandbytes' Params4bit packs two 4-bit weights per byte of its
    storage dtype, so its numel() is half (uint8 storage) of the real count — QLoRA totals were halved."""
    if type(param).__name__ == "Params4bit":
        return param.numel() * param.element_size() * 2
    return param.numel()


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, 4-bit quantized weights counted one by one (as PEFT does)."""
    trainable = sum(param_count(p) for p in model.parameters() if p.requires_grad)
    return trainable, sum(param_count(p) for p in model.parameters())
