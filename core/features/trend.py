"""Trend strength and direction: directional movement (ADX family), Aroon, parabolic SAR, Ichimoku."""

from __future__ import annotations

from core.features.kernel import Kernel

__all__ = ["defaults"]


def defaults() -> list[Kernel]:
    """The trend features every engine computes by default."""
    return []
