"""Parse a safetensors header by hand, trusting nothing in it.

Layout: 8 bytes little-endian header length N, N bytes of JSON (`{name: {dtype, shape, data_offsets}}`
plus an optional `__metadata__`), then the tensor data. Nothing here unpickles or allocates tensors:
the checks bound every size before anything is read, so a hostile file costs at most `max_header_bytes`.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2,
               "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
MIB = 1024**2
HEADER_FIX = "re-save the adapter with PEFT's save_pretrained (safetensors) and upload the file unmodified"


class HeaderError(ValueError):
    """A malformed safetensors file; `rule` names the rule it broke."""

    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry; `begin`/`end` are offsets into the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed, checked header. `data_start` is the file offset of the data section."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_start: int
    raw: bytes


def parse_header(data: bytes, *, max_header_bytes: int = MIB, max_tensors: int = 16384) -> SafetensorsHeader:
    """Parse and check the header of an in-memory safetensors file (every offset inside `data`)."""
    length = _header_length(data[:8], len(data), max_header_bytes)
    return _parse(data[8:8 + length], len(data) - 8 - length, max_tensors)


def read_header(path: str | Path, *, max_header_bytes: int = 100 * MIB) -> SafetensorsHeader:
    """Read only the header of a safetensors file on disk (a base model's, possibly many GiB)."""
    size = Path(path).stat().st_size
    with open(path, "rb") as fh:
        length = _header_length(fh.read(8), size, max_header_bytes)
        raw = fh.read(length)
    return _parse(raw, size - 8 - length, max_tensors=10**7)


def _header_length(prefix: bytes, file_size: int, max_header_bytes: int) -> int:
    if len(prefix) < 8:
        raise HeaderError("safetensors-header", f"file is {file_size} bytes, too short for a header: {HEADER_FIX}")
    (length,) = struct.unpack("<Q", prefix)
    if length > max_header_bytes:
        raise HeaderError("safetensors-header",
                          f"header claims {length} bytes, over the {max_header_bytes}-byte cap: {HEADER_FIX}")
    if 8 + length > file_size:
        raise HeaderError("safetensors-header",
                          f"header claims {length} bytes but the file has {file_size - 8} after the length "
                          f"(truncated upload?): {HEADER_FIX}")
    return length


def _parse(raw: bytes, data_len: int, max_tensors: int) -> SafetensorsHeader:
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise HeaderError("safetensors-header", f"header is not valid JSON ({exc}): {HEADER_FIX}") from None
    if not isinstance(doc, dict):
        raise HeaderError("safetensors-header", f"header is not a JSON object: {HEADER_FIX}")
    metadata = doc.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderError("safetensors-header", f"__metadata__ must map strings to strings: {HEADER_FIX}")
    if len(doc) > max_tensors:
        raise HeaderError("tensor-count", f"{len(doc)} tensors, over the cap of {max_tensors}: {HEADER_FIX}")
    tensors = {name: _entry(name, value) for name, value in doc.items()}
    _check_layout(tensors, data_len)
    return SafetensorsHeader(tensors=tensors, metadata=metadata, data_start=8 + len(raw), raw=raw)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate keys")
    return dict(pairs)


def _entry(name: str, value: object) -> TensorInfo:
    bad = HeaderError("safetensors-header", f"tensor {name!r} has a malformed entry: {HEADER_FIX}")
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise bad
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if dtype not in DTYPE_SIZES or not isinstance(shape, list) or not isinstance(offsets, list):
        raise bad
    if not all(_is_uint(d) for d in shape) or len(offsets) != 2 or not all(_is_uint(o) for o in offsets):
        raise bad
    begin, end = offsets
    if end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
        raise HeaderError("safetensors-header",
                          f"tensor {name!r}: offsets span {end - begin} bytes, shape {shape} of {dtype} needs "
                          f"{math.prod(shape) * DTYPE_SIZES[dtype]}: {HEADER_FIX}")
    return TensorInfo(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(tensors: dict[str, TensorInfo], data_len: int) -> None:
    """Tensors must tile the data section exactly: no gaps, no overlaps, nothing past the end."""
    position = 0
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin != position:
            raise HeaderError("safetensors-header",
                              f"tensor data overlaps or leaves a gap at byte {position}: {HEADER_FIX}")
        position = info.end
    if position != data_len:
        raise HeaderError("safetensors-header",
                          f"tensor data covers {position} bytes but the file holds {data_len} "
                          f"(truncated or padded?): {HEADER_FIX}")
