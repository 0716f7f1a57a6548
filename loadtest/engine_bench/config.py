"""What the engine benchmark measures: the bench model's shape, traffic mixes, the matrix, one engine's spec."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """Size of the bench model; the defaults give 13.1M parameters with the 259-token demo vocabulary."""

    hidden: int = 512
    layers: int = 4
    heads: int = 8  # head dim 64: a size every vLLM CPU attention backend supports
    intermediate: int = 1408
    init_std: float = 0.02


@dataclass(frozen=True)
class Mix:
    """A traffic shape: `seqs` requests of `prompt` random tokens, each generating `gen` greedy tokens."""

    name: str
    seqs: int
    prompt: int
    gen: int


DECODE = Mix("decode-heavy", 64, 8, 64)
PREFILL = Mix("prefill-heavy", 64, 96, 2)

@dataclass(frozen=True)
class Matrix:
    """What one benchmark run measures.

    Args:
        ranks: one LoRA engine per rank (max_lora_rank = rank, so no adapter is padded).
        adapter_counts: distinct adapters per case, round robin over the requests (0 = base-only traffic).
        mixes: traffic shapes.
        rounds: timed rounds; each case's ratio is the median over rounds.
    """

    ranks: tuple[int, ...]
    adapter_counts: tuple[int, ...]
    mixes: tuple[Mix, ...]
    rounds: int


FULL = Matrix((8, 16, 64), (0, 1, 8, 64), (DECODE, PREFILL), 2)
QUICK = Matrix((16,), (0, 1, 8), (Mix("decode-heavy", 32, 8, 16),), 2)


@dataclass(frozen=True)
class EngineSpec:
    """One engine process: `rank` None is LoRA disabled; else it holds all `adapters` in one batch."""

    model: str
    rank: int | None = None
    adapters: tuple[str, ...] = ()
