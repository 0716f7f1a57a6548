"""Typed errors of the training commands (built on common.errors so the CLI can show them alike)."""

from __future__ import annotations

from common.errors import InvalidRequest, LoraplexError, NotFound


class DatasetError(InvalidRequest):
    """A training file that cannot be read as the documented JSONL formats; the message names the line."""

    code = "invalid_dataset"


class BackendUnavailable(LoraplexError):
    """A method whose hardware or library is missing here (e.g. QLoRA without CUDA or bitsandbytes)."""

    status, type, code = 501, "server_error", "backend_unavailable"


class IncompatibleAdapters(InvalidRequest):
    """Adapters that cannot be combined the way that was asked (e.g. `linear` with unequal ranks)."""

    code = "incompatible_adapters"


class CheckpointNotFound(NotFound):
    """`--resume` without a checkpoint to resume from."""

    code = "checkpoint_not_found"


class OutputExists(InvalidRequest):
    """An output directory holding an earlier run that would be mixed with the new one."""

    code = "output_exists"
