"""Adapter health computed at upload and stored in the manifest (common/adapter_health.py has the measures).

Cheap: the singular values of each update scale·B·A come from an r×r matrix, so even a 7B adapter with
hundreds of modules takes well under a second. The per-module rows are kept compact (three numbers each).
"""

from __future__ import annotations

import json
import logging

from common.peft_format import CONFIG_FILE, WEIGHTS_FILE

log = logging.getLogger(__name__)

MAX_MODULE_ROWS = 1024  # beyond this only the summary is stored (keeps manifests small)
MODULE_FIELDS = ("effective_rank", "energy_rank", "near_zero_share")


def upload_health(files: dict[str, bytes]) -> dict | None:
    """The health summary of a validated upload, or None if it cannot be computed (logged, not fatal).

    Returns:
        `{"rank", "modules", "effective_rank": {mean, median, min, max}, "energy_rank": {...},
        "near_zero_share", "utilization", "zero_modules", "notes", "per_module": {module: {effective_rank,
        energy_rank, near_zero_share}}}`.
    """
    try:
        from safetensors.torch import load as load_tensors

        from common.adapter_health import tensors_health  # torch: loaded on the first upload, not at import

        health = tensors_health(json.loads(files[CONFIG_FILE]), load_tensors(files[WEIGHTS_FILE]))
    except Exception:  # health is information, never a reason to refuse an adapter the gate accepted
        log.exception("adapter health could not be computed")
        return None
    per_module = health.pop("per_module", {})
    if len(per_module) <= MAX_MODULE_ROWS:
        health["per_module"] = {m: {k: row[k] for k in MODULE_FIELDS} for m, row in per_module.items()}
    return health
