"""Volume: on-balance volume, accumulation/distribution, VWAP, volume profile, trade-side imbalance."""

from __future__ import annotations

from core.features.kernel import Kernel

__all__ = ["defaults"]


def defaults() -> list[Kernel]:
    """The volume features every engine computes by default."""
    return []
