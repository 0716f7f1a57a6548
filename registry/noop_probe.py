"""The behavioural no-op probe: does the adapter really change what the served base model computes?

The static gate refuses an adapter whose every lora_B is exactly zero. An adapter can still be a silent
no-op with non-zero weights: lora_B scaled to 1e-9, or updates that cancel. This probe runs the base
model on a few fixed token sequences twice, without and with the adapter's update W + s·B·A applied to
each target linear (s = alpha/r, or alpha/sqrt(r) with rsLoRA, per module as rank_pattern and alpha_pattern
say: `AdapterConfig.scale_for`), and refuses the adapter when the logits
move by less than `min_change` relative to their norm.

The update is applied by forward hooks computed straight from the uploaded safetensors, so nothing of
PEFT is needed and the base weights are never modified. The base is loaded once per process (CPU, fp32,
no_grad) and shared; a lock serialises probes because the hooks sit on that shared model.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from functools import lru_cache
from pathlib import Path

from common.errors import InvalidAdapter
from common.peft_format import WEIGHTS_FILE, AdapterConfig, lora_key
from registry.base_spec import BaseModelSpec, _weight_files
from registry.safetensors_header import DTYPE_SIZES, read_header
from registry.settings import RegistrySettings
from registry.validation import ValidatedAdapter

log = logging.getLogger(__name__)

PROBE_SEQUENCES, PROBE_LENGTH, PROBE_SEED = 4, 16, 1234


def base_fp32_bytes(base_dir: str | Path) -> int:
    """Bytes the base's weights take in fp32, from the safetensors headers only."""
    total = 0
    for shard in _weight_files(Path(base_dir)):
        total += sum(math.prod(t.shape) * 4 for t in read_header(shard).tensors.values()
                     if t.dtype in DTYPE_SIZES)
    return total


def available_memory_bytes() -> int | None:
    """MemAvailable of the host (Linux), else None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class _LoadedBase:
    """The base model in eval mode with its unadapted logits on the probe inputs, computed once."""

    def __init__(self, base_dir: str):
        import torch
        from transformers import AutoModelForCausalLM

        started = time.monotonic()
        self.model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        vocab = int(self.model.config.vocab_size)
        generator = torch.Generator().manual_seed(PROBE_SEED)
        # Fixed token ids, not text: no tokenizer needed, and the same inputs on every host.
        self.inputs = torch.randint(0, vocab, (PROBE_SEQUENCES, PROBE_LENGTH), generator=generator)
        with torch.no_grad():
            self.base_logits = self.model(input_ids=self.inputs).logits.float()
        self.lock = threading.Lock()
        log.info("no-op probe: loaded base %s in %.1fs", base_dir, time.monotonic() - started)


_LOAD_LOCK = threading.Lock()


def _load(base_dir: str) -> _LoadedBase:
    """The loaded base, built once per process: the start-up warm thread and an early upload wait for the same
    load instead of holding two fp32 copies of the base (lru_cache alone would let both build one)."""
    with _LOAD_LOCK:
        return _load_once(base_dir)


@lru_cache(maxsize=2)
def _load_once(base_dir: str) -> _LoadedBase:
    return _LoadedBase(base_dir)


class NoOpProbe:
    """A validation `Probe`: refuses adapters that change the base's logits by less than `min_change`.

    Args:
        base: the served base (its directory is loaded on the first probe).
        min_change: smallest accepted ||logits_adapted - logits_base|| / ||logits_base||.
        max_base_bytes: larger bases (fp32 weights) are not probed; a warning says so once.
    """

    rule = "no-op-probe"

    def __init__(self, base: BaseModelSpec, *, min_change: float = 1e-5, max_base_bytes: int = 4 * 1024**3):
        self.base_dir = str(Path(base.path).resolve())
        self.base = base
        self.min_change = min_change
        self.max_base_bytes = max_base_bytes
        self.skip_reason: str | None = None
        self.last: dict = {}  # the last probe's numbers (for logs and tests)
        self._checked = False

    @classmethod
    def from_settings(cls, settings: RegistrySettings, base: BaseModelSpec | None) -> NoOpProbe | None:
        """The probe the settings ask for, or None (disabled, or no base to probe against)."""
        if not settings.noop_probe or base is None:
            return None
        return cls(base, min_change=settings.noop_probe_min_change, max_base_bytes=settings.noop_probe_max_base_bytes)

    def enabled(self) -> bool:
        """False when the base is too large for this host (decided once, logged once)."""
        if not self._checked:
            self._checked = True
            need = base_fp32_bytes(self.base_dir)
            free = available_memory_bytes()
            if need > self.max_base_bytes:
                self.skip_reason = (f"base needs {need / 2**30:.1f} GiB in fp32, over LORAPLEX_NOOP_PROBE_MAX_BASE_"
                                    f"BYTES={self.max_base_bytes}")
            elif free is not None and need > free // 2:
                self.skip_reason = (f"base needs {need / 2**30:.1f} GiB in fp32, over half the host's "
                                    f"{free / 2**30:.1f} GiB available")
            if self.skip_reason:
                log.warning("no-op probe skipped for every upload: %s; only the static zero check runs "
                            "(set LORAPLEX_NOOP_PROBE=false to silence this)", self.skip_reason)
        return self.skip_reason is None

    def warm(self) -> None:
        """Load the base now (e.g. in a background thread at start-up) instead of on the first upload."""
        if self.enabled():
            _load(self.base_dir)

    def __call__(self, files: dict[str, bytes], adapter: ValidatedAdapter) -> None:
        if not self.enabled():
            return
        from safetensors.torch import load as load_tensors

        started = time.monotonic()
        try:
            loaded = _load(self.base_dir)
        except Exception as exc:  # e.g. an architecture this transformers cannot build: skip, loudly, once
            self.skip_reason = f"the base could not be loaded for probing ({type(exc).__name__}: {exc})"
            log.warning("no-op probe skipped for every upload: %s", self.skip_reason)
            return
        adapted = adapted_logits(loaded, adapter.lora, load_tensors(files[WEIGHTS_FILE]), list(adapter.modules))
        change = float((adapted - loaded.base_logits).norm() / loaded.base_logits.norm().clamp_min(1e-30))
        flips = float((adapted.argmax(-1) != loaded.base_logits.argmax(-1)).float().mean())
        self.last = {"relative_change": change, "top1_changed": flips, "seconds": time.monotonic() - started}
        if not math.isfinite(change):
            raise InvalidAdapter(self.rule, "applying the adapter to the base gives non-finite logits: its update "
                                            "overflows; retrain with a lower learning rate or lora_alpha")
        if change < self.min_change:
            raise InvalidAdapter(self.rule, f"the adapter changes the base model's output by a relative {change:.2g} "
                                            f"(under {self.min_change:g}) on the probe inputs: it is a silent no-op "
                                            "(weights near zero or cancelling); train it (check that the loss fell "
                                            "and lora_B is not near zero) before publishing")


def adapted_logits(loaded: _LoadedBase, config: AdapterConfig, tensors: dict, modules: list[str]):
    """The base's logits on the probe inputs with W + s·B·A in every adapted module (base weights untouched).

    Args:
        loaded: the loaded base (`_load(dir)`).
        config: the adapter's parsed config (gives each module's scale s).
        tensors: the adapter's tensors by PEFT key (`base_model.model.<module>.lora_A.weight`, ...).
        modules: the adapted module names (as in the base checkpoint).
    """
    import torch

    with loaded.lock, torch.no_grad():
        hooks = []
        try:
            for name in modules:
                a, b = tensors[lora_key(name, "A")].float(), tensors[lora_key(name, "B")].float()
                hook = _delta_hook(a, b, config.scale_for(name))
                hooks.append(loaded.model.get_submodule(name).register_forward_hook(hook))
            return loaded.model(input_ids=loaded.inputs).logits.float()
        finally:
            for hook in hooks:
                hook.remove()


def _delta_hook(a, b, scale: float):
    import torch.nn.functional as F

    def hook(_module, inputs, output):
        return output + scale * F.linear(F.linear(inputs[0].to(a.dtype), a), b).to(output.dtype)

    return hook


def default_probes(settings: RegistrySettings, base: BaseModelSpec | None, *, warm: bool = False) -> list:
    """The probes a serving gateway runs on uploads (the no-op probe when enabled and a base is set).

    Args:
        warm: load the base in a background thread now, so the first upload does not wait for it.
    """
    probe = NoOpProbe.from_settings(settings, base)
    if probe is None:
        return []
    if warm:
        threading.Thread(target=_warm_quietly, args=(probe,), name="noop-probe-warm", daemon=True).start()
    return [probe]


def _warm_quietly(probe: NoOpProbe) -> None:
    try:
        probe.warm()
    except Exception:  # the first upload will load it again and report the error to the uploader
        log.exception("no-op probe: loading the base failed")
