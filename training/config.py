"""Settings of one training run, as documented data: each field carries the help text the CLI shows; and
the settings of the method comparison (`loraplex train compare`). The CLI's defaults are read from here.

Example:
    >>> from training.config import LoraSettings, TrainSettings
    >>> LoraSettings(r=8).lora_alpha
    16.0
    >>> TrainSettings.help("lr")
    'peak learning rate (after warm-up)'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

METHODS = ("lora", "qlora", "full")
# Full fine-tuning moves every weight: its customary peak learning rate is far below LoRA's (TrainSettings.lr).
FULL_LR = 1e-5


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


class _Documented:
    @classmethod
    def help(cls, name: str) -> str:
        """The help text of field `name`."""
        return next(f.metadata["help"] for f in fields(cls) if f.name == name)  # type: ignore[arg-type]

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}  # type: ignore[call-overload]


@dataclass(frozen=True)
class LoraSettings(_Documented):
    """How the LoRA adapter is shaped."""

    r: int = _f(16, "LoRA rank r (the served maximum is the engine's --max-lora-rank, 16 by default)")
    alpha: float | None = _f(None, "lora_alpha; default 2*r (updates are scaled by alpha/r, alpha/sqrt(r) with rsLoRA)")
    dropout: float = _f(0.05, "dropout on the LoRA input during training")
    target_modules: tuple[str, ...] = _f(("all-linear",),
                                         "module names to adapt, or 'all-linear' (every linear layer but the LM head)")
    rslora: bool = _f(False, "rank-stabilised LoRA: scale by alpha/sqrt(r), which keeps high ranks learning")

    @property
    def lora_alpha(self) -> float:
        """The alpha actually used (2*r unless given)."""
        return float(self.alpha) if self.alpha is not None else 2.0 * self.r


@dataclass(frozen=True)
class TrainSettings(_Documented):
    """Optimisation, evaluation and checkpointing of one run (method-independent)."""

    lr: float = _f(2e-4, "peak learning rate (after warm-up)")
    scheduler: str = _f("cosine", "learning-rate schedule after warm-up: cosine, linear or constant_with_warmup")
    warmup_ratio: float = _f(0.03, "share of the total steps spent warming the learning rate up from 0")
    epochs: float = _f(3.0, "passes over the training data (ignored when max_steps > 0)")
    max_steps: int = _f(-1, "stop after this many optimizer steps (-1: use epochs)")
    batch_size: int = _f(8, "examples per device per step")
    grad_accum: int = _f(1, "gradient accumulation steps (effective batch = batch_size * grad_accum)")
    max_length: int = _f(1024, "tokens per example; longer examples are cut from the right")
    val_share: float = _f(0.1, "share of the data held out for validation when no --val-data is given")
    eval_steps: int = _f(50, "evaluate on the validation split (and checkpoint) every N steps")
    patience: int = _f(3, "early stopping: evaluations without improvement before stopping (0: off)")
    min_delta: float = _f(0.0, "early stopping: the least validation-loss drop that counts as improvement")
    keep_best: int = _f(1, "checkpoints kept with the lowest validation loss")
    keep_last: int = _f(1, "most recent checkpoints kept (for --resume)")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward: less memory, ~30% slower")
    mix_share: float = _f(0.2, "share of the training set drawn from --mix-general data (against forgetting)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    seed: int = _f(0, "seed of the split, the shuffling and the adapter initialisation")
    progress: bool = _f(True, "show the Trainer's progress bars")

    @classmethod
    def for_method(cls, method: str) -> TrainSettings:
        """The defaults of a `method` run (the CLI's defaults): full fine-tuning starts from FULL_LR."""
        return cls(lr=FULL_LR) if method == "full" else cls()


@dataclass(frozen=True)
class TrainJob:
    """Everything one `loraplex train lora|qlora|full` call needs.

    Args:
        method: lora, qlora or full.
        base_dir: local Hugging Face causal-LM directory.
        data: JSONL training file (prompt/completion or chat messages).
        out_dir: receives adapter/ or model/, train.json and checkpoints/.
        val_data: optional JSONL validation file (else val_share of `data`).
        mix_general: optional JSONL of general data mixed into training.
        resume: continue from the newest checkpoint in out_dir/checkpoints.
        overwrite: delete an earlier run's outputs in out_dir first.
    """

    method: str
    base_dir: Path
    data: Path
    out_dir: Path
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    val_data: Path | None = None
    mix_general: Path | None = None
    resume: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class CompareSettings:
    """What the comparison trains: the same steps and batches for every variant."""

    ranks: tuple[int, ...] = (4, 8, 16, 32)
    steps: int = 300
    batch_size: int = 32
    lora_lr: float = 5e-3  # LoRA's customary learning rate is ~10x full fine-tuning's
    full_lr: float = 5e-4
    test_share: float = 0.2
    max_eval: int = 200
    seed: int = 0
    mix_share: float = 0.2  # share of general data in every variant's training set when one is given


# `train compare --quick`: a reduced run (about a minute).
QUICK = CompareSettings(steps=24, batch_size=16, max_eval=24)
