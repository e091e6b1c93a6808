"""Volatility: true range, ATR, bands and channels, dispersion and range-based estimators."""

from __future__ import annotations

from core.features.kernel import Kernel

__all__ = ["defaults"]


def defaults() -> list[Kernel]:
    """The volatility features every engine computes by default."""
    return []
