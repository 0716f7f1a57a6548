"""What the validator needs to know about the base model: its linear modules, their shapes, its identity.

Read once per base from the model directory's `config.json` and safetensors *headers* (never the
weights), so it is cheap even for a base of many GiB.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from registry.manifest import BaseFingerprint
from registry.safetensors_header import SafetensorsHeader, read_header

SAMPLE_BYTES = 64 * 1024


@dataclass(frozen=True)
class BaseModelSpec:
    """Linear modules of a base model: `modules[name] = (out_features, in_features)`.

    Names are as in the checkpoint, without `.weight`: `model.layers.0.self_attn.q_proj`.
    """

    path: Path
    modules: dict[str, tuple[int, int]]
    fingerprint: BaseFingerprint

    @classmethod
    def from_dir(cls, path: str | Path) -> BaseModelSpec:
        """Read a local Hugging Face model directory (`config.json` + `model.safetensors` or shards).

        Args:
            path: the model directory.

        Raises:
            FileNotFoundError: no config.json or no safetensors weights in `path`.
        """
        root = Path(path)
        config = _read_config(root)
        digest = hashlib.sha256()
        modules: dict[str, tuple[int, int]] = {}
        for shard in _weight_files(root):
            header = read_header(shard)
            digest.update(shard.name.encode() + b"\0" + header.raw)
            digest.update(_sample(shard, header))
            for key, info in header.tensors.items():
                if key.endswith(".weight") and len(info.shape) == 2:
                    modules[key.removesuffix(".weight")] = (info.shape[0], info.shape[1])
        return cls(path=root, modules=modules, fingerprint=_fingerprint(config, digest.hexdigest()))

    def matches_target(self, target: str) -> bool:
        """True if some module is named `target` or ends with `.target` (PEFT's matching rule)."""
        return any(name == target or name.endswith("." + target) for name in self.modules)


def _read_config(root: Path) -> dict:
    config_path = root / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} missing: LORAPLEX_BASE_MODEL must be a Hugging Face model dir")
    config = json.loads(config_path.read_text())
    # Multimodal configs keep the language model's sizes under text_config.
    return {**config.get("text_config", {}), **config} if isinstance(config.get("text_config"), dict) else config


def _weight_files(root: Path) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [root / shard for shard in shards]
    single = root / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"no model.safetensors (or index) in {root}: save the base with safe_serialization")


def _sample(shard: Path, header: SafetensorsHeader) -> bytes:
    """First, middle and last 64 KiB of the data: tells apart two bases with identical headers
    (e.g. two random inits) without hashing gigabytes. An identity, not an integrity check."""
    size = shard.stat().st_size
    chunks = []
    with open(shard, "rb") as fh:
        for offset in (header.data_start, (header.data_start + size) // 2, max(header.data_start, size - SAMPLE_BYTES)):
            fh.seek(offset)
            chunks.append(fh.read(SAMPLE_BYTES))
    return b"".join(chunks)


def _fingerprint(config: dict, weights_sha256: str) -> BaseFingerprint:
    architectures = config.get("architectures") or [None]
    return BaseFingerprint(
        model_type=config.get("model_type"),
        architecture=architectures[0],
        hidden_size=config.get("hidden_size") or config.get("n_embd"),
        num_layers=config.get("num_hidden_layers") or config.get("n_layer"),
        vocab_size=config.get("vocab_size"),
        weights_sha256=weights_sha256,
    )
