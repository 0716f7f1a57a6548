"""The admission modes the fairness benchmark compares, as gateway settings."""

from __future__ import annotations

# mode -> admission settings
MODES = {"fifo": {"fair_admission": False, "fair_share_cap": 0.0, "fair_slowdown_tolerance": 0.0},
         "fair-nocap": {"fair_admission": True, "fair_share_cap": 0.0, "fair_slowdown_tolerance": 0.0},
         "fair-noguard": {"fair_admission": True, "fair_share_cap": 1.0, "fair_slowdown_tolerance": 0.0},
         "fair": {"fair_admission": True, "fair_share_cap": 1.0, "fair_slowdown_tolerance": 1.15}}


def mode_settings(mode: str, share_cap: float = 1.0) -> dict:
    """Admission settings of a mode: one of MODES (the capped ones with `share_cap`), or `fair@X` (`fair` with
    slowdown tolerance X)."""
    if mode.startswith("fair@"):
        try:
            tolerance = float(mode[5:])
        except ValueError:
            raise ValueError(f"bad mode {mode!r}: fair@ takes a slowdown tolerance, e.g. fair@1.3") from None
        if 0 < tolerance < 1:
            raise ValueError(f"bad mode {mode!r}: a slowdown tolerance is 0 (off) or at least 1")
        return dict(MODES["fair"], fair_share_cap=share_cap, fair_slowdown_tolerance=tolerance)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose from {', '.join(MODES)} or fair@X")
    capped = MODES[mode]["fair_share_cap"] > 0
    return dict(MODES[mode], **({"fair_share_cap": share_cap} if capped else {}))
