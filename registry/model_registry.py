"""Full fine-tunes and merged models as registry artifacts, under `models/<tenant>/<name>/` beside `adapters/`.

A model version is a flat Hugging Face directory: `config.json`, the weights in safetensors (one file, or
shards with `model.safetensors.index.json`), tokenizer files and `generation_config.json`. Pickle formats
(`*.bin`, `*.pt`, ...) and any file not on the list below are refused. Like adapters, versions are
content-addressed (the same bytes give the same version), files go first and the manifest last, each by
conditional create; aliases move by compare-and-swap; serving hosts fetch versions into a verified,
bounded local cache (registry/cache.py).

Files are read from wherever the caller has them (bytes, a path, or an open file such as a spooled
upload), one at a time: the gateway holds at most one file in memory.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import BinaryIO, Literal

from pydantic import BaseModel, Field

from common.errors import InvalidAdapter
from common.names import check_name
from registry import layout
from registry.base_spec import BaseModelSpec
from registry.cache import ArtifactCache
from registry.manifest import FileEntry, ModelShape, utc_now
from registry.safetensors_header import HeaderError, parse_header
from registry.settings import RegistrySettings
from registry.store import ObjectStore
from registry.tensor_values import FLOAT_DTYPES, count_non_finite
from registry.validation import json_object
from registry.versioned import VersionedRegistry, check_metadata

Source = bytes | Path | BinaryIO
KINDS = ("full", "merged")
WEIGHTS_RE = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$")
INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
# Everything a causal LM directory needs to load; every JSON one is parsed, none can execute code.
ALLOWED_FILES = frozenset({
    CONFIG, "generation_config.json", INDEX, "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model",
})
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack", ".npy", ".npz", ".joblib")
MAX_SMALL_FILE = 32 * 1024**2  # tokenizer.json of a 250k vocabulary is ~20 MB
MAX_FILES = 64
SAVE_FIX = "save it with model.save_pretrained(dir, safe_serialization=True) and tokenizer.save_pretrained(dir)"


class ModelManifest(BaseModel):
    """An immutable full/merged model version, stored as `models/<tenant>/<name>/versions/<v>/manifest.json`."""

    tenant: str
    name: str
    version: str = Field(description="First 16 hex chars of `sha256`.")
    sha256: str = Field(description="SHA-256 over the sorted 'filename:sha256' lines of the files.")
    kind: Literal["full", "merged"]
    files: dict[str, FileEntry]
    size_bytes: int
    parameter_count: int = Field(description="Elements of every tensor in the safetensors files.")
    dtypes: dict[str, int] = Field(description="Parameters per safetensors dtype, e.g. {'F32': 1234}.")
    shape: ModelShape
    derived_from: dict = Field(default_factory=dict, description="The base it was trained or merged from "
                               "(name, fingerprint) and, for merged models, the adapter.")
    created_at: str
    uploader: str
    metadata: dict = Field(default_factory=dict, description="Training metadata (dataset digest, settings, metrics).")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class ModelInfo(BaseModel):
    name: str
    versions: list[ModelManifest]
    aliases: dict[str, str]


def read_source(source: Source) -> bytes:
    """All bytes of one uploaded file (rewinding an open file first, so it can be read twice)."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, Path):
        return source.read_bytes()
    source.seek(0)
    return source.read()


def source_size(source: Source) -> int:
    if isinstance(source, (bytes, bytearray)):
        return len(source)
    if isinstance(source, Path):
        return source.stat().st_size
    source.seek(0, 2)
    size = source.tell()
    source.seek(0)
    return size


def check_model_files(names: list[str]) -> None:
    """Refuse pickles, unknown names, and a weights layout transformers would not load."""
    pickles = sorted(n for n in names if n.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise InvalidAdapter("files", f"pickle files are refused ({', '.join(pickles)}): they can run code when "
                                      f"loaded; {SAVE_FIX}")
    unknown = sorted(n for n in names if n not in ALLOWED_FILES and not WEIGHTS_RE.fullmatch(n))
    if unknown:
        raise InvalidAdapter("files", f"unexpected files {unknown[:5]}: a model version holds only config.json, "
                                      "model*.safetensors (+ model.safetensors.index.json), generation_config.json "
                                      f"and tokenizer files ({', '.join(sorted(ALLOWED_FILES - {CONFIG, INDEX}))})")
    if len(names) > MAX_FILES:
        raise InvalidAdapter("files", f"{len(names)} files, over {MAX_FILES}: save with larger shards")
    weights = sorted(n for n in names if WEIGHTS_RE.fullmatch(n))
    if CONFIG not in names or not weights:
        raise InvalidAdapter("files", f"a model needs config.json and model*.safetensors; got {sorted(names)}: "
                                      f"{SAVE_FIX}")
    if len(weights) > 1 and INDEX not in names:
        raise InvalidAdapter("files", f"{len(weights)} weight shards but no {INDEX}: upload the index too")
    if "model.safetensors" in weights and len(weights) > 1:
        raise InvalidAdapter("files", "both model.safetensors and shards: upload one layout")


def model_files(directory: Path) -> list[Path]:
    """The files of a local model directory that a version may hold (others, e.g. build notes, stay home).

    Raises:
        InvalidAdapter: the directory holds no safetensors weights (e.g. only pytorch_model.bin).
    """
    found = sorted(p for p in Path(directory).iterdir() if p.is_file())
    keep = [p for p in found if p.name in ALLOWED_FILES or WEIGHTS_RE.fullmatch(p.name)]
    if not any(WEIGHTS_RE.fullmatch(p.name) for p in keep):
        pickles = [p.name for p in found if p.name.lower().endswith(PICKLE_SUFFIXES)]
        raise InvalidAdapter("files", f"{directory} has no model*.safetensors" +
                             (f" (only pickle weights {pickles[:3]}, which are refused)" if pickles else "") +
                             f": {SAVE_FIX}")
    return keep


class ModelValidator:
    """The gate for full/merged models; each refusal is InvalidAdapter(rule, message) → 422."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes

    def validate(self, files: dict[str, Source]) -> tuple[dict[str, FileEntry], dict]:
        """Check every file (one in memory at a time) and return their entries and what was learned.

        Returns:
            (`{filename: FileEntry}`, `{"parameter_count", "dtypes", "shape": ModelShape}`).
        """
        names = list(files)
        check_model_files(names)
        sizes = {n: source_size(s) for n, s in files.items()}
        total = sum(sizes.values())
        if total > self.max_bytes:
            raise InvalidAdapter("size", f"the model is {total} bytes, over the {self.max_bytes}-byte cap "
                                         "(LORAPLEX_MAX_MODEL_UPLOAD_BYTES): raise the cap or publish an adapter")
        entries: dict[str, FileEntry] = {}
        params, dtypes, shapes = 0, {}, {}
        config, index = None, None
        for name, source in files.items():
            if not WEIGHTS_RE.fullmatch(name) and sizes[name] > MAX_SMALL_FILE:
                raise InvalidAdapter("size", f"{name} is {sizes[name]} bytes, over {MAX_SMALL_FILE}: {SAVE_FIX}")
            data = read_source(source)
            entries[name] = FileEntry(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
            if WEIGHTS_RE.fullmatch(name):
                count, by_dtype, names_in = _check_weights(name, data)
                params += count
                for dtype, n in by_dtype.items():
                    dtypes[dtype] = dtypes.get(dtype, 0) + n
                shapes[name] = names_in
            elif name.endswith(".json"):
                doc = json_object(name, data, SAVE_FIX)
                config = doc if name == CONFIG else config
                index = doc if name == INDEX else index
            del data
        shape = _check_config(config)
        if index is not None:
            _check_index(index, shapes)
        return entries, {"parameter_count": params, "dtypes": dtypes, "shape": shape}


def _check_weights(name: str, data: bytes) -> tuple[int, dict[str, int], set[str]]:
    try:
        header = parse_header(data, max_header_bytes=100 * 1024**2, max_tensors=10**6)
    except HeaderError as exc:
        raise InvalidAdapter(exc.rule, f"{name}: {exc}") from None
    count, by_dtype = 0, {}
    for key, info in header.tensors.items():
        n = 1
        for d in info.shape:
            n *= d
        count += n
        by_dtype[info.dtype] = by_dtype.get(info.dtype, 0) + n
        if info.dtype in FLOAT_DTYPES and count_non_finite(data, header, info):
            raise InvalidAdapter("finite", f"{name}: tensor {key!r} holds NaN/inf values: training diverged; "
                                           "lower the learning rate and retrain")
    return count, by_dtype, set(header.tensors)


def _check_config(config: dict | None) -> ModelShape:
    if config is None or not (config.get("model_type") or config.get("architectures")):
        raise InvalidAdapter("config-json", f"config.json names no model_type or architectures: {SAVE_FIX}")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    merged = {**text, **config}
    architectures = merged.get("architectures") or [None]
    return ModelShape(model_type=merged.get("model_type"), architecture=architectures[0],
                      hidden_size=merged.get("hidden_size") or merged.get("n_embd"),
                      num_layers=merged.get("num_hidden_layers") or merged.get("n_layer"),
                      vocab_size=merged.get("vocab_size"))


def _check_index(index: dict, shapes: dict[str, set[str]]) -> None:
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise InvalidAdapter("files", f"{INDEX} has no weight_map: {SAVE_FIX}")
    missing = sorted(set(weight_map.values()) - set(shapes))
    unmapped = sorted(set().union(*shapes.values()) - set(weight_map))
    if missing or unmapped:
        raise InvalidAdapter("files", f"{INDEX} does not match the shards (missing files {missing[:3]}, tensors "
                                      f"not in the index {unmapped[:3]}): upload the directory as saved")


class ModelRegistry(VersionedRegistry[ModelManifest]):
    """Full and merged models of every tenant (`models/<tenant>/<name>/...`).

    Args:
        store: the registry bucket.
        settings: `max_model_upload_bytes`, and the model cache's place and size.
        base_spec: the served base; recorded as `derived_from.served_base` when the model has its shape.
    """

    ROOT = layout.MODELS
    NOUN = "model"
    API = "/v1/artifacts/models"
    MANIFEST = ModelManifest
    INFO = ModelInfo

    def __init__(self, store: ObjectStore, settings: RegistrySettings, base_spec: BaseModelSpec | None = None):
        self.store = store
        self.settings = settings
        self.base_spec = base_spec
        self.validator = ModelValidator(settings.max_model_upload_bytes)

    def publish(self, tenant: str, name: str, files: dict[str, Source], *, kind: str, uploader: str,
                derived_from: dict | None = None, metadata: dict | None = None) -> ModelManifest:
        """Validate `files` and make them a version of `tenant`'s model `name`; idempotent.

        Args:
            files: file name -> bytes, path or open binary file (read twice: to check, then to store).
            kind: `full` (a full fine-tune) or `merged` (an adapter folded into its base).
            derived_from: the base it came from, e.g. `{"name", "fingerprint": {...}}` (at most 64 KiB).
            metadata: training metadata (at most 64 KiB).

        Raises:
            InvalidName, InvalidAdapter: refused upload. StorageUnavailable: the store is down.
        """
        check_name(tenant, "tenant")
        check_name(name, "model name")
        if kind not in KINDS:
            raise InvalidAdapter("kind", f"kind {kind!r}: use 'full' (a full fine-tune) or 'merged' (an adapter "
                                         "merged into its base)")
        metadata, derived_from = check_metadata(metadata), check_metadata(derived_from, "derived_from")
        entries, learned = self.validator.validate(files)
        if self.base_spec is not None and _same_shape(learned["shape"], self.base_spec):
            derived_from = {**derived_from, "served_base": self.base_spec.fingerprint.model_dump()}

        def read(filename: str) -> bytes:
            data = read_source(files[filename])
            if hashlib.sha256(data).hexdigest() != entries[filename].sha256:  # the source changed under us
                raise InvalidAdapter("files", f"{filename} changed while it was uploaded: upload it again")
            return data

        def manifest(version: str, digest: str) -> ModelManifest:
            return ModelManifest(
                tenant=tenant, name=name, version=version, sha256=digest, kind=kind, files=entries,
                size_bytes=sum(e.size for e in entries.values()), parameter_count=learned["parameter_count"],
                dtypes=learned["dtypes"], shape=learned["shape"], derived_from=derived_from, created_at=utc_now(),
                uploader=uploader, metadata=metadata)

        return self._store_version(tenant, name, entries, read, manifest)

    list_models = VersionedRegistry.infos  # every model of a tenant with a version, by name
    get_model = VersionedRegistry.info  # one model's versions (newest first) and aliases

    def cache(self) -> ArtifactCache:
        """A verified local cache of model versions (`model_cache_dir`, bounded by `model_cache_max_bytes`)."""
        local = self.settings.model_copy(update={"cache_dir": self.settings.model_cache_dir,
                                                 "cache_max_bytes": self.settings.model_cache_max_bytes})
        return ArtifactCache(local, self.open_file)

    def fetch(self, tenant: str, ref: str, cache: ArtifactCache, *, verify: bool = False) -> Path:
        """A local directory holding the version `ref` names, every file checked by SHA-256 (loadable by
        transformers or vLLM, e.g. for a dedicated engine in separate-model mode)."""
        return cache.ensure_local(self.resolve(tenant, ref), verify=verify)


def _same_shape(shape: ModelShape, base: BaseModelSpec) -> bool:
    fp = base.fingerprint
    return (shape.architecture, shape.hidden_size, shape.num_layers, shape.vocab_size) == (
        fp.architecture, fp.hidden_size, fp.num_layers, fp.vocab_size)
