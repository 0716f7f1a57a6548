"""The model zoo: small random-weight bases of the architectures users bring, built by the project.

No model hub is reachable here, so each family's base is made from its real transformers config class
with the structure that matters to LoRA serving kept (grouped-query attention, q/k/v biases, tied
embeddings, fused `qkv_proj`/`gate_up_proj`, Gemma-2's soft-capping and scaled embedding) and the
widths and depth scaled down. Each is saved as users' checkpoints are: bf16, *sharded* safetensors with
an index, a tokenizer and a chat template. A build takes about a second and is cached under
`<var>/models/zoo/<family>/` (a stamp written last marks it complete).

The tokenizer has one token per printable ASCII character (plus newline and tab): whatever ids a
random model emits decode to whole characters, so vLLM's incremental detokenizer and `tokenizer.decode`
agree exactly and served answers compare with transformers' as text (a byte-level vocabulary would emit
partial UTF-8, which vLLM drops and `decode` renders as U+FFFD).

Example:
    >>> from training.zoo import build_zoo_model
    >>> base_dir = build_zoo_model("qwen2", "var")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from training.staged_build import read_stamp, staged_dir, write_stamp

RECIPE = 2  # bump when a family's recipe changes: cached builds are then rebuilt
SEED = 17
BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
SPECIALS = (BOS, EOS, PAD, UNK)
SHARD_SIZE = "1MB"  # several shards even for these tiny models, as a real checkpoint has
# A role-tagged chat template (the demo's answers only the last user turn); <bos> is part of it because
# vLLM adds no special tokens to a templated prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}{%- for m in messages -%}{{ m['role'] + ': ' + m['content'] | trim + '\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}assistant:{%- endif -%}"
)
# Shared small dimensions: head dim 64 (every vLLM CPU attention backend takes it), 4 query heads.
HIDDEN, HEADS, HEAD_DIM, INTERMEDIATE, LAYERS, MAX_POSITIONS = 256, 4, 64, 512, 2, 512


@dataclass(frozen=True)
class Family:
    """One architecture of the zoo: its config class and what makes it itself.

    Args:
        name: the zoo's name for it (`--family`).
        config_class: the transformers config class of the real models.
        kwargs: the family's distinctive settings (on top of the shared small dimensions).
        traits: what LoRA serving must get right on it, for docs and test ids.
        attention_targets: its attention projections' module names (attention-only adapters).
    """

    name: str
    config_class: type[PretrainedConfig]
    kwargs: dict = field(default_factory=dict)
    traits: str = ""
    attention_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llama", LlamaConfig, {"num_key_value_heads": 2, "tie_word_embeddings": False},
           "GQA (4 query heads, 2 KV heads), untied lm_head"),
    Family("qwen2", Qwen2Config, {"num_key_value_heads": 2, "tie_word_embeddings": True,
                                  "use_sliding_window": False},
           "GQA, q/k/v projections with bias, tied embeddings (no lm_head weight)"),
    Family("mistral", MistralConfig, {"num_key_value_heads": 1, "sliding_window": None,
                                      "tie_word_embeddings": False},
           "GQA down to one KV head (multi-query), untied lm_head"),
    # vLLM's Gemma-2 loads only tied embeddings; a small initializer_range keeps the sqrt(hidden)-scaled
    # tied embedding from drowning every other signal (greedy output would repeat the input token).
    Family("gemma2", Gemma2Config, {"num_key_value_heads": 2, "head_dim": HEAD_DIM, "tie_word_embeddings": True,
                                    "query_pre_attn_scalar": HEAD_DIM, "sliding_window": 128,
                                    "initializer_range": 0.02},
           "GQA, explicit head_dim, attention and final logit soft-capping, alternating sliding window, "
           "tied and scaled embeddings"),
    Family("phi3", Phi3Config, {"num_key_value_heads": 2, "tie_word_embeddings": False, "sliding_window": None},
           "fused qkv_proj and gate_up_proj (one linear each), GQA", ("qkv_proj", "o_proj")),
)}


def zoo_dir(var_dir: str | Path, family: str) -> Path:
    """Where the zoo keeps `family`'s base under `var_dir`."""
    return Path(var_dir) / "models" / "zoo" / family


def zoo_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, newline and tab; <bos> prepended; the role-tagged chat template."""
    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    vocab = {s: i for i, s in enumerate(SPECIALS)} | {c: len(SPECIALS) + i for i, c in enumerate(chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
    backend.decoder = decoders.Fuse()  # decoding concatenates: exact inverse of encoding
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, clean_up_tokenization_spaces=False, chat_template=CHAT_TEMPLATE,
                                   model_max_length=MAX_POSITIONS)


def make_config(family: Family, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    """`family`'s config at the zoo's small size, with the tokenizer's vocabulary and special ids."""
    config = family.config_class(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, max_position_embeddings=MAX_POSITIONS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **family.kwargs)
    config.architectures = [_architecture(family)]
    return config


def _architecture(family: Family) -> str:
    return family.config_class.__name__.removesuffix("Config") + "ForCausalLM"


def create_model(family: Family, tokenizer: PreTrainedTokenizerFast):
    """A freshly initialised bf16 model of `family` (deterministic: same seed, same weights)."""
    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(make_config(family, tokenizer), dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    return model.to(torch.bfloat16)


def build_zoo_model(family: str, var_dir: str | Path, *, out_dir: str | Path | None = None,
                    force: bool = False) -> Path:
    """Build `family`'s base (or reuse a complete cached build) and return its directory.

    Args:
        family: a key of FAMILIES.
        var_dir: the cache root (`var/`, or LORAPLEX_TEST_VAR in tests).
        out_dir: build here instead of the cache (`zoo_dir(var_dir, family)`).
        force: rebuild even if a complete build is there.

    Raises:
        KeyError: an unknown family (the message lists the known ones).
    """
    if family not in FAMILIES:
        raise KeyError(f"unknown family {family!r}: use one of {', '.join(FAMILIES)}")
    final = Path(out_dir) if out_dir is not None else zoo_dir(var_dir, family)
    stamp = read_stamp(final / "zoo.json")
    if not force and stamp and stamp.get("recipe") == RECIPE and stamp.get("family") == family:
        return final
    spec = FAMILIES[family]
    tokenizer = zoo_tokenizer()
    model = create_model(spec, tokenizer)
    model.config.name_or_path = f"loraplex-zoo-{family}"  # not this machine's path
    with staged_dir(final, final.parent / ".staging") as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True, max_shard_size=SHARD_SIZE)
        tokenizer.save_pretrained(str(tmp))
        config = json.loads((tmp / "config.json").read_text())
        config.pop("_name_or_path", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        write_stamp(tmp / "zoo.json", {"recipe": RECIPE, "family": family, "traits": spec.traits,
                                       "parameters": sum(p.numel() for p in model.parameters())})
    return final
