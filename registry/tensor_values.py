"""Checks on tensor values, done on the raw little-endian bits with numpy.

Working on bits covers BF16 (which numpy has no dtype for) and never builds a framework tensor from
untrusted bytes: a value is non-finite when its exponent bits are all ones, zero when all bits but
the sign are zero.
"""

from __future__ import annotations

import numpy as np

from registry.safetensors_header import SafetensorsHeader, TensorInfo

# dtype -> (unsigned view, exponent mask, everything-but-sign mask)
_BITS = {
    "F16": (np.dtype("<u2"), 0x7C00, 0x7FFF),
    "BF16": (np.dtype("<u2"), 0x7F80, 0x7FFF),
    "F32": (np.dtype("<u4"), 0x7F800000, 0x7FFFFFFF),
}
FLOAT_DTYPES = frozenset(_BITS)


def _bits(data: bytes, header: SafetensorsHeader, info: TensorInfo) -> tuple[np.ndarray, int, int]:
    view, exponent, magnitude = _BITS[info.dtype]
    raw = memoryview(data)[header.data_start + info.begin:header.data_start + info.end]
    return np.frombuffer(raw, dtype=view), exponent, magnitude


def count_non_finite(data: bytes, header: SafetensorsHeader, info: TensorInfo) -> int:
    """Number of NaN or infinite values in one F16/BF16/F32 tensor of the in-memory file `data`."""
    bits, exponent, _ = _bits(data, header, info)
    return int(np.count_nonzero((bits & exponent) == exponent))


def is_all_zero(data: bytes, header: SafetensorsHeader, info: TensorInfo) -> bool:
    """True if every value of the tensor is +0 or -0."""
    bits, _, magnitude = _bits(data, header, info)
    return not np.any(bits & magnitude)
