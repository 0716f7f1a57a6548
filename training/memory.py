"""Memory and compute estimates for full fine-tuning, LoRA and QLoRA, from explicit per-parameter bytes.

Training memory = weights + gradients + optimizer state + activations + a fixed CUDA overhead:

| method | per base parameter | per trainable (adapter) parameter |
|---|---|---|
| full (bf16 mixed precision, AdamW) | 16 B: 2 bf16 weight + 2 grad + 4 fp32 master + 8 Adam m, v | (same) |
| LoRA (frozen bf16 base) | 2 B | 16 B: 4 fp32 weight + 4 grad + 8 Adam |
| QLoRA (frozen NF4 base, double quant) | 0.55 B: 0.5 for 4 bits + ~0.05 block scales, 16-bit norms | 16 B |

Activations assume gradient checkpointing: one stored layer input per layer (2·s·b·d·L bytes) plus one
layer recomputed at a time (≈34·s·b·d bytes), and CUDA_OVERHEAD_GB for the context and allocator slack.
The architecture is guessed from the size: a Llama-like model with P ≈ 12·L·d² and L = d/128 (see `shape`).
"""

from __future__ import annotations

from dataclasses import dataclass

FULL_BYTES = 16.0
LORA_BASE_BYTES = 2.0
QLORA_BASE_BYTES = 0.55
ADAPTER_BYTES = 16.0
CUDA_OVERHEAD_GB = 1.0
LAYER_WIDTH_RATIO = 128  # d / L in Llama-like models (7B: 4096 / 32)
# Linear layers per block that `all-linear` adapts, as sums of (in + out) in units of d:
# q, k, v, o: 2d each; gate, up, down with an MLP of ~2.7d: 3.7d each.
LORA_IO_PER_LAYER = 4 * 2 + 3 * 3.7


@dataclass(frozen=True)
class Shape:
    """A guessed Llama-like shape for a model of `params` parameters."""

    params: float
    hidden: int
    layers: int


def shape(params_b: float) -> Shape:
    """Guess hidden size and depth from the parameter count (P ≈ 12·L·d², L = d/128)."""
    params = params_b * 1e9
    hidden = (params * LAYER_WIDTH_RATIO / 12) ** (1 / 3)
    return Shape(params=params, hidden=int(round(hidden)), layers=max(1, int(round(hidden / LAYER_WIDTH_RATIO))))


def lora_params(s: Shape, rank: int) -> float:
    """Trainable parameters of an all-linear LoRA of `rank`: r·(in+out) per adapted layer."""
    return rank * LORA_IO_PER_LAYER * s.hidden * s.layers


def activations_gb(s: Shape, seq_len: int, micro_batch: int) -> float:
    """Activation memory with gradient checkpointing, in GB (bf16 activations)."""
    tokens = seq_len * micro_batch
    return (2 * tokens * s.hidden * s.layers + 34 * tokens * s.hidden) / 1e9


def memory_gb(params_b: float, rank: int, seq_len: int = 2048, micro_batch: int = 1) -> dict[str, float]:
    """Estimated peak training memory (GB, all GPUs together) of each method.

    Args:
        params_b: model size in billions of parameters.
        rank: LoRA rank (for the adapter's own states).
        seq_len: tokens per sequence.
        micro_batch: sequences per GPU step.
    """
    s = shape(params_b)
    extra = activations_gb(s, seq_len, micro_batch) + CUDA_OVERHEAD_GB
    adapter = lora_params(s, rank) * ADAPTER_BYTES / 1e9
    return {
        "full": round(s.params * FULL_BYTES / 1e9 + extra, 2),
        "lora": round(s.params * LORA_BASE_BYTES / 1e9 + adapter + extra, 2),
        "qlora": round(s.params * QLORA_BASE_BYTES / 1e9 + adapter + extra, 2),
    }


# Training FLOPs per token and parameter: forward 2, backward 4 (activation and weight gradients).
# A frozen base skips the weight gradients (2 of the 4); QLoRA also dequantizes every weight per use.
FLOPS_PER_TOKEN_PARAM = {"full": 6.0, "lora": 4.0, "qlora": 4.0 * 1.3}


def gpu_hours(params_b: float, tokens: float, gpu_count: int, tflops: float, mfu: float) -> dict[str, float]:
    """GPU-hours (summed over GPUs) each method needs for `tokens` training tokens.

    Args:
        params_b: model size in billions.
        tokens: tokens seen in training (examples x tokens per example x epochs).
        gpu_count: GPUs used (the work splits over them; GPU-hours do not change).
        tflops: dense bf16 peak of one GPU in TFLOP/s.
        mfu: the share of that peak training reaches (0.3-0.5 is typical).
    """
    del gpu_count  # GPU-hours are the same however many GPUs share the work
    per_second = tflops * 1e12 * mfu
    return {m: round(f * params_b * 1e9 * tokens / per_second / 3600, 2) for m, f in FLOPS_PER_TOKEN_PARAM.items()}


def adapter_mb(params_b: float, rank: int, bytes_per_param: int = 2) -> float:
    """Size of a saved all-linear adapter in MB (bf16 weights by default)."""
    return round(lora_params(shape(params_b), rank) * bytes_per_param / 1e6, 1)


def trainable_pct(params_b: float, rank: int) -> float:
    """Share of the model's parameters an all-linear LoRA of `rank` trains, in %."""
    s = shape(params_b)
    return round(100 * lora_params(s, rank) / s.params, 3)
