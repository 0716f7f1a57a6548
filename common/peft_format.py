"""The PEFT LoRA adapter format: its two files, its tensor keys and the scale of each module's update.

Everything loraplex knows about how PEFT lays out a LoRA adapter lives here, so the registry's gate and
probe, training's savers and health report, the client and the benchmarks cannot disagree. The model is
vLLM's `vllm/lora/peft_helper.py`; the rules follow PEFT's `tuners/lora` (`LoraModel._create_and_replace`,
`LoraLayer.update_layer`, `utils.other.get_pattern_key`). Pure Python: importing it pulls in no torch.

Example:
    >>> config = AdapterConfig.from_dict({"r": 8, "lora_alpha": 16, "alpha_pattern": {"v_proj": 4}})
    >>> config.scale_for("model.layers.0.self_attn.q_proj"), config.scale_for("model.layers.0.self_attn.v_proj")
    (2.0, 0.5)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

# vLLM matches the patterns with `regex`, whose `timeout` bounds a pattern crafted to backtrack forever.
import regex

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE)
"""Exactly the files of an adapter upload, in the order they are listed and sent."""

KEY_PREFIX = "base_model.model."
# ASCII module path segments only: no spaces, slashes, `..` or look-alike unicode reach a hook or a log.
KEY_RE = re.compile(r"base_model\.model\.(?P<module>[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)\.lora_(?P<half>[AB])\.weight")
KEY_SHAPE = "base_model.model.<module>.lora_A.weight / lora_B.weight"
PATTERN_TIMEOUT_S = 0.1  # one pattern against one module name takes microseconds unless it is hostile

# PEFT's LoraConfig defaults, used when a (hand-written) config leaves the field out.
DEFAULT_RANK, DEFAULT_ALPHA = 8, 8


class LoraKey(NamedTuple):
    """One tensor key of a PEFT adapter: the adapted module and which half (`"A"` or `"B"`)."""

    module: str
    half: str


def parse_key(key: str) -> LoraKey | None:
    """The module and half a PEFT LoRA tensor key names, or None for any other key.

    Args:
        key: a safetensors key such as `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
    """
    match = KEY_RE.fullmatch(key) if isinstance(key, str) else None
    return LoraKey(match["module"], match["half"]) if match else None


def lora_key(module: str, half: str) -> str:
    """The safetensors key of `module`'s lora_A (`half="A"`) or lora_B (`half="B"`) weight."""
    return f"{KEY_PREFIX}{module}.lora_{half}.weight"


def lora_pairs(keys) -> dict[str, dict[str, str]]:
    """`{module: {"A": key, "B": key}}` for the modules that have both halves; other keys are ignored."""
    pairs: dict[str, dict[str, str]] = {}
    for key in keys:
        parsed = parse_key(key)
        if parsed is not None:
            pairs.setdefault(parsed.module, {})[parsed.half] = key
    return {m: p for m, p in sorted(pairs.items()) if set(p) == {"A", "B"}}


def is_adapter_dir(path: str | Path) -> bool:
    """True when `path` is a directory holding both adapter files."""
    return all((Path(path) / name).is_file() for name in ADAPTER_FILES)


class PatternError(ValueError):
    """A rank_pattern/alpha_pattern key is not a valid regular expression, or is too slow to match."""


def pattern_value(pattern: Mapping[str, object], module: str):
    """The value of the first key of `pattern` that matches `module` as PEFT matches it, else None.

    A key matches when it (a regular expression) matches a dot-separated suffix of the module name:
    `q_proj` matches `model.layers.0.self_attn.q_proj`, `layers.0.self_attn.q_proj` only layer 0.

    Raises:
        PatternError: a key is not a valid expression, or matching it ran over PATTERN_TIMEOUT_S.
    """
    for key, value in pattern.items():
        try:
            if regex.match(rf"(.*\.)?({key})$", module, timeout=PATTERN_TIMEOUT_S):
                return value
        except regex.error as exc:
            raise PatternError(f"pattern {key!r} is not a valid regular expression ({exc})") from None
        except TimeoutError:
            raise PatternError(f"pattern {key!r} took over {PATTERN_TIMEOUT_S}s to match {module!r}") from None
    return None


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of adapter_config.json that decide what a LoRA adapter computes.

    Args:
        r: the rank of every module not named by `rank_pattern`.
        lora_alpha: the alpha of every module not named by `alpha_pattern`.
        use_rslora: scale by alpha/sqrt(r) (rank-stabilised LoRA) instead of alpha/r.
        rank_pattern: per-module rank, keyed by a module-name pattern (see `pattern_value`).
        alpha_pattern: per-module alpha, keyed the same way.
    """

    r: int = DEFAULT_RANK
    lora_alpha: float = DEFAULT_ALPHA
    use_rslora: bool = False
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, config: Mapping) -> AdapterConfig:
        """The config of a parsed adapter_config.json (missing or null fields take PEFT's defaults)."""
        return cls(r=config.get("r") or DEFAULT_RANK,
                   lora_alpha=config.get("lora_alpha", DEFAULT_ALPHA),
                   use_rslora=bool(config.get("use_rslora")),
                   rank_pattern=dict(config.get("rank_pattern") or {}),
                   alpha_pattern=dict(config.get("alpha_pattern") or {}))

    @property
    def max_rank(self) -> int:
        """The largest rank of any module: what the engine's max LoRA rank must cover."""
        return max([self.r, *self.rank_pattern.values()])

    def rank_for(self, module: str) -> int:
        """The rank PEFT gives `module` (its name without `base_model.model.`)."""
        rank = pattern_value(self.rank_pattern, module) if self.rank_pattern else None
        return self.r if rank is None else rank

    def alpha_for(self, module: str) -> float:
        """The alpha PEFT gives `module`."""
        alpha = pattern_value(self.alpha_pattern, module) if self.alpha_pattern else None
        return self.lora_alpha if alpha is None else alpha

    def scale_for(self, module: str) -> float:
        """The factor s of `module`'s update s·B·A: alpha/r, or alpha/sqrt(r) with rsLoRA, per module."""
        rank, alpha = self.rank_for(module), self.alpha_for(module)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank
