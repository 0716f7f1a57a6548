"""The validation gate: nothing becomes a visible adapter version without passing every rule here.

Each refusal is `InvalidAdapter(rule, message)`; the message says what was wrong and how to fix it.
Base-dependent rules (target modules exist, tensor shapes) run only when a base model is configured.
Later checks that need the model itself (a behavioural no-op probe) plug in as `probes`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from common.errors import InvalidAdapter
from common.peft_format import (
    ADAPTER_FILES,
    CONFIG_FILE,
    KEY_SHAPE,
    WEIGHTS_FILE,
    AdapterConfig,
    PatternError,
    lora_key,
    parse_key,
)
from registry.base_check import adapter_fingerprint, check_trained_base
from registry.base_spec import BaseModelSpec
from registry.manifest import BaseFingerprint
from registry.safetensors_header import HeaderError, SafetensorsHeader, TensorInfo, parse_header
from registry.settings import RegistrySettings
from registry.tensor_values import FLOAT_DTYPES, count_non_finite, is_all_zero

CONFIG, WEIGHTS = CONFIG_FILE, WEIGHTS_FILE
MAX_CONFIG_BYTES = 64 * 1024
MAX_PATTERN_CHARS = 256
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SAVE_FIX = "re-save with PEFT's `model.save_pretrained(dir)` (safetensors) and upload that directory's two files"
# Input embeddings and the LM head: the served engine applies LoRA to linear layers only, so an adapter of
# these would be served as if that part were absent (vLLM's CPU build has no embedding LoRA kernels).
EMBEDDING_MODULES = frozenset({"embed_tokens", "lm_head", "wte", "wpe", "embed_in", "embed_out", "word_embeddings",
                               "tok_embeddings", "embeddings", "output"})
EMBEDDING_FIX = ("retrain with target_modules=\"all-linear\" (which leaves them out) or a list of attention/MLP "
                 "projections, without modules_to_save")


@dataclass(frozen=True)
class LoraModule:
    """The two tensors adapting one base module."""

    name: str
    a: TensorInfo
    b: TensorInfo


@dataclass(frozen=True)
class ValidatedAdapter:
    """What the gate learned about an accepted adapter."""

    config: dict
    rank: int
    alpha: float
    target_modules: list[str]
    header: SafetensorsHeader
    modules: dict[str, LoraModule] = field(default_factory=dict)
    lora: AdapterConfig = field(default_factory=AdapterConfig)  # per-module rank and scale (rank/alpha patterns)
    trained_on: BaseFingerprint | None = None  # the base fingerprint the adapter carries (trained by loraplex)


Probe = Callable[[dict[str, bytes], ValidatedAdapter], None]
"""A later check (e.g. a behavioural no-op probe on the real model); raises InvalidAdapter to refuse."""


class AdapterValidator:
    """Runs every rule on an upload.

    Args:
        max_rank: the largest LoRA rank the engine serves.
        max_bytes: the largest total upload.
        base: the served base model; None skips the base-dependent rules.
        probes: extra checks run last, in order, on adapters that passed everything else.
    """

    def __init__(self, *, max_rank: int = 16, max_bytes: int = 256 * 1024**2,
                 base: BaseModelSpec | None = None, probes: list[Probe] | None = None):
        self.max_rank = max_rank
        self.max_bytes = max_bytes
        self.base = base
        self.probes: list[Probe] = list(probes or [])

    @classmethod
    def from_settings(cls, settings: RegistrySettings, base: BaseModelSpec | None = None) -> AdapterValidator:
        """A validator with the settings' caps and the given base spec."""
        return cls(max_rank=settings.max_lora_rank, max_bytes=settings.max_upload_bytes, base=base)

    def validate(self, files: dict[str, bytes]) -> ValidatedAdapter:
        """Return what was learned about `files`, or raise InvalidAdapter naming the first rule broken."""
        self._check_files(files)
        try:
            header, header_error = parse_header(files[WEIGHTS]), None
        except HeaderError as exc:
            header, header_error = None, InvalidAdapter(exc.rule, f"{WEIGHTS}: {exc}")
        trained_on = adapter_fingerprint(header) if header is not None else None
        if trained_on is not None and self.base is not None:  # before names and shapes: the clearer reason
            check_trained_base(trained_on, self.base.fingerprint)
        config, rank, alpha, targets = self._check_config(files[CONFIG])
        lora = AdapterConfig.from_dict(config)
        if header_error is not None:
            raise header_error
        modules = _lora_modules(header, targets)
        for module in modules.values():
            self._check_shapes(module, _module_rank(lora, module.name))
        _check_values(files[WEIGHTS], header, modules)
        adapter = ValidatedAdapter(config=config, rank=rank, alpha=alpha, target_modules=targets,
                                   header=header, modules=modules, lora=lora, trained_on=trained_on)
        for probe in self.probes:
            probe(files, adapter)
        return adapter

    def _check_files(self, files: dict[str, bytes]) -> None:
        pickles = sorted(f for f in files if f.lower().endswith(PICKLE_SUFFIXES))
        if pickles:
            raise InvalidAdapter("files", f"pickle files are refused ({', '.join(pickles)}): they can run code "
                                          f"when loaded; {SAVE_FIX}")
        extra, missing = sorted(set(files) - set(ADAPTER_FILES)), sorted(set(ADAPTER_FILES) - set(files))
        if extra or missing:
            fix = " and ".join(([f"remove {', '.join(extra)}"] if extra else []) +
                               ([f"add {', '.join(missing)}"] if missing else []))
            raise InvalidAdapter("files", f"an upload must be exactly {CONFIG} and {WEIGHTS}: {fix}")
        total = sum(len(data) for data in files.values())
        if total > self.max_bytes:
            raise InvalidAdapter("size", f"upload is {total} bytes, over the {self.max_bytes}-byte cap: "
                                         "use a smaller rank or fewer target modules")
        if len(files[CONFIG]) > MAX_CONFIG_BYTES:
            raise InvalidAdapter("size", f"{CONFIG} is {len(files[CONFIG])} bytes, over {MAX_CONFIG_BYTES}: {SAVE_FIX}")

    def _check_config(self, raw: bytes) -> tuple[dict, int, float, list[str]]:
        config = json_object(CONFIG, raw, SAVE_FIX)
        if config.get("peft_type") != "LORA":
            raise InvalidAdapter("peft-type", f"peft_type is {config.get('peft_type')!r}; only LoRA adapters "
                                              "(peft_type \"LORA\") are served: train with peft.LoraConfig")
        rank = self._check_rank(config)
        _check_unsupported(config)
        self._check_patterns(config)
        alpha = config.get("lora_alpha", 8)
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1e6:
            raise InvalidAdapter("alpha", f"lora_alpha {alpha!r} must be a positive number: set lora_alpha, "
                                          "e.g. 2*r, in LoraConfig")
        return config, rank, float(alpha), self._check_targets(config.get("target_modules"))

    def _check_rank(self, config: dict) -> int:
        rank = config.get("r")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise InvalidAdapter("rank", f"r is {rank!r}; it must be a positive integer: set r in LoraConfig")
        if rank > self.max_rank:
            raise InvalidAdapter("rank", f"rank {rank} exceeds the served maximum {self.max_rank}: retrain with "
                                         f"r<={self.max_rank} or start the engine with --max-lora-rank {rank}")
        return rank

    def _check_patterns(self, config: dict) -> None:
        # PEFT's per-module overrides of r and lora_alpha; the engine serves them (vLLM's PEFTHelper).
        for name, valid, what in (("rank_pattern", _is_rank, "a positive integer rank"),
                                  ("alpha_pattern", _is_alpha, "a positive number")):
            pattern = config.get(name) or {}
            if not isinstance(pattern, dict):
                raise InvalidAdapter("rank-pattern", f"{name} is {pattern!r}; it must be an object mapping module "
                                                     "name patterns to values: save it with peft.LoraConfig")
            for key, value in pattern.items():
                if not key or len(key) > MAX_PATTERN_CHARS or not valid(value):
                    raise InvalidAdapter("rank-pattern", f"{name} entry {key[:80]!r}: {value!r} needs a module "
                                                         f"name pattern of 1-{MAX_PATTERN_CHARS} characters and "
                                                         f"{what}: fix it in LoraConfig({name}=...)")
        largest = AdapterConfig.from_dict(config).max_rank
        if largest > self.max_rank:
            raise InvalidAdapter("rank", f"rank_pattern gives rank {largest}, over the served maximum "
                                         f"{self.max_rank}: retrain with ranks <={self.max_rank} or start the "
                                         f"engine with --max-lora-rank {largest}")

    def _check_targets(self, targets: object) -> list[str]:
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t for t in targets):
            raise InvalidAdapter("target-modules", f"target_modules is {targets!r}; it must be a non-empty list "
                                                   "of module names: pass target_modules=[\"q_proj\", ...]")
        embeddings = sorted(t for t in targets if _is_embedding(t))
        if embeddings:
            raise InvalidAdapter("embedding-target", f"target_modules {embeddings} are embedding or LM-head layers: "
                                                     "the engine applies LoRA to linear projections only, so they "
                                                     f"would be served as the base model's; {EMBEDDING_FIX}")
        if self.base is not None:
            unknown = [t for t in targets if not self.base.matches_target(t)]
            if unknown:
                raise InvalidAdapter("target-modules", f"target_modules {unknown} do not exist in the served base "
                                                       f"model: retrain against this base, targeting modules it has")
        return sorted(set(targets))

    def _check_shapes(self, module: LoraModule, rank: int) -> None:
        a, b = module.a.shape, module.b.shape
        if len(a) != 2 or len(b) != 2 or a[0] != rank or b[1] != rank:
            raise InvalidAdapter("shape", f"module {module.name!r}: lora_A {list(a)} / lora_B {list(b)} do not "
                                          f"match rank {rank} (want [r, in] and [out, r]): {SAVE_FIX}")
        if self.base is None:
            return
        if module.name not in self.base.modules:
            raise InvalidAdapter("base-module", _unknown_module_message(module.name, self.base))
        out_features, in_features = self.base.modules[module.name]
        if (a[1], b[0]) != (in_features, out_features):
            raise InvalidAdapter("shape", f"module {module.name!r}: the adapter is for in={a[1]}, out={b[0]} but "
                                          f"the base has in={in_features}, out={out_features}: retrain against "
                                          "the served base model")


def json_object(name: str, raw: bytes, fix: str) -> dict:
    """`raw` parsed as a JSON object, or InvalidAdapter("config-json") naming the file `name` and the `fix`."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidAdapter("config-json", f"{name} is not valid JSON ({exc}): {fix}") from None
    if not isinstance(doc, dict):
        raise InvalidAdapter("config-json", f"{name} must be a JSON object: {fix}")
    return doc


def _check_unsupported(config: dict) -> None:
    if config.get("use_dora"):
        raise InvalidAdapter("dora", "DoRA adapters (use_dora=true) are not served: retrain with use_dora=False")
    if config.get("modules_to_save"):
        raise InvalidAdapter("modules-to-save", f"modules_to_save {config['modules_to_save']} would replace base "
                                                "weights per tenant, which is not served: retrain without it")
    if config.get("bias", "none") != "none":
        raise InvalidAdapter("bias", f"bias={config.get('bias')!r} trains base biases, which is not served: "
                                     "retrain with bias=\"none\"")


def _is_embedding(target: str) -> bool:
    return target.rsplit(".", 1)[-1] in EMBEDDING_MODULES


def _is_rank(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_alpha(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e6


def _module_rank(lora: AdapterConfig, module: str) -> int:
    """`module`'s rank under rank_pattern; a pattern that is no valid expression, or too slow, is refused."""
    try:
        lora.scale_for(module)  # matches alpha_pattern too, so the probe and the engine can
        return lora.rank_for(module)
    except PatternError as exc:
        raise InvalidAdapter("rank-pattern", f"{exc}: use module names such as \"q_proj\" or "
                                             "\"layers.0.self_attn.q_proj\" as pattern keys") from None


def _lora_modules(header: SafetensorsHeader, targets: list[str]) -> dict[str, LoraModule]:
    """Group the tensors into (lora_A, lora_B) pairs per module, refusing any other key."""
    halves: dict[str, dict[str, TensorInfo]] = {}
    for key, info in header.tensors.items():
        parsed = parse_key(key)
        if "lora_embedding_" in key or (parsed is not None and _is_embedding(parsed.module)):
            raise InvalidAdapter("embedding-target", f"tensor {key!r} adapts an embedding or the LM head, which the "
                                                     f"engine does not serve: {EMBEDDING_FIX}")
        if parsed is None:
            raise InvalidAdapter("tensor-keys", f"tensor {key!r} is not a LoRA weight; keys must look like "
                                                f"{KEY_SHAPE}: {SAVE_FIX}")
        if info.dtype not in FLOAT_DTYPES:
            raise InvalidAdapter("dtype", f"tensor {key!r} is {info.dtype}; only F16, BF16 and F32 are served: "
                                          "cast the adapter with model.to(torch.bfloat16) before saving")
        module = parsed.module
        if not any(module == t or module.endswith("." + t) for t in targets):
            raise InvalidAdapter("tensor-keys", f"tensor {key!r} adapts {module!r}, which is not in target_modules "
                                                f"{targets}: {SAVE_FIX}")
        halves.setdefault(module, {})[parsed.half] = info
    if not halves:
        raise InvalidAdapter("tensor-keys", f"{WEIGHTS} holds no LoRA tensors: {SAVE_FIX}")
    unpaired = sorted(m for m, h in halves.items() if set(h) != {"A", "B"})
    if unpaired:
        raise InvalidAdapter("tensor-keys", f"modules {unpaired[:5]} lack lora_A or lora_B: {SAVE_FIX}")
    return {m: LoraModule(name=m, a=h["A"], b=h["B"]) for m, h in sorted(halves.items())}


def _unknown_module_message(module: str, base: BaseModelSpec) -> str:
    near = [name for name in base.modules if name.endswith("." + module) or module.endswith("." + name)]
    hint = f" (did you mean {near[0]!r}, i.e. key {lora_key(near[0], 'A')}?)" if near else ""
    return (f"tensor keys name module {module!r}, which the base model does not have{hint}: the key prefix is "
            f"wrong or the adapter was trained on another base; {SAVE_FIX}")


def _check_values(data: bytes, header: SafetensorsHeader, modules: dict[str, LoraModule]) -> None:
    for module in modules.values():
        for half, info in (("lora_A", module.a), ("lora_B", module.b)):
            bad = count_non_finite(data, header, info)
            if bad:
                raise InvalidAdapter("finite", f"{module.name}.{half} has {bad} NaN/inf values: training "
                                               "diverged; lower the learning rate or use bf16/fp32 and retrain")
    # PEFT initialises every lora_B to zero, so an untrained adapter is exactly this: a guaranteed no-op.
    if all(is_all_zero(data, header, module.b) for module in modules.values()):
        raise InvalidAdapter("no-op", "every lora_B is zero, so the adapter changes nothing (an untrained PEFT "
                                      "adapter): train it before publishing")
