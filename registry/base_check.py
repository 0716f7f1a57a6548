"""The base an adapter belongs to, enforced: at upload (the gate) and before serving (the gateway).

An adapter trained by loraplex carries the fingerprint of the base it was trained on (registry/base_spec.py's
`BaseFingerprint`) in its safetensors header's `__metadata__` under FINGERPRINT_KEY: PEFT and vLLM ignore
that metadata, so the adapter stays an ordinary PEFT adapter. The gate refuses a fingerprint other than the
served base's; an adapter without one (trained elsewhere) is checked by module names, shapes and the no-op
probe alone, and its manifest says so (`base_check = "shapes"`). The manifest records the base the version
was validated against; after LORAPLEX_BASE_MODEL changes, the gateway refuses to serve a version validated
against another base (409) instead of applying its weights to a model they were not made for.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from common.errors import BaseMismatch, InvalidAdapter
from registry.manifest import BaseFingerprint, Manifest
from registry.safetensors_header import SafetensorsHeader

FINGERPRINT_KEY = "loraplex.base_fingerprint"
MAX_FINGERPRINT_CHARS = 4096
BY_FINGERPRINT, BY_SHAPES = "fingerprint", "shapes"
"""`Manifest.base_check` values: the adapter's own fingerprint matched the served base / it carried none."""


def fingerprint_metadata(fingerprint: BaseFingerprint) -> dict[str, str]:
    """The safetensors `__metadata__` entry that records `fingerprint` in an adapter's weights file."""
    return {FINGERPRINT_KEY: fingerprint.model_dump_json()}


def adapter_fingerprint(header: SafetensorsHeader) -> BaseFingerprint | None:
    """The base fingerprint an adapter carries, or None (an adapter trained elsewhere).

    Raises:
        InvalidAdapter: the entry is there but is no fingerprint (hand-edited or truncated).
    """
    raw = header.metadata.get(FINGERPRINT_KEY)
    if raw is None:
        return None
    try:
        if len(raw) > MAX_FINGERPRINT_CHARS:
            raise ValueError(f"over {MAX_FINGERPRINT_CHARS} characters")
        return BaseFingerprint.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise InvalidAdapter("base-fingerprint", f"the weights' metadata {FINGERPRINT_KEY!r} is not a base "
                                                 f"fingerprint ({str(exc)[:200]}): save the adapter again with "
                                                 "loraplex, or remove that metadata entry") from None


def describe(fingerprint: BaseFingerprint) -> str:
    """One line naming a base: architecture, sizes and the start of its weights digest."""
    return (f"{fingerprint.architecture or fingerprint.model_type or 'unknown architecture'} (hidden "
            f"{fingerprint.hidden_size}, {fingerprint.num_layers} layers, vocab {fingerprint.vocab_size}, "
            f"weights {fingerprint.weights_sha256[:12]})")


def check_trained_base(trained_on: BaseFingerprint, served: BaseFingerprint) -> None:
    """Refuse (422) an adapter whose recorded base is not the served one, naming both."""
    if trained_on.weights_sha256 != served.weights_sha256:
        raise InvalidAdapter("base-mismatch", f"the adapter was trained on {describe(trained_on)} but this "
                                              f"gateway serves {describe(served)}: upload it to a gateway "
                                              "serving that base, or retrain it on the served base")


def check_served_base(manifest: Manifest, served: BaseFingerprint | None) -> None:
    """Refuse (409) to serve a version validated against another base than the one served now.

    A version validated with no base configured (`base_model` None), or a gateway with none, is not
    checked: there is nothing to compare.
    """
    validated = manifest.base_model
    if validated is None or served is None or validated.weights_sha256 == served.weights_sha256:
        return
    raise BaseMismatch(f"{manifest.ref} was validated against {describe(validated)}, but the served base "
                       f"(LORAPLEX_BASE_MODEL) is now {describe(served)}: serve that base again, or upload the "
                       "adapter anew (retrained on the served base) and use the new version", param="model")
