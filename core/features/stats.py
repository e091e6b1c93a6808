"""Statistics of returns: rolling moments, ranks, autocorrelation, beta and correlation against a reference."""

from __future__ import annotations

from core.features.kernel import Kernel

__all__ = ["defaults"]


def defaults() -> list[Kernel]:
    """The stats features every engine computes by default."""
    return []
